"""FVD: Fréchet Video Distance between 16-frame windows of the generated and the ground-truth clips of a suite.

Reproduces the I3D path of cd-fvd (songweig/content-debiased-fvd, PyPI cd-fvd 0.1.1: ``cdfvd.fvd.cdfvd('i3d')``,
``get_i3d_logits``, ``preprocess_i3d``, ``compute_fvd_from_stats``), whose statistics and distance are those of
universome/stylegan-v ``src/metrics/frechet_video_distance.py`` (commit 3fecd69):

1. windows: ``fvd_windows=first`` (default) takes one window per clip, 16 consecutive frames from frame 0
   (StyleGAN-V's ``load_n_consecutive=16`` without random offset, as it samples generated videos;
   every ``fvd_stride``-th frame with ``fvd_stride`` > 1, its ``subsample_factor``); ``all`` takes every
   non-overlapping window ``[16k·s, 16(k+1)·s)``. The same rule on both sides, each clip on its own frames;
   a side shorter than one window (``16·fvd_stride`` frames) is that clip's error row (StyleGAN-V's
   ``discard_short_videos``);
2. each window as cd-fvd's ``compute_fvd(real_videos, fake_videos)`` takes uint8 ``B×T×H×W×C`` RGB arrays:
   whole frames, per-frame bilinear resize to 224×224 (``align_corners=False``), ``2x/255 − 1``
   (:func:`talkbench.nets.i3d.preprocess_clips`);
3. the Kinetics-400 I3D (:mod:`talkbench.nets.i3d`, card ``fvd-i3d``) → its 400 logits per window (cd-fvd's
   FVD features; StyleGAN-V's TorchScript returns the same layer, ``return_features=True``);
4. over the suite: float64 sums → mean and **biased** covariance (``Σxxᵀ/n − μμᵀ``, StyleGAN-V's
   ``FeatureStats``), and ``np.real(|μ_g − μ_r|² + Tr(Σ_g + Σ_r − 2 sqrtm(Σ_g Σ_r)))`` without pytorch-fid's offset
   or check (:func:`talkbench.metrics.frechet.frechet_distance` with ``method="stylegan-v"``).

Set-level like FID: each clip stores its windows' float32 logits (``fvd_generated``, ``fvd_reference``:
``w×400``) and :func:`summarize_features` stacks them in clip-id order. No bootstrap interval
(:data:`set_statistic` is None).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from talkbench import weights
from talkbench.devices import resolve_device, to_device
from talkbench.metrics.frechet import feature_sums, frechet_distance, gaussian_from_sums, pool_features
from talkbench.nets.i3d import CLIP_FRAMES, load_i3d, preprocess_clips
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row

logger = logging.getLogger(__name__)

CARD = "fvd-i3d"
METRIC = "fvd"
#: Per-clip feature arrays: float32 ``w×400`` I3D logits of the generated and of the ground-truth windows.
FEATURES: tuple[str, str] = ("fvd_generated", "fvd_reference")
#: No bootstrap interval for FVD (see the module docstring).
set_statistic = None


def window_starts(n_frames: int, windows: str, stride: int) -> list[int]:
    """First frame of each 16-frame window (each spanning ``16·stride`` frames) of a side of ``n_frames``."""
    span = CLIP_FRAMES * stride
    if n_frames < span:
        return []
    return [0] if windows == "first" else list(range(0, n_frames - span + 1, span))


def clip_windows(frames_bgr: np.ndarray, windows: str, stride: int, side: str) -> np.ndarray:
    """BGR uint8 ``T×H×W×3`` → RGB uint8 windows ``w×16×H×W×3``.

    Raises:
        ClipSkipped: fewer than ``16·stride`` frames (the clip's FVD error row).
    """
    starts = window_starts(len(frames_bgr), windows, stride)
    if not starts:
        raise ClipSkipped(f"FVD: the {side} clip has {len(frames_bgr)} frames, fewer than one {CLIP_FRAMES}-frame "
                          f"window ({CLIP_FRAMES * stride} frames with fvd_stride={stride})")
    span = CLIP_FRAMES * stride
    return np.stack([frames_bgr[s:s + span:stride, :, :, ::-1] for s in starts])


def i3d_logits(model: Any, windows_rgb: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    """RGB uint8 windows ``w×16×H×W×3`` → float32 logits ``w×400``.

    Each batch goes to the device as uint8 (:func:`talkbench.devices.to_device`); the logits come back to the host
    once, after the last batch.
    """
    out = []
    with torch.no_grad():
        for start in range(0, len(windows_rgb), batch):
            clips = to_device(torch.from_numpy(np.ascontiguousarray(windows_rgb[start:start + batch])), device)
            out.append(model(preprocess_clips(clips)).float())
    return np.concatenate([logits.cpu().numpy() for logits in out]).astype(np.float32, copy=False)


def fvd_of_features(generated: np.ndarray, reference: np.ndarray) -> float:
    """StyleGAN-V's FVD of two ``w×400`` logit sets; NaN with fewer than 2 windows on a side."""
    if len(generated) < 2 or len(reference) < 2:
        return math.nan
    mu_g, sigma_g = gaussian_from_sums(*feature_sums(generated))
    mu_r, sigma_r = gaussian_from_sums(*feature_sums(reference))
    return frechet_distance(mu_g, sigma_g, mu_r, sigma_r, method="stylegan-v")


def summarize_features(features: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
    """``fvd`` from every stored clip's logits, stacked in clip-id order; NaN with fewer than 2 windows a side."""
    generated, reference = pool_features(features, FEATURES)
    return {METRIC: fvd_of_features(generated, reference)}


@dataclass
class FVDObserver:
    """Stores each clip's window logits; FVD itself is computed over the suite."""

    model: Any
    device: torch.device
    windows: str = "first"
    stride: int = 1
    batch: int = 4
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    name: str = "fvd"
    metrics: tuple[str, ...] = (METRIC,)
    needs_reference: bool = True
    needs_text: bool = False

    def measure(self, clip: ClipData) -> Row:
        """``n_windows_fvd``, ``n_windows_fvd_reference`` and the two feature arrays."""
        if clip.reference is None:
            raise ClipSkipped("FVD: no reference clip (FVD compares generated with ground-truth videos)")
        generated = clip_windows(clip.generated.frames, self.windows, self.stride, "generated")
        reference = clip_windows(clip.reference.frames, self.windows, self.stride, "reference")
        return {"n_windows_fvd": len(generated), "n_windows_fvd_reference": len(reference),
                FEATURES[0]: i3d_logits(self.model, generated, self.device, self.batch),
                FEATURES[1]: i3d_logits(self.model, reference, self.device, self.batch)}


def build(ctx: ObserverContext) -> FVDObserver:
    """Load the ``fvd-i3d`` weights on ``ctx.device``.

    Options (typed and checked by the spec, :func:`talkbench.observers.build`): ``fvd_windows`` (``first`` |
    ``all``), ``fvd_stride`` (frame step inside a window, >= 1), ``fvd_batch`` (windows per forward pass; speed
    and memory only).
    """
    windows = ctx.options.get("fvd_windows", "first")
    stride, batch = ctx.options.get("fvd_stride", 1), ctx.options.get("fvd_batch", 4)
    device = resolve_device(ctx.device)
    path, sha = weights.resolve_with_sha(CARD, ctx.weights)
    return FVDObserver(load_i3d(path, device), device, windows, stride, batch, weights_sha256={CARD: sha})
