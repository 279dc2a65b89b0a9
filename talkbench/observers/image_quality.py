"""Image-quality observer: PSNR, TalkLip-compatible PSNR and SSIM on 96×96 face crops against ground truth.

Follows TalkLip's ``evaluation/visual_quality.py``: frames of the generated and the reference clip are
compared pairwise over their common prefix (``min`` of the two lengths; the script does not report a
mismatch, this observer records both lengths), each cropped with the clip's face box of that frame
(or taken whole when the suite has no boxes) and resized to 96×96 (:func:`talkbench.crops.face.face96_pair`).

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

import math
from typing import Callable, Mapping, Sequence

import numpy as np

from talkbench.crops.face import face96_pair
from talkbench.metrics.image import psnr_frames, psnr_talklip_compat_frames, ssim_frames
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row

METRICS: tuple[str, ...] = ("psnr", "psnr_talklip_compat", "ssim")
#: Frames per metric call (bounds SSIM's float64 intermediates: ~2 MB per 96×96 frame).
FRAME_CHUNK = 64


def paired_face_crops(clip: ClipData) -> tuple[np.ndarray, np.ndarray]:
    """96×96 face crops of the generated and the reference clip over their common frames, uint8 ``N×96×96×3``
    each; computed once per clip (:func:`talkbench.crops.face.face96_pair`), shared by every metric that compares
    faces with ground truth.

    Raises:
        ClipSkipped: no reference clip, no frames, boxes that cannot crop both clips.
    """
    if clip.reference is None:
        raise ClipSkipped("no reference clip: PSNR/SSIM compare against the ground-truth video")
    try:
        return face96_pair(clip.cache, clip.generated.frames, clip.reference.frames, clip.boxes, clip.clip_id)
    except ValueError as err:
        raise ClipSkipped(str(err)) from err


def _per_frame(metric: Callable[[np.ndarray, np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray,
               chunk: int = FRAME_CHUNK) -> np.ndarray:
    """``metric(a, b)`` (per-frame values ``N``) computed on chunks of ``chunk`` frames and concatenated."""
    return np.concatenate([metric(a[i:i + chunk], b[i:i + chunk]) for i in range(0, len(a), chunk)])


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
        # the script passes (gt, synt); every metric here is symmetric anyway. Per-frame values, computed in
        # chunks of FRAME_CHUNK frames: the float64 intermediates of SSIM stay bounded (~2 MB per frame otherwise)
        return {
            "psnr": float(np.mean(_per_frame(psnr_frames, crops_ref, crops_gen))),
            "psnr_talklip_compat": float(np.mean(_per_frame(psnr_talklip_compat_frames, crops_ref, crops_gen))),
            "ssim": float(np.mean(_per_frame(ssim_frames, crops_ref, crops_gen))),
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
