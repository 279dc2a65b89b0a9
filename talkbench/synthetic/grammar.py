"""The GRID-like sentence grammar of the mini corpus.

Every sentence has six slots, as in the GRID audio-visual corpus (Cooke et al., 2006):
``command colour preposition letter digit adverb``, e.g. ``BIN BLUE AT F TWO NOW``. The vocabulary
has 51 words: 4 commands, 4 colours, 4 prepositions, 25 letters (no W, as in GRID, whose name is
three syllables), 10 digits and 4 adverbs.
"""

from __future__ import annotations

import numpy as np

COMMANDS: tuple[str, ...] = ("bin", "lay", "place", "set")
COLOURS: tuple[str, ...] = ("blue", "green", "red", "white")
PREPOSITIONS: tuple[str, ...] = ("at", "by", "in", "with")
LETTERS: tuple[str, ...] = tuple(c for c in "abcdefghijklmnopqrstuvxyz")
DIGITS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ADVERBS: tuple[str, ...] = ("again", "now", "please", "soon")

#: The six slots of a sentence, in speaking order.
SLOTS: tuple[tuple[str, ...], ...] = (COMMANDS, COLOURS, PREPOSITIONS, LETTERS, DIGITS, ADVERBS)

#: The whole vocabulary in slot order (lowercase); 51 distinct words.
VOCABULARY: tuple[str, ...] = tuple(w for slot in SLOTS for w in slot)

# espeak-ng reads a lone "a" as the article (a schwa); "eh" gets the letter's name /eI/. The other
# letters are read by their names as they are.
_SPOKEN_SPELLING = {"a": "eh"}


def sample_sentence(rng: np.random.Generator) -> tuple[str, ...]:
    """Draw one sentence, a word per slot, uniformly and independently; lowercase words."""
    return tuple(slot[int(rng.integers(len(slot)))] for slot in SLOTS)


def spoken_text(words: tuple[str, ...] | list[str]) -> str:
    """The text given to the speech synthesiser for ``words`` (spelling fixes applied)."""
    return " ".join(_SPOKEN_SPELLING.get(w, w) for w in words)


def transcript(words: tuple[str, ...] | list[str]) -> str:
    """The transcript as LRS2 writes it: uppercase words separated by one space."""
    return " ".join(w.upper() for w in words)
