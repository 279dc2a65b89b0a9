"""``talkbench prepare``: a folder of in-the-wild videos → an LRS2-style suite the protocols accept.

LRS2's clips (what ``talklip2023``'s numbers are computed on) are 160×160 face-centred crops of a face track at
25 fps with 16 kHz mono audio; TalkLip then ran S3FD on every frame of them for its ``<id>.npy`` boxes. Videos as
generators write them (1080×1920, 30 fps, 44.1 kHz, a face somewhere in the frame) are not that, so the
protocols' fixed crops (the centre 88×88 lip-reading ROI, the 96×96 box crops) would read the wrong pixels.
This module turns each video into such a clip, documented in ``docs/prepare.md``:

1. **25 fps** as ``ffmpeg -r 25`` converts (:func:`talkbench.media.scan_video`'s timeline, the rule of
   :func:`talkbench.media.decode_clip`); **audio** to 16 kHz mono int16 by FFmpeg's resampler
   (:func:`talkbench.media.read_wav_int16`, as ``ffmpeg -ac 1 -ar 16000`` does).
2. **One face track** per clip (:mod:`talkbench.tracks`: detection on frames shrunk to ≤ 480 px, IoU tracking,
   a 13-frame running median of box centre and size).
3. **Crop rule**: per frame, the square of side ``scale × max(w, h)`` of the smoothed box, centred on the box
   centre moved down by ``shift_y × side`` (:func:`talkbench.tracks.face_square`; parts outside the frame are
   grey 110, as syncnet_python pads), resized to ``size×size`` (default 160; shrunk with INTER_AREA first).
   Defaults: ``scale`` = :data:`talkbench.tracks.SQUARE_SCALE` (2.0 × the dlib box), ``shift_y`` = 0 — the same
   square the track-routed metrics of ``evaluate`` cut, so that a prepared clip and an HD clip scored through
   its track read the same face.
4. **Boxes**: each frame's unsmoothed track box (detections, interpolated between them) mapped into its square,
   rounded and clipped: ``<id>.npy`` int64 ``T×4`` x1, y1, x2, y2 in the ``size×size`` frame (the format
   :func:`talkbench.boxes.check_boxes` accepts and TalkLip's bbx files have).
5. **Transcripts carried over**: ``transcripts.csv`` of the input folder (rows rewritten to the prepared clips'
   paths) and ``<id>.txt`` files beside the videos (copied).

Output: ``OUT_DIR/<id>.mp4`` (H.264 yuv420p, CRF 18, AAC 16 kHz; or lossless FFV1 ``.mkv``), ``<id>.npy``,
the carried-over transcripts, and ``prepare.json`` (settings + one record per clip: frames, source size and
rate, share of frames with a detection, or the error). Nothing is written outside ``OUT_DIR``; a clip that
fails is logged and listed (``PrepareResult.failed``, ``prepare.json``) and the others go on; a rerun skips the
clips already prepared with the same settings.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from talkbench import media, suites, tracks
from talkbench.boxes import check_boxes

logger = logging.getLogger(__name__)

#: Side of the prepared clips (LRS2's frames are 160×160).
SIZE = 160
#: libx264 CRF of the prepared clips (visually lossless; LRS2's own encoder settings are not published).
CRF = 18
#: The manifest written into OUT_DIR.
MANIFEST = "prepare.json"
#: Share of frames with a face detection under which a clip is flagged in the log and the manifest.
LOW_DETECTION = 0.5

#: ``progress(stage, done, total)``: stages ``faces`` (detection pass; total estimated) and ``frames`` (crops).
StageProgress = Callable[[str, int, int], None]


class PrepareError(ValueError):
    """The folders or options of ``prepare`` cannot be used; the message names the path or option and the fix."""


@dataclass(frozen=True)
class PrepareConfig:
    """How ``talkbench prepare`` makes its clips (recorded in ``prepare.json``).

    Attributes:
        size: side of the output frames, pixels.
        scale: square side / the track box's larger side.
        shift_y: the square's centre below the box centre, as a fraction of the square's side.
        track: detector, detector input size, stride and smoothing of the face track.
        s3fd_weights: S3FD checkpoint (``track.detector == "s3fd"``).
        device: where S3FD runs.
        codec: ``h264`` (``.mp4``) or ``ffv1`` (lossless ``.mkv``).
        crf: libx264 CRF (h264 only).
    """

    size: int = SIZE
    scale: float = tracks.SQUARE_SCALE
    shift_y: float = 0.0
    track: tracks.TrackSettings = field(default_factory=tracks.TrackSettings)
    s3fd_weights: Path | None = None
    device: str = "cpu"
    codec: str = "h264"
    crf: int | None = CRF

    def check(self) -> None:
        """Refuse bad settings before any video is read.

        Raises:
            PrepareError: the message names the option.
        """
        if not 16 <= int(self.size) <= 1024 or int(self.size) % 2:
            raise PrepareError(f"--size {self.size}: give an even side between 16 and 1024 pixels (LRS2: 160).")
        if not 0.5 <= float(self.scale) <= 5.0:
            raise PrepareError(f"--scale {self.scale}: the square's side as a multiple of the face box, between 0.5 "
                               f"and 5 (default {tracks.SQUARE_SCALE}).")
        if not -0.5 <= float(self.shift_y) <= 0.5:
            raise PrepareError(f"--shift-y {self.shift_y}: a fraction of the square's side between -0.5 and 0.5 "
                               "(default 0: the square is centred on the face box).")
        if self.codec not in ("h264", "ffv1"):
            raise PrepareError(f"--codec {self.codec!r}: use h264 (.mp4) or ffv1 (lossless .mkv).")
        if self.crf is not None and (self.codec != "h264" or not 0 <= int(self.crf) <= 51):
            raise PrepareError(f"--crf {self.crf}: libx264's CRF, 0..51, for --codec h264 only.")
        if self.track.detector == "s3fd" and self.s3fd_weights is None:
            raise PrepareError("--detector s3fd needs the S3FD weights (--weights s3fd=PATH); use --detector dlib "
                               "to run without them.")

    @property
    def extension(self) -> str:
        return ".mp4" if self.codec == "h264" else ".mkv"

    def to_dict(self) -> dict[str, object]:
        """The settings that change the output, as JSON-able values (``prepare.json``)."""
        out = asdict(self)
        out["track"] = self.track.to_dict()
        out["s3fd_weights"] = None if self.s3fd_weights is None else Path(self.s3fd_weights).name
        out.pop("device")
        return out


@dataclass
class PreparedClip:
    """One prepared clip: where it came from and what was made (a ``prepare.json`` record)."""

    clip_id: str
    source: str
    frames: int
    source_size: tuple[int, int]
    source_fps: float
    detected_fraction: float
    has_audio: bool


@dataclass
class PrepareResult:
    """What :func:`prepare_folder` did: prepared, skipped (already there) and failed clip ids."""

    prepared: list[PreparedClip] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    flagged: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# One clip
# ---------------------------------------------------------------------------------------------

def square_boxes(track: tracks.ClipTrack, config: PrepareConfig) -> np.ndarray:
    """Each frame's unsmoothed track box in the coordinates of its (smoothed) square: int64 ``T×4``, checked.

    Raises:
        talkbench.boxes.BoxError: a box outside the square (cannot happen for scale >= 1).
    """
    size = int(config.size)
    inside = np.stack([tracks.box_in_square(raw, box, size, config.scale, config.shift_y)
                       for raw, box in zip(track.raw, track.boxes)])
    return check_boxes(tracks.int_boxes(inside, (size, size)), len(track), (size, size), "prepared face boxes")


def _track_like(track: tracks.ClipTrack, n_frames: int, frame_size: tuple[int, int], source: Path,
                label: str) -> tracks.ClipTrack:
    """Another clip's track applied to a clip of ``n_frames`` frames of ``frame_size`` (the last box held past
    its end, extra boxes dropped).

    Raises:
        PrepareError: the two clips' frame sizes differ.
    """
    if tuple(track.frame_size) != tuple(frame_size):
        raise PrepareError(f"{label}: its frames are {frame_size[1]}×{frame_size[0]} but {source}'s are "
                           f"{track.frame_size[1]}×{track.frame_size[0]}; --track-from needs clips of the same frame "
                           "size (the same framing), or leave it out to track this clip's own face.")
    if len(track) != n_frames:
        logger.info("%s: %d frames, %s has %d; its track is %s", label, n_frames, source, len(track),
                    "cut" if len(track) > n_frames else "held on its last box")
    take = np.minimum(np.arange(n_frames), len(track) - 1)
    return tracks.ClipTrack(boxes=track.boxes[take], raw=track.raw[take], detected=track.detected[take],
                            frame_size=track.frame_size, settings=track.settings)


def prepare_clip(video: str | Path, out_video: str | Path, out_boxes: str | Path,
                 config: PrepareConfig = PrepareConfig(), *, label: str | None = None,
                 track_from: str | Path | None = None, progress: StageProgress | None = None) -> PreparedClip:
    """Make one LRS2-style clip (module docstring) from ``video``; the full-size clip is never held.

    Args:
        video: any video FFmpeg reads.
        out_video: the ``size×size`` 25 fps clip (``.mp4`` for h264, ``.mkv`` for ffv1), written atomically.
        out_boxes: the ``T×4`` boxes ``.npy``.
        label: the clip's name in messages (default: the file name).
        track_from: cut ``video`` by the face track of this other video (same frame size; e.g. the reference a
            generated clip re-voices), so that both are cut into the same squares; default: ``video``'s own track.
    Returns:
        the clip's record.
    Raises:
        talkbench.tracks.NoFaceError: no face in the clip; talkbench.media.MediaError: unreadable video;
        PrepareError: ``track_from`` has another frame size.
    """
    video, out_video, out_boxes = Path(video), Path(out_video), Path(out_boxes)
    label = label or str(video)
    header = media.probe_video(video)

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, total: progress(name, done, total))

    if track_from is None:
        track = tracks.face_track(video, config.track, s3fd_weights=config.s3fd_weights, device=config.device,
                                  label=label, progress=stage("faces"))
        indices = list(track.indices)
    else:
        source = Path(track_from)
        other = tracks.face_track(source, config.track, s3fd_weights=config.s3fd_weights, device=config.device,
                                  label=str(source), progress=stage("faces"))
        timeline = media.scan_video(video)
        indices = list(timeline.indices)
        track = _track_like(other, len(indices), timeline.frame_size, source, label)
    boxes = square_boxes(track, config)
    audio = media.read_wav_int16(video) if header.has_audio else None
    if audio is None:
        logger.warning("%s: no audio track; the prepared clip is silent (LSE and lip-sync metrics need sound)", label)
    size = int(config.size)
    out_boxes.parent.mkdir(parents=True, exist_ok=True)
    temp = out_boxes.with_name(f".{out_boxes.name}.{os.getpid()}.part.npy")
    np.save(temp, boxes)
    try:
        with media.StreamWriter(out_video, size, size, audio, fps=media.TARGET_FPS, codec=config.codec,
                          crf=config.crf) as writer:
            for t, frame in enumerate(media.iter_frames(video, indices)):
                writer.write(tracks.face_square(frame, track.boxes[t], size, config.scale, config.shift_y))
                if progress is not None and ((t + 1) % 25 == 0 or t + 1 == len(indices)):
                    progress("frames", t + 1, len(indices))
        os.replace(temp, out_boxes)
    finally:
        temp.unlink(missing_ok=True)
    height, width = track.frame_size
    return PreparedClip(clip_id=label, source=str(video), frames=len(indices), source_size=(width, height),
                        source_fps=round(float(header.source_fps), 3),
                        detected_fraction=round(track.detected_fraction, 4), has_audio=audio is not None)


# ---------------------------------------------------------------------------------------------
# A folder
# ---------------------------------------------------------------------------------------------

def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_folders(in_dir: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """``in_dir`` must be a folder; ``out_dir`` a folder (or a new path) that does not overlap it.

    Raises:
        PrepareError: the message names the folder and the fix.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise PrepareError(f"{in_dir}: input folder not found; give the folder of videos to prepare.")
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"{out_dir}: is a file; give a folder for the prepared suite.")
    real_in, real_out = in_dir.resolve(), out_dir.resolve()
    if _inside(real_out, real_in) or _inside(real_in, real_out):
        raise PrepareError(f"{out_dir}: the output folder overlaps the input folder {in_dir}; give a folder outside "
                           "it (e.g. a sibling folder), so that prepared clips are never read back as inputs.")
    return in_dir, out_dir


