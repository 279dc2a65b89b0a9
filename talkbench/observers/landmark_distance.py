"""LMD: mouth landmark distance between the generated and the ground-truth frames, in pixels.

Definition (Chen, Li, Maddox, Duan, Xu, "Lip Movements Generation at a Glance", ECCV 2018, where LMD was
introduced, and their ATVGnet, CVPR 2019): detect the 68 facial landmarks in each generated frame and in the
ground-truth frame with the same index, take the 20 mouth points (48–67), and average the Euclidean distance
between corresponding points over the points and the frames. Per frame t:

    d_t = 1/20 · Σ_{i=48..67} ‖ p_gen[t, i] − p_ref[t, i] ‖₂

Two normalisations are in wide use; option ``lmd_align`` chooses:

* ``none`` (default; Chen et al. 2018): the raw pixel coordinates of the frames. Any offset of the head (a
  generator that shifts or rescales the face) counts as mouth error. Right for dubbing, where the generated frame
  is pasted into the ground-truth frame.
* ``mouth-centre`` (RAD-NeRF, Tang et al. 2022, ``ashawkey/RAD-NeRF`` ``nerf/utils.py`` ``LMDMeter`` at
  4cb8fc6da986cbcfe690190303a5a5c95530746b, copied by ER-NeRF, SyncTalk, TalkingGaussian, …): each frame's 20 mouth
  points minus their own mean before the distance, so only the mouth's shape counts, not where it is.

Landmarks: dlib 68 points at the frame's own resolution (HOG with one upsampling, CNN fallback;
:func:`talkbench.crops.face_align.face_landmarks`, shared with CSIM and AV-HuBERT's mouth crops). Distances are in
pixels of the **generated** frame: when the ground-truth frames have another size, its landmarks are scaled to the
generated frame's size first (x by the width ratio, y by the height ratio). No resize to a fixed face size is made,
so LMD values are comparable between suites only at equal frame sizes (LRS2: 160×160).

Frames: the common ``min(T_gen, T_ref)`` frames; a frame without a face in either clip is skipped and counted in
``n_no_face_lmd``. Per clip: ``lmd`` = mean of d_t over the scored frames, ``n_frames_lmd`` = their number; no scored
frame → error row. Aggregation: the suite's LMD is the **mean over all scored frames of all clips** (each clip's
mean weighted by ``n_frames_lmd``), the mean over frames of the definition.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from talkbench.crops.face_align import face_landmarks
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row

logger = logging.getLogger(__name__)

MOUTH = slice(48, 68)
ALIGNS: tuple[str, ...] = ("none", "mouth-centre")


def mouth_distance(generated68: np.ndarray, reference68: np.ndarray, align: str = "none") -> np.ndarray:
    """Per-frame mean Euclidean distance of the 20 mouth points (48–67).

    Args:
        generated68, reference68: float ``T×68×2`` (x, y) landmarks of paired frames, in the same pixel units.
        align: ``none`` (raw coordinates) or ``mouth-centre`` (each frame's mouth points minus their mean).
    Returns:
        float64 ``T`` distances, in pixels.
    """
    if align not in ALIGNS:
        raise ValueError(f"Argument `align` must be one of {', '.join(ALIGNS)}, but got {align!r}.")
    gen = np.asarray(generated68, dtype=np.float64)[:, MOUTH]
    ref = np.asarray(reference68, dtype=np.float64)[:, MOUTH]
    if gen.shape != ref.shape or gen.ndim != 3 or gen.shape[1:] != (20, 2):
        raise ValueError(f"expected two T×68×2 landmark arrays, got {np.shape(generated68)} and "
                         f"{np.shape(reference68)}.")
    if align == "mouth-centre":
        gen = gen - gen.mean(axis=1, keepdims=True)
        ref = ref - ref.mean(axis=1, keepdims=True)
    return np.sqrt(((gen - ref) ** 2).sum(axis=2)).mean(axis=1)


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """``lmd``: mean over all scored frames (per-clip means weighted by ``n_frames_lmd``); NaN without frames."""
    pairs = [(float(r["lmd"]), int(r["n_frames_lmd"])) for r in rows
             if r.get("lmd") is not None and r.get("n_frames_lmd")]
    total = sum(n for _, n in pairs)
    return {"lmd": sum(v * n for v, n in pairs) / total if total else math.nan}


@dataclass
class LandmarkDistanceObserver:
    """LMD observer (no network: dlib's shape predictor ships with ``face-recognition-models``)."""

    align: str = "none"
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    name: str = "landmark_distance"
    metrics: tuple[str, ...] = ("lmd",)
    needs_reference: bool = True
    needs_text: bool = False

    def frame_distances(self, clip: ClipData) -> tuple[np.ndarray, int]:
        """Per scored frame distances ``(K,)`` (pixels), and how many common frames had no face in either clip.

        Raises:
            ClipSkipped: no reference clip or no common frame.
        """
        if clip.reference is None:
            raise ClipSkipped("LMD: no reference clip: LMD compares with the ground-truth video")
        generated, reference = clip.generated.frames, clip.reference.frames
        n = min(len(generated), len(reference))
        if n == 0:
            raise ClipSkipped("LMD: the generated or the reference clip has no frames")
        gen_marks = face_landmarks(clip.cache, generated, "generated")[:n]
        ref_marks = face_landmarks(clip.cache, reference, "reference")[:n]
        pairs = [(g, r) for g, r in zip(gen_marks, ref_marks) if g is not None and r is not None]
        if not pairs:
            return np.zeros(0), n
        gen = np.stack([g for g, _ in pairs])
        ref = np.stack([r for _, r in pairs])
        (gen_h, gen_w), (ref_h, ref_w) = generated.shape[1:3], reference.shape[1:3]
        if (gen_h, gen_w) != (ref_h, ref_w):
            logger.warning("%s: generated frames are %d×%d, reference frames %d×%d; the reference landmarks are scaled "
                           "to the generated size for LMD", clip.clip_id, gen_w, gen_h, ref_w, ref_h)
            ref = ref * np.array([gen_w / ref_w, gen_h / ref_h])
        return mouth_distance(gen, ref, self.align), n - len(pairs)

    def measure(self, clip: ClipData) -> Row:
        """Row: ``lmd`` (mean over scored frames, pixels), ``n_frames_lmd`` (scored), ``n_no_face_lmd`` (skipped).

        Raises:
            ClipSkipped: see :meth:`frame_distances`, or no frame pair with a face in both clips.
        """
        distances, skipped = self.frame_distances(clip)
        if len(distances) == 0:
            raise ClipSkipped(f"LMD: no frame of the {skipped} common frames has a face in both clips")
        return {"lmd": float(np.mean(distances)), "n_frames_lmd": int(len(distances)), "n_no_face_lmd": int(skipped)}

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def build(ctx: ObserverContext) -> LandmarkDistanceObserver:
    """The observer; option ``lmd_align`` (``none`` default, or ``mouth-centre``; checked by the spec,
    :func:`talkbench.observers.build`). No weights, any device."""
    return LandmarkDistanceObserver(align=ctx.options.get("lmd_align", "none"))
