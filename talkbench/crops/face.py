"""96×96 face-box crops: ``cv2.resize(frame[y1:y2, x1:x2], (96, 96))`` (INTER_LINEAR on uint8).

One operation, used twice by the references and once here: TalkLip's ``evaluation/visual_quality.py`` crops the
generated and the ground-truth frames with it before PSNR/SSIM, and its ``inf_test.py`` / ``train.py`` crop the
generator's input faces with it (then scale by 1/255). Boxes are validated by
:func:`talkbench.boxes.check_boxes`.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from talkbench.boxes import check_boxes
from talkbench.crops import ClipCache, CropKey, Kind, cached
from talkbench.tracks import ClipTrack

logger = logging.getLogger(__name__)

FACE_SIZE = 96


def face_crops(frames_bgr: np.ndarray, boxes: np.ndarray | None, size: int = FACE_SIZE,
               source: str = "face boxes") -> np.ndarray:
    """``cv2.resize(frame[y1:y2, x1:x2], (size, size))`` per frame, as TalkLip's scripts crop faces.

    Args:
        frames_bgr: uint8 ``N×H×W×3``.
        boxes: ``≥N×4`` (x1, y1, x2, y2) per frame (row i for frame i; extra rows are ignored, as in the
            reference script), checked by :func:`check_boxes`; or None for whole frames.
        source: what the boxes are (a file name), for the error messages.
    Returns:
        uint8 ``N×size×size×3``.
    Raises:
        ValueError: frames that are not uint8 ``N×H×W×3``; :class:`talkbench.boxes.BoxError` for boxes
            that :func:`check_boxes` refuses.
    """
    if not isinstance(frames_bgr, np.ndarray) or frames_bgr.dtype != np.uint8 or frames_bgr.ndim != 4 \
            or frames_bgr.shape[-1] != 3:
        kind = getattr(frames_bgr, "dtype", type(frames_bgr).__name__)
        shape = getattr(frames_bgr, "shape", "")
        raise ValueError(f"face crops: frames must be uint8 N×H×W×3, got {kind} {shape}.")
    if boxes is not None:
        boxes = check_boxes(boxes, len(frames_bgr), frames_bgr.shape[1:3], source)
    out = np.empty((len(frames_bgr), size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames_bgr):
        if boxes is None:
            out[i] = cv2.resize(frame, (size, size))
        else:
            x1, y1, x2, y2 = boxes[i]
            out[i] = cv2.resize(frame[y1:y2, x1:x2], (size, size))
    return out


def face96_pair(cache: ClipCache, generated: np.ndarray, reference: np.ndarray, boxes: np.ndarray | None,
                label: str = "clip") -> tuple[np.ndarray, np.ndarray]:
    """96×96 face crops of the generated and the reference frames over their common frames (the first
    ``N = min(T_gen, T_ref)``), as TalkLip's ``visual_quality.py`` compares them; cached per clip under
    ``CropKey(Kind.FACE96, side)`` for both sides.

    Frames of different sizes are cropped only without boxes (both resized whole, with a warning naming
    ``label``): one box cannot crop both.

    Args:
        generated, reference: uint8 ``T×H×W×3`` BGR frames.
        boxes: per-frame boxes ``T×4`` of the clip, or None (whole frames).
        label: the clip's id, for the warning.
    Returns:
        (generated crops, reference crops), uint8 ``N×96×96×3`` each.
    Raises:
        ValueError: no common frame, frames of different sizes with boxes, or boxes :func:`check_boxes` refuses.
    """
    key_gen, key_ref = CropKey(Kind.FACE96, "generated"), CropKey(Kind.FACE96, "reference")
    if key_gen in cache and key_ref in cache:
        return cache[key_gen], cache[key_ref]
    n = min(len(generated), len(reference))
    if n == 0:
        raise ValueError("no frames to compare")
    if generated.shape[1:] != reference.shape[1:]:
        if boxes is not None:
            raise ValueError(f"generated frames are {generated.shape[2]}×{generated.shape[1]} but reference "
                             f"frames are {reference.shape[2]}×{reference.shape[1]}: one face box cannot "
                             "crop both; write the generated clip at the reference size")
        logger.warning("%s: generated frames are %d×%d, reference frames %d×%d; both are resized whole to 96×96 "
                       "for PSNR/SSIM", label, generated.shape[2], generated.shape[1], reference.shape[2],
                       reference.shape[1])
    crops_gen = cached(cache, key_gen, lambda: face_crops(generated[:n], boxes))
    crops_ref = cached(cache, key_ref, lambda: face_crops(reference[:n], boxes))
    return crops_gen, crops_ref


def clip_face_track(cache: ClipCache) -> ClipTrack | None:
    """The clip's face track (in the coordinates of its measured frames) when the clip was cut around it
    (:meth:`talkbench.protocols.Expects.routes`), else None."""
    return cache.get(CropKey(Kind.FACE_TRACK))


def set_clip_face_track(cache: ClipCache, track: ClipTrack) -> None:
    """Record the clip's face track (once per clip, by :mod:`talkbench.measure`): every face-based crop of the clip
    (face boxes, SyncNet pipeline crops) comes from it."""
    cache[CropKey(Kind.FACE_TRACK)] = track


__all__ = ["FACE_SIZE", "clip_face_track", "face96_pair", "face_crops", "set_clip_face_track"]
