"""LPIPS observer: LPIPS v0.1 (the ``lpips`` package, richzhang/PerceptualSimilarity) between each generated
frame's face crop and the ground-truth frame's, AlexNet backbone by default (``lpips_net=vgg``: VGG16).

Protocol, step by step:

1. Frames: the generated and the reference clip are compared pairwise over their common prefix (``N = min`` of
   the two lengths), every frame, no stride — the same pairs as PSNR/SSIM.
2. Crops: the 96×96 face crops PSNR/SSIM use (:func:`talkbench.crops.face.face96_pair`: the clip's face box of
   each frame, ``cv2.resize`` INTER_LINEAR to 96×96; whole frames when the suite has no boxes), shared through
   the clip cache, so a run with both metrics cuts them once.
3. Input: BGR → RGB, ``x / 127.5 − 1`` (``lpips.im2tensor``: RGB in ``[-1, 1]``), no resize (the LPIPS paper
   trains and validates on 64×64 patches and the network is fully convolutional; 96×96 keeps every AlexNet stage
   at ≥ 5×5 and every VGG16 stage at ≥ 6×6).
4. Network: :class:`talkbench.nets.lpips.LPIPS` (ScalingLayer, backbone, channel unit-normalisation with
   eps 1e-10, squared difference, learnt 1×1 lin layers, spatial mean, sum over the 5 stages), i.e.
   ``lpips.LPIPS(net=..., version='0.1')(in0, in1)``; generated and reference crops go through the backbone as
   one batch, ``lpips_chunk`` pairs at a time (changes only float rounding, ~1e-9).
5. Per clip: the mean over the N frame pairs (``lpips``) and ``lpips_n_frames = N``.
6. Summary: the mean over **all frames of all clips** (each clip weighted by ``lpips_n_frames``), as PSNR/SSIM
   aggregate (``frame-mean``).

Weights: the backbone from card ``lpips-alexnet`` (torchvision ``alexnet-owt-7be5be79.pth``) or ``lpips-vgg16``
(``vgg16-397923af.pth``); the lin layers are lpips' v0.1 ``alex.pth`` / ``vgg.pth`` shipped in
``talkbench/data/lpips`` (BSD-2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from talkbench import weights
from talkbench.crops.face import face96_pair
from talkbench.devices import resolve_device, to_device
from talkbench.nets.lpips import CARDS, LIN_SHA256, LPIPS, load_lpips, to_input
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row

METRICS: tuple[str, ...] = ("lpips",)
DEFAULT_CHUNK = 64


def frame_distances(model: LPIPS, crops_gen: np.ndarray, crops_ref: np.ndarray, device: torch.device,
                    chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """LPIPS of each frame pair.

    Args:
        crops_gen, crops_ref: uint8 BGR ``N×H×W×3`` each (same shape).
        chunk: pairs per forward pass.
    Returns:
        float64 ``(N,)``.

    The inputs are made on the host (``to_input``'s float64 arithmetic, bit-identical to lpips.im2tensor) and sent
    with :func:`talkbench.devices.to_device`; the distances come back once, after the last chunk.
    """
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops_gen), chunk):
            a = to_device(to_input(torch.from_numpy(np.ascontiguousarray(crops_gen[start:start + chunk]))), device)
            b = to_device(to_input(torch.from_numpy(np.ascontiguousarray(crops_ref[start:start + chunk]))), device)
            out.append(model(a, b).double())
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)


@dataclass
class LPIPSObserver:
    """LPIPS against the reference clip."""

    model: LPIPS
    device: torch.device
    chunk: int = DEFAULT_CHUNK
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    name: str = "lpips"
    metrics: tuple[str, ...] = METRICS
    needs_reference: bool = True
    needs_text: bool = False

    def measure(self, clip: ClipData) -> Row:
        """Row: ``lpips`` (mean over the compared frames), ``lpips_n_frames`` (frames compared).

        Raises:
            ClipSkipped: no reference clip, no common frame, boxes that cannot crop both clips.
        """
        if clip.reference is None:
            raise ClipSkipped("no reference clip: LPIPS compares against the ground-truth video")
        try:
            crops_gen, crops_ref = face96_pair(clip.cache, clip.generated.frames, clip.reference.frames, clip.boxes,
                                               clip.clip_id)
        except ValueError as err:
            raise ClipSkipped(str(err)) from err
        values = frame_distances(self.model, crops_gen, crops_ref, self.device, self.chunk)
        return {"lpips": float(np.mean(values)), "lpips_n_frames": int(len(values))}

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """Mean over all frames of all clips (each clip's mean weighted by ``lpips_n_frames``); NaN without frames."""
    pairs = [(float(row["lpips"]), int(row["lpips_n_frames"])) for row in rows
             if row.get("lpips") is not None and row.get("lpips_n_frames")]
    total = sum(n for _, n in pairs)
    return {"lpips": sum(v * n for v, n in pairs) / total if total else math.nan}


def build(ctx: ObserverContext) -> LPIPSObserver:
    """Load LPIPS (backbone card ``lpips-alexnet`` or ``lpips-vgg16`` by ``lpips_net``) on ``ctx.device``.

    Options ``lpips_net`` (``alex`` | ``vgg``) and ``lpips_chunk`` (>= 1) are typed and checked by the spec
    (:func:`talkbench.observers.build`) before any file is read.
    """
    net = ctx.options.get("lpips_net", "alex")
    chunk = ctx.options.get("lpips_chunk", DEFAULT_CHUNK)
    device = resolve_device(ctx.device)
    card = CARDS[net]
    path, sha = weights.resolve_with_sha(card, ctx.weights)
    model = load_lpips(path, net, device)
    provenance = {card: sha, f"lpips-lin-{net}": LIN_SHA256[net][:12]}   # load_lpips checked the shipped file
    return LPIPSObserver(model=model, device=device, chunk=chunk, weights_sha256=provenance)


__all__ = ["DEFAULT_CHUNK", "LPIPSObserver", "METRICS", "build", "frame_distances", "summarize"]
