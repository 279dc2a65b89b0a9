"""The video inputs of the WER2 and ACC lip readers (before their normalisation, which their observers do).

* Conformer (TalkLip's ``teacher_force_wer.py``, ``LRS2Main.__getitem__``): gray (cv2 BGR2GRAY) →
  ``cv2.resize`` to 224×224 (INTER_LINEAR, whatever the source size) → centre 112×112.
  cv2 on purpose: its fixed-point gray conversion and bilinear resize are what the reference ran, bit for bit.
* MVM (``MultiDataset.build_tensor`` in test mode): the RGB frame → PIL crop box (59, 95, 195, 231)
  (136×136) → PIL bilinear resize to 112×112 → PIL ``convert('L')``. Pillow on purpose: its antialiased
  bilinear resize and integer luma are what the reference ran (torch's antialiased interpolate differs by up
  to ~1.5 grey levels). Frames smaller than the box are refused: PIL would fill the missing part with black.

Shared per clip through :func:`conformer112` and :func:`mvm_lrw112`.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from talkbench.crops import ClipCache, CropKey, Kind, Side, cached

CONFORMER_RESIZE = 224
CONFORMER_CROP = 112
#: PIL crop box (left, upper, right, lower) of MVM's LRW test loader.
LRW_CROP_BOX: tuple[int, int, int, int] = (59, 95, 195, 231)
LRW_SIZE = 112


def _check_frames(frames_bgr: np.ndarray) -> None:
    if frames_bgr.ndim != 4 or frames_bgr.shape[-1] != 3 or frames_bgr.dtype != np.uint8:
        raise ValueError(f"expected uint8 BGR frames T×H×W×3, got {frames_bgr.dtype} {frames_bgr.shape}")


def conformer_crops(frames_bgr: np.ndarray) -> np.ndarray:
    """The Conformer's crops: BGR uint8 ``T×H×W×3`` → gray, resized to 224×224, centre 112: uint8 ``T×112×112``."""
    _check_frames(frames_bgr)
    lo, hi = (CONFORMER_RESIZE - CONFORMER_CROP) // 2, (CONFORMER_RESIZE + CONFORMER_CROP) // 2
    out = np.empty((frames_bgr.shape[0], CONFORMER_CROP, CONFORMER_CROP), dtype=np.uint8)
    for t, frame in enumerate(frames_bgr):
        gray = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), (CONFORMER_RESIZE, CONFORMER_RESIZE))
        out[t] = gray[lo:hi, lo:hi]
    return out


def lrw_crops(frames_bgr: np.ndarray) -> np.ndarray:
    """MVM's LRW crops: BGR uint8 ``T×H×W×3`` → the fixed box, 112×112, gray: uint8 ``T×112×112``.

    Raises:
        ValueError: frames smaller than the crop box.
    """
    _check_frames(frames_bgr)
    height, width = frames_bgr.shape[1:3]
    if width < LRW_CROP_BOX[2] or height < LRW_CROP_BOX[3]:
        raise ValueError(f"frames are {width}×{height}; MVM's fixed LRW crop box {LRW_CROP_BOX} needs at least "
                         f"{LRW_CROP_BOX[2]}×{LRW_CROP_BOX[3]} (LRW clips are 256×256)")
    out = np.empty((frames_bgr.shape[0], LRW_SIZE, LRW_SIZE), dtype=np.uint8)
    for t, frame in enumerate(frames_bgr):
        image = Image.fromarray(np.ascontiguousarray(frame[..., ::-1])).crop(LRW_CROP_BOX)
        out[t] = np.asarray(image.resize((LRW_SIZE, LRW_SIZE), Image.BILINEAR).convert("L"))
    return out


def conformer112(cache: ClipCache, frames_bgr: np.ndarray, side: Side = "generated") -> np.ndarray:
    """:func:`conformer_crops` of a clip side, computed once per clip: uint8 ``T×112×112``."""
    return cached(cache, CropKey(Kind.CONFORMER112, side), lambda: conformer_crops(frames_bgr))


def mvm_lrw112(cache: ClipCache, frames_bgr: np.ndarray, side: Side = "generated") -> np.ndarray:
    """:func:`lrw_crops` of a clip side, computed once per clip: uint8 ``T×112×112``.

    Raises:
        ValueError: frames smaller than the crop box.
    """
    return cached(cache, CropKey(Kind.MVM_LRW112, side), lambda: lrw_crops(frames_bgr))


__all__ = ["CONFORMER_CROP", "CONFORMER_RESIZE", "LRW_CROP_BOX", "LRW_SIZE", "conformer112", "conformer_crops",
           "lrw_crops", "mvm_lrw112"]