def _target(out_dir: Path, clip_id: str, suffix: str) -> Path:
    """``out_dir/<clip_id><suffix>``, refused if it would land outside ``out_dir`` (e.g. through a symlink)."""
    target = out_dir / (clip_id + suffix)
    real_root = out_dir.resolve()
    if not _inside(target.parent.resolve(), real_root):
        raise PrepareError(f"{target}: would be written outside {out_dir} (a symlinked folder?); remove the link.")
    return target


def _transcripts(in_dir: Path) -> dict[str, str]:
    """Clip id -> text of ``in_dir/transcripts.csv`` (empty when there is none)."""
    table = in_dir / suites.TRANSCRIPTS_CSV
    if not table.is_file():
        return {}
    rows = {}
    for rel, text in suites.read_transcripts_csv(table):
        rel_path = Path(rel)
        clip_id = (rel_path.with_suffix("") if rel_path.suffix.lower() in media.VIDEO_EXTENSIONS else rel_path)
        rows[clip_id.as_posix()] = text
    return rows


def _write_transcripts(out_dir: Path, rows: list[tuple[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "text"])
    writer.writerows(rows)
    _write_text(out_dir / suites.TRANSCRIPTS_CSV, buffer.getvalue())


def _write_text(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def _manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable (%s); every clip is prepared again", path, err)
        return {}


def prepare_folder(in_dir: str | Path, out_dir: str | Path, config: PrepareConfig = PrepareConfig(), *,
                   strict: bool = False, progress: Callable[[int, int, str], None] | None = None,
                   stage_progress: StageProgress | None = None,
                   track_from: str | Path | None = None) -> PrepareResult:
    """Prepare every video under ``in_dir`` into ``out_dir`` (same relative paths), resumably.

    Args:
        in_dir: a folder of videos (any of :data:`talkbench.media.VIDEO_EXTENSIONS`, sub-folders included), with
            ``transcripts.csv`` and/or ``<id>.txt`` files when there are transcripts.
        out_dir: the suite to write (created); must not overlap ``in_dir``.
        strict: stop at the first failing clip (re-raise) instead of recording it.
        progress: ``progress(clips_done, clips_total, clip_id)`` after each clip.
        stage_progress: passed to :func:`prepare_clip` for the clip being made.
        track_from: a folder of videos with the same ids (e.g. the references the clips re-voice): each clip is
            cut by the face track of its namesake there (:func:`prepare_clip`), so that a generated clip and its
            reference become the same squares; a clip without a namesake fails.
    Returns:
        the :class:`PrepareResult`; ``prepare.json`` in ``out_dir`` holds the same.
    Raises:
        PrepareError: bad folders or settings, no video in ``in_dir``; ValueError: an unreadable
            ``transcripts.csv``.
    """
    config.check()
    in_dir, out_dir = check_folders(in_dir, out_dir)
    sources: dict[str, Path] | None = None
    if track_from is not None:
        if not Path(track_from).is_dir():
            raise PrepareError(f"--track-from {track_from}: not a folder; give the folder of videos whose face tracks "
                               "cut these clips (e.g. the raw references).")
        check_folders(track_from, out_dir)
        sources = suites.find_videos(Path(track_from))
    videos = suites.find_videos(in_dir)
    if not videos:
        raise PrepareError(f"{in_dir}: no video files ({', '.join(media.VIDEO_EXTENSIONS)}) found; give the folder "
                           "that holds the clips.")
    texts = _transcripts(in_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = _manifest(out_dir)
    settings = {**config.to_dict(), "track_from": None if track_from is None else str(Path(track_from).resolve())}
    same_settings = old.get("settings") == settings
    if old and not same_settings:
        logger.info("%s: made with other settings; every clip is prepared again", out_dir)
    records: dict[str, dict] = dict(old.get("clips", {})) if same_settings else {}
    result = PrepareResult()
    for k, (clip_id, video) in enumerate(videos.items()):
        try:
            out_video = _target(out_dir, clip_id, config.extension)
            out_boxes = _target(out_dir, clip_id, ".npy")
            done = records.get(clip_id, {})
            if same_settings and out_video.is_file() and out_boxes.is_file() and "error" not in done:
                result.skipped.append(clip_id)
            else:
                source = None
                if sources is not None:
                    source = sources.get(clip_id)
                    if source is None:
                        raise PrepareError(f"--track-from {track_from}: no video {clip_id}.* there to take the face "
                                           "track from.")
                clip = prepare_clip(video, out_video, out_boxes, config, label=clip_id, track_from=source,
                                    progress=stage_progress)
                records[clip_id] = asdict(clip)
                result.prepared.append(clip)
                text_file = video.with_suffix(".txt")
                if text_file.is_file():
                    shutil.copyfile(text_file, _target(out_dir, clip_id, ".txt"))
            if records.get(clip_id, {}).get("detected_fraction", 1.0) < LOW_DETECTION:
                result.flagged.append(clip_id)
                logger.warning("%s: a face was detected on only %.0f%% of the frames (the boxes between are "
                               "interpolated); check the prepared clip. dlib's frontal detector misses turned or "
                               "partly hidden faces, which a larger input does not help; S3FD finds more "
                               "(--detector s3fd --weights s3fd=PATH)",
                               clip_id, 100 * records[clip_id]["detected_fraction"])
        except (ValueError, OSError, RuntimeError) as err:
            if strict:
                raise
            logger.error("%s: %s", clip_id, err)
            result.failed[clip_id] = str(err)
            records[clip_id] = {"clip_id": clip_id, "source": str(video), "error": str(err)}
        if progress is not None:
            progress(k + 1, len(videos), clip_id)
    ready = [c for c in videos if c not in result.failed]
    if texts:
        _write_transcripts(out_dir, [(c + config.extension, texts[c]) for c in ready if c in texts])
        missing = [c for c in ready if c not in texts]
        if missing:
            logger.warning("%s: %d clip(s) have no row in transcripts.csv (first: %s)", in_dir, len(missing),
                           missing[0])
    manifest = {"settings": settings, "clips": {c: records[c] for c in videos if c in records},
                "failed": sorted(result.failed)}
    _write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return result


__all__ = ["CRF", "LOW_DETECTION", "MANIFEST", "PrepareConfig", "PrepareError", "PrepareResult", "PreparedClip",
           "SIZE", "check_folders", "prepare_clip", "prepare_folder", "square_boxes"]
