"""``talkbench train`` through Typer's CliRunner: a one-step run from an LRS2-layout folder, then a resume."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from talkbench.cli.train import register
from test_talklip_support import short_lrs2_folder, tiny_expert_file


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()      # the run's config sets 1 thread; give the next tests theirs back
    yield
    torch.set_num_threads(threads)


def test_cli_train_runs_and_resumes(tmp_path):
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    data = tmp_path / "data"
    ids = short_lrs2_folder(data, n=10, boxes=False)
    (tmp_path / "train.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "valid.txt").write_text(ids[0] + "\n")
    (tmp_path / "tiny.toml").write_text(
        "[optim]\nbatch_size = 2\n[sampling]\nspan_length = 2\nval_span_stride = 0.9\n"
        "[schedule]\neval_interval = 1\ncheckpoint_interval = 1\n[run]\nnum_threads = 1\n"
        "val_observer_wer = true\nval_observer_beam = 2\n")
    expert = tiny_expert_file(tmp_path / "expert.pt")
    args = ["train", "--config", str(tmp_path / "tiny.toml"), "--data-root", str(data), "--train-list",
            str(tmp_path / "train.txt"), "--val-list", str(tmp_path / "valid.txt"), "--expert", str(expert),
            "--out-dir", str(tmp_path / "run"), "--weights", f"avhubert-large-lrs2={expert}", "--max-steps", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["global_step"] == 1 and (tmp_path / "run" / "checkpoint_step000000001.pth").is_file()
    args[-1] = "2"
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["global_step"] == 2
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r] == [1, 2]
    vals = [r["validation"] for r in log if "validation" in r]
    assert len(vals) == 2 and all(v["observer_clips"] == 1 and 0.0 <= v["observer_wer"] for v in vals)
    bad = CliRunner().invoke(app, ["train", "--data-root", str(data), "--expert", str(expert),
                                   "--out-dir", str(tmp_path / "run2")])
    assert bad.exit_code == 2 and "train_list" in bad.output
