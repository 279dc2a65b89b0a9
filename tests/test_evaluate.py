import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from talkbench.cli import app
from talkbench.evaluate import EvaluateConfig, EvaluationError, evaluate, in_shard, parse_shard
from talkbench.merge import merge_runs

TESTS = Path(__file__).resolve().parent
DEMO = TESTS.parent / "talkbench" / "data" / "demo"
METRICS = ("psnr", "psnr_talklip_compat", "ssim")


def make_suite(root: Path, n_speakers: int = 3) -> tuple[Path, Path]:
    """LRS2-layout reference with 2 clips per speaker, and a 'generated' folder where each clip is
    replaced by the other sample clip (so PSNR is finite)."""
    reference, generated = root / "ref", root / "gen"
    names = ["meeting", "another"]
    for s in range(n_speakers):
        for i, name in enumerate(names):
            for folder, source in ((reference, name), (generated, names[1 - i])):
                target = folder / "main" / f"spk{s}" / f"{i:05d}.mp4"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(DEMO / f"{source}.mp4", target)
            (reference / "main" / f"spk{s}" / f"{i:05d}.txt").write_text(
                "Text:  " + (DEMO / f"{name}.txt").read_text().strip() + "\n")
    return reference, generated


def summary_metrics(run_dir: Path) -> dict:
    with (run_dir / "summary.csv").open() as handle:
        row = next(csv.DictReader(handle))
    return {m: float(row[m]) for m in METRICS} | {"n_clips": int(row["n_clips"]), "n_failed": int(row["n_failed"])}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return make_suite(tmp_path_factory.mktemp("suite"))


def test_run_then_resume_recomputes_nothing(suite, tmp_path):
    reference, generated = suite
    config = EvaluateConfig(generated=generated, reference=reference, out=tmp_path / "run", metrics=METRICS,
                            suite="lrs2", model="m")
    first = evaluate(config)
    assert first.computed == 6 and first.n_clips == 6 and first.n_failed == 0
    second = evaluate(config)
    assert second.computed == 0
    assert second.summary == first.summary | {"date": second.summary["date"]}
    with (tmp_path / "run" / "clips.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {"clip_id", "psnr", "ssim", "error"} <= set(rows[0])
    by_id = {r["clip_id"]: r for r in rows}
    assert float(by_id["main/spk1/00000"]["psnr"]) == float(by_id["main/spk2/00000"]["psnr"])  # same pair
    assert float(by_id["main/spk1/00000"]["psnr"]) < 60


def test_a_broken_clip_is_an_error_row_and_the_run_goes_on(suite, tmp_path):
    reference, generated = suite
    broken = tmp_path / "gen"
    shutil.copytree(generated, broken)
    (broken / "main" / "spk1" / "00001.mp4").write_bytes(b"not a video at all")
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(broken), "--reference", str(reference), "--suite", "lrs2",
                                 "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    with (tmp_path / "run" / "clips.csv").open() as handle:
        rows = {r["clip_id"]: r for r in csv.DictReader(handle)}
    assert "00001.mp4" in rows["main/spk1/00001"]["error"]
    assert summary_metrics(tmp_path / "run")["n_failed"] == 1
    strict = runner.invoke(app, ["evaluate", str(broken), "--reference", str(reference), "--suite", "lrs2",
                                 "--out", str(tmp_path / "strict"), "--strict"])
    assert strict.exit_code != 0


def test_missing_folder_and_unknown_metric_are_clear_errors(suite, tmp_path):
    reference, generated = suite
    with pytest.raises(EvaluationError, match="not found"):
        evaluate(EvaluateConfig(generated=tmp_path / "nope", out=tmp_path / "r", metrics=METRICS))
    with pytest.raises(EvaluationError, match="--metrics"):
        evaluate(EvaluateConfig(generated=generated, out=tmp_path / "r", metrics=("bogus",)))


def test_shards_merge_into_the_single_run_summary(suite, tmp_path):
    reference, generated = suite
    single = evaluate(EvaluateConfig(generated=generated, reference=reference, out=tmp_path / "single",
                                     metrics=METRICS, suite="lrs2", model="m"))
    shard_dirs = []
    for k in (1, 2, 3):
        shard_dirs.append(tmp_path / f"shard{k}")
        evaluate(EvaluateConfig(generated=generated, reference=reference, out=shard_dirs[-1], metrics=METRICS,
                                suite="lrs2", model="m", shard=(k, 3)))
    merged = merge_runs(shard_dirs, tmp_path / "merged")
    assert {m: merged[m] for m in METRICS} == {m: single.summary[m] for m in METRICS}
    assert merged["n_clips"] == 6


def test_shard_parsing_and_membership_partition():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("0/3", "4/3", "x", "1-3"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    ids = [f"main/s/{i:05d}" for i in range(50)]
    assert sorted(i for k in (1, 2, 3) for i in ids if in_shard(i, (k, 3))) == sorted(ids)


def _stored(run_dir: Path) -> int:
    try:
        with sqlite3.connect(run_dir / "store.sqlite", timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM clips").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(suite, tmp_path):
    reference, generated = suite
    script = TESTS / "evaluate_script.py"
    env = dict(os.environ, PYTHONPATH=str(TESTS.parent))
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    child = subprocess.Popen([sys.executable, str(script), str(generated), str(reference), str(killed_dir), "1.0"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _stored(killed_dir) < 2 and time.time() < deadline and child.poll() is None:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    stored_at_kill = _stored(killed_dir)
    assert 2 <= stored_at_kill < 6, "the run must be killed mid-way"
    resumed = subprocess.run([sys.executable, str(script), str(generated), str(reference), str(killed_dir), "0"],
                             env=env, capture_output=True, text=True, check=True)
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["computed"] == 6 - stored_at_kill
    subprocess.run([sys.executable, str(script), str(generated), str(reference), str(clean_dir), "0"],
                   env=env, capture_output=True, text=True, check=True)
    assert summary_metrics(killed_dir) == summary_metrics(clean_dir)
