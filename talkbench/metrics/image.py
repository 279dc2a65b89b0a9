"""PSNR and SSIM on 96×96 face crops, as TalkLip's ``evaluation/visual_quality.py`` computes them.

The reference crops each frame with its face box (``frame[y1:y2, x1:x2]``), resizes the crop to
96×96 with ``cv2.resize`` (bilinear; :func:`talkbench.crops.face.face_crops`), and scores every frame pair:

* ``ssim``: ``skimage.metrics.structural_similarity`` with Gaussian weights (σ 1.5, 11 taps,
  reflected borders), population covariance, data range 255, on each colour channel; the frame's
  SSIM is the mean of its channels' SSIMs, each the mean over the map without a 5-pixel border.
* ``psnr_talklip_compat``: the script's ``PSNR`` on the uint8 crops. ``original - compressed`` and
  ``** 2`` are computed in uint8, so both wrap modulo 256: each squared error is
  ``((a - b) mod 256)² mod 256``, a number in 0..255, and the "MSE" never exceeds 255. Hence the
  value never falls below ``20·log10(255/√MSE) ≥ 10·log10(255) ≈ 24.07 dB`` (the largest square
  residue mod 256 is 249, so in fact ≥ 24.17 dB), and any difference that is a multiple of 16
  counts as no error at all (16² = 256 ≡ 0).
* ``psnr``: the same formula on float64 differences (the PSNR the paper meant).

Identical crops give MSE 0; both PSNRs return the reference's cap of 100 dB then.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter

PSNR_CAP_DB = 100.0  # the reference returns 100 when MSE is 0
MAX_PIXEL = 255.0

# structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage's value with gaussian_weights: an 11-tap window
SSIM_PAD = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # border left out of the mean (5 px)
SSIM_C1 = (0.01 * MAX_PIXEL) ** 2
SSIM_C2 = (0.03 * MAX_PIXEL) ** 2


def _check_pair(a: np.ndarray, b: np.ndarray, ndim: int, what: str) -> None:
    for name, x in (("first", a), ("second", b)):
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
            raise ValueError(f"{what}: the {name} image must be a uint8 array, got "
                             f"{getattr(x, 'dtype', type(x).__name__)}.")
    if a.shape != b.shape or a.ndim != ndim or a.shape[-1] != 3:
        expected = "H×W×3" if ndim == 3 else "N×H×W×3"
        raise ValueError(f"{what}: images must be uint8 {expected} of the same shape, got {a.shape} and {b.shape}.")


def _psnr_from_mse(mse: np.ndarray) -> np.ndarray:
    """20·log10(255/√mse) per entry, PSNR_CAP_DB where mse is 0 (float64)."""
    mse = np.asarray(mse, dtype=np.float64)
    out = np.full(mse.shape, PSNR_CAP_DB)
    positive = mse > 0
    out[positive] = 20.0 * np.log10(MAX_PIXEL / np.sqrt(mse[positive]))
    return out


def psnr_frames(a_u8: np.ndarray, b_u8: np.ndarray) -> np.ndarray:
    """PSNR in dB of each frame pair, on float64 differences.

    Args:
        a_u8, b_u8: uint8 ``N×H×W×3``.
    Returns:
        float64 ``N``.
    """
    _check_pair(a_u8, b_u8, 4, "psnr")
    diff = a_u8.astype(np.float64) - b_u8.astype(np.float64)
    return _psnr_from_mse(np.mean(diff * diff, axis=(1, 2, 3)))


def psnr_talklip_compat_frames(a_u8: np.ndarray, b_u8: np.ndarray) -> np.ndarray:
    """PSNR in dB of each frame pair with the reference script's uint8 wrap-around (see the module doc).

    Args:
        a_u8, b_u8: uint8 ``N×H×W×3``.
    Returns:
        float64 ``N``.
    """
    _check_pair(a_u8, b_u8, 4, "psnr_talklip_compat")
    wrapped = (a_u8 - b_u8) ** 2  # uint8 arithmetic on purpose: this is the reference's bug
    mse = np.mean(wrapped, axis=(1, 2, 3), dtype=np.float64)
    # the script computes 20*log10(255/sqrt(mse)) with math.log10/math.sqrt on a float64 scalar
    return np.array([PSNR_CAP_DB if m == 0 else 20 * math.log10(MAX_PIXEL / math.sqrt(m)) for m in mse])


def ssim_frames(a_u8: np.ndarray, b_u8: np.ndarray) -> np.ndarray:
    """SSIM of each frame pair with TalkLip's settings (see the module doc).

    Args:
        a_u8, b_u8: uint8 ``N×H×W×3`` with H, W ≥ 11.
    Returns:
        float64 ``N``: per frame, the mean over colour channels of the mean SSIM map.
    """
    _check_pair(a_u8, b_u8, 4, "ssim")
    if min(a_u8.shape[1:3]) < 2 * SSIM_PAD + 1:
        side = 2 * SSIM_PAD + 1
        raise ValueError(f"ssim: images must be at least {side}×{side}, got {a_u8.shape[1:3]}.")
    x = a_u8.astype(np.float64)
    y = b_u8.astype(np.float64)
    # filter rows and columns only: sigma 0 leaves the frame and channel axes alone
    sigma = (0.0, SSIM_SIGMA, SSIM_SIGMA, 0.0)

    def blur(image: np.ndarray) -> np.ndarray:
        return gaussian_filter(image, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    ssim_map = ((2 * ux * uy + SSIM_C1) * (2 * vxy + SSIM_C2)) / ((ux ** 2 + uy ** 2 + SSIM_C1) * (vx + vy + SSIM_C2))
    inner = ssim_map[:, SSIM_PAD:-SSIM_PAD, SSIM_PAD:-SSIM_PAD, :]
    per_channel = inner.mean(axis=(1, 2), dtype=np.float64)  # N×3, as skimage loops over channels
    return per_channel.mean(axis=1)


def psnr(a_u8: np.ndarray, b_u8: np.ndarray) -> float:
    """PSNR in dB of two uint8 ``H×W×3`` images (float64 differences; 100 dB when identical)."""
    _check_pair(a_u8, b_u8, 3, "psnr")
    return float(psnr_frames(a_u8[None], b_u8[None])[0])


def psnr_talklip_compat(a_u8: np.ndarray, b_u8: np.ndarray) -> float:
    """PSNR in dB as TalkLip's script computes it on uint8 ``H×W×3`` images (wraps modulo 256)."""
    _check_pair(a_u8, b_u8, 3, "psnr_talklip_compat")
    return float(psnr_talklip_compat_frames(a_u8[None], b_u8[None])[0])


def ssim(a_u8: np.ndarray, b_u8: np.ndarray) -> float:
    """SSIM of two uint8 ``H×W×3`` images with TalkLip's settings (mean over the 3 channels)."""
    _check_pair(a_u8, b_u8, 3, "ssim")
    return float(ssim_frames(a_u8[None], b_u8[None])[0])
