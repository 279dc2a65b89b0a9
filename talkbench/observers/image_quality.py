"""Image-quality observer: PSNR, TalkLip-compatible PSNR and SSIM on 96×96 face crops against ground truth.

Follows TalkLip's ``evaluation/visual_quality.py``: frames of the generated and the reference clip are
compared pairwise over their common prefix (``min`` of the two lengths; the script does not report a
mismatch, this observer records both lengths), each cropped with the clip's face box of that frame
(or taken whole when the suite has no boxes) and resized to 96×96.

Generated and reference frames of different sizes without face boxes are both resized whole to 96×96,
as the script would do; the observer logs a warning naming the clip and both sizes, since such a pair
is rarely what a user meant (a generator that writes another resolution than its input). With face boxes
they are refused (one box cannot crop both).

Aggregation: the script appends one value per frame for every clip and prints the mean of that list,
so the summary is a **mean over all frames of all clips** (longer clips weigh more), not a mean of
clip means. Per-clip rows hold each clip's frame mean and ``n_frames``; :meth:`summarize` weights
them by ``n_frames``, which gives the frame mean back.
"""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import numpy as np

from talkbench.metrics.image import face_crops_96, psnr_frames, psnr_talklip_compat_frames, ssim_frames
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("psnr", "psnr_talklip_compat", "ssim")
#: clip.cache key of the (generated, reference) 96×96 face crops
CACHE_KEY = "face96_pair"


def paired_face_crops(clip: ClipData) -> tuple[np.ndarray, np.ndarray]:
    """96×96 face crops of the generated and the reference clip over their common frames, uint8 ``N×96×96×3``
    each; cached in the clip (shared by every metric that compares faces with ground truth).

    Raises:
        ClipSkipped: no reference clip, no frames, boxes that cannot crop both clips.
    """
    cached = clip.cache.get(CACHE_KEY)
    if cached is not None:
        return cached
    if clip.reference is None:
        raise ClipSkipped("no reference clip: PSNR/SSIM compare against the ground-truth video")
    generated, reference = clip.generated.frames, clip.reference.frames
    n = min(len(generated), len(reference))
    if n == 0:
        raise ClipSkipped("no frames to compare")
    if clip.boxes is not None and generated.shape[1:] != reference.shape[1:]:
        raise ClipSkipped(f"generated frames are {generated.shape[2]}×{generated.shape[1]} but reference "
                          f"frames are {reference.shape[2]}×{reference.shape[1]}: one face box cannot "
                          "crop both; write the generated clip at the reference size")
    if generated.shape[1:] != reference.shape[1:]:
        logger.warning("%s: generated frames are %d×%d, reference frames %d×%d; both are resized whole to 96×96 "
                       "for PSNR/SSIM", clip.clip_id, generated.shape[2], generated.shape[1], reference.shape[2],
                       reference.shape[1])
    try:
        crops = face_crops_96(generated[:n], clip.boxes), face_crops_96(reference[:n], clip.boxes)
    except ValueError as err:
        raise ClipSkipped(str(err)) from err
    clip.cache[CACHE_KEY] = crops
    return crops


class ImageQualityObserver:
    """PSNR / SSIM against the reference clip; no network, no weights."""

    name = "image_quality"
    metrics: tuple[str, ...] = METRICS
    needs_reference = True
    needs_text = False
    weights_sha256: Mapping[str, str] = {}

    def measure(self, clip: ClipData) -> Row:
        """Per-clip frame means of the three metrics, plus the frame counts.

        Row columns: ``psnr``, ``psnr_talklip_compat``, ``ssim`` (means over the compared frames),
        ``n_frames`` (frames compared), ``n_frames_generated``, ``n_frames_reference``.
        """
        crops_gen, crops_ref = paired_face_crops(clip)
        # the script passes (gt, synt); every metric here is symmetric anyway
        return {
            "psnr": float(np.mean(psnr_frames(crops_ref, crops_gen))),
            "psnr_talklip_compat": float(np.mean(psnr_talklip_compat_frames(crops_ref, crops_gen))),
            "ssim": float(np.mean(ssim_frames(crops_ref, crops_gen))),
            "n_frames": len(crops_gen),
            "n_frames_generated": clip.generated.num_frames,
            "n_frames_reference": clip.reference.num_frames,
        }

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """Mean over all frames of all clips (each clip's mean weighted by its ``n_frames``); NaN without frames."""
    summary = {}
    for metric in METRICS:
        pairs = [(float(row[metric]), int(row["n_frames"])) for row in rows
                 if row.get(metric) is not None and row.get("n_frames")]
        total = sum(n for _, n in pairs)
        summary[metric] = sum(v * n for v, n in pairs) / total if total else math.nan
    return summary


def build(ctx: ObserverContext) -> ImageQualityObserver:
    """The observer (``ctx`` is not used: no weights, same computation on every device)."""
    return ImageQualityObserver()
