"""WER1 observer end to end on the fixture clips (stand-in weights in the official file layout)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from talkbench.media import decode_clip
from talkbench.lipread import lipread
from talkbench.observers import ClipData, ClipSkipped, ObserverContext
from talkbench.observers import avhubert as obs_module
from talkbench.protocols import build_observers
from test_avhubert_common import FIXTURE, expected_json, filled_checkpoint

CARD = "avhubert-large-lrs2"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return filled_checkpoint(tmp_path_factory.mktemp("avhubert"))


def clip_data(name: str) -> ClipData:
    info = expected_json()
    return ClipData(name, decode_clip(FIXTURE / f"{name}.mp4"), None, info[f"{name}.transcript"])


def test_wer1_rows_and_summary_match_infer_s2s(checkpoint: Path) -> None:
    observer = build_observers(["wer1", "cer1"], ObserverContext(weights={CARD: checkpoint}))[0]
    assert observer.name == "avhubert" and observer.metrics == ("wer1", "cer1")
    assert observer.needs_text and not observer.needs_reference
    assert set(observer.weights_sha256) == {CARD} and len(observer.weights_sha256[CARD]) == 12
    assert observer.max_frames == 500  # the checkpoint's task max_sample_size
    info = expected_json()
    rows = []
    for name in ("meeting", "another"):
        row = observer.measure(clip_data(name))
        top1 = info[f"{name}.beam.top5"][0]
        assert row["hyp1"] == top1["text"]
        assert row["score1"] == pytest.approx(top1["score"], abs=1e-4)
        assert row["ref1"] == info[f"{name}.ref_decoded"]
        assert row["ref_words1"] == len(info[f"{name}.ref_decoded"].split())
        assert row["edits1"] == row["ref_words1"]  # one long garbage word against every reference word
        assert row["wer1"] == pytest.approx(100.0)
        assert row["ref_chars1"] == len(info[f"{name}.ref_decoded"])
        rows.append(row)
    summary = observer.summarize(rows)
    wer = info["wer_bsz1"]
    assert summary["wer1"] == pytest.approx(wer["wer_percent"])
    assert sum(r["edits1"] for r in rows) == wer["n_err"]
    assert summary["cer1"] == pytest.approx(100.0 * sum(r["char_edits1"] for r in rows) /
                                            sum(r["ref_chars1"] for r in rows))


def test_clip_limits_become_error_rows(checkpoint: Path) -> None:
    observer = build_observers(["wer1"], ObserverContext(weights={CARD: checkpoint}, options={"max_frames": 50}))[0]
    with pytest.raises(ClipSkipped, match="73 frames, more than max_frames=50"):
        observer.measure(clip_data("meeting"))
    no_text = clip_data("meeting")
    no_text.text = None
    with pytest.raises(ClipSkipped, match="no transcript"):
        observer.measure(no_text)


def test_official_protocol_uses_cached_landmarks(checkpoint: Path) -> None:
    from talkbench.crops import CropKey, Kind
    from talkbench.crops.mouth import mean_face

    observer = build_observers(["wer1"], ObserverContext(protocol="avhubert-official", weights={CARD: checkpoint},
                                                         options={"avhubert_beam": 4}))[0]
    data = clip_data("meeting")
    data.generated.frames = data.generated.frames[:12]
    face = mean_face()
    data.cache[CropKey(Kind.LANDMARKS)] = [(face - 128) * 0.5 + 80] * 12  # no dlib needed
    row = observer.measure(data)
    assert data.cache[CropKey(Kind.MOUTH88, recipe="landmark-aligned")].shape == (12, 88, 88)
    assert isinstance(row["hyp1"], str) and row["ref_words1"] == 8 and row["edits1"] >= 0


def test_bad_context_is_refused(checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="Unknown mouth crop recipe"):
        obs_module.build(ObserverContext(mouth_roi="lrs3", weights={CARD: checkpoint}))
    with pytest.raises(ValueError, match="--protocol must be one of"):
        build_observers(["wer1"], ObserverContext(protocol="lrs3", weights={CARD: checkpoint}))
    with pytest.raises(ValueError, match="both options"):
        obs_module.build(ObserverContext(weights={CARD: checkpoint}, options={"avhubert_dict": "x"}))


def test_summarize_is_corpus_level() -> None:
    rows = [{"edits1": 1, "ref_words1": 10, "char_edits1": 2, "ref_chars1": 40},
            {"edits1": 3, "ref_words1": 2, "char_edits1": 5, "ref_chars1": 10}]
    summary = obs_module.summarize(rows)
    assert summary["wer1"] == pytest.approx(100 * 4 / 12)
    assert summary["cer1"] == pytest.approx(100 * 7 / 50)
    assert all(math.isnan(v) for v in obs_module.summarize([]).values())


def test_word_and_char_edits() -> None:
    assert obs_module.word_and_char_edits("the cat sat", "the bat sat down") == (2, 3, 6, 11)
    assert obs_module.word_and_char_edits("a b", "") == (2, 2, 3, 3)


def test_lipread_function_and_cli(checkpoint: Path) -> None:
    import json

    import typer
    from typer.testing import CliRunner

    from talkbench.cli import avhubert as cli

    info = expected_json()
    result = lipread(FIXTURE / "another.mp4", {CARD: checkpoint}, beam=50)
    assert result.text == info["another.beam.top5"][0]["text"] and result.frames == 82
    app = typer.Typer()
    cli.register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps `lipread` a named sub-command
        pass

    out = CliRunner().invoke(app, ["lipread", str(FIXTURE / "meeting.mp4"), "--beam", "2", "--json",
                                   "--weights", f"{CARD}={checkpoint}"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["frames"] == 73
    bad = CliRunner().invoke(app, ["lipread", str(FIXTURE / "meeting.mp4"), "--weights", "nonsense"])
    assert bad.exit_code != 0
