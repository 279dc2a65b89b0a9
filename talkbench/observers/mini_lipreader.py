"""WER1/CER1 under protocol ``mini``: the mini lip reader B (card ``mini-lipreader-b``) instead of AV-HuBERT.

Same input and per-clip columns as :mod:`talkbench.observers.avhubert`: the protocol's mouth crops (``mini``:
gray centre 88×88 of the whole frame, :func:`talkbench.observers.avhubert.lipreader_crops`, shared through the
clip cache), references normalised as the protocol says (``mini``: lowercased); per-clip ``wer1``, ``hyp1``, ``ref1``, ``score1`` (mean best-path CTC log-probability),
``edits1``, ``ref_words1``, ``cer1``, ``char_edits1``, ``ref_chars1``, ``viseme_edits1``, ``ref_visemes1``. Summary:
corpus WER1/CER1/VER in percent
(:func:`talkbench.observers.avhubert.summarize`).

Options: ``mini_lexicon`` (default true): snap each decoded word to the nearest word of the corpus' 51-word
vocabulary; ``mini_lipreader`` (``b`` default, or ``a``): which card to score with.

The network is :mod:`talkbench.nets.mini_lipreader`; its weights were trained by
:mod:`talkbench.train.mini_observers` on the synthetic corpus (:mod:`talkbench.synthetic`); it warns on clips that are
not corpus renders (:func:`talkbench.observers.mini_syncnet.outside_renders`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from talkbench import weights
from talkbench.devices import resolve_device
from talkbench.metrics.text import normalize_text
from talkbench.nets.mini_lipreader import load_lipreader, transcribe
from talkbench.observers.avhubert import lipreader_crops, summarize, wer1_row
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row
from talkbench.observers.mini_syncnet import warn_outside_renders
from talkbench.synthetic import grammar

logger = logging.getLogger(__name__)

CARDS: dict[str, str] = {"a": "mini-lipreader-a", "b": "mini-lipreader-b"}
CARD = CARDS["b"]
METRICS: tuple[str, ...] = ("wer1", "cer1")


@dataclass
class MiniLipReaderObserver:
    """The mini WER1 scoring unit (see the module docstring)."""

    model: Any
    device: torch.device
    lexicon: tuple[str, ...] | None = None
    crop_recipe: str = "centre88"
    text_normalisation: str = "lower"
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    name: str = "mini-lipreader"
    metrics: tuple[str, ...] = METRICS
    needs_reference: bool = False
    needs_text: bool = True

    def crops(self, clip: ClipData) -> Any:
        """Gray 88×88 uint8 crops ``T×88×88`` (cached per clip)."""
        return lipreader_crops(clip, self.crop_recipe)

    def transcribe(self, crops: Any) -> tuple[str, float, list[int]]:
        """Greedy CTC reading of gray crops ``T×88×88``: ``(text, mean best-path log-probability, [])``."""
        text, score = transcribe(self.model, crops, self.device, self.lexicon)
        return text, score, []

    def measure(self, clip: ClipData) -> Row:
        """Per-clip WER1 row (columns as the AV-HuBERT observer's). Raises ClipSkipped without text/frames."""
        if not clip.text or not clip.text.strip():
            raise ClipSkipped("no transcript for WER1")
        if int(clip.generated.frames.shape[0]) == 0:
            raise ClipSkipped("WER1: the generated clip has no frames")
        warn_outside_renders(self.name, clip)
        hyp, score, _ = self.transcribe(self.crops(clip))
        ref = normalize_text(clip.text, self.text_normalisation)
        return wer1_row(ref, hyp, score)

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def build(ctx: ObserverContext) -> MiniLipReaderObserver:
    """Load the mini lip reader (card ``mini-lipreader-b``, bundled in the package) on ``ctx.device``.

    Options ``mini_lipreader`` (``a`` | ``b``) and ``mini_lexicon`` are typed and checked by the spec
    (:func:`talkbench.observers.build`).

    Raises:
        ValueError: CUDA asked for but absent.
    """
    device = resolve_device(ctx.device)
    card = CARDS[ctx.options.get("mini_lipreader", "b")]
    path, sha = weights.resolve_with_sha(card, ctx.weights)
    model, _ = load_lipreader(path, device)
    lexicon = tuple(grammar.VOCABULARY) if ctx.options.get("mini_lexicon", True) else None
    return MiniLipReaderObserver(model=model, device=device, lexicon=lexicon, crop_recipe=ctx.mouth_roi,
                                 text_normalisation=ctx.text_normalisation,
                                 weights_sha256={card: sha})


__all__ = ["CARD", "CARDS", "METRICS", "MiniLipReaderObserver", "build", "summarize"]
