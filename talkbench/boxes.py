"""The one validation of per-frame face boxes (TalkLip's bbx files, detector output, a suite's ``.npy`` files).

Used by :func:`talkbench.suites.load_boxes`, :func:`talkbench.generate.face_boxes`, training's clip loader
and :func:`talkbench.crops.face.face_crops`, so that a bad box gives the same error wherever it is met. In the
bottom layer (numpy only) so that suites, which read box files, need nothing above them.
"""

from __future__ import annotations

import numpy as np


class BoxError(ValueError):
    """Face boxes that cannot be used; the message names the source, the first bad frame and the fix."""


def _refuse(source: str, boxes: np.ndarray, bad: np.ndarray, problem: str, fix: str) -> None:
    """Raise :class:`BoxError` naming the first frame where ``bad`` (a ``T`` bool mask) holds."""
    frames = np.flatnonzero(bad)
    if len(frames):
        first, count = int(frames[0]), len(frames)
        raise BoxError(f"{source}: the face box of frame {first} is {boxes[first].tolist()} ({problem}; {count} such "
                       f"frame{'s' if count != 1 else ''}); {fix}.")


def check_boxes(boxes: np.ndarray, n_frames: int | None = None, frame_size: tuple[int, int] | None = None,
                source: str = "face boxes") -> np.ndarray:
    """Validate per-frame face boxes and clip them to the frame.

    Checks, in order: shape ``T×4`` of numbers; at least ``n_frames`` rows (the first ``n_frames`` are kept);
    finite, whole, non-negative coordinates; every box non-empty (``x2 > x1`` and ``y2 > y1``); then, given
    ``frame_size``, x clipped to ``[0, W]`` and y to ``[0, H]`` and every box still non-empty (not outside the
    frame).

    Args:
        boxes: ``T×4`` x1, y1, x2, y2 in pixels (integers, or floats holding whole numbers).
        n_frames: the clip's frame count, or None (keep every row).
        frame_size: ``(height, width)`` of the frames, or None (no clipping).
        source: what the boxes are (a file name), first word of every message.
    Returns:
        int64 ``T×4`` (``n_frames×4`` when given).
    Raises:
        BoxError: the message names ``source``, the first bad frame, how many frames are bad and the fix.
    """
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise BoxError(f"{source}: face boxes must be T×4 (x1, y1, x2, y2 per frame), got shape {boxes.shape}.")
    if not (np.issubdtype(boxes.dtype, np.integer) or np.issubdtype(boxes.dtype, np.floating)):
        raise BoxError(f"{source}: face boxes must be numbers (pixels), got dtype {boxes.dtype}.")
    if n_frames is not None:
        if len(boxes) < n_frames:
            raise BoxError(f"{source}: {len(boxes)} face boxes for {n_frames} frames; give one box per frame "
                           "(re-run the face detection).")
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
    if frame_size is not None:
        height, width = frame_size
        clipped = boxes.copy()
        clipped[:, [0, 2]] = np.minimum(boxes[:, [0, 2]], width)
        clipped[:, [1, 3]] = np.minimum(boxes[:, [1, 3]], height)
        _refuse(source, boxes, _empty(clipped), f"outside the {width}×{height} frame",
                "check that the boxes belong to this clip")
        boxes = clipped
    return boxes


def _empty(boxes: np.ndarray) -> np.ndarray:
    """``T`` bool: boxes ``T×4`` with no pixel (x2 <= x1 or y2 <= y1)."""
    return (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])


__all__ = ["BoxError", "check_boxes"]
