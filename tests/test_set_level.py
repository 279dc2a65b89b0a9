"""A set-level metric (``fd_colour``): per-clip statistics stored with each row give, after a kill and a
resume, after shards and a merge, and after a rerun, exactly the value of one uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from talkbench.crops.face import face_crops
from talkbench.evaluate import EvaluateConfig, evaluate
from talkbench.media import decode_clip
from talkbench.merge import merge_runs
from talkbench.observers import colour_stats
from talkbench.store import ResultStore

from test_evaluate import DEMO, TESTS, _stored, make_suite

METRICS = ("psnr", "fd_colour")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return make_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def single(suite, tmp_path_factory):
    reference, generated = suite
    return evaluate(EvaluateConfig(generated=generated, reference=reference, out=tmp_path_factory.mktemp("one"),
                                   metrics=METRICS, suite="lrs2", model="m"))


def _fd(run_dir: Path) -> float:
    with (run_dir / "summary.csv").open() as handle:
        return float(next(csv.DictReader(handle))["fd_colour"])


def test_the_value_is_the_frechet_distance_of_all_frames(single, suite):
    """Summed per-clip statistics equal the statistics of all frames at once (np.mean / np.cov)."""
    reference, generated = suite
    feats = {"generated": [], "reference": []}
    for clip in sorted(reference.rglob("*.mp4")):
        rel = clip.relative_to(reference)
        for side, root in (("generated", generated), ("reference", reference)):
            crops = face_crops(decode_clip(root / rel, need_audio=False).frames, None)
            feats[side].append(colour_stats.frame_features(crops))
    gen, ref = (np.concatenate(feats[s]) for s in ("generated", "reference"))
    direct = colour_stats.frechet_distance(gen.mean(0), np.cov(gen, rowvar=False), ref.mean(0),
                                           np.cov(ref, rowvar=False))
    assert single.summary["fd_colour"] == pytest.approx(direct, abs=1e-9)
    # a set-level number: each generated clip is the *other* sample clip (PSNR 32.7 dB), but pooled over the
    # suite the generated frames are the reference frames, so the two distributions are the same
    assert abs(single.summary["fd_colour"]) < 1e-6 and single.summary["psnr"] < 40
    with ResultStore(single.run_dir) as store:
        stored = store.features()
    assert len(stored) == 6 and all(f["colour_generated"].shape == (73,) for f in stored.values())


def test_identical_sets_are_at_distance_zero_and_a_colour_cast_is_not():
    frames = face_crops(decode_clip(DEMO / "meeting.mp4", need_audio=False).frames, None)
    stats = colour_stats.sufficient_statistics(colour_stats.frame_features(frames))
    same = colour_stats.summarize_features({"a": {"colour_generated": stats, "colour_reference": stats}})
    assert same["fd_colour"] == pytest.approx(0.0, abs=1e-6)
    cast = np.clip(frames.astype(int) + [0, 0, 12], 0, 255).astype(np.uint8)  # redder generated faces
    tinted = colour_stats.sufficient_statistics(colour_stats.frame_features(cast))
    moved = colour_stats.summarize_features({"a": {"colour_generated": tinted, "colour_reference": stats}})
    assert moved["fd_colour"] > 100.0  # ~12² from the red mean alone
    assert np.isnan(colour_stats.summarize_features({})["fd_colour"])


def test_shards_and_merge_give_the_single_run_value(single, suite, tmp_path):
    reference, generated = suite
    shards = []
    for k in (1, 2):
        shards.append(tmp_path / f"shard{k}")
        evaluate(EvaluateConfig(generated=generated, reference=reference, out=shards[-1], metrics=METRICS,
                                suite="lrs2", model="m", shard=(k, 2)))
    merged = merge_runs(shards, tmp_path / "merged")
    assert merged["fd_colour"] == single.summary["fd_colour"]  # bit for bit: summed in clip-id order
    assert merged["psnr"] == single.summary["psnr"]
    rerun = evaluate(EvaluateConfig(generated=generated, reference=reference, out=single.run_dir, metrics=METRICS,
                                    suite="lrs2", model="m"))
    assert rerun.computed == 0 and rerun.summary["fd_colour"] == single.summary["fd_colour"]


def test_sigkill_then_resume_gives_the_single_run_value(single, suite, tmp_path):
    reference, generated = suite
    script = TESTS / "evaluate_script.py"
    env = dict(os.environ, PYTHONPATH=str(TESTS.parent))
    killed = tmp_path / "killed"
    args = [sys.executable, str(script), str(generated), str(reference), str(killed)]
    child = subprocess.Popen(args + ["1.0", ",".join(METRICS)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _stored(killed) < 2 and time.time() < deadline and child.poll() is None:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 2 <= _stored(killed) < 6, "the run must be killed mid-way"
    with ResultStore(killed) as store:  # every stored row has its features: one transaction
        assert set(store.features()) == store.finished_ids()
    subprocess.run(args + ["0", ",".join(METRICS)], env=env, capture_output=True, text=True, check=True)
    assert _fd(killed) == single.summary["fd_colour"]
