"""talkbench.metrics.text: edit counts, the two WER averages, CER, and normalisation per protocol."""

from __future__ import annotations

import jiwer
import pytest

from talkbench.metrics.text import (NORMALISATIONS, char_edits, corpus_rate, mean_utterance_rate, normalize_text,
                                    word_edits)

PAIRS = [  # (reference, hypothesis)
    ("the meeting about the media starts at nine", "the meeting about media start at nine"),
    ("about", "above"),
    ("another two hundred people came to see the show", "another two hundred people came to see the show"),
    ("it's the internet", "its the internet now"),
]


def corpus_wer(pairs):
    return corpus_rate(word_edits(r, h) for r, h in pairs)


def mean_utterance_wer(pairs):
    return mean_utterance_rate(word_edits(r, h) for r, h in pairs)


def corpus_cer(pairs):
    return corpus_rate(char_edits(r, h) for r, h in pairs)


def mean_utterance_cer(pairs):
    return mean_utterance_rate(char_edits(r, h) for r, h in pairs)


def test_word_and_char_edits_by_hand():
    assert word_edits("a b c d", "a x c") == (2, 4)  # one substitution, one deletion
    assert word_edits("a b", "") == (2, 2)
    assert word_edits("", "a b") == (2, 0)
    assert word_edits("  a   b ", "a b") == (0, 2)  # whitespace only separates words
    assert char_edits("abc d", "abd") == (2, 5)  # spaces are characters
    assert char_edits("kitten", "sitting") == (3, 6)


def test_corpus_and_mean_utterance_wer_by_hand():
    # edits / words: 2/8, 1/1, 0/9, 2/3
    assert corpus_wer(PAIRS) == pytest.approx(100 * 5 / 21)
    assert mean_utterance_wer(PAIRS) == pytest.approx(100 * (2 / 8 + 1 + 0 + 2 / 3) / 4)
    assert corpus_rate([(1, 10), (0, 0)]) == pytest.approx(10.0)  # an empty reference adds only its insertions
    assert mean_utterance_rate([(1, 4), (3, 4)]) == pytest.approx(50.0)


def test_wer_and_cer_match_jiwer():
    refs = [r for r, _ in PAIRS]
    hyps = [h for _, h in PAIRS]
    assert corpus_wer(PAIRS) == pytest.approx(100 * jiwer.wer(refs, hyps), abs=1e-9)
    assert mean_utterance_wer(PAIRS) == pytest.approx(100 * sum(jiwer.wer(r, h) for r, h in PAIRS) / len(PAIRS))
    assert corpus_cer(PAIRS) == pytest.approx(100 * jiwer.cer(refs, hyps), abs=1e-9)
    assert mean_utterance_cer(PAIRS) == pytest.approx(100 * sum(jiwer.cer(r, h) for r, h in PAIRS) / len(PAIRS))


def test_rate_errors():
    with pytest.raises(ValueError, match="hold no words"):
        corpus_wer([("", "a")])
    with pytest.raises(ValueError, match="no utterances"):
        mean_utterance_wer([])
    with pytest.raises(ValueError, match=r"utterance\(s\) \[1\] have an empty reference"):
        mean_utterance_wer([("a", "a"), ("", "b")])


@pytest.mark.parametrize("protocol, text, expected", [
    # WER1 (AV-HuBERT): lower case, everything else as written
    ("lower", "  IT'S  THE 2 INTERNET\t", "it's the 2 internet"),
    ("lower", "Don't Stop, Mr. Smith", "don't stop, mr. smith"),
    # WER2 (Conformer): upper case as the LRS2 Text: line
    ("upper", "it's the 2 internet", "IT'S THE 2 INTERNET"),
    ("none", " Hello,   World ", "Hello, World"),
    # free-form: punctuation goes, in-word apostrophes and digits stay
    ("letters", "Hello, world! It’s 'quoted' — 42 rock'n'roll.", "hello world it's quoted 42 rock'n'roll"),
])
def test_normalize_text(protocol, text, expected):
    assert normalize_text(text, protocol) == expected


def test_normalization_changes_the_score():
    ref, hyp = "IT'S THE INTERNET", "it's the internet"
    assert word_edits(ref, hyp)[0] == 3  # case matters to the raw comparison ...
    assert word_edits(normalize_text(ref, "lower"), normalize_text(hyp, "lower"))[0] == 0
    # ... and apostrophes are words' letters in both reference protocols: "its" is another word
    assert word_edits(normalize_text(ref, "lower"), "its the internet")[0] == 1


def test_unknown_normalisation():
    with pytest.raises(ValueError, match="Unknown text normalisation 'lrs3'"):
        normalize_text("a", "lrs3")
    assert set(NORMALISATIONS) >= {"lower", "upper", "none", "letters"}
