"""WER1 observer: the fine-tuned AV-HuBERT lip reader (card ``avhubert-large-lrs2``) decoding the generated video.

Per clip (as av_hubert's ``infer_s2s.py`` with ``conf/s2s_decode.yaml``, video only):

1. mouth crops of the protocol's recipe (:mod:`talkbench.crops.mouth`): ``centre88`` = gray centre 88×88 of
   the full frame (``talklip2023``, the paper's Table 1); ``landmark-aligned`` = dlib-landmark-aligned 96×96
   mouth patches, gray, centre 88 (``avhubert-official``);
2. ``(x/255 − 0.421)/0.165``, ``[1, 1, T, 88, 88]``;
3. beam search (:func:`talkbench.nets.avhubert_decoding.beam_search`: beam 50, lenpen 1, max length = frames);
4. the best hypothesis detokenised; the reference = the transcript lowercased and round-tripped through the
   tokenizer (sentencepiece pieces → dictionary ids → text), exactly what infer_s2s compares against;
5. word edits (editdistance over whitespace-split words) and character edits;
6. viseme edits (``ver``, not in the reference: :mod:`talkbench.metrics.visemes`, espeak-ng phonemes of the same
   reference and hypothesis mapped to Neti et al.'s viseme classes, word boundaries dropped).

Aggregation (:func:`summarize`): ``wer1`` = 100 · Σ word edits / Σ reference words over the clips (corpus
WER in percent, as infer_s2s prints it); ``cer1`` likewise over characters, ``ver`` over visemes. The per-clip
``wer1``/``cer1`` columns are the per-utterance values in percent.

Clips longer than ``max_frames`` (option; default the checkpoint's ``max_sample_size``, 500 frames for the
released models) become error rows: the reference's data loader drops them silently from the corpus.
Deviation to know: infer_s2s batches clips (max_tokens 1000) and sets the maximum output length from the
padded batch length; here each clip is decoded alone (max length = its own frame count). Real models end
their hypotheses long before either limit, so this only matters for degenerate outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from talkbench import weights
from talkbench.crops import Kind
from talkbench.crops.mouth import mouth88
from talkbench.devices import resolve_device, to_device
from talkbench.metrics.visemes import viseme_columns
from talkbench.metrics.text import char_edits, corpus_rate_of, word_edits
from talkbench.nets.avhubert import IMAGE_MEAN, IMAGE_STD, load_avhubert_seq2seq, video_input
from talkbench.nets.avhubert_decoding import S2S_DECODE, beam_search
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row

logger = logging.getLogger(__name__)

CARD = "avhubert-large-lrs2"
METRICS: tuple[str, ...] = ("wer1", "cer1")
DEFAULT_MAX_FRAMES = 500   # max_sample_size of av_hubert's fine-tuning configs


def word_and_char_edits(ref: str, hyp: str) -> tuple[int, int, int, int]:
    """``(word edits, reference words, char edits, reference chars)`` of a hypothesis against a reference.

    Words: editdistance over ``str.split()`` lists (infer_s2s). Characters: editdistance over the strings
    with runs of whitespace collapsed to one space (spaces count). Uses :mod:`talkbench.metrics.text`.
    """
    edits, n_words = word_edits(ref, hyp)
    chars, n_chars = char_edits(" ".join(ref.split()), " ".join(hyp.split()))
    return int(edits), int(n_words), int(chars), int(n_chars)


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """Corpus WER1/CER1/VER in percent over stored per-clip rows (NaN without rows or reference words)."""
    return {"wer1": corpus_rate_of(rows, "edits1", "ref_words1"),
            "cer1": corpus_rate_of(rows, "char_edits1", "ref_chars1"),
            "ver": corpus_rate_of(rows, "viseme_edits1", "ref_visemes1")}


def lipreading_row(ref: str, hyp: str, score: float, suffix: str) -> dict[str, Any]:
    """Per-clip columns of a lip reader's transcript, each named ``<column><suffix>`` (``wer1``, ``wer_avsr``, …):
    WER/CER in percent, the texts, the decoder score, and the counts the corpus-level summary adds up (word,
    character and viseme edits and reference units)."""
    edits, n_words, char_edits, n_chars = word_and_char_edits(ref, hyp)
    columns = {
        "wer": 100.0 * edits / n_words if n_words else math.nan,
        "hyp": hyp,
        "ref": ref,
        "score": float(score),
        "edits": edits,
        "ref_words": n_words,
        "cer": 100.0 * char_edits / n_chars if n_chars else math.nan,
        "char_edits": char_edits,
        "ref_chars": n_chars,
    }
    return {**{name + suffix: value for name, value in columns.items()}, **viseme_columns(ref, hyp, suffix)}


def wer1_row(ref: str, hyp: str, score: float) -> dict[str, Any]:
    """Per-clip WER1/CER1 columns (percent) with the counts the corpus-level summary adds up."""
    return lipreading_row(ref, hyp, score, "1")


def lipreader_crops(clip: ClipData, recipe: str) -> np.ndarray:
    """The lip readers' gray 88×88 uint8 crops ``T×88×88`` of the generated clip under a crop recipe
    (:func:`talkbench.crops.mouth.mouth88`: computed once per clip, shared by every lip reader of the run).

    Raises:
        ClipSkipped: no usable mouth crop.
    """
    try:
        return mouth88(clip.cache, clip.generated.frames, recipe)
    except ValueError as err:
        raise ClipSkipped(f"WER1: no mouth crop ({err})") from None


@dataclass
class AVHubertObserver:
    """WER1 observer; see the module docstring for the protocol.

    Attributes:
        model: the seq2seq lip reader (eval mode, on ``device``).
        tokenizer: its :class:`talkbench.nets.avhubert_tokenizer.Tokenizer`.
        crop_recipe: the mouth crop recipe (``centre88`` or ``landmark-aligned``, ``talkbench.crops.Kind.MOUTH88.recipes``).
        max_frames: longer clips are error rows.
        beam: beam width (50 in the reference).
    """

    model: Any
    tokenizer: Any
    device: torch.device
    crop_recipe: str = "centre88"
    max_frames: int = DEFAULT_MAX_FRAMES
    beam: int = 50
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    name: str = "avhubert"
    metrics: tuple[str, ...] = METRICS
    needs_reference: bool = False
    needs_text: bool = True

    def crops(self, clip: ClipData) -> np.ndarray:
        """Gray 88×88 uint8 crops ``T×88×88`` of the generated clip (cached per clip)."""
        return lipreader_crops(clip, self.crop_recipe)

    def transcribe(self, crops: np.ndarray) -> tuple[str, float, list[int]]:
        """Best beam hypothesis of gray crops ``T×88×88``: ``(text, normalised score, tokens)``."""
        spec = getattr(self.model, "task_spec", {}) or {}
        video = to_device(video_input(crops, spec.get("image_mean", IMAGE_MEAN), spec.get("image_std", IMAGE_STD)),
                          self.device)
        settings = dataclasses.replace(S2S_DECODE, beam=self.beam)
        hyps = beam_search(self.model, video, None, **dataclasses.asdict(settings))[0]
        best = hyps[0]
        return self.tokenizer.decode(best.tokens), best.score, best.tokens

    def measure(self, clip: ClipData) -> Row:
        """Per-clip row: ``wer1``, ``hyp1``, ``ref1``, ``score1``, ``edits1``, ``ref_words1``, ``cer1``,
        ``char_edits1``, ``ref_chars1``.

        Raises:
            ClipSkipped: no transcript, no frames, more than ``max_frames`` frames, or no mouth crop.
        """
        if not clip.text or not clip.text.strip():
            raise ClipSkipped("no transcript for WER1")
        frames = clip.generated.frames
        num = int(frames.shape[0])
        if num == 0:
            raise ClipSkipped("WER1: the generated clip has no frames")
        if num > self.max_frames:
            raise ClipSkipped(f"WER1: {num} frames, more than max_frames={self.max_frames} (av_hubert's loader "
                              "drops such clips); raise the option max_frames to score it")
        hyp, score, _ = self.transcribe(self.crops(clip))
        ref = self.tokenizer.normalize_reference(clip.text)
        return wer1_row(ref, hyp, score)

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def _tokenizer_files(options: Mapping[str, Any]) -> tuple[Path, Path] | None:
    spm, dict_txt = options.get("avhubert_spm_model"), options.get("avhubert_dict")
    if spm is None and dict_txt is None:
        return None
    if spm is None or dict_txt is None:
        raise ValueError("give both options avhubert_spm_model (sentencepiece .model) and avhubert_dict (dict.txt), "
                         "or neither (the checkpoint's task_state is used).")
    return Path(spm), Path(dict_txt)


def build(ctx: ObserverContext) -> AVHubertObserver:
    """Load the ``avhubert-large-lrs2`` checkpoint (``--weights avhubert-large-lrs2=PATH`` or the cache).

    Options (typed and checked by the spec, :func:`talkbench.observers.build`): ``max_frames`` (None = the
    checkpoint's max_sample_size, else 500), ``avhubert_beam`` (default 50), ``avhubert_spm_model`` +
    ``avhubert_dict`` (tokenizer files for a checkpoint without task_state).

    Raises:
        ValueError: unknown crop recipe, only one of the two tokenizer files, or CUDA asked for but absent.
    """
    if ctx.mouth_roi not in Kind.MOUTH88.recipes:
        raise ValueError(f"Unknown mouth crop recipe `{ctx.mouth_roi}` for WER1; choose from "
                         f"{', '.join(Kind.MOUTH88.recipes)}.")
    device = resolve_device(ctx.device)
    path, sha = weights.resolve_with_sha(CARD, ctx.weights)
    model, tokenizer = load_avhubert_seq2seq(path, device, tokenizer_files=_tokenizer_files(ctx.options))
    max_frames = ctx.options.get("max_frames")
    if max_frames is None:
        max_frames = model.task_spec.get("max_sample_size") or DEFAULT_MAX_FRAMES
    return AVHubertObserver(model=model, tokenizer=tokenizer, device=device, crop_recipe=ctx.mouth_roi,
                            max_frames=int(max_frames), beam=ctx.options.get("avhubert_beam", 50),
                            weights_sha256={CARD: sha})
