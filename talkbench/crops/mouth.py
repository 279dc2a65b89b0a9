"""Video inputs of the lip readers: gray 88×88 mouth crops, uint8, by recipe (a protocol names its recipe).

Shared per clip through :func:`mouth88` (key ``CropKey(Kind.MOUTH88, side, recipe)``) and :func:`landmarks`
(key ``CropKey(Kind.LANDMARKS, side)``); the recipes are ``Kind.MOUTH88.recipes``.

* ``centre88`` (protocol ``talklip2023``, the TalkLip paper's WER1; also ``mini``): the generated 160×160
  frames go to av_hubert's data loader as they are — ``cv2.cvtColor(BGR2GRAY)``, then the eval transform's
  centre crop 88 of the **full frame**.
* ``landmark-aligned`` (protocol ``avhubert-official``: av_hubert's LRS3 preparation, ``align_mouth.py``): dlib 68-point
  landmarks, linear interpolation over frames without a face (ends copied), landmarks averaged over a
  12-frame forward window, a similarity transform (Umeyama) from the smoothed points 33/36/39/42/45 onto
  the mean face, the frame warped to 256×256 (scikit-image 0.17 ``warp`` semantics: bilinear, zero
  outside, clipped to the frame's value range, ×255 truncated to uint8), a 96×96 patch centred on the
  transformed mouth points 48–67, then gray and the centre 88. The reference also round-trips the 96×96
  patches through an H.264 file (ffmpeg ``-crf 20``) before reading them back; that lossy step is not
  reproduced (``h264_roundtrip`` below does an equivalent one with our writer when asked).

Normalisation ((x/255 − 0.421)/0.165) happens in :func:`talkbench.nets.avhubert.video_input`.
All frames are uint8 BGR ``T×H×W×3`` (:class:`talkbench.media.Clip`).
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from talkbench import media
from talkbench.crops import ClipCache, CropKey, Kind, Side, cached
from talkbench.faces import dlib_landmarks

logger = logging.getLogger(__name__)

CROP = 88
MEAN_FACE_PATH = Path(__file__).resolve().parent.parent / "data" / "20words_mean_face.npy"
STABLE_POINTS: tuple[int, ...] = (33, 36, 39, 42, 45)   # nose tip, eye corners
MOUTH_POINTS = slice(48, 68)
ALIGNED_SIZE = (256, 256)
ROI_SIZE = 96
WINDOW_MARGIN = 12

# cv2.COLOR_BGR2GRAY for uint8 (OpenCV ≥ 3.4 fixed point): 0.114/0.587/0.299 scaled by 2^15, rounded
_GRAY_B, _GRAY_G, _GRAY_R, _GRAY_SHIFT = 3735, 19235, 9798, 15


class MouthRoiError(ValueError):
    """No usable mouth crop (e.g. the face is too close to the frame edge); the message says why."""


# ----------------------------------------------------------------------------------------------------
# Gray conversion and centre crop (both protocols)
# ----------------------------------------------------------------------------------------------------

def bgr_to_gray(frames_bgr: np.ndarray) -> np.ndarray:
    """``cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)`` bit for bit, without OpenCV: ``[..., 3]`` uint8 → ``[...]`` uint8."""
    frames = np.asarray(frames_bgr)
    if frames.dtype != np.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 BGR frames [..., 3], got {frames.dtype} {frames.shape}.")
    b = frames[..., 0].astype(np.int32)
    g = frames[..., 1].astype(np.int32)
    r = frames[..., 2].astype(np.int32)
    gray = (b * _GRAY_B + g * _GRAY_G + r * _GRAY_R + (1 << (_GRAY_SHIFT - 1))) >> _GRAY_SHIFT
    return gray.astype(np.uint8)


def center_crop(frames: np.ndarray, size: int = CROP) -> np.ndarray:
    """av_hubert ``utils.CenterCrop``: offset ``int(round(w - size) / 2.)`` per axis (odd margins round down).

    Args:
        frames: ``T×H×W`` (or ``T×H×W×C``).
    Raises:
        ValueError: frames smaller than ``size``.
    """
    height, width = frames.shape[1], frames.shape[2]
    if height < size or width < size:
        raise ValueError(f"frames of {width}×{height} are smaller than the {size}×{size} crop.")
    top = int(round(height - size) / 2.0)
    left = int(round(width - size) / 2.0)
    return frames[:, top: top + size, left: left + size]


def centre88_crops(frames_bgr: np.ndarray) -> np.ndarray:
    """Recipe ``centre88``: gray, centre 88×88 of the full frame. ``T×H×W×3`` → uint8 ``T×88×88``."""
    return np.ascontiguousarray(center_crop(bgr_to_gray(frames_bgr), CROP))


# ----------------------------------------------------------------------------------------------------
# avhubert-official: landmarks → aligned 96×96 mouth patches
# ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def mean_face() -> np.ndarray:
    """The 68×2 mean face (x, y) in the 256×256 reference frame (see talkbench/data/PROVENANCE.md)."""
    return np.load(MEAN_FACE_PATH)


def interpolate_landmarks(landmarks: Sequence[np.ndarray | None]) -> list[np.ndarray] | None:
    """Fill frames without landmarks: linear interpolation between detected frames, the first/last detection
    copied to the ends (align_mouth.py ``landmarks_interpolate``).

    Returns:
        a list of float64 ``68×2`` arrays, or None when no frame has landmarks.
    """
    filled: list[np.ndarray | None] = [None if lm is None else np.asarray(lm) for lm in landmarks]
    valid = [i for i, lm in enumerate(filled) if lm is not None]
    if not valid:
        return None
    for start, stop in zip(valid[:-1], valid[1:]):
        if stop - start > 1:
            first, last = filled[start], filled[stop]
            delta = last - first
            for k in range(1, stop - start):
                filled[start + k] = first + k / float(stop - start) * delta
    for i in range(valid[0]):
        filled[i] = filled[valid[0]]
    for i in range(valid[-1] + 1, len(filled)):
        filled[i] = filled[valid[-1]]
    return [np.asarray(lm, dtype=np.float64) for lm in filled]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points onto ``dst``
    (Umeyama 1991, as ``skimage.transform.estimate_transform('similarity', src, dst)``).

    Args:
        src, dst: ``N×2`` (x, y) points.
    Returns:
        3×3 homogeneous matrix M with ``dst ≈ M · [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / num
    signs = np.ones((dim,), dtype=np.double)
    if np.linalg.det(cov) < 0:
        signs[dim - 1] = -1
    matrix = np.eye(dim + 1, dtype=np.double)
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        raise MouthRoiError("degenerate landmarks: the alignment points coincide.")
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            matrix[:dim, :dim] = u @ vt
        else:
            flip = signs.copy()
            flip[dim - 1] = -1
            matrix[:dim, :dim] = u @ np.diag(flip) @ vt
    else:
        matrix[:dim, :dim] = u @ np.diag(signs) @ vt
    scale = 1.0 / src_c.var(axis=0).sum() * (s @ signs)
    matrix[:dim, dim] = dst_mean - scale * (matrix[:dim, :dim] @ src_mean.T)
    matrix[:dim, :dim] *= scale
    return matrix


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``N×2`` points through a 3×3 homogeneous matrix (skimage ``_apply_mat``)."""
    points = np.asarray(points, dtype=np.float64)
    homog = np.column_stack([points, np.ones(len(points))]) @ matrix.T
    homog[homog[:, 2] == 0, 2] = np.finfo(float).eps
    return homog[:, :2] / homog[:, 2:3]


