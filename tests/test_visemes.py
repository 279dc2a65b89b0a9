"""Viseme error rate (talkbench.metrics.visemes): homophenes, known sequences, the synthetic corpus' exact phonemes,
corpus aggregation, and ``ver`` in a mini-protocol run."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from talkbench.evaluate import EvaluateConfig, evaluate  # noqa: E402
from talkbench.metrics import visemes as V  # noqa: E402
from talkbench.metrics.text import word_edits  # noqa: E402
from talkbench.observers import METRICS  # noqa: E402
from talkbench.observers import avhubert  # noqa: E402
from talkbench.protocols import MINI, TALKLIP2023  # noqa: E402
from talkbench.synthetic import grammar, speech  # noqa: E402
from talkbench.synthetic.corpus import synthesize_corpus, voice_for  # noqa: E402
from talkbench.synthetic.visemes import PHONEME_TO_VISEMES  # noqa: E402


# ------------------------------------------------------------------------------------------------ the table

def test_the_table_is_a_partition_and_covers_espeak_ngs_english_inventory():
    phones = [p for members in V.NETI_VISEMES.values() for p in members]
    assert len(phones) == len(set(phones)) == len(V.ARPABET_TO_VISEME)
    assert len(V.NETI_VISEMES) == 12  # Neti et al.'s 12 speech classes (+ silence, dropped here)
    for symbol, arpabet in V.ESPEAK_TO_ARPABET.items():
        assert arpabet and all(p in V.ARPABET_TO_VISEME for p in arpabet), symbol
    # every espeak-ng English phoneme the synthetic corpus' table knows (docs/VISEMES.md) has a viseme class here
    spoken = [s for s in PHONEME_TO_VISEMES if not s.startswith("_")]
    assert set(spoken) == set(V.ESPEAK_TO_ARPABET)
    with pytest.raises(V.UnknownPhoneme, match="ESPEAK_TO_ARPABET"):
        V.visemes_of_phonemes(["Q!"])
    assert V.visemes_of_phonemes(["_:", "'p", ",a", "t", "_"]) == ("E", "V3", "C")  # stress marks, pauses


# ------------------------------------------------------------------------------------------------ known sequences

def test_homophenes_cost_no_viseme_edit_but_word_edits():
    for hyp in ("bat", "mat"):
        assert V.viseme_edits(hyp, "pat") == (0, 3)
        assert word_edits("pat", hyp) == (1, 1)
    assert V.visemes("pat") == ("E", "V3", "C")            # bilabial, open-front vowel, alveolar
    assert V.viseme_edits("fat", "pat") == (1, 3)           # f/v is another class: one substitution
    # word boundaries are not kept: the lips do not show them
    assert V.viseme_edits("i scream", "ice cream") == (0, 6) and word_edits("ice cream", "i scream") == (2, 2)


def test_known_sentence_and_text_normalisation():
    # espeak-ng: s'Et r'Ed baI dZ'i: n'aIn a#g'En -> ARPAbet s eh t r eh d b ay jh iy n ay n ax g eh n
    expected = ("B", "V3", "C", "A", "V3", "C", "E", "V3", "D", "V4", "C", "V3", "C", "V4", "H", "V3", "C")
    assert V.visemes("set red by g nine again") == expected
    assert V.visemes("SET  RED, by G... nine again!") == expected      # case, punctuation and spaces do not matter
    assert V.visemes("set <unk> red by g nine again") == expected       # <...> tokens are dropped
    assert V.phonemes("2") == (("t", "u:"),)                            # digits are read as words
    assert V.viseme_edits("", "pat") == (3, 3) and V.viseme_edits("pat", "") == (3, 0)


def test_grammar_homophenes_of_the_synthetic_corpus_are_viseme_homophenes():
    # docs/VISEMES.md: B/P, C/Z and D/T cannot be told apart from the lips in the corpus; nor here
    for a, b in (("b", "p"), ("c", "z"), ("d", "t")):
        assert V.viseme_edits(f"bin blue at {a} one now", f"bin blue at {b} one now")[0] == 0
        assert word_edits(f"bin blue at {b} one now", f"bin blue at {a} one now")[0] == 1


def test_phonemes_are_what_the_synthetic_corpus_spoke():
    """The corpus' clips were rendered from espeak-ng's phoneme events while speaking (exact ground truth): the
    text-to-phoneme path gives the same phonemes, whatever the clip's voice and rate."""
    rng = np.random.default_rng(18)
    for identity in range(3):
        words = grammar.sample_sentence(rng)
        text = grammar.spoken_text(words)
        utterance = speech.synthesize(text, voice_for(identity, rng), seed=identity)
        spoken = [speech.strip_stress(p.symbol) for p in utterance.phonemes if not p.symbol.startswith("_")]
        assert [p for word in V.phonemes(text) for p in word] == spoken, text
        assert V.visemes(text) == V.visemes_of_phonemes(spoken)


