"""CSIM: identity similarity — cosine of ArcFace embeddings of each generated face and the identity reference's face.

Protocol, per clip:

1. Landmarks: dlib 68 points of every generated frame at its own resolution
   (:func:`talkbench.crops.face_align.face_landmarks`, shared with LMD and AV-HuBERT's mouth crops).
2. Identity reference (option ``csim_reference``):

   * ``first`` (default): frame 0 of the ground-truth clip, one embedding for the whole clip (the clip's identity
     reference: a dubbing generator such as TalkLip takes its identity frames from the ground-truth video);
   * ``same``: frame t of the ground truth for generated frame t, over the ``min(T_gen, T_ref)`` common frames.

3. Alignment: dlib 68 → 5 points (eye centres, nose tip, mouth corners) → insightface ``norm_crop`` to 112×112
   (:mod:`talkbench.crops.face_align`).
4. Network: arcface_torch IResNet (option ``csim_backbone``: card ``arcface-r100-glint360k`` by default, or
   ``arcface-r50-ms1mv3``; any arcface_torch ``backbone.pth`` loads, the depth is read from its keys), input RGB ``(x/255 − 0.5)/0.5``, 512-d output, L2-normalised
   (:mod:`talkbench.nets.arcface`).
5. Per frame: the cosine similarity (dot product of unit embeddings) of the generated face and the reference face.
   A generated frame without a face (in ``same`` mode: either frame without a face) is skipped and counted in
   ``n_no_face_csim``. ``csim`` = mean over the scored frames; ``n_frames_csim`` = their number. A clip with no
   scored frame, or whose reference frame 0 has no face (``first``), is an error row.

Aggregation: the suite's CSIM is the **mean over clips** of the per-clip means (each clip counts once, whatever its
length), the way per-video identity scores are averaged in the papers that report CSIM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from talkbench import weights
from talkbench.crops.face_align import aligned_faces, face_landmarks
from talkbench.devices import resolve_device
from talkbench.nets.arcface import IResNet, embeddings, load_arcface
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row

#: option ``csim_backbone`` -> the card of that backbone.pth (the first is the default)
CARDS: dict[str, str] = {"r100-glint360k": "arcface-r100-glint360k", "r50-ms1mv3": "arcface-r50-ms1mv3"}
#: aligned crops per forward pass (memory only): on the CPU, and on a GPU (IResNet-100 at 112×112: ~10 MB of live
#: activations per crop at the peak, estimated from its stride-1 64-channel stem, so ~1.2 GB for 128)
BATCH = 32
CUDA_BATCH = 128


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """``csim``: mean over the clips that have one of their per-clip means; NaN without such clips."""
    values = [float(r["csim"]) for r in rows if r.get("csim") is not None]
    return {"csim": float(np.mean(values)) if values else math.nan}


@dataclass
class IdentityObserver:
    """CSIM observer (card ``arcface-r100-glint360k`` or ``arcface-r50-ms1mv3``); see the module docstring."""

    model: IResNet
    device: torch.device
    reference: str = "first"
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    name: str = "identity"
    metrics: tuple[str, ...] = ("csim",)
    needs_reference: bool = True
    needs_text: bool = False

    def _embed(self, crops: np.ndarray) -> np.ndarray:
        batch = CUDA_BATCH if torch.device(self.device).type == "cuda" else BATCH
        return embeddings(self.model, crops, self.device, batch)

    def frame_similarities(self, clip: ClipData) -> tuple[np.ndarray, int]:
        """Per scored frame cosine similarities ``(K,)`` float64, and how many frames were skipped for no face.

        Raises:
            ClipSkipped: no reference clip, no frames, no face in the reference frame 0 (``first``).
        """
        if clip.reference is None:
            raise ClipSkipped("CSIM: no reference clip: the identity reference is the ground-truth video")
        generated, reference = clip.generated.frames, clip.reference.frames
        if len(generated) == 0 or len(reference) == 0:
            raise ClipSkipped("CSIM: the generated or the reference clip has no frames")
        if self.reference == "first":
            ref_marks = face_landmarks(clip.cache, reference, "reference", first_only=True)
            if ref_marks[0] is None:
                raise ClipSkipped("CSIM: no face in frame 0 of the reference clip (the identity reference); try "
                                  "--option csim_reference=same")
            ref_crop, _ = aligned_faces(reference[:1], ref_marks)
            gen_marks = face_landmarks(clip.cache, generated, "generated")
            gen_crops, gen_index = aligned_faces(generated, gen_marks)
            sims = self._embed(gen_crops) @ self._embed(ref_crop)[0]
            return sims.astype(np.float64), len(generated) - len(gen_index)
        n = min(len(generated), len(reference))
        gen_marks = face_landmarks(clip.cache, generated, "generated")[:n]
        ref_marks = face_landmarks(clip.cache, reference, "reference")[:n]
        both = [g if (g is not None and r is not None) else None for g, r in zip(gen_marks, ref_marks)]
        gen_crops, index = aligned_faces(generated[:n], both)
        ref_crops, _ = aligned_faces(reference[:n], [r if b is not None else None for r, b in zip(ref_marks, both)])
        sims = np.sum(self._embed(gen_crops) * self._embed(ref_crops), axis=1)
        return sims.astype(np.float64), n - len(index)

    def measure(self, clip: ClipData) -> Row:
        """Row: ``csim`` (mean over scored frames), ``n_frames_csim`` (scored), ``n_no_face_csim`` (skipped).

        Raises:
            ClipSkipped: see :meth:`frame_similarities`, or no frame with a face.
        """
        sims, skipped = self.frame_similarities(clip)
        if len(sims) == 0:
            raise ClipSkipped(f"CSIM: no face found in any of the {skipped} compared frames")
        return {"csim": float(np.mean(sims)), "n_frames_csim": int(len(sims)), "n_no_face_csim": int(skipped)}

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def build(ctx: ObserverContext) -> IdentityObserver:
    """Load the chosen ArcFace backbone (its card's file, or the one given with ``--weights CARD=PATH``).

    Options (typed and checked by the spec, :func:`talkbench.observers.build`): ``csim_reference`` — ``first``
    (default; the ground truth's frame 0) or ``same`` (the same frame); ``csim_backbone`` — ``r100-glint360k``
    (default) or ``r50-ms1mv3``.
    """
    reference = ctx.options.get("csim_reference", "first")
    card = CARDS[ctx.options.get("csim_backbone", "r100-glint360k")]
    device = resolve_device(ctx.device)
    path, sha = weights.resolve_with_sha(card, ctx.weights)
    return IdentityObserver(model=load_arcface(path, device), device=device, reference=reference,
                            weights_sha256={card: sha})
