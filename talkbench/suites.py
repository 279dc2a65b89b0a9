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
    A ``transcripts.json`` beside it (written by ``talkbench transcribe``, :mod:`talkbench.transcribe`) says
    the texts come from speech recognition (:func:`transcripts_provenance`); the run records it.

Face boxes: ``<boxes_dir>/<id>.npy`` when a boxes folder is given, else ``<stem>.npy`` beside the
reference clip (TalkLip's ``bbx_root`` files): ``T×4`` integer ``x1, y1, x2, y2`` per frame.

Reporting: clips that cannot be paired are logged as ONE warning per kind (generated clips matching
nothing, references without a generated clip, listed clips without a reference file), each with the
count and the first five ids (:meth:`Suite.report`); the runner records them as error rows.

Text encodings: filelists, ``transcripts.csv``, ``.tsv``/``.wrd`` and LRS2 ``.txt`` files are read as
UTF-8; a UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted. Bytes that are not UTF-8 raise
:class:`ValueError` naming the file, the line and the fix (re-save as UTF-8). A bad list or
``transcripts.csv`` stops the suite (every clip depends on it); a bad LRS2 ``.txt`` only fails its clip:
the pair gets ``text=None`` and ``error="<file>: ..."`` (:attr:`ClipPair.error`), which the runner records
as that clip's error row. Of an LRS2 ``.txt`` only the first line (``Text:``) is decoded.

Paths and symlinks (decided):

- Clip ids from a filelist (or ``transcripts.csv``) must be relative and stay inside the root: an
  absolute id or an id with a ``..`` component is refused with a :class:`ValueError` naming the list and
  the line, whatever the files on disk.
- Symlinks are followed, video files and folders alike (datasets are often assembled from symlinks), with
  symlink loops skipped. A video whose real location is outside its suite folder (the resolved generated
  or reference folder) is used, but not silently: the suite logs ONE warning with the count and the
  first names, so a link that points at the wrong dataset is visible.

Settings: :func:`suite_settings` summarises what of a suite changes every clip's number (reference root,
kind, filelist and ``transcripts.csv`` hashes, LRW classes, boxes folder), cheaply (no video is read), for
the run's settings: a rerun against another reference, list or transcript table is refused instead of
mixed. Per-clip inputs are checked by the runner (:func:`talkbench.evaluate.input_signature`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, Mapping

import numpy as np

from talkbench.boxes import check_boxes
from talkbench.media import VIDEO_EXTENSIONS

logger = logging.getLogger(__name__)

SUITE_KINDS: tuple[str, ...] = ("lrs2", "lrw", "talklip-filelist", "folder")
TRANSCRIPTS_CSV = "transcripts.csv"
#: Provenance of a ``transcripts.csv`` made by speech recognition (``talkbench transcribe``), beside it.
TRANSCRIPTS_PROVENANCE = "transcripts.json"
TRANSCRIPTS_FORMAT = "talkbench-transcripts-1"
#: :func:`transcripts_label` of transcripts without ASR provenance (LRS2 ``.txt``, filelists, hand-made csv).
HUMAN_TRANSCRIPTS = "human"
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
        error: why this clip cannot be scored although it is part of the suite (e.g. its transcript file
            is not UTF-8: ``"<file>: line 1 is not valid UTF-8 ..."``), else None. The runner records a
            pair with an error as an error row without decoding it; ``text`` is then None.
    """

    clip_id: str
    generated: Path | None
    reference: Path | None
    text: str | None
    boxes: Path | None
    error: str | None = None


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
        reference: the reference folder the suite was read from, or None.
        generated: the generated-clips folder, or None.
        filelist: the list of a ``talklip-filelist`` suite, else None.
        transcripts: the ``transcripts.csv`` a ``folder`` suite read, else None.
        boxes_dir: the face-boxes folder, or None (boxes beside the reference clips).
        transcripts_source: the ASR provenance of ``transcripts`` (:func:`transcripts_provenance`), or None
            (human transcripts).
    """

    kind: str
    pairs: list[ClipPair]
    unmatched_generated: list[str] = field(default_factory=list)
    missing_generated: list[str] = field(default_factory=list)
    missing_reference: list[str] = field(default_factory=list)
    labels: list[str] | None = None
    reference: Path | None = None
    generated: Path | None = None
    filelist: Path | None = None
    transcripts: Path | None = None
    boxes_dir: Path | None = None
    transcripts_source: dict[str, Any] | None = None

    def report(self) -> list[str]:
        """Human-readable lines about clips that could not be paired (empty when all paired)."""
        lines = []
        for what, ids in (("generated clip(s) match no reference clip or transcript", self.unmatched_generated),
                          ("reference clip(s) have no generated clip", self.missing_generated),
                          ("listed clip(s) have no reference file", self.missing_reference)):
            if ids:
                lines.append(f"{len(ids)} {what} (first: {_first_names(ids)})")
        return lines


def _first_names(names: list[str]) -> str:
    more = ", …" if len(names) > _REPORT_NAMES else ""
    return ", ".join(names[:_REPORT_NAMES]) + more


# --------------------------------------------------------------------------------------------------
# Text files
# --------------------------------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"


def _decode_utf8(data: bytes, path: Path) -> str:
    """``data`` (a file's bytes, or its first lines) as text; a leading UTF-8 BOM is dropped.

    Raises:
        ValueError: bytes that are not UTF-8, naming the file, the line and column, and the fix.
    """
    offset = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[offset:].decode("utf-8")
    except UnicodeDecodeError as err:
        start = offset + err.start
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise ValueError(f"{path}: line {line} is not valid UTF-8 (byte 0x{data[start]:02x} at column {column}); "
                         "re-save the file as UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8 IN > OUT`, or "
                         "\"CSV UTF-8\" in a spreadsheet).") from None


def read_text_file(path: Path) -> str:
    """A suite text file (list, manifest, transcripts) as UTF-8 text, with or without a BOM.

    Raises:
        ValueError: not UTF-8 (the message names the file, the line and the fix).
        OSError: the file cannot be read.
    """
    return _decode_utf8(Path(path).read_bytes(), Path(path))


def _check_clip_id(clip_id: str, source: Path, line: int) -> None:
    """Refuse an id that is absolute or climbs out of the root with ``..`` (see the module docstring)."""
    parts = re.split(r"[/\\]", clip_id)
    if clip_id.startswith(("/", "\\")) or PureWindowsPath(clip_id).drive or ".." in parts:
        raise ValueError(f"{source}: line {line}: clip id {clip_id!r} must be a path relative to the suite "
                         "root without `..` (ids are matched inside --reference and the generated folder); "
                         "fix the list.")


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

def find_videos(root: Path) -> dict[str, Path]:
    """Video files under ``root`` by clip id (relative POSIX path without extension).

    Hidden files and folders (``.name``, e.g. unfinished ``write_clip`` temporaries) are skipped.
    Symlinked folders are followed (a link back to one of its own ancestors is skipped, with a warning).
    When one id exists with several extensions, the first of :data:`VIDEO_EXTENSIONS` wins (one warning
    per folder with the count and the first ids).
    """
    root = Path(root)
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
    found: dict[str, Path] = {}
    ambiguous: list[str] = []
    ancestors: dict[str, tuple[str, ...]] = {str(root): (os.path.realpath(root),)}
    for folder, dirs, files in os.walk(root, followlinks=True):
        chain = ancestors.pop(folder, (os.path.realpath(folder),))
        kept = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            sub = os.path.join(folder, name)
            real = os.path.realpath(sub)
            if real in chain:
                logger.warning("%s: symlink loop (it points to %s, one of its own parent folders); not followed",
                               sub, real)
                continue
            ancestors[sub] = chain + (real,)
            kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            ext = os.path.splitext(name)[1].lower()
            if name.startswith(".") or ext not in rank:
                continue
            path = Path(folder) / name
            clip_id = path.relative_to(root).with_suffix("").as_posix()
            if clip_id in found:
                if clip_id not in ambiguous:
                    ambiguous.append(clip_id)
                path = min(found[clip_id], path, key=lambda p: rank[p.suffix.lower()])
            found[clip_id] = path
    if ambiguous:
        logger.warning("%s: %d clip(s) have several video files for one clip (first: %s); using the first of %s",
                       root, len(ambiguous), _first_names(ambiguous), ", ".join(VIDEO_EXTENSIONS))
    return found


def read_lrs2_text(path: Path) -> str:
    """Words of an LRS2 transcript file: its first line without the ``Text:`` prefix, stripped.

    A first line without the prefix is taken whole (the sample clips' ``.txt`` hold bare words).
    TalkLip's Conformer script takes ``line.strip()[7:]``, which is the same for LRS2's
    ``Text:  WORDS`` (two spaces). Only the first line is decoded (UTF-8, BOM allowed).

    Raises:
        ValueError: the first line is not UTF-8 (names the file, the line and the fix).
    """
    with open(path, "rb") as handle:
        first = _decode_utf8(handle.readline(), Path(path)).strip()
    if first.startswith(LRS2_TEXT_PREFIX):
        first = first[len(LRS2_TEXT_PREFIX):].strip()
    return first


def load_boxes(path: Path, n_frames: int | None = None) -> np.ndarray:
    """Per-frame face boxes from a ``.npy`` file, as int64 ``T×4`` (x1, y1, x2, y2), checked by
    :func:`talkbench.boxes.check_boxes` (the first ``n_frames`` rows when given; clipped to the frame
    when the crops are cut).

    Raises:
        ValueError: an unreadable file; :class:`talkbench.boxes.BoxError` for boxes it refuses.
    """
    try:
        boxes = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read face boxes ({err}). Expected a .npy array T×4.") from err
    return check_boxes(boxes, n_frames, None, str(path))


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
# Layouts: {clip_id: (reference clip or None, text or None, clip error or None)}; list-based layouts also
# return the missing references
# --------------------------------------------------------------------------------------------------

Entry = tuple[Path | None, str | None, str | None]  # (reference clip, text, clip error)


def _clip_text(text_file: Path) -> tuple[str | None, str | None]:
    """(text, None) from an LRS2 ``.txt``; (None, error) when it cannot be read; (None, None) without one."""
    if not text_file.is_file():
        return None, None
    try:
        return read_lrs2_text(text_file), None
    except ValueError as err:
        return None, str(err)
    except OSError as err:
        return None, f"{text_file}: cannot read the transcript ({err.strerror or err}); check the file."


def _lrs2_entries(root: Path) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for clip_id, video in find_videos(root).items():
        entries[clip_id] = (video, *_clip_text(video.with_suffix(".txt")))
    return entries


def _lrw_entries(root: Path, split: str) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for clip_id, video in find_videos(root).items():
        match = _LRW_ID.match(clip_id)
        if match and match.group("split") == split:
            entries[clip_id] = (video, match.group("word"), None)
    return entries


def lrw_labels(root: Path) -> list[str]:
    """LRW classes: the folder names directly under ``root``, sorted (class index = position)."""
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def read_filelist(filelist: Path) -> list[tuple[str, str | None]]:
    """(clip id, transcript or None) rows of a TalkLip/LRS2/LRW list or an AV-HuBERT ``.tsv``/``.wrd`` pair.

    Files are UTF-8 (a BOM is allowed). Ids must be relative paths without ``..``.

    Raises:
        ValueError: the file or its ``.tsv``/``.wrd`` partner is missing, or their row counts differ, a file
            is not UTF-8, or an id is absolute or contains ``..`` (the message names the file and line).
    """
    filelist = Path(filelist)
    if not filelist.is_file():
        raise ValueError(f"{filelist}: filelist not found (--filelist).")
    suffix = filelist.suffix.lower()
    if suffix not in (".tsv", ".wrd"):
        ids = []
        for number, line in enumerate(read_text_file(filelist).splitlines(), start=1):
            if line.strip():
                ids.append(line.split()[0])  # TalkLip: line.strip().split(' ')[0]; LRS2 lines end with a tag
                _check_clip_id(ids[-1], filelist, number)
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
    rows = read_text_file(tsv).splitlines()[1:]  # first line: the root folder
    ids = []
    for number, row in enumerate(rows, start=2):
        if row.strip():
            ids.append(row.split("\t")[0].strip())
            _check_clip_id(ids[-1], tsv, number)
    wrd = next((p for p in partners if p.is_file()), None)
    if wrd is None:
        logger.warning("%s: no transcripts (%s not found); text comes from the reference .txt files",
                       tsv, " or ".join(p.name for p in partners))
        return [(clip_id, None) for clip_id in ids]
    texts = [line.strip() for line in read_text_file(wrd).splitlines()]
    while texts and not texts[-1]:
        texts.pop()
    if len(texts) != len(ids):
        raise ValueError(f"{wrd}: {len(texts)} transcripts for {len(ids)} clips in {tsv}; "
                         "the .wrd must have one line per .tsv row (after the root line).")
    return list(zip(ids, texts))


def _filelist_entries(filelist: Path, reference: Path | None, text_root: Path
                      ) -> tuple[dict[str, Entry], list[str]]:
    entries: dict[str, Entry] = {}
    missing_reference = []
    for clip_id, text in read_filelist(filelist):
        if clip_id in entries:
            raise ValueError(f"{filelist}: clip {clip_id!r} is listed twice.")
        video = _video_at(reference, clip_id) if reference is not None else None
        if reference is not None and video is None:
            missing_reference.append(clip_id)
        error = None
        if text is None:
            text, error = _clip_text(text_root / (clip_id + ".txt"))
        if text is None and error is None:
            text = _lrw_word(clip_id)
        entries[clip_id] = (video, text, error)
    return entries, missing_reference


def read_transcripts_csv(path: Path) -> list[tuple[str, str]]:
    """(relative path, text) rows of a ``transcripts.csv`` with columns ``path,text`` (UTF-8, BOM allowed).

    Raises:
        ValueError: no ``path,text`` header, or bytes that are not UTF-8 (names the file, line and fix).
    """
    path = Path(path)
    reader = csv.DictReader(io.StringIO(read_text_file(path), newline=""))
    columns = reader.fieldnames or []
    if "path" not in columns or "text" not in columns:
        raise ValueError(f"{path}: needs a header with columns `path,text`, got {columns}.")
    return [(row["path"].strip(), (row["text"] or "").strip()) for row in reader if (row["path"] or "").strip()]


def _folder_entries(root: Path, has_reference: bool) -> tuple[dict[str, Entry], list[str]]:
    table = root / TRANSCRIPTS_CSV
    if not table.is_file():
        return {clip_id: (video if has_reference else None, None, None)
                for clip_id, video in find_videos(root).items()}, []
    entries: dict[str, Entry] = {}
    missing_reference = []
    for rel, text in read_transcripts_csv(table):
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in re.split(r"[/\\]", rel) or PureWindowsPath(rel).drive:
            raise ValueError(f"{table}: path {rel!r} must be relative to {root} and stay inside it (no `..`); "
                             "fix the row.")
        has_ext = rel_path.suffix.lower() in VIDEO_EXTENSIONS
        clip_id = (rel_path.with_suffix("") if has_ext else rel_path).as_posix()
        if clip_id in entries:
            raise ValueError(f"{table}: clip {clip_id!r} is listed twice.")
        video = None
        if has_reference:
            video = (root / rel_path) if has_ext and (root / rel_path).is_file() else _video_at(root, clip_id)
            if video is None:
                missing_reference.append(clip_id)
        entries[clip_id] = (video, text or None, None)
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
    transcripts = None
    if kind == "lrs2":
        entries = _lrs2_entries(root)
    elif kind == "lrw":
        entries = _lrw_entries(root, lrw_split)
        labels = lrw_labels(root)
    elif kind == "talklip-filelist":
        entries, missing_reference = _filelist_entries(filelist, reference, root)
    else:
        entries, missing_reference = _folder_entries(root, has_reference=reference is not None)
        transcripts = root / TRANSCRIPTS_CSV if (root / TRANSCRIPTS_CSV).is_file() else None
    if reference is None and kind in ("lrs2", "lrw"):
        entries = {clip_id: (None, text, error) for clip_id, (_, text, error) in entries.items()}

    generated_videos = find_videos(generated)
    pairs = []
    for clip_id in sorted(entries):
        ref_video, text, error = entries[clip_id]
        pairs.append(ClipPair(clip_id=clip_id, generated=generated_videos.get(clip_id), reference=ref_video,
                              text=text, boxes=_boxes_for(clip_id, ref_video, boxes_dir), error=error))
    suite = Suite(
        kind=kind,
        pairs=pairs,
        unmatched_generated=sorted(set(generated_videos) - set(entries)),
        missing_generated=[p.clip_id for p in pairs if p.generated is None],
        missing_reference=sorted(missing_reference),
        labels=labels,
        reference=reference,
        generated=generated,
        filelist=filelist,
        transcripts=transcripts,
        boxes_dir=boxes_dir,
        transcripts_source=transcripts_provenance(transcripts) if transcripts is not None else None,
    )
    logger.info("suite %s: %d clip(s) from %s", kind, len(pairs), filelist or root)
    for line in suite.report():
        logger.warning("suite %s: %s", kind, line)
    unreadable = [p.clip_id for p in pairs if p.error is not None]
    if unreadable:
        logger.warning("suite %s: %d clip(s) cannot be scored, they become error rows (first: %s); first error: %s",
                       kind, len(unreadable), _first_names(unreadable),
                       next(p.error for p in pairs if p.error is not None))
    outside = _outside_links(reference, [(p.clip_id, p.reference) for p in pairs], "reference") \
        + _outside_links(generated, sorted(generated_videos.items()), "generated")
    if outside:
        logger.warning("suite %s: %d video file(s) are symlinks (or inside symlinked folders) that resolve outside "
                       "their suite folder (first: %s); they are followed. Check that the links point at the "
                       "intended dataset.", kind, len(outside), _first_names(outside))
    return suite


def _outside_links(root: Path | None, clips: list[tuple[str, Path | None]], side: str) -> list[str]:
    """``id (side)`` of the clip files whose real location is outside the real ``root``."""
    if root is None:
        return []
    real_root = os.path.realpath(root)
    real_dirs: dict[str, str] = {}

    def real(path: Path) -> str:  # realpath, with one realpath per folder instead of one per file
        text = os.fspath(path)
        if os.path.islink(text):
            return os.path.realpath(text)
        folder, name = os.path.split(text)
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        return os.path.join(real_dirs[folder], name)

    return [f"{clip_id} ({side})" for clip_id, path in clips
            if path is not None and not _inside(real(path), real_root)]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """sha256 of a text's UTF-8 bytes (hex)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def transcripts_provenance(table: Path) -> dict[str, Any] | None:
    """The ASR provenance of a ``transcripts.csv``: its ``transcripts.json`` sidecar, or None (human transcripts).

    A table edited after ``talkbench transcribe`` wrote it (its sha256 differs from the recorded one) still counts
    as ASR transcripts (a warning says so, and ``edited`` is set): corrected ASR output is not a human transcript
    of the same standing.

    Raises:
        ValueError: the sidecar is not valid JSON or not a talkbench transcripts provenance (names the file).
    """
    sidecar = Path(table).with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(read_text_file(sidecar))
    except json.JSONDecodeError as err:
        raise ValueError(f"{sidecar}: not valid JSON ({err}); delete it (human transcripts) or rerun "
                         "`talkbench transcribe`.") from None
    if not isinstance(data, dict) or data.get("format") != TRANSCRIPTS_FORMAT or not data.get("model"):
        raise ValueError(f"{sidecar}: not a talkbench transcripts provenance (format {TRANSCRIPTS_FORMAT!r} with a "
                         "`model`); delete it (human transcripts) or rerun `talkbench transcribe`.")
    if data.get("csv_sha256") != _sha256_file(Path(table)):
        logger.warning("%s was edited after `talkbench transcribe` wrote it; its rows still count as ASR transcripts "
                       "(%s).", table, data["model"])
        data = {**data, "edited": True}
    return data


def transcripts_label(provenance: Mapping[str, Any] | None) -> str:
    """``human``, or ``asr:<card>`` (``asr:whisper-small.en``) for transcripts made by speech recognition."""
    if not provenance:
        return HUMAN_TRANSCRIPTS
    return f"asr:{provenance.get('model', '?')}" + ("+edited" if provenance.get("edited") else "")


def suite_settings(suite: Suite) -> dict[str, Any]:
    """The settings of a suite that change every clip's number, as a JSON-able dict for a run's settings.

    Two loads of the same suite give equal dicts; another ``--reference`` folder, suite kind, filelist (path
    or content), ``transcripts.csv`` content, LRW class list or boxes folder gives a different one. Cheap: the
    list and ``transcripts.csv`` are hashed, no video is read. Per-clip inputs (a clip's transcript, face
    boxes, reference file) are not part of it: the runner keeps a signature per clip and recomputes the clips
    whose inputs changed, so that adding clips or fixing one transcript does not block a resume. Paths are
    resolved, so the same dataset under another mount point gives other settings.

    Returns:
        ``{"kind", "reference", "filelist", "transcripts", "labels_sha256", "boxes_dir"}``; ``filelist`` and
        ``transcripts`` are ``{"path", "sha256"}`` or None.
    """
    def file_entry(path: Path | None) -> dict[str, str] | None:
        return None if path is None else {"path": str(Path(path).resolve()), "sha256": _sha256_file(Path(path))}

    labels = None
    if suite.labels is not None:
        labels = hashlib.sha256("\n".join(suite.labels).encode("utf-8")).hexdigest()
    return {
        "kind": suite.kind,
        "reference": str(Path(suite.reference).resolve()) if suite.reference is not None else None,
        "filelist": file_entry(suite.filelist),
        "transcripts": file_entry(suite.transcripts),
        "labels_sha256": labels,
        "boxes_dir": str(Path(suite.boxes_dir).resolve()) if suite.boxes_dir is not None else None,
    }
