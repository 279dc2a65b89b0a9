"""Intervals in every summary, `talkbench compare`, and intervals and ties on the leaderboard (issue #16)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from talkbench import media
from talkbench.cli import app
from talkbench.compare import CompareError, compare_runs
from talkbench.evaluate import EvaluateConfig, evaluate
from talkbench.leaderboard import build_leaderboard
from talkbench.merge import merge_runs
from talkbench.summary import NO_INTERVALS, IntervalSettings

from test_evaluate import make_suite

METRICS = ("psnr", "ssim", "fd_colour")


def reencoded(reference: Path, out: Path) -> Path:
    """Every reference clip re-encoded at its own H.264 quality (crf 24, 29, ...): 6 different degradations."""
    for i, clip in enumerate(sorted(reference.rglob("*.mp4"))):
        decoded = media.decode_clip(clip)
        media.write_clip(out / clip.relative_to(reference), decoded.frames, decoded.audio_int16, crf=24 + 5 * i)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs on one 6-clip LRS2-layout suite: the ground truth, re-encoded clips, and the same again."""
    root = tmp_path_factory.mktemp("ci")
    reference, _ = make_suite(root / "suite")
    generated = reencoded(reference, root / "reencoded")
    out = {}
    for name, folder in (("truth", reference), ("degraded", generated), ("degraded2", generated)):
        out[name] = evaluate(EvaluateConfig(generated=folder, reference=reference, out=root / name,
                                            metrics=METRICS, suite="lrs2", model=name))
    return out


def _summary(run_dir: Path) -> dict[str, str]:
    with (run_dir / "summary.csv").open() as handle:
        return next(csv.DictReader(handle))


def test_every_metric_has_an_interval_and_the_summary_says_how(runs):
    row = _summary(runs["degraded"].run_dir)
    for metric in METRICS:
        value, lo, hi = (float(row[c]) for c in (metric, f"{metric}_lo", f"{metric}_hi"))
        assert lo < hi, metric  # 6 differently degraded clips: a real spread
    assert float(row["psnr_lo"]) <= float(row["psnr"]) <= float(row["psnr_hi"])
    assert row["ci"] == "95% percentile bootstrap over clips, 10000 resamples, seed 0"
    assert row["wer1_lo"] == ""  # not computed, no interval


def test_intervals_are_deterministic_and_can_be_turned_off_or_blocked(runs, tmp_path):
    again = _summary(runs["degraded"].run_dir)

    merged = merge_runs([runs["degraded"].run_dir], tmp_path / "copy")
    assert merged["psnr_lo"] == float(again["psnr_lo"]) and merged["fd_colour_hi"] == float(again["fd_colour_hi"])
    off = merge_runs([runs["degraded"].run_dir], tmp_path / "off", ci=NO_INTERVALS)
    assert off["psnr_lo"] == "" and off["ci"] == "" and off["psnr"] == merged["psnr"]
    block = merge_runs([runs["degraded"].run_dir], tmp_path / "block", ci=IntervalSettings(block="speaker"))
    assert "speakers (block)" in block["ci"] and not math.isnan(block["psnr_lo"])


def test_compare_tells_a_real_difference_from_none(runs):
    truth, degraded, again = (runs[k].run_dir for k in ("truth", "degraded", "degraded2"))
    better = {r.metric: r for r in compare_runs(degraded, truth)}
    assert better["psnr"].difference > 0 and better["psnr"].p_value < 0.01 and better["psnr"].lo > 0
    assert better["ssim"].p_value < 0.01 and better["psnr"].n_clips == 6
    same = {r.metric: r for r in compare_runs(degraded, again)}
    assert same["psnr"].difference == 0 and same["psnr"].p_value == 1.0
    assert math.isnan(same["psnr"].mapsswe_p)  # not a word error rate


def test_compare_refuses_runs_that_are_not_paired(runs, tmp_path):
    truth = runs["truth"].run_dir
    suite = make_suite(tmp_path / "other")  # the same clips, in another reference folder
    partial_gen = tmp_path / "partial"
    shutil.copytree(suite[1], partial_gen)
    for clip in list(partial_gen.rglob("*.mp4"))[:2]:
        clip.unlink()
    other = evaluate(EvaluateConfig(generated=partial_gen, reference=suite[0], out=tmp_path / "p", metrics=METRICS,
                                    suite="lrs2"))
    with pytest.raises(CompareError, match="suite"):
        compare_runs(truth, other.run_dir)
    mini = evaluate(EvaluateConfig(generated=suite[1], reference=suite[0], out=tmp_path / "m", metrics=("psnr",),
                                   suite="lrs2", protocol="mini"))
    with pytest.raises(CompareError, match="protocol: talklip2023 vs mini"):
        compare_runs(other.run_dir, mini.run_dir)


def test_compare_names_clips_missing_on_either_side(runs, tmp_path):
    reference, generated = make_suite(tmp_path / "s")
    full = evaluate(EvaluateConfig(generated=generated, reference=reference, out=tmp_path / "full", metrics=METRICS,
                                   suite="lrs2"))
    shard = evaluate(EvaluateConfig(generated=generated, reference=reference, out=tmp_path / "shard",
                                    metrics=METRICS, suite="lrs2", shard=(1, 2)))
    with pytest.raises(CompareError, match=r"clip\(s\) missing in .*shard \(first: main/"):
        compare_runs(full.run_dir, shard.run_dir)


def test_compare_cli_prints_every_metric(runs):
    truth, degraded = (runs[k].run_dir for k in ("truth", "degraded"))
    result = CliRunner().invoke(app, ["compare", str(degraded), str(truth), "--format", "json",
                                      "--ci-resamples", "2000"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["metric"] for r in rows] == ["psnr", "psnr_talklip_compat", "ssim", "fd_colour"]  # with companions
    assert rows[0]["p_value"] < 0.01
    csv_out = CliRunner().invoke(app, ["compare", str(degraded), str(truth)])  # piped: CSV
    assert next(csv.DictReader(io.StringIO(csv_out.stdout)))["metric"] == "psnr"


def test_the_leaderboard_shows_intervals_and_ties(runs, tmp_path):
    out = tmp_path / "board.csv"
    build_leaderboard([runs[k].run_dir for k in ("degraded", "truth", "degraded2")], out)
    text = out.with_suffix(".md").read_text()
    truth_line = next(line for line in text.splitlines() if line.startswith("| truth "))
    degraded2_line = next(line for line in text.splitlines() if line.startswith("| degraded2 "))
    assert "**100 ± 0**" in truth_line  # the best, with its (empty) interval
    assert " ± " in degraded2_line and " ≈" not in degraded2_line.split("|")[4]  # psnr: significantly worse
    assert (tmp_path / "board_psnr.png").is_file()
