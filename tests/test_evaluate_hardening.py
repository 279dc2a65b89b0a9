"""`talkbench evaluate` under misuse: settings that change a number, bad arguments, failing observers.

Each test here reproduces a case of issue #13 that was a bug or a traceback before.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from talkbench import weights
from talkbench.cli import app
from talkbench.evaluate import EvaluateConfig, EvaluationError, evaluate
from talkbench.observers import ObserverContext
from talkbench.protocols import build_observers
from talkbench.observers.image_quality import ImageQualityObserver
from talkbench.store import ResultStore

from test_evaluate import DEMO, METRICS, make_suite

runner = CliRunner()


def _summary(run_dir: Path) -> dict[str, str]:
    with (run_dir / "summary.csv").open() as handle:
        return next(csv.DictReader(handle))


def _clips(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "clips.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return make_suite(tmp_path_factory.mktemp("suite"), n_speakers=1)


def _invoke(args: list[str]):
    result = runner.invoke(app, args)
    assert "Traceback" not in result.output, result.output
    return result


# ------------------------------------------------------------------------------------------ bug 3

def test_a_rerun_with_another_reference_is_refused(suite, tmp_path):
    reference, generated = suite
    other = tmp_path / "other_ref"
    shutil.copytree(reference, other)
    for clip in other.rglob("*.mp4"):  # other ground truth: the clips swapped
        clip.write_bytes((DEMO / ("meeting.mp4" if "00001" in clip.name else "another.mp4")).read_bytes())
    run = tmp_path / "run"
    first = evaluate(EvaluateConfig(generated=generated, reference=reference, out=run, metrics=METRICS, suite="lrs2"))
    assert first.computed == 2
    with pytest.raises(ValueError, match="reference"):
        evaluate(EvaluateConfig(generated=generated, reference=other, out=run, metrics=METRICS, suite="lrs2"))
    fresh = evaluate(EvaluateConfig(generated=generated, reference=other, out=tmp_path / "fresh", metrics=METRICS,
                                    suite="lrs2"))
    assert fresh.summary["psnr"] != first.summary["psnr"]


def test_a_changed_generated_clip_is_recomputed(suite, tmp_path):
    reference, generated = suite
    gen = tmp_path / "gen"
    shutil.copytree(generated, gen)
    config = EvaluateConfig(generated=gen, reference=reference, out=tmp_path / "run", metrics=METRICS, suite="lrs2")
    first = evaluate(config)
    clip = gen / "main" / "spk0" / "00000.mp4"
    clip.write_bytes((DEMO / "meeting.mp4").read_bytes())  # now identical to its reference
    os.utime(clip, ns=(1, 1))
    second = evaluate(config)
    assert second.computed == 1
    row = next(r for r in _clips(tmp_path / "run") if r["clip_id"] == "main/spk0/00000")
    assert float(row["psnr"]) == 100.0 and first.summary["psnr"] != second.summary["psnr"]
    assert evaluate(config).computed == 0


def test_an_edited_transcript_table_is_refused(tmp_path):
    folder = tmp_path / "gen"
    folder.mkdir()
    shutil.copyfile(DEMO / "meeting.mp4", folder / "a.mp4")
    (folder / "transcripts.csv").write_text("path,text\na.mp4,hello there\n")
    config = EvaluateConfig(generated=folder, out=tmp_path / "run", metrics=("wer1",), protocol="mini", suite="folder")
    evaluate(config)
    (folder / "transcripts.csv").write_text("path,text\na.mp4,something else\n")
    with pytest.raises(ValueError, match="suite_settings"):
        evaluate(config)


# ------------------------------------------------------------------------------------------ bug 5

def test_a_misspelt_weights_card_is_refused_with_close_matches(suite, tmp_path):
    reference, generated = suite
    weights_file = tmp_path / "w.pt"
    weights_file.write_bytes(b"x")
    result = _invoke(["evaluate", str(generated), "--reference", str(reference), "--out", str(tmp_path / "r"),
                      "--weights", f"minisyncnet={weights_file}"])
    assert result.exit_code == 2 and "error:" in result.output and "mini-syncnet" in result.output
    missing = _invoke(["evaluate", str(generated), "--out", str(tmp_path / "r"),
                       "--weights", f"mini-syncnet={tmp_path / 'nope.pt'}"])
    assert missing.exit_code == 2 and "nope.pt" in missing.output
    folder = _invoke(["evaluate", str(generated), "--out", str(tmp_path / "r"), "--weights", f"mini-syncnet={tmp_path}"])
    assert folder.exit_code == 2 and "error:" in folder.output


# ------------------------------------------------------------------------------------------ bug 10

def test_a_non_finite_value_is_an_error_row_naming_the_observer(suite, tmp_path, monkeypatch):
    reference, generated = suite
    original = ImageQualityObserver.measure

    def nan_for_one_clip(self, clip):
        row = original(self, clip)
        if clip.clip_id.endswith("00001"):
            row["ssim"] = float("nan")
        return row

    monkeypatch.setattr(ImageQualityObserver, "measure", nan_for_one_clip)
    result = evaluate(EvaluateConfig(generated=generated, reference=reference, out=tmp_path / "run", metrics=METRICS,
                                     suite="lrs2"))
    assert result.n_failed == 1 and not math.isnan(result.summary["ssim"])
    bad = next(r for r in _clips(tmp_path / "run") if r["clip_id"].endswith("00001"))
    assert "image_quality" in bad["error"] and "non-finite" in bad["error"] and bad["ssim"] == ""


# ------------------------------------------------------------------------------------------ bug 11

@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty cache and a download that fails at once (a closed port on loopback)."""
    monkeypatch.setenv("TALKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(weights, "candidate_urls", lambda card: ["http://127.0.0.1:9/" + card.file_name])


def test_a_missing_official_checkpoint_is_one_error_paragraph_and_the_retry_works(suite, tmp_path, offline):
    reference, generated = suite
    run = tmp_path / "run"
    result = _invoke(["evaluate", str(generated), "--reference", str(reference), "--metrics", "lse_c,lse_d",
                      "--out", str(run)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "syncnet-v2" in result.output and "--weights" in result.output
    assert "--protocol mini" in result.output
    with ResultStore(run) as store:
        assert len(store) == 0  # nothing was stored: the run never started
    retry = _invoke(["evaluate", str(generated), "--reference", str(reference), "--metrics", "lse_c,lse_d",
                     "--protocol", "mini", "--out", str(run)])
    assert retry.exit_code == 0, retry.output
    assert _summary(run)["protocol"] == "mini" and _summary(run)["lse_c"] != ""


# ------------------------------------------------------------------------------------------ bug 13

def test_a_metric_the_protocol_lacks_is_refused_up_front(suite, tmp_path, offline):
    reference, generated = suite
    with pytest.raises(EvaluationError, match="mini has no wer2.*wer1"):
        evaluate(EvaluateConfig(generated=generated, reference=reference, out=tmp_path / "r", metrics=("wer2",),
                                protocol="mini", suite="lrs2"))
    result = _invoke(["evaluate", str(generated), "--metrics", "wer2", "--protocol", "mini",
                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "wer1" in result.output and not (tmp_path / "r" / "store.sqlite").exists()


def test_lipread_reads_with_the_mini_protocol(offline):
    result = _invoke(["lipread", str(DEMO / "meeting.mp4"), "--protocol", "mini", "--json"])
    assert result.exit_code == 0, result.output
    reading = json.loads(result.stdout.strip().splitlines()[-1])
    assert reading["frames"] > 0 and isinstance(reading["text"], str) and reading["score"] <= 0
    unknown = _invoke(["lipread", str(DEMO / "meeting.mp4"), "--protocol", "nope"])
    assert unknown.exit_code == 2 and "talklip2023" in unknown.output


# ------------------------------------------------------------------------------------------ bug 14

def test_s3fd_weights_are_used_under_the_mini_protocol(tmp_path):
    s3fd = tmp_path / "sfd_face.pth"
    s3fd.write_bytes(b"stand-in: resolved, not loaded, when the observer is built")
    ctx = ObserverContext(protocol="mini", weights={"s3fd": s3fd},
                          options={"lse_mode": "pipeline", "lse_detector": "s3fd"})
    observer = build_observers(["lse_c"], ctx)[0]
    assert observer.name == "mini-syncnet" and observer.s3fd_weights == s3fd
    assert set(observer.weights_sha256) == {"mini-syncnet", "s3fd"}


# ------------------------------------------------------------------------------------------ weak cases

def test_bad_arguments_are_error_lines_not_tracebacks(suite, tmp_path):
    reference, generated = suite
    as_file = tmp_path / "out.txt"
    as_file.write_text("x")
    cases = {
        "is a file": ["evaluate", str(generated), "--reference", str(reference), "--out", str(as_file)],
        "not a device": ["evaluate", str(generated), "--reference", str(reference), "--out", str(tmp_path / "d"),
                         "--device", "bogus"],
        "a folder of generated clips": ["evaluate", str(generated / "main" / "spk0" / "00000.mp4"),
                                        "--out", str(tmp_path / "f")],
        "--protocol": ["evaluate", str(generated), "--protocol", "paper", "--out", str(tmp_path / "p")],
    }
    for expected, args in cases.items():
        result = _invoke(args)
        assert result.exit_code == 2 and "error:" in result.output and expected in result.output, (expected,
                                                                                                   result.output)


def test_a_hostile_checkpoint_is_an_error_line(suite, tmp_path):
    reference, generated = suite
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x05\x00\x00\x00touchq\x01\x85q\x02Rq\x03.")
    result = _invoke(["evaluate", str(generated), "--reference", str(reference), "--out", str(tmp_path / "r"),
                      "--protocol", "mini", "--metrics", "lse_c", "--weights", f"mini-syncnet={evil}"])
    assert result.exit_code == 2 and "error:" in result.output and "os.system" in result.output


def test_json_writes_missing_metrics_as_null(suite, tmp_path):
    reference, generated = suite
    result = _invoke(["evaluate", str(generated), "--reference", str(reference), "--out", str(tmp_path / "r"),
                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["wer1"] is None and isinstance(summary["psnr"], float)


def test_one_failing_observer_keeps_the_other_metrics_of_the_clip(tmp_path):
    reference, generated = tmp_path / "ref", tmp_path / "gen"
    for folder in (reference, generated):
        (folder / "main" / "s").mkdir(parents=True)
        shutil.copyfile(DEMO / "meeting.mp4", folder / "main" / "s" / "a.mp4")
    silent = generated / "main" / "s" / "b.mp4"  # a clip without an audio stream: LSE fails, PSNR does not
    from talkbench import media

    clip = media.decode_clip(DEMO / "another.mp4")
    media.write_clip(silent, clip.frames, None)
    shutil.copyfile(silent, reference / "main" / "s" / "b.mp4")
    result = evaluate(EvaluateConfig(generated=generated, reference=reference, out=tmp_path / "run", suite="lrs2",
                                     metrics=("psnr", "ssim", "lse_c", "lse_d"), protocol="mini"))
    summary = _summary(tmp_path / "run")
    assert result.n_failed == 1 and summary["n_failed_by_metric"] == "lse_c=1;lse_d=1"
    rows = {r["clip_id"]: r for r in _clips(tmp_path / "run")}
    assert rows["main/s/b"]["psnr"] != "" and "no audio" in rows["main/s/b"]["error"]
    # psnr averages both clips' frames (b counts), lse only clip a
    assert float(summary["psnr"]) == 100.0
    assert float(summary["lse_c"]) == pytest.approx(float(rows["main/s/a"]["lse_c"]))
