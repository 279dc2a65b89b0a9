"""Fréchet distance between two Gaussians fitted to feature sets: FID's, FVD's and ``fd_colour``'s one owner.

``d² = |μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)``, the matrix square root by scipy's ``sqrtm`` as both references
compute it. The references differ in two details, kept apart here by ``method``:

* ``"pytorch-fid"`` — mseitzer/pytorch-fid ``fid_score.calculate_frechet_distance`` (commit b9c1811): when
  ``sqrtm(Σ₁Σ₂)`` is not finite (a singular product), it is recomputed as ``sqrtm((Σ₁ + εI)(Σ₂ + εI))`` with
  ``ε = 1e-6``; an imaginary part of the result's diagonal above 1e-3 is an error, a smaller one is dropped.
  The Gaussians are ``np.mean`` and ``np.cov`` (unbiased, ``n − 1``) of the features (:func:`gaussian_unbiased`).
* ``"stylegan-v"`` — universome/stylegan-v ``src/metrics/frechet_video_distance.py`` (commit 3fecd69; cd-fvd's
  ``compute_fvd_from_stats`` is the same): ``np.real(|μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2·sqrtm(Σ₁Σ₂)))``, no offset
  and no check; the Gaussians come from float64 running sums, ``Σ = Σxxᵀ/n − μμᵀ`` (biased, ``n``;
  :func:`gaussian_from_sums`), as its ``FeatureStats.get_mean_cov``.
"""

from __future__ import annotations

import logging
from typing import Literal, Mapping, Sequence

import numpy as np
from scipy import linalg

logger = logging.getLogger(__name__)

Method = Literal["pytorch-fid", "stylegan-v"]
METHODS: tuple[str, ...] = ("pytorch-fid", "stylegan-v")
#: pytorch-fid's offset added to both covariances when the product is singular.
EPS = 1e-6
#: pytorch-fid's tolerance on the imaginary part of the square root's diagonal.
IMAGINARY_ATOL = 1e-3


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """scipy's ``sqrtm`` (the references call it with ``disp=False``: the same matrix, without the estimate)."""
    return linalg.sqrtm(matrix)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: Method = "pytorch-fid") -> float:
    """Fréchet distance of two Gaussians ``N(μ₁, Σ₁)``, ``N(μ₂, Σ₂)`` (means ``d``, covariances ``d×d``).

    Args:
        method: ``pytorch-fid`` (offset retry and imaginary check) or ``stylegan-v`` (real part, no check).
    Raises:
        ValueError: (``pytorch-fid``) the square root has an imaginary component above 1e-3 on its diagonal;
            means or covariances of different sizes; an unknown ``method``.
    """
    if method not in METHODS:
        raise ValueError(f"Argument `method` must be one of {', '.join(METHODS)}, but got {method!r}.")
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"Fréchet distance: means {mu1.shape} / {mu2.shape} and covariances {sigma1.shape} / "
                         f"{sigma2.shape} must have the same sizes.")
    diff = mu1 - mu2
    if method == "stylegan-v":
        root = _sqrtm(np.dot(sigma1, sigma2))
        return float(np.real(np.square(diff).sum() + np.trace(sigma1 + sigma2 - root * 2)))
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        logger.info("Fréchet distance: singular product of covariances; adding %g to their diagonals", EPS)
        offset = np.eye(sigma1.shape[0]) * EPS
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_ATOL):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag))} in the matrix "
                             f"square root")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def pool_features(features: Mapping[str, Mapping[str, np.ndarray]], names: Sequence[str]
                  ) -> tuple[np.ndarray, ...]:
    """Per-clip feature arrays (clip id -> name -> ``n_i×d``) -> one ``Σn_i×d`` float64 array per name, clips in
    sorted clip-id order and only those holding every name: the same rows in the same order whatever order, shard
    or process computed the clips. Empty ``0×0`` arrays without clips."""
    ids = [clip_id for clip_id in sorted(features) if all(name in features[clip_id] for name in names)]
    if not ids:
        return tuple(np.zeros((0, 0)) for _ in names)
    return tuple(np.concatenate([np.asarray(features[clip_id][name], dtype=np.float64).reshape(
        len(features[clip_id][name]), -1) for clip_id in ids]) for name in names)


def gaussian_unbiased(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.mean`` and ``np.cov`` (unbiased) of ``N×d`` features in float64, as pytorch-fid's
    ``calculate_activation_statistics``.

    Raises:
        ValueError: fewer than 2 rows (no covariance).
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"a covariance needs an N×d array with N >= 2, got shape {features.shape}")
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def feature_sums(features: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """``(n, Σx, Σxxᵀ)`` of ``N×d`` features, in float64 (the features cast as stylegan-v's ``FeatureStats``
    casts them: float32, then float64)."""
    x64 = np.asarray(features, dtype=np.float32).astype(np.float64)
    return len(x64), x64.sum(axis=0), x64.T @ x64


def gaussian_from_sums(n: int, total: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased covariance from summed statistics, as stylegan-v's ``FeatureStats.get_mean_cov``:
    ``μ = Σx/n``, ``Σ = Σxxᵀ/n − μμᵀ``.

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError("a Gaussian needs at least one feature vector")
    mean = total / n
    return mean, outer / n - np.outer(mean, mean)


__all__ = ["EPS", "METHODS", "feature_sums", "frechet_distance", "gaussian_from_sums", "gaussian_unbiased",
           "pool_features"]
