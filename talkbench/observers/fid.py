"""FID: Fréchet Inception Distance between the generated and the ground-truth frames of a whole suite.

Reproduces mseitzer/pytorch-fid (commit b9c1811, PyPI 0.3.0) ``fid_score.py`` with its default ``--dims 2048``:

1. frames: every ``fid_stride``-th frame (from frame 0) of each generated clip and of its ground-truth clip,
   taken as the ``fid_frames`` option says — ``whole`` (default: the decoded frame as it is, as most
   talking-face papers run pytorch-fid on extracted frames) or ``face96`` (the 96×96 face crops PSNR/SSIM
   compare, :func:`talkbench.observers.image_quality.paired_face_crops`, over the two clips' common frames);
2. each frame as pytorch-fid reads an image file: RGB, ``uint8 / 255`` (``ToTensor``), then ``InceptionV3``'s
   input handling: bilinear resize to 299×299 (``align_corners=False``), ``2x − 1``;
3. the FID Inception network (:mod:`talkbench.nets.inception_fid`, card ``fid-inception``) → 2048-d pool3
   features, float32;
4. over the suite: the features of all generated frames and of all ground-truth frames, each set's
   ``np.mean`` and ``np.cov`` (unbiased) in float64, and pytorch-fid's Fréchet distance
   (:func:`talkbench.metrics.frechet.frechet_distance`: scipy ``sqrtm``, the 1e-6 offset for a singular
   product, the imaginary-part check).

Set-level and exact under resume, shards and merge: each clip stores its frames' float32 features
(``fid_generated``, ``fid_reference``: ``n×2048``, 8 KiB a frame and side) with its row, and
:func:`summarize_features` stacks them in clip-id order, so the pooled rows — and FID — are the same whatever
order or process computed the clips. The stored features are what pytorch-fid keeps in memory (its
``pred_arr``), so nothing is approximated. No bootstrap interval: the statistic of 2048-d features cannot be
resampled from additive per-clip sums of practical size (:data:`set_statistic` is None).
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
from talkbench.metrics.frechet import frechet_distance, gaussian_unbiased, pool_features
from talkbench.nets.inception_fid import load_fid_inception
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row
from talkbench.observers.image_quality import paired_face_crops

logger = logging.getLogger(__name__)

CARD = "fid-inception"
METRIC = "fid"
#: Per-clip feature arrays: float32 ``n×2048`` pool3 features of the generated and of the ground-truth frames.
FEATURES: tuple[str, str] = ("fid_generated", "fid_reference")
#: No bootstrap interval for FID (see the module docstring).
set_statistic = None


def frames_for_fid(clip: ClipData, frames: str, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """The generated and the ground-truth frames FID sees, BGR uint8 ``N×H×W×3`` each (every ``stride``-th).

    Raises:
        ClipSkipped: no reference clip, or a side without frames.
    """
    if clip.reference is None:
        raise ClipSkipped("FID: no reference clip (FID compares generated with ground-truth frames)")
    if frames == "face96":
        generated, reference = paired_face_crops(clip)
    else:
        generated, reference = clip.generated.frames, clip.reference.frames
    if len(generated) == 0 or len(reference) == 0:
        raise ClipSkipped(f"FID: no frames (generated {len(generated)}, reference {len(reference)})")
    return generated[::stride], reference[::stride]


def pool3_features(model: Any, frames_bgr: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    """BGR uint8 ``N×H×W×3`` → float32 ``N×2048`` pool3 features (RGB, ``/255``, the network's resize).

    Each batch goes to the device as uint8 (:func:`talkbench.devices.to_device`); the features come back to the
    host once, after the last batch (on a GPU the host does not wait for each batch).
    """
    out = []
    with torch.no_grad():
        for start in range(0, len(frames_bgr), batch):
            rgb = np.ascontiguousarray(frames_bgr[start:start + batch, :, :, ::-1])
            images = to_device(torch.from_numpy(rgb), device).permute(0, 3, 1, 2).float() / 255
            out.append(model.pool3(images).float())
    return np.concatenate([features.cpu().numpy() for features in out]).astype(np.float32, copy=False)


def fid_of_features(generated: np.ndarray, reference: np.ndarray) -> float:
    """pytorch-fid's FID of two ``N×2048`` feature sets; NaN with fewer than 2 rows on a side or when the
    square root has a large imaginary part (logged)."""
    if len(generated) < 2 or len(reference) < 2:
        return math.nan
    try:
        return frechet_distance(*gaussian_unbiased(generated), *gaussian_unbiased(reference))
    except ValueError as err:
        logger.error("FID could not be computed: %s", err)
        return math.nan


def summarize_features(features: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
    """``fid`` from every stored clip's features, stacked in clip-id order; NaN with fewer than 2 frames a side."""
    generated, reference = pool_features(features, FEATURES)
    return {METRIC: fid_of_features(generated, reference)}


@dataclass
class FIDObserver:
    """Stores each clip's pool3 features; FID itself is computed over the suite."""

    model: Any
    device: torch.device
    frames: str = "whole"
    stride: int = 1
    batch: int = 32
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    name: str = "fid"
    metrics: tuple[str, ...] = (METRIC,)
    needs_reference: bool = True
    needs_text: bool = False

    def measure(self, clip: ClipData) -> Row:
        """``n_frames_fid``, ``n_frames_fid_reference`` and the two feature arrays."""
        generated, reference = frames_for_fid(clip, self.frames, self.stride)
        return {"n_frames_fid": len(generated), "n_frames_fid_reference": len(reference),
                FEATURES[0]: pool3_features(self.model, generated, self.device, self.batch),
                FEATURES[1]: pool3_features(self.model, reference, self.device, self.batch)}


def build(ctx: ObserverContext) -> FIDObserver:
    """Load the ``fid-inception`` weights on ``ctx.device``.

    Options (typed and checked by the spec, :func:`talkbench.observers.build`): ``fid_frames`` (``whole`` |
    ``face96``), ``fid_stride`` (every n-th frame, >= 1), ``fid_batch`` (frames per forward pass; speed and
    memory only).
    """
    frames = ctx.options.get("fid_frames", "whole")
    stride, batch = ctx.options.get("fid_stride", 1), ctx.options.get("fid_batch", 32)
    device = resolve_device(ctx.device)
    path, sha = weights.resolve_with_sha(CARD, ctx.weights)
    return FIDObserver(load_fid_inception(path, device), device, frames, stride, batch, weights_sha256={CARD: sha})
