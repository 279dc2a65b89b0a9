"""Viseme error rate (VER): the edit distance over viseme sequences instead of words.

Lips cannot show voicing or nasality: "pat", "bat" and "mat" look the same. Word error rate counts a lip
reader's "bat" for "pat" as an error that no lip reader could avoid; VER does not. Both the hypothesis and
the reference are turned into viseme sequences the same way and compared with a Levenshtein distance:

1. **Text → phonemes**: espeak-ng (American English voice ``en-us``) through ``espeak_TextToPhonemes``, on the
   library that :mod:`talkbench.synthetic.speech` loads (one owner: PyPI ``espeakng-loader``). Before that
   the text is lowercased, stripped of punctuation (apostrophes inside words kept) and of ``<...>`` tokens
   (``<unk>``), as :func:`talkbench.metrics.text.normalize_text` ``letters`` does; digits are read as words
   by espeak-ng ("2" → "two"). Stress and length marks are dropped; pauses are dropped.
2. **Phonemes → ARPAbet** (:data:`ESPEAK_TO_ARPABET`): each espeak-ng mnemonic is written as the TIMIT/CMUdict
   phone(s) that transcribe it (r-coloured vowels as vowel + ``r``/``er``, as CMUdict writes them: "near" =
   ``ih r``, "fire" = ``ay er``).
3. **ARPAbet → visemes** (:data:`NETI_VISEMES`): the 12 speech viseme classes of Neti et al. (2000), the
   IBM/JHU-workshop viseme set of Potamianos, Neti, Gravier, Garg & Senior, "Recent advances in the automatic
   recognition of audiovisual speech", Proc. IEEE 91(9):1306-1326, 2003 (compared with other published maps by
   Cappelletta & Harte, ICPRAM 2012, and Bear & Harvey, Speech Communication 2017); read from its reproduction in
   Gillen's TCD-TIMIT thesis (docs/ver.md says which sources were read). Silence is not a class here (pauses are
   dropped).
4. **Edits**: Levenshtein distance over the two class sequences (``editdistance``, as WER). **Word boundaries
   are not kept**: the lips do not show them ("ice cream" and "I scream" are 0 edits apart), so a
   hypothesis that only splits or joins words is not penalised.

``ver`` = 100 · Σ viseme edits / Σ reference visemes over the corpus (:func:`talkbench.metrics.text.corpus_rate`),
as ``wer1``.

Why this table: it covers every English phoneme (vowels and consonants; many published maps do not), it is
the viseme set of a reference work of audio-visual speech recognition, and its consonant classes are those of
talkbench's synthetic corpus (docs/VISEMES.md: PBM, FV, TH, TDN, SZ, SH, KG), except that it has ``l r y`` in
one class (alveolar-semivowels) and ``w`` with the velars; it has 4 vowel classes instead of the renderer's 5,
and ``h`` counts as a vowel (it takes the shape of the next vowel). The renderer's 16 classes are mouth shapes
to draw; this table is what viewers tell apart, so it is coarser, and VER on the mini corpus uses it like
everywhere else.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Iterable

import editdistance

from talkbench.metrics.text import normalize_text
from talkbench.synthetic import speech

logger = logging.getLogger(__name__)

#: Viseme class -> ARPAbet (TIMIT) phones, Neti et al. 2000 as printed by Potamianos et al. 2003.
NETI_VISEMES: dict[str, tuple[str, ...]] = {
    "V1": ("ao", "ah", "aa", "er", "oy", "aw", "hh"),  # lip-rounding based vowels
    "V2": ("uw", "uh", "ow"),
    "V3": ("ae", "eh", "ey", "ay"),
    "V4": ("ih", "iy", "ax"),
    "A": ("l", "el", "r", "y"),                         # alveolar-semivowels
    "B": ("s", "z"),                                    # alveolar-fricatives
    "C": ("t", "d", "n", "en"),                         # alveolar
    "D": ("sh", "zh", "ch", "jh"),                      # palato-alveolar
    "E": ("p", "b", "m"),                               # bilabial
    "F": ("th", "dh"),                                  # dental
    "G": ("f", "v"),                                    # labio-dental
    "H": ("ng", "g", "k", "w"),                         # velar
}

ARPABET_TO_VISEME: dict[str, str] = {phone: cls for cls, phones in NETI_VISEMES.items() for phone in phones}

#: espeak-ng English mnemonic (stress marks removed) -> ARPAbet phones; () = not a sound (pauses).
#: Covers espeak-ng's en / en-us inventory (every key of talkbench.synthetic.visemes.PHONEME_TO_VISEMES).
ESPEAK_TO_ARPABET: dict[str, tuple[str, ...]] = {
    # consonants
    "p": ("p",), "b": ("b",), "m": ("m",), "m-": ("m",),
    "f": ("f",), "v": ("v",), "T": ("th",), "D": ("dh",),
    "t": ("t",), "d": ("d",), "n": ("n",), "n-": ("en",),
    # flaps and other /t/ /d/ allophones ("better", "water", "button"): the table has no dx or q; CMUdict
    # writes t / d for them
    "t#": ("t",), "t2": ("t",), "d#": ("d",), "*": ("t",), "?": ("t",),
    "s": ("s",), "z": ("z",), "S": ("sh",), "Z": ("zh",), "tS": ("ch",), "dZ": ("jh",),
    "l": ("l",), "l/": ("l",), "l/2": ("l",), "@L": ("el",),
    "k": ("k",), "g": ("g",), "N": ("ng",), "x": ("k",), "h": ("hh",), "C": ("hh",),
    "r": ("r",), "r-": ("r",), "w": ("w",), "W": ("w",), "j": ("y",), ";": ("y",),
    # r-coloured vowels
    "3": ("er",), "3:": ("er",), "@r": ("er",), "IR": ("er",),
    # monophthongs
    "a": ("ae",), "aa": ("ae",), "a2": ("ax",), "a#": ("ax",),
    "A:": ("aa",), "A": ("aa",), "0": ("aa",), "0#": ("ao",),
    "E": ("eh",), "E2": ("eh",), "E3": ("eh",), "e": ("eh",),
    "@": ("ax",), "@2": ("ax",), "@5": ("ax",), "V": ("ah",),
    "i": ("iy",), "i:": ("iy",), "I": ("ih",), "I#": ("ih",), "I2": ("ih",), "I2#": ("ih",),
    "O": ("ao",), "O:": ("ao",), "O2": ("ao",),
    "u:": ("uw",), "u": ("uw",), "U": ("uh",),
    # diphthongs (one ARPAbet phone each) and vowel + r
    "aI": ("ay",), "aU": ("aw",), "eI": ("ey",), "oU": ("ow",), "oU#": ("ow",), "OI": ("oy",),
    "aI@": ("ay", "er"), "aI3": ("ay", "er"), "aU@": ("aw", "er"),
    "i@": ("iy", "ax"), "i@3": ("ih", "r"), "e@": ("eh", "r"), "a@": ("aa", "r"),
    "U@": ("uh", "r"), "u@": ("uh", "r"), "o@": ("ao", "r"), "O@": ("ao", "r"), "A@": ("aa", "r"),
}

#: espeak-ng's voice for the phonemes (the transcripts of LRS2/LRS3 and the mini corpus are English).
VOICE = "en-us"
_TOKEN = re.compile(r"<[^<>\s]*>")
_SEPARATOR = "|"  # between phonemes in espeak-ng's output (words are separated by spaces)


class UnknownPhoneme(ValueError):
    """espeak-ng gave a phoneme that :data:`ESPEAK_TO_ARPABET` does not map."""


@functools.lru_cache(maxsize=8192)
def phonemes(text: str) -> tuple[tuple[str, ...], ...]:
    """espeak-ng phoneme mnemonics of ``text``, per word, stress marks and pauses removed.

    ``text`` is normalised first (lowercase, no punctuation, no ``<...>`` tokens). Empty text gives ``()``.

    Raises:
        talkbench.synthetic.speech.EspeakError: espeak-ng (PyPI ``espeakng-loader``) is not installed.
    """
    clean = normalize_text(_TOKEN.sub(" ", text), "letters")
    if not clean:
        return ()
    text_phonemes = speech.engine().text_to_phonemes(clean, VOICE, _SEPARATOR)
    words = []
    for word in text_phonemes.split():
        symbols = tuple(s for s in (speech.strip_stress(p) for p in word.split(_SEPARATOR))
                        if s and not s.startswith("_"))
        if symbols:
            words.append(symbols)
    return tuple(words)


def visemes_of_phonemes(symbols: Iterable[str]) -> tuple[str, ...]:
    """Viseme classes (:data:`NETI_VISEMES`) of espeak-ng mnemonics; pauses give nothing.

    Raises:
        UnknownPhoneme: a mnemonic outside :data:`ESPEAK_TO_ARPABET`.
    """
    out: list[str] = []
    for symbol in symbols:
        key = speech.strip_stress(symbol)
        if key.startswith("_"):
            continue
        if key not in ESPEAK_TO_ARPABET:
            raise UnknownPhoneme(f"No viseme for espeak-ng phoneme {symbol!r}; add it to ESPEAK_TO_ARPABET in "
                                 "talkbench/metrics/visemes.py.")
        out.extend(ARPABET_TO_VISEME[phone] for phone in ESPEAK_TO_ARPABET[key])
    return tuple(out)


def visemes(text: str) -> tuple[str, ...]:
    """The viseme sequence of a text, word boundaries dropped (e.g. "pat" → ``("E", "V3", "C")``)."""
    return visemes_of_phonemes(p for word in phonemes(text) for p in word)


def viseme_edits(hyp: str, ref: str) -> tuple[int, int]:
    """``(viseme edits, reference visemes)``: Levenshtein distance between the viseme sequences of ``hyp``
    and ``ref`` and the length of the reference's (add them up over a corpus for ``ver``)."""
    ref_seq = visemes(ref)
    return int(editdistance.eval(visemes(hyp), ref_seq)), len(ref_seq)


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when espeak-ng can be loaded (PyPI ``espeakng-loader``): VER can be computed."""
    try:
        speech.engine()
    except speech.EspeakError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logger.warning(message)


def viseme_columns(ref: str, hyp: str, suffix: str) -> dict[str, int]:
    """VER counts ``viseme_edits<suffix>``, ``ref_visemes<suffix>`` (:func:`viseme_edits`).

    Empty (the clip is not scored for VER, its WER stays) without espeak-ng or on a phoneme outside the table;
    both are logged.
    """
    if not available():
        _warn_once("VER needs espeak-ng: `pip install espeakng-loader` (or talkbench[ver]); VER is not computed.")
        return {}
    try:
        edits, n_ref = viseme_edits(hyp, ref)
    except UnknownPhoneme as err:
        logger.warning("VER not computed for %r / %r: %s", ref, hyp, err)
        return {}
    return {f"viseme_edits{suffix}": edits, f"ref_visemes{suffix}": n_ref}


__all__ = ["ARPABET_TO_VISEME", "ESPEAK_TO_ARPABET", "NETI_VISEMES", "UnknownPhoneme", "VOICE", "available",
           "phonemes", "viseme_columns", "viseme_edits", "visemes", "visemes_of_phonemes"]