def warp_image(image: np.ndarray, matrix: np.ndarray, output_shape: tuple[int, int] = ALIGNED_SIZE) -> np.ndarray:
    """``skimage.transform.warp(image, inverse_map=tform.inverse, output_shape)`` of scikit-image 0.17, then
    ``×255`` and ``astype(uint8)``, as align_mouth.py does.

    Output pixel (col x, row y) samples the input at ``inv(matrix)·[x, y, 1]`` bilinearly; samples outside
    the frame read 0; the result is clipped to the input's [min, max] except where it is exactly 0
    (0.17's ``_clip_warp_output`` with cval 0 outside the range).

    Args:
        image: uint8 ``H×W`` or ``H×W×C``.
        matrix: 3×3 forward transform (input → output coordinates).
    Returns:
        uint8 ``rows×cols`` (× C).
    """
    img = np.multiply(np.asarray(image), 1.0 / 255, dtype=np.float64)   # img_as_float
    inv = np.linalg.inv(matrix)
    rows, cols = output_shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    xx = xx.astype(np.float64)
    yy = yy.astype(np.float64)
    if inv[2, 0] == 0 and inv[2, 1] == 0 and inv[2, 2] == 1:
        if inv[0, 1] == 0 and inv[1, 0] == 0:
            c = inv[0, 0] * xx + inv[0, 2]
            r = inv[1, 1] * yy + inv[1, 2]
        else:
            c = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
            r = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    else:
        z = inv[2, 0] * xx + inv[2, 1] * yy + inv[2, 2]
        c = (inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]) / z
        r = (inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]) / z
    out = _bilinear(img if img.ndim == 3 else img[..., None], r, c)
    lo, hi = img.min(), img.max()
    if not lo <= 0.0 <= hi:
        keep_zero = out == 0.0
        np.clip(out, lo, hi, out=out)
        out[keep_zero] = 0.0
    else:
        np.clip(out, lo, hi, out=out)
    out = (out * 255).astype(np.uint8)
    return out if img.ndim == 3 else out[..., 0]


