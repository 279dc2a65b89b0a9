"""Word and character error rates, and the text normalisations the protocols use.

Two ways to average, both used by the references and both named here:

* :func:`corpus_rate` = 100·Σedits / Σreference words over the whole set. AV-HuBERT's ``infer_s2s.py``
  (TalkLip's WER1) reports this: ``editdistance.eval(hypo.split(), ref.split())`` summed, divided by
  the summed reference lengths.
* :func:`mean_utterance_rate` = 100·mean over utterances of edits/reference words. TalkLip's
  ``teacher_force_wer.py`` (WER2) adds up each utterance's WER (batch size 1) and divides by the
  number of utterances; short utterances weigh as much as long ones.

Edits are Levenshtein distances over words (or characters, for CER) computed with ``editdistance``,
as both references do. All rates are in percent.

Normalisation (:func:`normalize_text`) — what the references do to the transcript, and nothing more; a
protocol names the one it uses (:attr:`talkbench.protocols.Protocol.text_normalisation`):

============  =========  ===========  ======  ===========  ==========================================
name          case       punctuation  digits  apostrophes  used for
============  =========  ===========  ======  ===========  ==========================================
``lower``     lower      kept         kept    kept         WER1 (AV-HuBERT's LRS2/LRS3 labels; mini)
``upper``     upper      kept         kept    kept         WER2 (the Conformer reads the Text: line)
``none``      as is      kept         kept    kept         raw comparison
``letters``   lower      removed      kept    in words     free-form transcripts (csv)
============  =========  ===========  ======  ===========  ==========================================

Every normalisation also collapses runs of whitespace into one space and strips the ends (the references
split on whitespace). AV-HuBERT's manifests lowercase the LRS2/LRS3 ``Text:`` line (``lrs3_manifest.py``:
``label.strip().lower()``) and compare words as written, so "it's" ≠ "its" and "2" ≠ "two"; TalkLip's
Conformer reads the ``Text:`` line as is (upper case; its alphabet is A–Z, 0–9, apostrophe and space).
``letters`` is not a reference protocol: it is for user transcripts with commas and full stops
("Hello, world!" → "hello world"), keeping apostrophes inside words ("don't") and dropping the others.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import editdistance
import numpy as np


@dataclass(frozen=True)
class TextNormalization:
    """How a transcript is normalised before words are compared.

    Attributes:
        case: ``"lower"``, ``"upper"`` or ``"keep"``.
        strip_punctuation: remove punctuation (apostrophes inside words excepted).
        description: what uses it.
    """

    case: str
    strip_punctuation: bool
    description: str


NORMALISATIONS: dict[str, TextNormalization] = {
    "lower": TextNormalization("lower", False, "WER1: AV-HuBERT labels are the lowercased Text: line, as written"),
    "upper": TextNormalization("upper", False, "WER2: the Conformer reads the LRS2 Text: line as is"),
    "none": TextNormalization("keep", False, "whitespace only"),
    "letters": TextNormalization("lower", True, "free-form transcripts: no punctuation, in-word apostrophes kept"),
}

_WORD_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")
_PLACEHOLDER = "\uE000"  # private-use character standing for an in-word apostrophe while punctuation goes


def _strip_punctuation(text: str) -> str:
    text = text.replace("\u2019", "'")  # typographic apostrophe
    text = _WORD_APOSTROPHE.sub(_PLACEHOLDER, text)
    kept = "".join(" " if unicodedata.category(ch).startswith(("P", "S")) else ch for ch in text)
    return kept.replace(_PLACEHOLDER, "'")


def normalize_text(text: str, normalisation: str) -> str:
    """Normalise a transcript or hypothesis with the named rule (see the module table).

    Raises:
        ValueError: unknown normalisation.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"Unknown text normalisation {normalisation!r}; choose from {', '.join(NORMALISATIONS)}.")
    rule = NORMALISATIONS[normalisation]
    if rule.strip_punctuation:
        text = _strip_punctuation(text)
    if rule.case == "lower":
        text = text.lower()
    elif rule.case == "upper":
        text = text.upper()
    return " ".join(text.split())


def word_edits(ref: str, hyp: str) -> tuple[int, int]:
    """(word-level Levenshtein distance, number of reference words); words split on whitespace."""
    ref_words = ref.split()
    return int(editdistance.eval(ref_words, hyp.split())), len(ref_words)


def char_edits(ref: str, hyp: str) -> tuple[int, int]:
    """(character-level Levenshtein distance, number of reference characters, spaces included)."""
    return int(editdistance.eval(ref, hyp)), len(ref)


def corpus_rate(counts: Iterable[tuple[int, int]]) -> float:
    """100·Σedits / Σreference units from per-utterance ``(edits, n_ref)`` counts.

    Raises:
        ValueError: no reference units at all.
    """
    counts = list(counts)
    total = sum(n for _, n in counts)
    if total == 0:
        raise ValueError(f"corpus rate: the {len(counts)} reference(s) hold no words/characters.")
    return 100.0 * sum(e for e, _ in counts) / total


def corpus_rate_of(rows: Iterable[Mapping[str, Any]], edits: str, units: str) -> float:
    """:func:`corpus_rate` of the stored per-clip counts ``rows[edits]``, ``rows[units]`` over the rows that hold
    them (a clip not scored for this rate lacks the columns); NaN when they hold no reference units."""
    counts = [(int(r[edits]), int(r[units])) for r in rows if r.get(edits) is not None]
    return corpus_rate(counts) if sum(n for _, n in counts) else math.nan


def mean_utterance_rate(counts: Iterable[tuple[int, int]]) -> float:
    """100·mean(edits/n_ref) over utterances, from per-utterance ``(edits, n_ref)`` counts.

    Raises:
        ValueError: no utterances, or an utterance with an empty reference (its rate is undefined).
    """
    counts = list(counts)
    if not counts:
        raise ValueError("mean utterance rate: no utterances.")
    empty = [i for i, (_, n) in enumerate(counts) if n == 0]
    if empty:
        raise ValueError(f"mean utterance rate: utterance(s) {empty[:5]} have an empty reference.")
    return 100.0 * float(np.mean([e / n for e, n in counts]))