def test_phonemising_leaves_the_corpus_audio_and_its_timings_identical():
    # espeak_TextToPhonemes changes C state that syntheses forked later inherit (it once erased the word events)
    voice = speech.Voice(variant="f3", rate=190, pitch=40)

    def spoken() -> tuple[str, tuple, tuple]:
        utterance = speech.synthesize("place blue at f two now", voice, seed=3)
        return (hashlib.sha256(utterance.audio_int16).hexdigest(), utterance.words, utterance.phonemes)

    before = spoken()
    assert len(before[1]) == 6
    V.phonemes.cache_clear()
    V.phonemes("hello there. how are you?"), V.phonemes("bin blue at a one soon")
    assert spoken() == before


# ------------------------------------------------------------------------------------------------ aggregation

def test_ver_is_corpus_level_over_the_wer1_rows():
    rows = [avhubert.wer1_row("pat", "bat", 0.0), avhubert.wer1_row("set red by g nine again", "set red", 0.0),
            {"wer1": 0.0, "edits1": 0, "ref_words1": 2, "char_edits1": 0, "ref_chars1": 3},  # a run without VER
            {"error": "avhubert: no transcript"}]
    assert rows[0]["viseme_edits1"] == 0 and rows[0]["edits1"] == 1
    edits, n = V.viseme_edits("set red", "set red by g nine again")
    assert (rows[1]["viseme_edits1"], rows[1]["ref_visemes1"]) == (edits, n) == (11, 17)
    summary = avhubert.summarize(rows)
    assert summary["ver"] == pytest.approx(100.0 * (0 + 11) / (3 + 17))
    assert summary["wer1"] == pytest.approx(100.0 * (1 + 4 + 0) / (1 + 6 + 2))
    assert math.isnan(avhubert.summarize(rows[2:])["ver"])
    spec = METRICS["ver"]
    assert spec.aggregation == "corpus" and spec.direction == "lower" and spec.per_clip == "viseme_edits1"
    assert TALKLIP2023.observers["ver"] == "avhubert" and MINI.observers["ver"] == "mini-lipreader"
    assert "ver" in MINI.default_metrics


def test_a_mini_protocol_run_has_a_ver_column(tmp_path):
    corpus = tmp_path / "corpus"
    synthesize_corpus(corpus, n_train=0, n_test=2, seed=4242)
    result = evaluate(EvaluateConfig(generated=corpus / "test", reference=corpus / "test", out=tmp_path / "run",
                                     metrics=("wer1", "ver"), suite="lrs2", protocol="mini", model="gt"))
    assert result.n_failed == 0 and result.n_clips == 2
    ver, wer = result.summary["ver"], result.summary["wer1"]
    assert isinstance(ver, float) and math.isfinite(ver) and ver >= 0.0
    assert (ver == 0.0) == (wer == 0.0) or ver < wer  # a word error need not be a viseme error (homophenes)
    assert "ver" in (tmp_path / "run" / "summary.csv").read_text().splitlines()[0].split(",")
