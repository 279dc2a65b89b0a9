"""`talkbench evaluate --metrics lse_c,lse_d,av_offset` end to end: LRS2 layout (wav2lip mode, both frame
paths) and a plain folder of in-the-wild clips (pipeline mode), against the SyncNet parity fixture."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from talkbench import jpeg_compat
from talkbench.cli import app
from talkbench.media import write_clip

FIX = Path(__file__).resolve().parent / "fixtures" / "syncnet"
METRICS = "lse_c,lse_d,av_offset"


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIX / "expected.json").read_text())


def _rows(run_dir: Path) -> dict[str, dict]:
    with (run_dir / "clips.csv").open() as handle:
        return {row["clip_id"]: row for row in csv.DictReader(handle)}


def _summary(run_dir: Path) -> dict:
    with (run_dir / "summary.csv").open() as handle:
        return next(csv.DictReader(handle))


def _lrs2_folder(root: Path) -> Path:
    """The two fixture clips as LRS2 `main/<speaker>/<utterance>.mp4` (speaker spk0)."""
    for i, name in enumerate(("meeting", "another")):
        target = root / "main" / "spk0" / f"{i:05d}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIX / f"{name}.mp4", target)
    return root


@pytest.mark.parametrize("mode", ["jpg", "videocapture"])
def test_lrs2_folder_scores_equal_the_reference(mode: str, syncnet_checkpoint: Path, expected: dict,
                                                tmp_path: Path) -> None:
    generated = _lrs2_folder(tmp_path / "gen")
    flag = "--lse-jpeg-compat" if mode == "jpg" else "--no-lse-jpeg-compat"
    result = CliRunner().invoke(app, ["evaluate", str(generated), "--suite", "lrs2", "--metrics", METRICS,
                                      "--weights", f"syncnet-v2={syncnet_checkpoint}",
                                      "--out", str(tmp_path / "run"), flag, "--json"])
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "run")
    exact = mode == "videocapture" or jpeg_compat.active_route() == "reference"
    # direct frames: PyAV's audio differs from ffmpeg 5.1's by 1 on 11 samples per clip (test_jpeg_compat)
    tol = 2.5e-4 if mode == "jpg" and exact else 5e-4 if exact else 2e-2
    for i, name in enumerate(("meeting", "another")):
        want, row = expected["per_clip"][name][mode], rows[f"main/spk0/{i:05d}"]
        assert row["error"] == ""
        assert int(float(row["av_offset"])) == want["offset"]
        assert float(row["lse_d"]) == pytest.approx(want["LSE_D"], abs=tol)
        assert float(row["lse_c"]) == pytest.approx(want["LSE_C"], abs=tol)
    summary = _summary(tmp_path / "run")
    means = expected["dataset_mean_over_clips"][mode]            # calculate_scores_LRS.py's printed averages
    assert float(summary["lse_d"]) == pytest.approx(means["LSE_D"], abs=tol)
    assert float(summary["lse_c"]) == pytest.approx(means["LSE_C"], abs=tol)
    assert int(summary["n_clips"]) == 2 and int(summary["n_failed"]) == 0
    assert ("lse-jpeg-route=" in summary["observers"]) == (mode == "jpg")     # the route is in the provenance


def test_plain_folder_pipeline_mode_scores_tracks_and_records_short_clips(syncnet_checkpoint: Path,
                                                                          tmp_path: Path) -> None:
    generated = tmp_path / "wild"
    generated.mkdir()
    shutil.copyfile(FIX / "real_face_cut.mp4", generated / "real.mp4")          # 50 frames, one face
    rng = np.random.default_rng(0)
    grey = np.full((60, 160, 160, 3), 128, np.uint8)                         # no face anywhere
    write_clip(generated / "no_face.mp4", grey, (rng.standard_normal(60 * 640) * 300).astype(np.int16))
    base = ["evaluate", str(generated), "--suite", "folder", "--metrics", METRICS, "--weights",
            f"syncnet-v2={syncnet_checkpoint}", "--lse-mode", "pipeline", "--lse-min-face-size", "50"]
    result = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "default")])
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "default")
    assert set(rows) == {"real", "no_face"}                                     # never dropped silently
    assert "more than 100" in rows["real"]["error"] and rows["real"].get("lse_d", "") == ""

    result = CliRunner().invoke(app, [*base, "--lse-min-track", "20", "--out", str(tmp_path / "short_tracks")])
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "short_tracks")
    assert rows["real"]["error"] == "" and float(rows["real"]["n_tracks"]) == 1
    assert -15 <= float(rows["real"]["av_offset"]) <= 15 and float(rows["real"]["lse_c"]) >= 0
    assert "no face track" in rows["no_face"]["error"]
    assert int(_summary(tmp_path / "short_tracks")["n_failed"]) == 1
