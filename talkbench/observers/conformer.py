"""WER2: TalkLip's Conformer lip reader, teacher-forced on the reference transcript (``teacher_force_wer.py``).

Per clip: the generated frames -> gray (cv2 BGR2GRAY) -> ``cv2.resize`` to 224×224 (INTER_LINEAR, whatever
the source size) -> centre crop 112×112 (:func:`talkbench.crops.lipreader_inputs.conformer_crops`) ->
``(x/255 - 0.4161) / 0.1688``; the transcript -> character
indices; the decoder is fed ``<sos> + target`` and the argmax of each step is the prediction. Scoring is
deep_avsr's ``asrMetrics.compute_both`` on that one utterance (see :func:`score_utterance`).

Aggregation (:func:`summarize`): ``wer2`` is the **mean of the per-utterance WERs**, as the reference's
``main()`` (batch size 1) prints it; ``wer2_corpus`` is total word edits / total reference words;
``cer2`` / ``cer2_corpus`` likewise for characters. All are in **percent** (the reference prints fractions,
``Val.WER: 0.273`` = 27.3 here), like WER1 and the paper's tables; the per-clip ``wer2``/``cer2`` too.
``ver2`` (not in the reference) is the corpus viseme error rate of the same teacher-forced hypothesis against the
transcript (:func:`talkbench.metrics.visemes.viseme_columns`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import editdistance
import numpy as np
import torch

from talkbench import weights
from talkbench.crops.lipreader_inputs import conformer112
from talkbench.devices import resolve_device, to_device
from talkbench.metrics.text import corpus_rate, corpus_rate_of, mean_utterance_rate
from talkbench.metrics.visemes import viseme_columns
from talkbench.nets.conformer import BLANK, SOS_EOS, SPACE, ConformerLipReader, load_conformer
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row

logger = logging.getLogger(__name__)

CARD = "conformer-lrs2"
#: Normalisation of ``teacher_force_wer.py`` (``--video_mean``, ``--video_std`` defaults).
VIDEO_MEAN = 0.4161
VIDEO_STD = 0.1688

#: ``teacher_force_wer.char_dict``: character -> output index (0 is the CTC blank, 39 is <sos>/<eos>).
CHAR_TO_INDEX: dict[str, int] = {
    " ": 1, "E": 2, "T": 3, "O": 4, "A": 5, "I": 6, "N": 7, "S": 8, "H": 9, "R": 10, "L": 11, "D": 12,
    "U": 13, "Y": 14, "W": 15, "G": 16, "C": 17, "M": 18, "F": 19, "B": 20, "P": 21, "'": 22, "V": 23,
    "K": 24, "J": 25, "X": 26, "Q": 27, "Z": 28, "0": 29, "1": 30, "9": 31, "2": 32, "8": 33, "5": 34,
    "6": 35, "7": 36, "3": 37, "4": 38,
}
INDEX_TO_CHAR: dict[int, str] = {i: c for c, i in CHAR_TO_INDEX.items()}
INDEX_TO_CHAR[SOS_EOS] = "<EOS>"
INDEX_TO_CHAR[BLANK] = "<0>"


def normalise(crops: np.ndarray) -> torch.Tensor:
    """uint8 ``T×112×112`` -> float32 ``(x/255 - 0.4161) / 0.1688``, computed in float32 as the reference does."""
    return (torch.from_numpy(np.ascontiguousarray(crops)) / 255.0 - VIDEO_MEAN) / VIDEO_STD


def transcript_indices(text: str) -> list[int]:
    """An LRS2 transcript -> character indices.

    Takes the first line; a leading ``Text:`` label (LRS2's ``Text:  ...`` lines) is removed, then outer
    whitespace; letters are upper-cased (LRS2 transcripts are upper case). Inner spaces are kept as they
    are, as the reference keeps them.

    Raises:
        ValueError: empty transcript, or characters outside the 38-character vocabulary.
    """
    line = (text.splitlines() or [""])[0].strip()
    if line.startswith("Text:"):
        line = line[len("Text:"):].strip()
    line = line.upper()
    if not line:
        raise ValueError("empty transcript")
    unknown = sorted({c for c in line if c not in CHAR_TO_INDEX})
    if unknown:
        raise ValueError(f"transcript {line!r} has characters outside the Conformer's vocabulary "
                         f"(A-Z, 0-9, ' and space): {''.join(unknown)!r}")
    return [CHAR_TO_INDEX[c] for c in line]


def indices_text(indices: Sequence[int]) -> str:
    """Character indices -> text (39 as ``<EOS>``, the blank 0 as ``<0>``)."""
    return "".join(INDEX_TO_CHAR.get(int(i), f"<{int(i)}>") for i in indices)


def _words(seq: Sequence[int], keep_empty: bool) -> list[tuple[int, ...]]:
    """Split at the space index. The first word is always kept (empty when the sequence starts with a space);
    later empty words are kept only when ``keep_empty`` (the reference keeps them for the target only)."""
    words: list[list[int]] = [[]]
    for symbol in seq:
        if symbol == SPACE:
            words.append([])
        else:
            words[-1].append(symbol)
    rest = words[1:] if keep_empty else [w for w in words[1:] if w]
    return [tuple(words[0])] + [tuple(w) for w in rest]


@dataclass(frozen=True)
class UtteranceScore:
    """Teacher-forced scores of one utterance.

    Attributes:
        hypothesis: predicted indices used by the metric (first L steps; a final <eos> removed).
        char_edits, ref_chars: character edit distance and target length.
        word_edits, ref_words: word edit distance and number of target words.
    """

    hypothesis: tuple[int, ...]
    char_edits: int
    ref_chars: int
    word_edits: int
    ref_words: int

    @property
    def cer(self) -> float:
        return self.char_edits / self.ref_chars

    @property
    def wer(self) -> float:
        return self.word_edits / self.ref_words


def score_utterance(argmax: Sequence[int], target: Sequence[int]) -> UtteranceScore:
    """deep_avsr ``asrMetrics.compute_both`` for one utterance.

    Only the first ``L = len(target)`` argmax steps count (the step that should predict <eos> is ignored);
    if the last of them is <eos> (39) it is dropped; any other 39 or blank 0 stays a symbol. Words: split at
    the space; empty hypothesis words are dropped except the first; every target word is kept.
    """
    target = [int(t) for t in target]
    hyp = [int(a) for a in argmax[: len(target)]]
    if hyp and hyp[-1] == SOS_EOS:
        hyp = hyp[:-1]
    hyp_words, ref_words = _words(hyp, keep_empty=False), _words(target, keep_empty=True)
    return UtteranceScore(tuple(hyp), int(editdistance.eval(hyp, target)), len(target),
                          int(editdistance.eval(hyp_words, ref_words)), len(ref_words))


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """WER2 over stored per-clip rows, in percent.

    ``wer2`` = mean of per-utterance WERs (the paper's aggregation); ``wer2_corpus`` = 100 · sum of word
    edits / sum of reference words; ``cer2`` / ``cer2_corpus`` the same for characters. NaN without rows.
    """
    rows = [r for r in rows if r.get("wer2") is not None]
    if not rows:
        return {k: math.nan for k in ("wer2", "wer2_corpus", "cer2", "cer2_corpus", "ver2")}
    # recomputed from the integer counts so that no rounding of the stored per-clip rates creeps in
    words = [(int(r["edits2"]), int(r["ref_words2"])) for r in rows]
    chars = [(int(r["char_edits2"]), int(r["ref_chars2"])) for r in rows]
    return {"ver2": corpus_rate_of(rows, "viseme_edits2", "ref_visemes2"),
            "wer2": mean_utterance_rate(words), "wer2_corpus": corpus_rate(words),
            "cer2": mean_utterance_rate(chars), "cer2_corpus": corpus_rate(chars)}


@dataclass
class ConformerObserver:
    """WER2 observer (card ``conformer-lrs2``); see the module docstring for the protocol."""

    model: ConformerLipReader
    device: torch.device
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    frame_chunk: int = 0
    name: str = "conformer"
    metrics: tuple[str, ...] = ("wer2",)
    needs_reference: bool = False
    needs_text: bool = True

    def measure(self, clip: ClipData) -> Row:
        """Per-clip row: ``wer2`` (%), ``hyp2``, ``edits2``, ``ref_words2``, ``cer2`` (%), ``char_edits2``,
        ``ref_chars2``.

        Raises:
            ClipSkipped: no transcript, a character outside the vocabulary, or no frames.
        """
        if not clip.text:
            raise ClipSkipped("no transcript for WER2 (the Conformer is teacher-forced on it)")
        try:
            target = transcript_indices(clip.text)
        except ValueError as err:
            raise ClipSkipped(f"WER2: {err}") from None
        frames = clip.generated.frames
        if frames.shape[0] == 0:
            raise ClipSkipped("WER2: the generated clip has no frames")
        crops = conformer112(clip.cache, frames)
        out = self.model.teacher_force(to_device(normalise(crops), self.device), target, frame_chunk=self.frame_chunk)
        score = score_utterance(out["argmax"].cpu().tolist(), target)
        hyp = indices_text(score.hypothesis)
        return {"wer2": 100.0 * score.wer, "hyp2": hyp, "edits2": score.word_edits,
                "ref_words2": score.ref_words, "cer2": 100.0 * score.cer, "char_edits2": score.char_edits,
                "ref_chars2": score.ref_chars, **viseme_columns(indices_text(target), hyp, "2")}

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def build(ctx: ObserverContext) -> ConformerObserver:
    """Load the ``conformer-lrs2`` checkpoint (``--weights conformer-lrs2=PATH`` or the cache) on ``ctx.device``.

    Option ``conformer_frame_chunk`` (int, default 0 = all frames at once) runs the ResNet front end on that
    many frames at a time, to bound memory on long clips; results do not change.
    """
    device = resolve_device(ctx.device)
    path, sha = weights.resolve_with_sha(CARD, ctx.weights)
    model = load_conformer(path, device)
    return ConformerObserver(model=model, device=device, weights_sha256={CARD: sha},
                             frame_chunk=ctx.options.get("conformer_frame_chunk", 0))
