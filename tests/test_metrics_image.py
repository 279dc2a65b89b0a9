"""talkbench.metrics.image against independent computations (skimage, plain Python, cv2) and hand-made cases."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from talkbench.crops.face import face_crops
from talkbench.metrics.image import psnr, psnr_frames, psnr_talklip_compat, psnr_talklip_compat_frames, ssim, ssim_frames


def images(seed: int, shape=(96, 96, 3), noise: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image and a noisy copy of it."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), shape[1::-1], interpolation=cv2.INTER_CUBIC)
    other = np.clip(base + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)
    return base, other


def compat_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    """The script's uint8 PSNR spelled out with Python integers: ((a-b) mod 256)^2 mod 256."""
    terms = [((int(x) - int(y)) % 256) ** 2 % 256 for x, y in zip(a.ravel(), b.ravel())]
    mse = sum(terms) / len(terms)
    return 100.0 if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse))


@pytest.mark.parametrize("seed, noise", [(0, 2.0), (1, 20.0), (2, 80.0)])
def test_psnr_matches_skimage(seed, noise):
    a, b = images(seed, noise=noise)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-10)


@pytest.mark.parametrize("seed, noise", [(0, 2.0), (1, 20.0), (3, 120.0)])
def test_psnr_talklip_compat_matches_hand_computation(seed, noise):
    a, b = images(seed, shape=(24, 20, 3), noise=noise)
    assert psnr_talklip_compat(a, b) == pytest.approx(compat_by_hand(a, b), abs=1e-12)


def test_psnr_talklip_compat_wraps_around():
    black = np.zeros((96, 96, 3), np.uint8)
    white = np.full((96, 96, 3), 255, np.uint8)
    assert psnr(black, white) == pytest.approx(0.0, abs=1e-12)  # the true PSNR of black vs white
    assert psnr_talklip_compat(black, white) == pytest.approx(48.13, abs=0.01)  # (-255 mod 256)^2 = 1
    shifted = np.full((96, 96, 3), 16, np.uint8)
    assert psnr_talklip_compat(black, shifted) == 100.0  # 16^2 = 256 wraps to 0: "identical"
    assert psnr(black, shifted) == pytest.approx(20 * math.log10(255 / 16))
    # the worst possible compat value: every squared error is the largest residue 249 (53^2 = 2809 = 10*256 + 249)
    worst = np.full((96, 96, 3), 53, np.uint8)
    assert psnr_talklip_compat(black, worst) == pytest.approx(20 * math.log10(255 / math.sqrt(249)))
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = (rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(2))
        assert psnr_talklip_compat(x, y) >= 24.168 > psnr(x, y)


def test_identical_images():
    a, _ = images(4)
    assert psnr(a, a) == 100.0 and psnr_talklip_compat(a, a) == 100.0
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """TalkLip's call, in today's skimage spelling (``multichannel=True`` became ``channel_axis=-1``)."""
    return structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255)


@pytest.mark.parametrize("seed, noise, shape", [(0, 5.0, (96, 96, 3)), (1, 40.0, (96, 96, 3)),
                                                (2, 15.0, (40, 57, 3)), (3, 90.0, (11, 11, 3))])
def test_ssim_matches_skimage(seed, noise, shape):
    a, b = images(seed, shape=shape, noise=noise)
    assert ssim(a, b) == pytest.approx(skimage_ssim(a, b), abs=1e-12)


def test_batched_equals_single():
    pairs = [images(s, noise=10.0 * (s + 1)) for s in range(4)]
    a = np.stack([p[0] for p in pairs])
    b = np.stack([p[1] for p in pairs])
    assert np.allclose(ssim_frames(a, b), [skimage_ssim(x, y) for x, y in pairs], atol=1e-12, rtol=0)
    assert np.array_equal(psnr_frames(a, b), [psnr(x, y) for x, y in pairs])
    assert np.array_equal(psnr_talklip_compat_frames(a, b), [psnr_talklip_compat(x, y) for x, y in pairs])


def test_metric_input_errors():
    a, b = images(0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[:50])
    with pytest.raises(ValueError, match="uint8"):
        ssim(a.astype(np.float32), b)
    with pytest.raises(ValueError, match="N×H×W×3"):
        psnr_frames(a, b)
    with pytest.raises(ValueError, match="at least 11×11"):
        ssim(a[:10, :10], b[:10, :10])


def test_face_crops_match_cv2_reference_steps():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 20, 110, 100], [0, 0, 160, 120], [50, 5, 90, 60], [0, 0, 1, 1]], dtype=np.int64)
    crops = face_crops(frames, boxes)  # an extra box row is allowed, as in the script
    assert crops.shape == (3, 96, 96, 3) and crops.dtype == np.uint8
    for i, (x1, y1, x2, y2) in enumerate(boxes[:3]):
        assert np.array_equal(crops[i], cv2.resize(frames[i][y1:y2, x1:x2, :], (96, 96)))
    whole = face_crops(frames, None)
    assert np.array_equal(whole[1], crops[1])  # the full-frame box is the same as no box


def test_face_crop_errors():
    frames = np.zeros((2, 50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="1 face boxes for 2 frames"):
        face_crops(frames, np.zeros((1, 4), np.int64))
    with pytest.raises(ValueError, match="whole pixel coordinates"):
        face_crops(frames, np.full((2, 4), 0.5))
    with pytest.raises(ValueError, match=r"frame 1 is \[60, 60, 80, 80\] \(outside the 50×50 frame"):
        face_crops(frames, np.array([[0, 0, 10, 10], [60, 60, 80, 80]]))
    with pytest.raises(ValueError, match="uint8 N×H×W×3"):
        face_crops(frames[0], None)
