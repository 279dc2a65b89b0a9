"""A set-level example metric: Fréchet distance of per-frame colour/edge statistics (``fd_colour``).

What it measures: each 96×96 face crop (the crops of PSNR/SSIM, :func:`image_quality.paired_face_crops`)
is summarised by 8 numbers — the mean and standard deviation of its B, G and R values and of its gray
gradient magnitude — and the distribution of these vectors over all generated frames of the suite is
compared with their distribution over the reference frames by the Fréchet distance between the two
fitted Gaussians, ``|μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)``, computed as pytorch-fid computes FID's. It
sees colour casts, blur and contrast changes across a whole suite; it is **not FID** (no Inception
network, 8 hand-made features instead of 2048 learned ones) and its values are not comparable to FID's.

Why it is here: it is the smallest real metric whose value is a statistic of the whole suite, so it shows
how a set-level metric stays exact under resume, shards and merge: each clip stores only the sufficient
statistics of its frames (count, Σx and Σxxᵀ, float64, one 73-value array for each side) with its row, in
the same transaction (:meth:`talkbench.store.ResultStore.put`), and :func:`summarize_features` adds them up
over the stored clips in clip-id order — the same sum whatever order or process computed the clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from talkbench.metrics.frechet import frechet_distance
from talkbench.observers.base import ClipData, ObserverContext, Row
from talkbench.observers.image_quality import paired_face_crops

METRIC = "fd_colour"
N_FEATURES = 8
#: Per-clip feature arrays: ``[n, Σx (8), Σxxᵀ (64)]`` of the generated and of the reference frames.
FEATURES: tuple[str, str] = ("colour_generated", "colour_reference")


def frame_features(crops_bgr: np.ndarray) -> np.ndarray:
    """Per-frame statistics of uint8 crops ``N×H×W×3`` -> float64 ``N×8``: mean and std of B, G, R, and of the
    gray gradient magnitude (central differences)."""
    pixels = crops_bgr.astype(np.float64)
    gray = pixels @ np.array([0.114, 0.587, 0.299])
    gy, gx = np.gradient(gray, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    return np.concatenate([pixels.mean(axis=(1, 2)), pixels.std(axis=(1, 2)),
                           magnitude.mean(axis=(1, 2))[:, None], magnitude.std(axis=(1, 2))[:, None]], axis=1)


def sufficient_statistics(features: np.ndarray) -> np.ndarray:
    """``N×8`` features -> float64 ``[N, Σx, Σxxᵀ (flattened)]`` (73 values): additive over clips."""
    return np.concatenate([[float(len(features))], features.sum(axis=0), (features.T @ features).ravel()])


def gaussian(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``8`` and unbiased covariance ``8×8`` (as ``np.cov``) from summed statistics."""
    n = stats[0]
    total = stats[1:1 + N_FEATURES]
    outer = stats[1 + N_FEATURES:].reshape(N_FEATURES, N_FEATURES)
    mu = total / n
    return mu, (outer - n * np.outer(mu, mu)) / (n - 1)


def set_statistic(summed: np.ndarray) -> float:
    """``fd_colour`` from the summed per-clip statistics, both sides concatenated (``colour_generated`` then
    ``colour_reference``: 2 × 73 values): what the bootstrap of :mod:`talkbench.statistics` evaluates on each
    resample. NaN with fewer than 2 frames on a side."""
    generated, reference = np.split(np.asarray(summed, dtype=np.float64), 2)
    if min(generated[0], reference[0]) < 2:
        return math.nan
    (mu1, sigma1), (mu2, sigma2) = gaussian(generated), gaussian(reference)
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def summarize_features(features: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
    """``fd_colour`` from every stored clip's statistics (summed in clip-id order); NaN with fewer than 2 frames."""
    summed = np.zeros(2 * (1 + N_FEATURES + N_FEATURES ** 2))
    for clip_id in sorted(features):
        stored = features[clip_id]
        if all(name in stored for name in FEATURES):
            summed = summed + np.concatenate([np.asarray(stored[name], dtype=np.float64) for name in FEATURES])
    return {METRIC: set_statistic(summed)}


@dataclass
class ColourStatsObserver:
    """Stores each clip's colour/edge statistics; the metric itself is computed over the suite."""

    name: str = "colour_stats"
    metrics: tuple[str, ...] = (METRIC,)
    needs_reference: bool = True
    needs_text: bool = False
    weights_sha256: Mapping[str, str] = field(default_factory=dict)

    def measure(self, clip: ClipData) -> Row:
        """``n_frames_colour`` and the two feature arrays (``colour_generated``, ``colour_reference``)."""
        generated, reference = paired_face_crops(clip)
        return {"n_frames_colour": len(generated),
                FEATURES[0]: sufficient_statistics(frame_features(generated)),
                FEATURES[1]: sufficient_statistics(frame_features(reference))}


def build(ctx: ObserverContext) -> ColourStatsObserver:
    """The observer (no weights, no options)."""
    return ColourStatsObserver()
