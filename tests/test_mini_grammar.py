"""The GRID-like grammar of the mini corpus."""

import numpy as np

from talkbench.synthetic import grammar


def test_vocabulary_has_51_distinct_words_in_six_slots():
    assert len(grammar.VOCABULARY) == 51
    assert len(set(grammar.VOCABULARY)) == 51
    assert [len(s) for s in grammar.SLOTS] == [4, 4, 4, 25, 10, 4]
    assert "w" not in grammar.LETTERS  # as in GRID


def test_sentences_are_deterministic_and_take_one_word_per_slot():
    a = [grammar.sample_sentence(np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        words = grammar.sample_sentence(rng)
        assert len(words) == 6
        assert all(w in slot for w, slot in zip(words, grammar.SLOTS))
        seen.update(words)
    assert len(seen) > 45  # every slot is sampled across its words, not stuck on one


def test_spoken_text_and_transcript():
    words = ("bin", "blue", "at", "a", "one", "again")
    assert grammar.spoken_text(words) == "bin blue at eh one again"
    assert grammar.transcript(words) == "BIN BLUE AT A ONE AGAIN"
