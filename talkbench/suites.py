"""Benchmark suites: which generated clip goes with which reference clip, transcript and face boxes.

A suite is a list of :class:`ClipPair`, one per clip id. The id is the clip's path relative to its
root, without extension, in POSIX form (``main/5535415699068794046/00001``); generated clips match by
that id, with any of the extensions in :data:`talkbench.media.VIDEO_EXTENSIONS`. Nothing is dropped
silently: a reference clip without a generated one is still a pair (``generated=None``, listed in
``missing_generated``), and a generated clip that matches nothing is listed in ``unmatched_generated``.

Layouts (``kind``):

``lrs2``
    ``<root>/.../<utt>.mp4`` with ``<utt>.txt`` beside it whose first line is ``Text:  WORDS``
    (LRS2's ``main/<speaker>/<utt>``). Give ``mvlrs_v1/main`` (or a TalkLip filelist) to keep
    LRS2's ``pretrain`` folder out.
``lrw``
    ``<root>/WORD/<split>/WORD_00001.mp4``; the label is the folder name; the 500 classes are the
    folder names sorted (index = position, as MVM's ``sorted(os.listdir(root))``). Only ``split``
    (default ``test``) is read.
``talklip-filelist``
    the ids of a TalkLip/LRS2 list: ``test.txt`` (``<id> [tags]`` per line, transcripts from the LRS2
    ``.txt`` beside each reference clip, or the LRW word of an LRW id), or AV-HuBERT's pair
    ``<name>.tsv`` (first line = root, then ``<id>\\t…``) + ``<name>.wrd`` (one transcript per tsv row;
    TalkLip ships ``test_partial.tsv`` with ``test.wrd``).
``folder``
    any folder; ``transcripts.csv`` (columns ``path,text``, ``path`` relative to the folder, with or
    without extension; LRW word labels go in ``text`` too) in the reference folder (in the generated
    folder when there is no reference folder). Without it, every clip is a pair without text.

Face boxes: ``<boxes_dir>/<id>.npy`` when a boxes folder is given, else ``<stem>.npy`` beside the
reference clip (TalkLip's ``bbx_root`` files): ``T×4`` integer ``x1, y1, x2, y2`` per frame.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from talkbench.media import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)

SUITE_KINDS: tuple[str, ...] = ("lrs2", "lrw", "talklip-filelist", "folder")
TRANSCRIPTS_CSV = "transcripts.csv"
LRS2_TEXT_PREFIX = "Text:"
_LRW_ID = re.compile(r"^(?P<word>[^/]+)/(?P<split>[^/]+)/(?P=word)_\d+$")
_REPORT_NAMES = 5  # how many ids a report names


@dataclass
class ClipPair:
    """One clip of a suite.

    Attributes:
        clip_id: relative path without extension (POSIX), e.g. ``main/5535415699068794046/00001``.
        generated: the generated clip, or None when it is missing (the runner records an error row).
        reference: the ground-truth clip, or None (no reference folder, or the file is missing).
        text: transcript (LRS2 ``Text:`` words, as written) or LRW word label, or None.
        boxes: ``.npy`` file of per-frame face boxes ``T×4`` (x1, y1, x2, y2), or None (= full frame).
    """

    clip_id: str
    generated: Path | None
    reference: Path | None
    text: str | None
    boxes: Path | None


@dataclass
class Suite:
    """The pairs of a suite and what could not be paired.

    Attributes:
        kind: the layout (one of :data:`SUITE_KINDS`).
        pairs: one per clip id, sorted by id.
        unmatched_generated: ids of generated clips that match no reference clip / transcript row.
        missing_generated: ids of pairs without a generated clip.
        missing_reference: ids of pairs whose listed reference clip does not exist.
        labels: LRW classes (sorted folder names) for ``lrw``, else None.
    """

    kind: str
    pairs: list[ClipPair]
    unmatched_generated: list[str] = field(default_factory=list)
    missing_generated: list[str] = field(default_factory=list)
    missing_reference: list[str] = field(default_factory=list)
    labels: list[str] | None = None

    def report(self) -> list[str]:
        """Human-readable lines about clips that could not be paired (empty when all paired)."""
        lines = []
        for what, ids in (("generated clip(s) match no reference clip or transcript", self.unmatched_generated),
                          ("reference clip(s) have no generated clip", self.missing_generated),
                          ("listed clip(s) have no reference file", self.missing_reference)):
            if ids:
                more = ", …" if len(ids) > _REPORT_NAMES else ""
                lines.append(f"{len(ids)} {what} (first: {', '.join(ids[:_REPORT_NAMES])}{more})")
        return lines


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

def find_videos(root: Path) -> dict[str, Path]:
    """Video files under ``root`` by clip id (relative POSIX path without extension).

    Hidden files and folders (``.name``, e.g. unfinished ``write_clip`` temporaries) are skipped.
    When one id exists with several extensions, the first of :data:`VIDEO_EXTENSIONS` wins (logged).
    """
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            ext = os.path.splitext(name)[1].lower()
            if name.startswith(".") or ext not in rank:
                continue
            path = Path(folder) / name
            clip_id = path.relative_to(root).with_suffix("").as_posix()
            if clip_id in found:
                keep = min(found[clip_id], path, key=lambda p: rank[p.suffix.lower()])
                logger.warning("%s: several video files for one clip (%s, %s); using %s",
                               root, found[clip_id].name, path.name, keep.name)
                path = keep
            found[clip_id] = path
    return found


def read_lrs2_text(path: Path) -> str:
    """Words of an LRS2 transcript file: its first line without the ``Text:`` prefix, stripped.

    A first line without the prefix is taken whole (the sample clips' ``.txt`` hold bare words).
    TalkLip's Conformer script takes ``line.strip()[7:]``, which is the same for LRS2's
    ``Text:  WORDS`` (two spaces).
    """
    with open(path, encoding="utf-8") as handle:
        first = handle.readline().strip()
    if first.startswith(LRS2_TEXT_PREFIX):
        first = first[len(LRS2_TEXT_PREFIX):].strip()
    return first


def load_boxes(path: Path, n_frames: int | None = None) -> np.ndarray:
    """Per-frame face boxes from a ``.npy`` file, as int64 ``T×4`` (x1, y1, x2, y2).

    Raises:
        ValueError: not a ``T×4`` array of whole, non-negative numbers, or fewer rows than ``n_frames``.
    """
    try:
        boxes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read face boxes ({err}). Expected a .npy array T×4.") from err
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{path}: face boxes must be T×4 (x1, y1, x2, y2 per frame), got shape {boxes.shape}.")
    if not np.issubdtype(boxes.dtype, np.integer):
        if not np.issubdtype(boxes.dtype, np.floating) or not np.all(np.isfinite(boxes)) \
                or not np.array_equal(boxes, np.round(boxes)):
            raise ValueError(f"{path}: face boxes must be whole pixel coordinates (TalkLip's bbx files are "
                             f"integers), got {boxes.dtype} values such as {boxes.flat[0]!r}.")
    boxes = boxes.astype(np.int64)
    if (boxes < 0).any():
        raise ValueError(f"{path}: face boxes have negative coordinates; clip them at 0 as TalkLip's bbx_extract does.")
    if n_frames is not None and len(boxes) < n_frames:
        raise ValueError(f"{path}: {len(boxes)} face boxes for {n_frames} frames; re-run the face detection.")
    return boxes


def _video_at(root: Path, clip_id: str) -> Path | None:
    for ext in VIDEO_EXTENSIONS:
        candidate = root / (clip_id + ext)
        if candidate.is_file():
            return candidate
    return None


def _boxes_for(clip_id: str, reference: Path | None, boxes_dir: Path | None) -> Path | None:
    if boxes_dir is not None:
        candidate = boxes_dir / (clip_id + ".npy")
        return candidate if candidate.is_file() else None
    if reference is not None:
        candidate = reference.with_suffix(".npy")
        return candidate if candidate.is_file() else None
    return None


def _lrw_word(clip_id: str) -> str | None:
    match = _LRW_ID.match(clip_id)
    return match.group("word") if match else None


# --------------------------------------------------------------------------------------------------
# Layouts: {clip_id: (reference clip or None, text or None)}; list-based layouts also return missing references
# --------------------------------------------------------------------------------------------------

def _lrs2_entries(root: Path) -> dict[str, tuple[Path | None, str | None]]:
    entries = {}
    for clip_id, video in find_videos(root).items():
        text_file = video.with_suffix(".txt")
        entries[clip_id] = (video, read_lrs2_text(text_file) if text_file.is_file() else None)
    return entries


def _lrw_entries(root: Path, split: str) -> dict[str, tuple[Path | None, str | None]]:
    entries = {}
    for clip_id, video in find_videos(root).items():
        match = _LRW_ID.match(clip_id)
        if match and match.group("split") == split:
            entries[clip_id] = (video, match.group("word"))
    return entries


def lrw_labels(root: Path) -> list[str]:
    """LRW classes: the folder names directly under ``root``, sorted (class index = position)."""
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def read_filelist(filelist: Path) -> list[tuple[str, str | None]]:
    """(clip id, transcript or None) rows of a TalkLip/LRS2/LRW list or an AV-HuBERT ``.tsv``/``.wrd`` pair.

    Raises:
        ValueError: the file or its ``.tsv``/``.wrd`` partner is missing, or their row counts differ.
    """
    if not filelist.is_file():
        raise ValueError(f"{filelist}: filelist not found (--filelist).")
    suffix = filelist.suffix.lower()
    if suffix not in (".tsv", ".wrd"):
        ids = []
        for line in filelist.read_text(encoding="utf-8").splitlines():
            if line.strip():
                ids.append(line.split()[0])  # TalkLip: line.strip().split(' ')[0]; LRS2 lines end with a tag
        return [(clip_id, None) for clip_id in ids]
    stem = filelist.with_suffix("")
    if suffix == ".tsv":
        tsv = filelist
        partners = [stem.with_suffix(".wrd")]
        if stem.name.endswith("_partial"):
            partners.append(stem.with_name(stem.name[: -len("_partial")] + ".wrd"))
    else:
        partners = [stem.with_suffix(".tsv"), stem.with_name(stem.name + "_partial.tsv")]
        tsv = next((p for p in partners if p.is_file()), None)
        if tsv is None:
            raise ValueError(f"{filelist}: no AV-HuBERT manifest beside it ({' or '.join(p.name for p in partners)}); "
                             "the .wrd file only holds transcripts, the ids are in the .tsv.")
        partners = [filelist]
    rows = tsv.read_text(encoding="utf-8").splitlines()[1:]  # first line: the root folder
    ids = [row.split("\t")[0].strip() for row in rows if row.strip()]
    wrd = next((p for p in partners if p.is_file()), None)
    if wrd is None:
        logger.warning("%s: no transcripts (%s not found); text comes from the reference .txt files",
                       tsv, " or ".join(p.name for p in partners))
        return [(clip_id, None) for clip_id in ids]
    texts = [line.strip() for line in wrd.read_text(encoding="utf-8").splitlines()]
    while texts and not texts[-1]:
        texts.pop()
    if len(texts) != len(ids):
        raise ValueError(f"{wrd}: {len(texts)} transcripts for {len(ids)} clips in {tsv}; "
                         "the .wrd must have one line per .tsv row (after the root line).")
    return list(zip(ids, texts))


def _filelist_entries(filelist: Path, reference: Path | None, text_root: Path
                      ) -> tuple[dict[str, tuple[Path | None, str | None]], list[str]]:
    entries: dict[str, tuple[Path | None, str | None]] = {}
    missing_reference = []
    for clip_id, text in read_filelist(filelist):
        if clip_id in entries:
            raise ValueError(f"{filelist}: clip {clip_id!r} is listed twice.")
        video = _video_at(reference, clip_id) if reference is not None else None
        if reference is not None and video is None:
            missing_reference.append(clip_id)
        if text is None:
            text_file = text_root / (clip_id + ".txt")
            text = read_lrs2_text(text_file) if text_file.is_file() else None
        if text is None:
            text = _lrw_word(clip_id)
        entries[clip_id] = (video, text)
    return entries, missing_reference


def read_transcripts_csv(path: Path) -> list[tuple[str, str]]:
    """(relative path, text) rows of a ``transcripts.csv`` with columns ``path,text``."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "path" not in columns or "text" not in columns:
            raise ValueError(f"{path}: needs a header with columns `path,text`, got {columns}.")
        rows = [(row["path"].strip(), (row["text"] or "").strip()) for row in reader if (row["path"] or "").strip()]
    return rows


def _folder_entries(root: Path, has_reference: bool
                    ) -> tuple[dict[str, tuple[Path | None, str | None]], list[str]]:
    table = root / TRANSCRIPTS_CSV
    if not table.is_file():
        return {clip_id: (video if has_reference else None, None) for clip_id, video in find_videos(root).items()}, []
    entries: dict[str, tuple[Path | None, str | None]] = {}
    missing_reference = []
    for rel, text in read_transcripts_csv(table):
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts:
            raise ValueError(f"{table}: path {rel!r} must be relative to {root} and stay inside it.")
        has_ext = rel_path.suffix.lower() in VIDEO_EXTENSIONS
        clip_id = (rel_path.with_suffix("") if has_ext else rel_path).as_posix()
        if clip_id in entries:
            raise ValueError(f"{table}: clip {clip_id!r} is listed twice.")
        video = None
        if has_reference:
            video = (root / rel_path) if has_ext and (root / rel_path).is_file() else _video_at(root, clip_id)
            if video is None:
                missing_reference.append(clip_id)
        entries[clip_id] = (video, text or None)
    return entries, missing_reference


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def detect_suite_kind(directory: Path) -> str:
    """Guess the layout of a reference (or generated) folder.

    ``folder`` when it holds ``transcripts.csv``; ``lrw`` when every clip id looks like
    ``WORD/split/WORD_00001`` (LRW also ships a ``.txt`` per clip); ``lrs2`` when a clip has a ``.txt``
    beside it; else ``folder``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory}: folder not found.")
    if (directory / TRANSCRIPTS_CSV).is_file():
        return "folder"
    videos = find_videos(directory)
    if videos and all(_LRW_ID.match(clip_id) for clip_id in videos):
        return "lrw"
    if any(video.with_suffix(".txt").is_file() for video in videos.values()):
        return "lrs2"
    return "folder"


def load_suite(kind: str, generated: Path, reference: Path | None, filelist: Path | None = None, *,
               boxes_dir: Path | None = None, lrw_split: str = "test") -> Suite:
    """Pair generated clips with reference clips, transcripts and face boxes.

    Args:
        kind: one of :data:`SUITE_KINDS`, or ``auto`` (:func:`detect_suite_kind` of the reference
            folder, or of the generated folder). With a filelist, ``auto``/``lrs2``/``lrw`` read as
            ``talklip-filelist`` (the listed LRS2/LRW ids, with that layout's transcripts or labels).
        generated: folder of generated clips (same relative paths as the references).
        reference: folder of ground-truth clips, or None (pairs then come from the generated folder,
            with transcripts found beside the generated clips).
        filelist: the list for ``talklip-filelist``.
        boxes_dir: folder of per-clip ``<id>.npy`` face boxes (instead of ``.npy`` beside the references).
        lrw_split: the LRW split folder to read (``lrw`` only).
    Returns:
        the :class:`Suite`; clips that could not be paired are listed in it and logged.
    Raises:
        ValueError: unknown kind, missing folder or filelist, malformed list.
    """
    generated = Path(generated)
    reference = Path(reference) if reference is not None else None
    filelist = Path(filelist) if filelist is not None else None
    boxes_dir = Path(boxes_dir) if boxes_dir is not None else None
    for folder, what in ((generated, "generated-clips"), (reference, "reference"), (boxes_dir, "boxes")):
        if folder is not None and not folder.is_dir():
            raise ValueError(f"{folder}: {what} folder not found.")
    if kind not in SUITE_KINDS + ("auto",):
        raise ValueError(f"Unknown suite kind {kind!r}; choose from auto, {', '.join(SUITE_KINDS)}.")
    if filelist is not None and kind in ("auto", "lrs2", "lrw"):
        kind = "talklip-filelist"  # a list of LRS2/LRW ids: that layout's transcripts/labels, listed clips only
    elif kind == "auto":
        kind = detect_suite_kind(reference or generated)
    if (filelist is not None) != (kind == "talklip-filelist"):
        raise ValueError(f"Suite kind {kind!r} " + ("takes no filelist" if filelist is not None else
                         "needs a filelist (--filelist)") + f"; got filelist {filelist}.")

    root = reference if reference is not None else generated
    missing_reference: list[str] = []
    labels = None
    if kind == "lrs2":
        entries = _lrs2_entries(root)
    elif kind == "lrw":
        entries = _lrw_entries(root, lrw_split)
        labels = lrw_labels(root)
    elif kind == "talklip-filelist":
        entries, missing_reference = _filelist_entries(filelist, reference, root)
    else:
        entries, missing_reference = _folder_entries(root, has_reference=reference is not None)
    if reference is None and kind in ("lrs2", "lrw"):
        entries = {clip_id: (None, text) for clip_id, (_, text) in entries.items()}

    generated_videos = find_videos(generated)
    pairs = []
    for clip_id in sorted(entries):
        ref_video, text = entries[clip_id]
        pairs.append(ClipPair(clip_id=clip_id, generated=generated_videos.get(clip_id), reference=ref_video,
                              text=text, boxes=_boxes_for(clip_id, ref_video, boxes_dir)))
    suite = Suite(
        kind=kind,
        pairs=pairs,
        unmatched_generated=sorted(set(generated_videos) - set(entries)),
        missing_generated=[p.clip_id for p in pairs if p.generated is None],
        missing_reference=sorted(missing_reference),
        labels=labels,
    )
    logger.info("suite %s: %d clip(s) from %s", kind, len(pairs), filelist or root)
    for line in suite.report():
        logger.warning("suite %s: %s", kind, line)
    return suite
