"""Scoring math of talkbench.lse against straightforward re-statements of the reference formulas."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from talkbench import lse
from talkbench.crops.syncnet import resize_frames


def _reference_pdist(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int) -> torch.Tensor:
    """calc_pdist as the reference writes it: one pairwise_distance call per window."""
    win = 2 * vshift + 1
    padded = F.pad(audio_emb, (0, 0, vshift, vshift))
    rows = [F.pairwise_distance(video_emb[[i], :].repeat(win, 1), padded[i:i + win, :]) for i in range(len(video_emb))]
    return torch.stack(rows, 0)


@pytest.mark.parametrize("n,vshift", [(40, 15), (3, 15), (20, 2)])
def test_shifted_distances_equal_reference_loop(n: int, vshift: int) -> None:
    gen = torch.Generator().manual_seed(n)
    v = torch.randn(n, 64, generator=gen) * 30
    a = torch.randn(n, 64, generator=gen) * 10
    got = lse.shifted_distances(v, a, vshift)
    want = _reference_pdist(v, a, vshift)
    assert got.shape == (n, 2 * vshift + 1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-4)
    # out-of-range shifts compare with a zero vector: ||v + 1e-6||
    torch.testing.assert_close(got[0, 0], torch.linalg.vector_norm(v[0] + 1e-6), rtol=1e-6, atol=1e-5)


def test_scores_from_distances_min_median_offset() -> None:
    mean = torch.tensor([5.0, 4.0, 3.0, 1.0, 1.0, 6.0, 7.0])        # vshift 3; tie at 3 and 4 -> first
    dists = mean.repeat(4, 1)
    r = lse.scores_from_distances(dists, vshift=3)
    assert r.lse_d == pytest.approx(1.0)
    assert r.av_offset == 3 - 3
    # torch.median of 7 values = 4th smallest = 4.0
    assert r.lse_c == pytest.approx(4.0 - 1.0)
    assert r.n_windows == 4
    np.testing.assert_allclose(r.mean_dists, mean.numpy())


def test_scores_use_lower_median_for_even_count() -> None:
    r = lse.scores_from_distances(torch.tensor([[4.0, 1.0, 3.0, 2.0]]), vshift=2)
    assert r.lse_c == pytest.approx(2.0 - 1.0)   # lower median 2, not 2.5


@pytest.mark.parametrize("frames,samples,expected", [(73, 47104, 68), (73, 640 * 50, 45), (6, 640 * 6, 1),
                                                     (5, 10**6, 0), (100, 3072, -1)])
def test_count_windows(frames: int, samples: int, expected: int) -> None:
    assert lse.count_windows(frames, samples) == expected


def test_mfcc_windows_layout() -> None:
    mfcc = np.arange(13 * 40, dtype=np.float64).reshape(13, 40)
    win = lse.mfcc_windows(mfcc, 6)
    assert win.shape == (6, 1, 13, 20) and win.dtype == torch.float32
    for i in range(6):
        np.testing.assert_array_equal(win[i, 0].numpy(), mfcc[:, 4 * i:4 * i + 20].astype(np.float32))
    with pytest.raises(ValueError, match="columns"):
        lse.mfcc_windows(mfcc, 7)


def test_resize_frames_is_cv2_inter_linear() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 160, 120, 3), dtype=np.uint8)
    out = resize_frames(frames)
    assert out.shape == (3, 224, 224, 3)
    for f, o in zip(frames, out):
        np.testing.assert_array_equal(o, cv2.resize(f, (224, 224), interpolation=cv2.INTER_LINEAR))
    big = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)   # downscaling: no antialiasing either
    np.testing.assert_array_equal(resize_frames(big)[0], cv2.resize(big[0], (224, 224)))


def test_lse_scores_rejects_clips_without_windows() -> None:
    with pytest.raises(ValueError, match="Too short"):
        lse.lse_scores(model=None, frames_bgr=np.zeros((5, 8, 8, 3), np.uint8),  # type: ignore[arg-type]
                       audio_int16=np.zeros(640 * 10, np.int16))
    with pytest.raises(ValueError, match="3072 audio samples"):
        lse.lse_scores(model=None, frames_bgr=np.zeros((60, 8, 8, 3), np.uint8),  # type: ignore[arg-type]
                       audio_int16=np.zeros(3072, np.int16))


def test_single_window_clip_gives_reference_degenerate_scores() -> None:
    """README quirk 12: with 1 window, 30 of 31 shifts compare with zero vectors (offset 15, LSE-C 0)."""
    v = torch.full((1, 8), 10.0)
    a = torch.full((1, 8), -5.0)                      # ||v - a|| > ||v||: a padded shift wins
    r = lse.scores_from_distances(lse.shifted_distances(v, a))
    assert r.av_offset == 15 and r.lse_c == 0.0
    assert r.lse_d == pytest.approx(float(torch.linalg.vector_norm(v + 1e-6)))
    close = lse.scores_from_distances(lse.shifted_distances(v, torch.full((1, 8), 9.0)))
    assert close.av_offset == 0 and close.lse_c > 0    # the real pair is closer than zero padding
