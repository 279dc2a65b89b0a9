"""Protocol `mini`: the shipped mini observers load through their cards and score fresh ground-truth clips."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from talkbench import cards, media
from talkbench.observers import ObserverContext, mini_lipreader, mini_syncnet
from talkbench.observers.base import ClipData, ClipSkipped
from talkbench.protocols import MINI, build_observers
from talkbench.suites import read_lrs2_text
from talkbench.synthetic.corpus import synthesize_corpus
from talkbench.train.mini_observers import SHIFT_FRAMES, shift_audio


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Eight held-out ground-truth clips (test split, a seed the observers were not trained on), decoded."""
    out = tmp_path_factory.mktemp("minicorpus")
    synthesize_corpus(out, n_train=0, n_test=8, seed=12345)
    names = (out / "test" / "filelist.txt").read_text().split()
    result = []
    for name in names:
        base = out / "test" / "main" / name
        result.append(ClipData(clip_id=name, generated=media.decode_clip(base.with_suffix(".mp4")),
                               text=read_lrs2_text(base.with_suffix(".txt"))))
    return result


CTX = ObserverContext(device="cpu", protocol="mini")


@pytest.fixture(scope="module")
def lip():
    return build_observers(["wer1", "cer1"], CTX)[0]


@pytest.fixture(scope="module")
def sync():
    return build_observers(["lse_c", "lse_d", "av_offset"], CTX)[0]


def test_registry_routes_protocol_mini_to_the_mini_observers(lip, sync):
    assert [s.module for s in MINI.observer_specs(["wer1", "lse_c"])] == ["talkbench.observers.mini_lipreader",
                                                                         "talkbench.observers.mini_syncnet"]
    assert [o.name for o in build_observers(["cer1", "av_offset"], CTX)] == ["mini-lipreader", "mini-syncnet"]
    assert set(lip.weights_sha256) == {"mini-lipreader-b"} and set(sync.weights_sha256) == {"mini-syncnet"}
    for card, sha in {**lip.weights_sha256, **sync.weights_sha256}.items():
        assert cards.load_card(card).sha256.startswith(sha)
    assert mini_lipreader.summarize is not None and mini_syncnet.summarize is not None


def test_mini_lipreader_reads_clean_clips(lip, clips):
    rows = [lip.measure(c) for c in clips]
    for row, clip in zip(rows, clips):
        assert row["ref1"] == clip.text.lower()
        assert row["ref_words1"] == 6 and 0 <= row["edits1"] <= 6 and row["score1"] <= 0
        assert set(row) >= {"wer1", "hyp1", "score1", "edits1", "ref_words1", "cer1", "char_edits1", "ref_chars1"}
    summary = mini_lipreader.summarize(rows)
    # clean ground truth: most words right (the card records WER on 100 test clips; 8 clips vary more)
    assert summary["wer1"] < 60.0 and summary["cer1"] < 40.0, rows
    # it reads the lips: the same clips with a frozen first frame are read far worse
    frozen = []
    for clip in clips:
        still = np.repeat(clip.generated.frames[:1], clip.generated.num_frames, 0)
        frozen.append(lip.measure(ClipData(clip_id=clip.clip_id, text=clip.text,
                                           generated=dataclasses.replace(clip.generated, frames=still))))
    assert mini_lipreader.summarize(frozen)["wer1"] > summary["wer1"] + 25.0, frozen
    with pytest.raises(ClipSkipped):
        lip.measure(ClipData(clip_id="x", generated=clips[0].generated, text=None))


def test_mini_syncnet_tells_in_sync_from_shifted_audio(sync, clips):
    for clip in clips[:2]:
        good = sync.measure(clip)
        for shift in (SHIFT_FRAMES, -SHIFT_FRAMES):
            moved = dataclasses.replace(clip.generated, audio_int16=shift_audio(clip.generated.audio_int16, shift))
            bad = sync.measure(ClipData(clip_id=clip.clip_id, generated=moved))
            assert good["lse_c"] > bad["lse_c"], (good, bad, shift)
            assert abs(good["av_offset"]) < abs(bad["av_offset"]), (good, bad, shift)
    summary = mini_syncnet.summarize([good])
    assert not math.isnan(summary["lse_c"])
