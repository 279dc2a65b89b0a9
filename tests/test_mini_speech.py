"""espeak-ng through ctypes: audio and phoneme timings."""

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from talkbench.synthetic import speech  # noqa: E402


def test_phoneme_events_increase_and_cover_the_audio():
    utt = speech.synthesize("place green by eh seven soon", speech.Voice(variant="f2", rate=170))
    assert utt.audio_int16.dtype == np.int16 and utt.audio_int16.ndim == 1
    assert 1.0 < utt.duration_s < 4.0
    starts = np.array([p.start_s for p in utt.phonemes])
    ends = np.array([p.end_s for p in utt.phonemes])
    assert len(utt.phonemes) >= 15
    assert np.all(np.diff(starts) >= 0)
    assert (np.diff(starts) > 0).mean() > 0.9  # only zero-length pause markers may share a time
    assert np.all(ends >= starts)
    assert np.allclose(ends[:-1], starts[1:])
    assert starts[0] < 0.1
    # The events are in the audio's time: the last one starts inside it and the audio stops soon after.
    assert starts[-1] <= utt.duration_s < starts[-1] + 0.3
    assert ends[-1] == pytest.approx(utt.duration_s)
    # Speech (the loud part) lies between the first and the last spoken phoneme.
    spoken = [p for p in utt.phonemes if not p.symbol.startswith("_")]
    env = np.abs(utt.audio_int16.astype(np.float64))
    loud = np.flatnonzero(env > 0.1 * env.max()) / speech.SAMPLE_RATE
    assert loud[0] >= spoken[0].start_s - 0.02 and loud[-1] <= spoken[-1].end_s + 0.02
    assert len(utt.words) == 6 and all(np.diff([w.start_s for w in utt.words]) > 0)
    assert speech.strip_stress(utt.phonemes[0].symbol) == "p"


def test_rate_changes_timing_and_synthesis_is_deterministic():
    # espeak-ng carries state across utterances; the same text must still give the same samples
    # after a different utterance was spoken in between (the "fast" one).
    text = "set white with q two please"
    slow = speech.synthesize(text, speech.Voice(rate=120))
    fast = speech.synthesize(text, speech.Voice(rate=260))
    assert slow.duration_s > 1.5 * fast.duration_s
    assert slow.phonemes[-3].start_s > 1.5 * fast.phonemes[-3].start_s
    again = speech.synthesize(text, speech.Voice(rate=120))
    assert np.array_equal(slow.audio_int16, again.audio_int16)
    assert slow.phonemes == again.phonemes


def test_breathy_voice_depends_on_the_seed_only():
    # f3 mixes in breath noise from espeak-ng's own generator, which is clock-seeded unless set.
    voice = speech.Voice(variant="f3", rate=150)
    a = speech.synthesize("bin blue at eh one again", voice, seed=3)
    speech.synthesize("place red with z nine now", voice, seed=4)
    b = speech.synthesize("bin blue at eh one again", voice, seed=3)
    c = speech.synthesize("bin blue at eh one again", voice, seed=5)
    assert np.array_equal(a.audio_int16, b.audio_int16)
    assert len(a.audio_int16) == len(c.audio_int16) and not np.array_equal(a.audio_int16, c.audio_int16)


def test_letter_a_is_spelled_eh():
    assert [speech.strip_stress(p.symbol) for p in speech.synthesize("eh").phonemes][0] == "eI"


def test_bad_voice_and_empty_text_are_refused():
    with pytest.raises(ValueError, match="no voice variant"):
        speech.synthesize("bin", speech.Voice(variant="no-such-variant"))
    with pytest.raises(ValueError, match="rate"):
        speech.synthesize("bin", speech.Voice(rate=5))
    with pytest.raises(ValueError, match="empty"):
        speech.synthesize("  ")
