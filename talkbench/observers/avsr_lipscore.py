"""LipScore (Bigata et al., KeySync, 2025): how alike the lip reader finds the generated and the ground-truth lips.

Follows KeySync's public evaluation code (``evaluation/lipscore.py`` with its ``auto_avsr/lightning.py``, read from
the fork justinjohn0306/keysync @ c589d46e1ebac052c780df7cef8efbea6f99145a; the upstream antonibigata/keysync was
not reachable here): for each (generated, ground-truth) pair, each video goes through Auto-AVSR's preparation
(landmarks → aligned mouth ROI → VideoTransform "test") and the VSR **encoder** (``ModelModule.forward_no_beam``:
front end, projection, conformer blocks and ``after_norm``; no decoding), giving ``T×768`` features per video;
``F.cosine_similarity(feature_pred, feature_gt, dim=1)`` gives one cosine per frame and the clip's LipScore is
their mean; the dataset value is the mean over clips (``compute``: Σ clip means / number of clips).

Here: the model and the crops are those of :mod:`talkbench.observers.avsr` (card ``auto-avsr-vsr``, the
``landmark-aligned`` recipe with dlib landmarks; KeySync uses RetinaFace and the checkpoint
``vsr_trlrs2lrs3vox2avsp_base_updated.pth``, i.e. the 2023–2024 key layout, which loads too). Differences, by
necessity: KeySync compares videos of equal length (F.cosine_similarity fails otherwise); here both clips are
cut to their common frames ``N = min(T_generated, T_reference)`` (crops computed on each whole clip, then the
first N frames encoded), and ``n_frames_lipscore`` records N. Higher is better (1 = the same features);
KeySync's torchmetrics class declares ``higher_is_better = False``, which contradicts its own use of the metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from talkbench.nets.avsr import AutoAVSR
from talkbench.observers.avsr import CARD, crops_of, encoder_features, load_shared
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row


def lipscore(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over frames of the cosine similarity of two feature sequences ``T×D`` (``F.cosine_similarity``, dim 1)."""
    if generated.shape != reference.shape:
        raise ValueError(f"feature shapes differ: {tuple(generated.shape)} vs {tuple(reference.shape)}")
    return float(F.cosine_similarity(generated, reference, dim=1).mean())


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """LipScore = mean of the per-clip LipScores (NaN without scored clips)."""
    values = [float(r["lipscore"]) for r in rows if r.get("lipscore") is not None]
    return {"lipscore": float(np.mean(values)) if values else math.nan}


@dataclass
class LipScoreObserver:
    """LipScore observer; see the module docstring."""

    model: AutoAVSR
    device: torch.device
    frame_chunk: int = 0
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    name: str = "lipscore"
    metrics: tuple[str, ...] = ("lipscore",)
    needs_reference: bool = True
    needs_text: bool = False

    def measure(self, clip: ClipData) -> Row:
        """Per-clip row: ``lipscore``, ``n_frames_lipscore``.

        Raises:
            ClipSkipped: no reference clip, an empty clip, or no mouth crop on either side.
        """
        if clip.reference is None:
            raise ClipSkipped("LipScore needs the ground-truth video (--reference)")
        generated, reference = crops_of(clip, "generated"), crops_of(clip, "reference")
        common = min(len(generated), len(reference))
        gen = encoder_features(self.model, generated[:common], self.device, self.frame_chunk)
        ref = encoder_features(self.model, reference[:common], self.device, self.frame_chunk)
        return {"lipscore": lipscore(gen, ref), "n_frames_lipscore": common}

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def build(ctx: ObserverContext) -> LipScoreObserver:
    """The LipScore observer on the run's Auto-AVSR model (shared with WER_AVSR)."""
    model, device, sha = load_shared(ctx)
    return LipScoreObserver(model=model, device=device, frame_chunk=ctx.options.get("avsr_frame_chunk", 0),
                            weights_sha256={CARD: sha})
