"""The one validation of per-frame face boxes (TalkLip's bbx files, detector output, a suite's ``.npy`` files).

Used by :func:`talkbench.suites.load_boxes`, :func:`talkbench.generate.face_boxes`, training's clip loader
and :func:`talkbench.crops.face.face_crops`, so that a bad box gives the same error wherever it is met. In the
bottom layer (numpy only) so that suites, which read box files, need nothing above them.

Box count: a clip may be up to :data:`MAX_REUSED_BOXES` frames longer than a box file read with
``reuse_last=MAX_REUSED_BOXES`` (what :mod:`talkbench.measure` does with a suite's ``<id>.npy``): its last frames
reuse the last box, with one warning. Without ``reuse_last`` (the default) every frame needs its own box.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: How many last frames of a clip may reuse the last box of a box file that is that much shorter (when the caller
#: asks for it, ``check_boxes(..., reuse_last=MAX_REUSED_BOXES)``): 2 frames, 80 ms at 25 fps. A re-encode or a
#: frame-rate conversion rounds the last frame and a generator that writes one frame per 40 ms of audio (TalkLip's
#: ``inf_demo``, ``generate --align audio``) follows the audio track, which runs past the last frame: on the four
#: sample clips (talkbench/data/demo, tests/fixtures/media) AV-HuBERT's 25-Hz audio features give 74, 83, 24 and 74
#: steps for 73, 82, 23 and 73 frames, one more each. The reused box is the one of the nearest frame, 40 or 80 ms
#: earlier; more than two missing frames is rather another cut of the clip, which stays an error.
MAX_REUSED_BOXES = 2


class BoxError(ValueError):
    """Face boxes that cannot be used; the message names the source, the first bad frame and the fix."""


class BoxCountError(BoxError):
    """Fewer face boxes than frames (more missing than the caller lets reuse the last box).

    Attributes:
        n_boxes: rows in the box array.
        n_frames: frames of the clip.
    """

    def __init__(self, message: str, n_boxes: int, n_frames: int) -> None:
        super().__init__(message)
        self.n_boxes = n_boxes
        self.n_frames = n_frames


def _refuse(source: str, boxes: np.ndarray, bad: np.ndarray, problem: str, fix: str) -> None:
    """Raise :class:`BoxError` naming the first frame where ``bad`` (a ``T`` bool mask) holds."""
    frames = np.flatnonzero(bad)
    if len(frames):
        first, count = int(frames[0]), len(frames)
        raise BoxError(f"{source}: the face box of frame {first} is {boxes[first].tolist()} ({problem}; {count} such "
                       f"frame{'s' if count != 1 else ''}); {fix}.")


def check_boxes(boxes: np.ndarray, n_frames: int | None = None, frame_size: tuple[int, int] | None = None,
                source: str = "face boxes", *, reuse_last: int = 0) -> np.ndarray:
    """Validate per-frame face boxes, match them to the clip's frames and clip them to the frame.

    Checks, in order: shape ``T×4`` of numbers; at least ``n_frames - reuse_last`` rows (and at least one when
    ``n_frames`` > 0; the first ``n_frames`` are kept); finite, whole, non-negative coordinates; every box non-empty
    (``x2 > x1`` and ``y2 > y1``); then the frames past the last row, if any, take the last box (one warning naming
    ``source``, the counts and the fix); then, given ``frame_size``, x clipped to ``[0, W]`` and y to ``[0, H]`` and
    every box still non-empty (not outside the frame).

    Args:
        boxes: ``T×4`` x1, y1, x2, y2 in pixels (integers, or floats holding whole numbers).
        n_frames: the clip's frame count, or None (keep every row).
        frame_size: ``(height, width)`` of the frames, or None (no clipping).
        source: what the boxes are (a file name), first word of every message.
        reuse_last: how many last frames may have no row of their own and reuse the last box (0: none;
            :data:`MAX_REUSED_BOXES` for a box file matched to a decoded clip).
    Returns:
        int64 ``T×4`` (``n_frames×4`` when given).
    Raises:
        BoxCountError: fewer rows than that (the message names ``source``, both counts, the tolerance and the fix).
        BoxError: the message names ``source``, the first bad frame, how many frames are bad and the fix.
    """
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise BoxError(f"{source}: face boxes must be T×4 (x1, y1, x2, y2 per frame), got shape {boxes.shape}.")
    if not (np.issubdtype(boxes.dtype, np.integer) or np.issubdtype(boxes.dtype, np.floating)):
        raise BoxError(f"{source}: face boxes must be numbers (pixels), got dtype {boxes.dtype}.")
    if n_frames is not None:
        _check_count(source, len(boxes), n_frames, reuse_last)
        boxes = boxes[:n_frames]
    _refuse(source, boxes, ~np.isfinite(boxes).all(axis=1), "NaN or infinite coordinates",
            "give pixel coordinates for every frame (re-run the face detector or fill the gaps from neighbouring "
            "frames)")
    _refuse(source, boxes, (boxes != np.round(boxes)).any(axis=1), "not whole pixel coordinates",
            "face boxes are pixel indices, as TalkLip's bbx files (integers); round them")
    _refuse(source, boxes, (boxes < 0).any(axis=1), "negative coordinates",
            "clip them at 0 as TalkLip's bbx_extract does")
    boxes = boxes.astype(np.int64)
    _refuse(source, boxes, _empty(boxes), "empty: x2 <= x1 or y2 <= y1", "give x1, y1, x2, y2 with x1 < x2 and y1 < y2")
    if n_frames is not None and len(boxes) < n_frames:
        boxes = _reuse_last_box(boxes, n_frames, source, reuse_last)
    if frame_size is not None:
        height, width = frame_size
        clipped = boxes.copy()
        clipped[:, [0, 2]] = np.minimum(boxes[:, [0, 2]], width)
        clipped[:, [1, 3]] = np.minimum(boxes[:, [1, 3]], height)
        _refuse(source, boxes, _empty(clipped), f"outside the {width}×{height} frame",
                "check that the boxes belong to this clip")
        boxes = clipped
    return boxes


def _check_count(source: str, n_boxes: int, n_frames: int, reuse_last: int) -> None:
    """Raise :class:`BoxCountError` when more than ``reuse_last`` of ``n_frames`` frames (or any, without a box at
    all) have no box of their own."""
    missing = n_frames - n_boxes
    if missing <= 0 or (missing <= reuse_last and n_boxes > 0):
        return
    fix = "give one box per frame (re-run the face detection)"
    if reuse_last > 0 and n_boxes > 0:
        fix = (f"give one box per frame (re-run the face detection), or cut the clip to its {n_boxes} boxes (ffmpeg -i "
               f"CLIP -frames:v {n_boxes} OUT.mp4); only up to {reuse_last} last frames may reuse the last box, "
               f"{missing} have none")
    raise BoxCountError(f"{source}: {n_boxes} face boxes for {n_frames} frames; {fix}.", n_boxes, n_frames)


def _reuse_last_box(boxes: np.ndarray, n_frames: int, source: str, reuse_last: int) -> np.ndarray:
    """``boxes`` (checked, ``T×4``) with the last box repeated up to ``n_frames`` rows; logs one warning."""
    missing = n_frames - len(boxes)
    last = "frame reuses" if missing == 1 else "frames reuse"
    logger.warning("%s: %d face boxes for %d frames; the last %d %s the last box (up to %d last frames may: a "
                   "re-encode's drift). For one box per frame, cut the clip to %d frames (ffmpeg -i CLIP -frames:v %d "
                   "OUT.mp4) or give a box for every frame.", source, len(boxes), n_frames, missing, last, reuse_last,
                   len(boxes), len(boxes))
    return np.concatenate([boxes, np.repeat(boxes[-1:], missing, axis=0)])


def _empty(boxes: np.ndarray) -> np.ndarray:
    """``T`` bool: boxes ``T×4`` with no pixel (x2 <= x1 or y2 <= y1)."""
    return (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])


__all__ = ["MAX_REUSED_BOXES", "BoxCountError", "BoxError", "check_boxes"]