def _bilinear(img: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """skimage's bilinear_interpolation (mode constant, cval 0) at float positions; ``img`` ``H×W×C`` float64."""
    height, width = img.shape[:2]
    r0 = np.floor(r).astype(np.int64)
    c0 = np.floor(c).astype(np.int64)
    r1 = np.ceil(r).astype(np.int64)
    c1 = np.ceil(c).astype(np.int64)
    dr = (r - r0)[..., None]
    dc = (c - c0)[..., None]

    def pixel(rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
        inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        values = img[np.clip(rr, 0, height - 1), np.clip(cc, 0, width - 1)]
        return np.where(inside[..., None], values, 0.0)

    top = (1 - dc) * pixel(r0, c0) + dc * pixel(r0, c1)
    bottom = (1 - dc) * pixel(r1, c0) + dc * pixel(r1, c1)
    return (1 - dr) * top + dr * bottom


def cut_patch(image: np.ndarray, points: np.ndarray, half_height: int, half_width: int) -> np.ndarray:
    """The ``2·half_height × 2·half_width`` patch centred on the mean of ``points`` (align_mouth.py ``cut_patch``).

    A centre closer than half a patch to an edge is pushed inside the image. (The reference then checks for
    "too much bias", but after the push, so those checks can never fire; they are left out.) Centre
    coordinates are rounded half to even, as Python's ``round``.
    """
    center_x, center_y = np.mean(points, axis=0)
    rows, cols = image.shape[:2]
    center_y = max(center_y, half_height)
    center_x = max(center_x, half_width)
    if center_y + half_height > rows:
        center_y = rows - half_height
    if center_x + half_width > cols:
        center_x = cols - half_width
    top = int(round(center_y) - round(half_height))
    bottom = int(round(center_y) + round(half_height))
    left = int(round(center_x) - round(half_width))
    right = int(round(center_x) + round(half_width))
    return np.copy(image[top:bottom, left:right])


def official_mouth_rois(frames_bgr: np.ndarray, landmarks: Sequence[np.ndarray | None],
                        window_margin: int = WINDOW_MARGIN, roi_size: int = ROI_SIZE) -> np.ndarray:
    """av_hubert ``align_mouth.py``'s 96×96 colour mouth patches (before its H.264 write).

    Frame i is aligned with the similarity fitted on the landmarks averaged over frames
    ``i .. i+margin-1`` (margin = min(T, window_margin)); the last ``margin-1`` frames reuse the last window's
    transform. Without any landmarks the frames are resized to 96×96 (bilinear), as the reference does.

    Args:
        frames_bgr: uint8 ``T×H×W×3``.
        landmarks: per frame a ``68×2`` (x, y) array or None (no face).
    Returns:
        uint8 ``T×96×96×3`` (BGR).
    Raises:
        MouthRoiError: the number of landmark entries differs from the frames, or the mouth leaves the frame.
    """
    frames = np.asarray(frames_bgr)
    if len(landmarks) != len(frames):
        raise MouthRoiError(f"{len(landmarks)} landmark entries for {len(frames)} frames.")
    filled = interpolate_landmarks(landmarks)
    if filled is None:
        logger.warning("no face found in any frame: resizing whole frames to %d×%d, as align_mouth.py does",
                       roi_size, roi_size)
        return np.stack([cv2.resize(f, (roi_size, roi_size)) for f in frames])
    reference = mean_face()[list(STABLE_POINTS)]
    margin = min(len(frames), window_margin)
    half = roi_size // 2
    patches = []
    transform = None
    for i, frame in enumerate(frames):
        if i + margin <= len(frames):
            smoothed = np.mean(filled[i: i + margin], axis=0)
            transform = similarity_transform(smoothed[list(STABLE_POINTS)], reference)
        aligned = warp_image(frame, transform, ALIGNED_SIZE)
        mouth = apply_transform(transform, filled[i])[MOUTH_POINTS]
        patches.append(cut_patch(aligned, mouth, half, half))
    return np.stack(patches)


def h264_roundtrip(rois_bgr: np.ndarray, crf: int = 20) -> np.ndarray:
    """Write the patches to a temporary H.264 file and decode them again, approximating the reference's
    ``ffmpeg -crf 20`` round trip (our writer uses yuv420p; ffmpeg's CLI picks yuv444p for PNG input, so the
    loss differs slightly), with :func:`talkbench.media.write_clip` and :func:`talkbench.media.decode_clip`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rois.mp4"
        media.write_clip(path, rois_bgr, None, fps=25.0, codec="h264", crf=crf)
        return media.decode_clip(path, need_audio=False).frames


def official_crops(frames_bgr: np.ndarray, landmarks: Sequence[np.ndarray | None] | None = None,
                   roundtrip: bool = False) -> np.ndarray:
    """Recipe ``landmark-aligned``: aligned 96×96 mouth patches → gray → centre 88. uint8 ``T×88×88``.

    Args:
        frames_bgr: uint8 ``T×H×W×3``.
        landmarks: per-frame dlib 68-point landmarks; None = detect them with
            :func:`talkbench.faces.dlib_landmarks`.
        roundtrip: pass the patches through an H.264 encode/decode (see :func:`h264_roundtrip`).
    """
    if landmarks is None:
        landmarks = dlib_landmarks(frames_bgr)
    rois = official_mouth_rois(frames_bgr, landmarks)
    if roundtrip:
        rois = h264_roundtrip(rois)
    return np.ascontiguousarray(center_crop(bgr_to_gray(rois), CROP))


def mouth_crops(frames_bgr: np.ndarray, recipe: str, landmarks: Sequence[np.ndarray | None] | None = None
                ) -> np.ndarray:
    """Gray 88×88 lip-reader input of a recipe (``centre88`` or ``landmark-aligned``): uint8 ``T×88×88``.

    Raises:
        ValueError: unknown recipe.
        MouthRoiError: no usable mouth crop.
    """
    if recipe == "centre88":
        return centre88_crops(frames_bgr)
    if recipe == "landmark-aligned":
        return official_crops(frames_bgr, landmarks)
    raise ValueError(f"Unknown mouth crop recipe `{recipe}`; choose from {', '.join(Kind.MOUTH88.recipes)}.")


# ----------------------------------------------------------------------------------------------------
# Shared per clip
# ----------------------------------------------------------------------------------------------------

def landmarks(cache: ClipCache, frames_bgr: np.ndarray, side: Side = "generated") -> list[np.ndarray | None]:
    """Per-frame dlib 68-point landmarks of a clip side (:func:`talkbench.faces.dlib_landmarks`), computed once per
    clip: a list of T float64 ``68×2`` arrays or None (no face)."""
    return cached(cache, CropKey(Kind.LANDMARKS, side), lambda: dlib_landmarks(frames_bgr))


def mouth88(cache: ClipCache, frames_bgr: np.ndarray, recipe: str, side: Side = "generated") -> np.ndarray:
    """The lip readers' gray 88×88 crops of a clip side under a recipe (:func:`mouth_crops`), computed once per
    clip and shared by every lip reader of the run (the landmarks too, for ``landmark-aligned``).

    Args:
        frames_bgr: uint8 ``T×H×W×3``.
    Returns:
        uint8 ``T×88×88``.
    Raises:
        ValueError: unknown recipe; :class:`MouthRoiError` (a ValueError) when no mouth crop can be cut.
    """
    def make() -> np.ndarray:
        marks = landmarks(cache, frames_bgr, side) if recipe == "landmark-aligned" else None
        return mouth_crops(frames_bgr, recipe, marks)

    return cached(cache, CropKey(Kind.MOUTH88, side, recipe), make)


__all__ = ["ALIGNED_SIZE", "CROP", "MEAN_FACE_PATH", "MOUTH_POINTS", "MouthRoiError", "ROI_SIZE", "STABLE_POINTS",
           "WINDOW_MARGIN", "apply_transform", "bgr_to_gray", "center_crop", "centre88_crops", "cut_patch",
           "h264_roundtrip", "interpolate_landmarks", "landmarks", "mean_face", "mouth88", "mouth_crops",
           "official_crops", "official_mouth_rois", "similarity_transform", "warp_image"]
