"""Phoneme -> viseme table, mouth parameters and coarticulation."""

import re
from pathlib import Path

import numpy as np
import pytest

from talkbench.synthetic import visemes
from talkbench.synthetic.speech import PhonemeEvent

DOC = Path(__file__).resolve().parents[1] / "docs" / "VISEMES.md"


def _seg(name, start, end):
    return visemes.Segment(visemes.VISEME_IDS[name], start, end)


def test_table_is_consistent():
    assert len(visemes.VISEME_IDS) == len(visemes.VISEMES)
    for v in visemes.VISEMES:
        assert len(v.target) == len(v.strength) == len(visemes.PARAMS)
        assert all(0.0 <= x <= 1.0 for x in v.target)
        assert all(x > 0 for x in v.strength)
    for symbol, names in visemes.PHONEME_TO_VISEMES.items():
        assert 1 <= len(names) <= 2 and all(n in visemes.VISEME_IDS for n in names), symbol


def test_docs_list_every_class_with_its_targets():
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*(\w+)\s*\|((?:\s*[\d.]+\s*\|){6})", line)
        if m:
            rows[int(m.group(1))] = (m.group(2), [float(x) for x in m.group(3).split("|") if x.strip()])
    assert sorted(rows) == list(range(len(visemes.VISEMES)))
    for i, v in enumerate(visemes.VISEMES):
        assert rows[i][0] == v.name
        assert np.allclose(rows[i][1], v.target)


def test_stress_marks_are_ignored_and_unknown_symbols_raise():
    assert visemes.visemes_of("'u:") == ("UW",)
    assert visemes.visemes_of(",aI") == ("AA", "IY")
    assert visemes.visemes_of("_!") == ("sil",)
    with pytest.raises(visemes.UnknownPhoneme, match="VISEMES.md"):
        visemes.visemes_of("Q~")


def test_short_closures_start_earlier():
    segs = visemes.segments([PhonemeEvent("I", 0.0, 0.2), PhonemeEvent("b", 0.2, 0.22), PhonemeEvent("I", 0.22, 0.3),
                             PhonemeEvent("p", 0.3, 0.31)])
    assert segs[1].start_s == pytest.approx(0.22 - visemes.MIN_VISIBLE_S["PBM"]) and segs[1].end_s == 0.22
    assert segs[0].end_s == segs[1].start_s
    # never more than half of the previous segment
    assert segs[3].start_s == pytest.approx(0.26) and segs[2].end_s == pytest.approx(0.26)


def test_diphthongs_are_split_and_segments_are_shifted():
    segs = visemes.segments([PhonemeEvent("b", 0.0, 0.05), PhonemeEvent("'aI", 0.05, 0.25)], offset_s=1.0)
    assert [visemes.VISEMES[s.viseme].name for s in segs] == ["PBM", "AA", "IY"]
    assert segs[0].start_s == pytest.approx(1.0)
    assert segs[1].end_s == pytest.approx(1.15) and segs[2].end_s == pytest.approx(1.25)


def test_short_bilabial_closes_the_lips_between_open_vowels():
    # "a b a" with espeak-ng's typical 20 ms stop: a frame must still show closed lips.
    phonemes = [PhonemeEvent("a", 0.2, 0.41), PhonemeEvent("b", 0.41, 0.43), PhonemeEvent("a", 0.43, 0.7)]
    track = visemes.mouth_track(visemes.segments(phonemes), 25)
    jaw = track.params[:, visemes.PARAMS.index("jaw")]
    assert jaw[5:17].min() < 0.1
    assert jaw[6] > 0.6 and jaw[15] > 0.6
    # before and after the speech the mouth rests
    assert jaw[0] < 0.1 and jaw[-1] < 0.1


def test_rounding_is_anticipated_and_motion_is_smooth():
    segs = [_seg("EH", 0.2, 0.4), _seg("SZ", 0.4, 0.5), _seg("UW", 0.5, 0.8)]
    track = visemes.mouth_track(segs, 30)
    rnd = track.params[:, visemes.PARAMS.index("round")]
    t = (np.arange(30) + 0.5) / 25
    # during "s", before "oo" starts, the lips are already rounding ...
    assert rnd[(t > 0.44) & (t < 0.5)].max() > 0.3
    # ... but not yet during the middle of "e"
    assert rnd[(t > 0.25) & (t < 0.3)].max() < 0.2
    assert np.abs(np.diff(track.params, axis=0)).max() < 0.6


def test_frame_class_is_the_segment_spoken_at_mid_frame():
    segs = [_seg("PBM", 0.1, 0.2), _seg("AA", 0.2, 0.3), _seg("FV", 0.3, 0.38)]
    track = visemes.mouth_track(segs, 12)
    names = [visemes.VISEMES[i].name for i in track.viseme]
    # frame k is sampled at (k + 0.5) / 25 s
    assert names == ["sil", "sil", "PBM", "PBM", "PBM", "AA", "AA", "FV", "FV", "sil", "sil", "sil"]


def test_records_round_trip(tmp_path):
    track = visemes.mouth_track([_seg("AA", 0.0, 0.2)], 7)
    rec = visemes.to_records(track)
    np.save(tmp_path / "v.npy", rec)
    back = np.load(tmp_path / "v.npy")
    assert back.dtype == visemes.FRAME_DTYPE and len(back) == 7
    assert np.array_equal(back["viseme"], track.viseme)
    assert np.array_equal(np.stack([back[p] for p in visemes.PARAMS], 1), track.params)


def test_table_covers_every_phoneme_espeak_emits_for_the_grammar():
    pytest.importorskip("espeakng_loader")
    from talkbench.synthetic import grammar, speech
    from talkbench.synthetic.corpus import voice_for

    rng = np.random.default_rng(0)
    symbols = set()
    # every word alone, at both ends of the corpus's rate range
    for variant, rate in (("f5", 130), ("m7", 230)):
        for word in grammar.VOCABULARY:
            utt = speech.synthesize(grammar.spoken_text([word]), speech.Voice(variant=variant, rate=rate))
            symbols.update(p.symbol for p in utt.phonemes)
    # and in sentences, with the corpus's own voices (sentence context adds glides and reductions)
    for i in range(60):
        words = grammar.sample_sentence(rng)
        symbols.update(p.symbol for p in speech.synthesize(grammar.spoken_text(words), voice_for(i % 8, rng)).phonemes)
    missing = []
    for s in sorted(symbols):
        try:
            visemes.visemes_of(s)
        except visemes.UnknownPhoneme:
            missing.append(s)
    assert not missing
    assert {"b", "'aI", "t#", "dZ", "T"} <= symbols  # sanity: the sample did reach the grammar's sounds
