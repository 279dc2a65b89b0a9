"""Each network's input normalisation is a constant of the code, said once; the cards, which document the input
spec for people, must say the same numbers (a card that drifted from the code fails here)."""

from __future__ import annotations

import re

import pytest

from talkbench import cards
from talkbench.nets.avhubert import IMAGE_MEAN, IMAGE_STD
from talkbench.observers import conformer, mvm

_NORMALISATION = re.compile(r"\(x\s*(?:/\s*255)?\s*-\s*([0-9.]+)\)\s*/\s*([0-9.]+)")


def _documented(card: str, field: str) -> tuple[float, float]:
    text = str(cards.load_card(card).input[field])
    match = _NORMALISATION.search(text)
    assert match, f"{card}: [input] {field} = {text!r} names no (x - mean) / std"
    return float(match.group(1)), float(match.group(2))


@pytest.mark.parametrize("card, field, mean, std", [
    ("avhubert-large-lrs2", "normalisation", IMAGE_MEAN, IMAGE_STD),
    ("avhubert-base-lrs2", "normalisation", IMAGE_MEAN, IMAGE_STD),
    ("mini-lipreader-a", "video", IMAGE_MEAN, IMAGE_STD),
    ("mini-lipreader-b", "video", IMAGE_MEAN, IMAGE_STD),
    ("conformer-lrs2", "normalisation", conformer.VIDEO_MEAN, conformer.VIDEO_STD),
    ("mvm-lrw", "normalisation", mvm.MEAN, mvm.STD),
])
def test_cards_document_the_normalisation_the_code_uses(card, field, mean, std):
    assert _documented(card, field) == (mean, std)
