"""Box count rule (talkbench.boxes.MAX_REUSED_BOXES): a clip up to two frames longer than its suite's box file is
scored on the last box, flagged ``box-count=B/T`` and warned about once; more missing frames stay an error row."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from talkbench import media, measure, suites
from talkbench.boxes import MAX_REUSED_BOXES, BoxCountError, check_boxes
from talkbench.evaluate import EvaluateConfig, evaluate

TESTS = Path(__file__).resolve().parent
DEMO = TESTS.parent / "talkbench" / "data" / "demo"
REAL = TESTS / "fixtures" / "media" / "syncnet_example_cut.avi"     # 976×528, 80 frames at 25 fps
N_REF = 12                                                          # reference frames = boxes in the suite

# one box per frame, each different, so that a reused box is told from any other
BOXES = np.array([[20 + i, 24 + i, 120 + i, 130 + i] for i in range(N_REF)], dtype=np.int64)


def _box_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return [m for m in messages if "face boxes for" in m]


def test_one_frame_over_reuses_the_last_box_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        boxes = check_boxes(BOXES, N_REF + 1, (160, 160), "ref/clip.npy", reuse_last=MAX_REUSED_BOXES)
    assert boxes.shape == (N_REF + 1, 4) and boxes.dtype == np.int64
    assert np.array_equal(boxes[:N_REF], BOXES) and boxes[-1].tolist() == BOXES[-1].tolist()
    warnings = _box_warnings(caplog)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"ref/clip.npy: {N_REF} face boxes for {N_REF + 1} frames; the last 1 frame reuses")
    assert f"-frames:v {N_REF}" in warnings[0]                          # the fix: cut the clip to its boxes


def test_beyond_the_tolerance_or_without_it_the_count_is_an_error(caplog: pytest.LogCaptureFixture) -> None:
    over = N_REF + MAX_REUSED_BOXES + 1
    with pytest.raises(BoxCountError) as err:
        check_boxes(BOXES, over, None, "ref/clip.npy", reuse_last=MAX_REUSED_BOXES)
    assert (err.value.n_boxes, err.value.n_frames) == (N_REF, over)
    message = str(err.value)
    assert message.startswith(f"ref/clip.npy: {N_REF} face boxes for {over} frames; give one box per frame")
    assert f"-frames:v {N_REF}" in message and f"only up to {MAX_REUSED_BOXES} last frames" in message
    with pytest.raises(BoxCountError, match=r"12 face boxes for 13 frames; give one box per frame \(re-run"):
        check_boxes(BOXES, N_REF + 1, None, "b.npy")                  # the default: every frame has its own box
    with pytest.raises(BoxCountError, match="0 face boxes for 1 frames"):
        check_boxes(np.zeros((0, 4)), 1, None, "b.npy", reuse_last=MAX_REUSED_BOXES)   # no last box to reuse
    assert not _box_warnings(caplog)


def test_equal_or_longer_box_files_are_unchanged_and_not_flagged(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "clip.npy"
    np.save(path, BOXES)
    flags: list[str] = []
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(measure.suite_boxes(path, N_REF, flags), BOXES)
        assert np.array_equal(measure.suite_boxes(path, N_REF - 2, flags), BOXES[:N_REF - 2])
    assert flags == [] and not _box_warnings(caplog)
    assert np.array_equal(measure.suite_boxes(path, N_REF + 2, flags)[N_REF:], [BOXES[-1]] * 2)
    assert flags == [f"box-count={N_REF}/{N_REF + 2}"]


def test_a_short_file_is_checked_whole(tmp_path: Path) -> None:
    # the rows of a short file are all used, so each is checked as before (a NaN row is still refused)
    bad = BOXES.astype(float)
    bad[3] = np.nan
    np.save(tmp_path / "clip.npy", bad)
    with pytest.raises(ValueError, match=r"clip\.npy: the face box of frame 3 .*NaN"):
        measure.suite_boxes(tmp_path / "clip.npy", N_REF + 1, [])


def _lrs2_suite(root: Path, n_generated: int) -> tuple[Path, Path]:
    """One-clip LRS2-layout suite: a 12-frame 160×160 reference with its 12 boxes, a generated clip of
    ``n_generated`` frames (another clip's frames, so PSNR is finite)."""
    reference, generated = root / "ref", root / "gen"
    clip = Path("main") / "spk0" / "00000"
    ref_frames = media.decode_clip(DEMO / "meeting.mp4", need_audio=False).frames[:N_REF]
    gen_frames = media.decode_clip(DEMO / "another.mp4", need_audio=False).frames[:n_generated]
    media.write_clip(reference / f"{clip}.mkv", ref_frames, None, codec="ffv1")   # lossless: the generated clip's
    media.write_clip(generated / f"{clip}.mkv", gen_frames, None, codec="ffv1")   # first frames never depend on T
    shutil.copyfile(DEMO / "meeting.txt", reference / f"{clip}.txt")
    np.save(reference / f"{clip}.npy", BOXES)
    return reference, generated


def _run(root: Path, n_generated: int) -> tuple[dict[str, str], dict[str, str]]:
    reference, generated = _lrs2_suite(root, n_generated)
    evaluate(EvaluateConfig(generated=generated, reference=reference, out=root / "run", metrics=("psnr", "ssim"),
                            suite="lrs2", model="m"))
    with (root / "run" / "clips.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    with (root / "run" / "summary.csv").open() as handle:
        summary = next(csv.DictReader(handle))
    return row, summary


def test_evaluate_scores_and_flags_a_clip_one_frame_longer_than_its_boxes(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        row, summary = _run(tmp_path / "over1", N_REF + 1)
    assert row["error"] == "" and row["input_flags"] == f"box-count={N_REF}/{N_REF + 1}"
    assert summary["n_flagged"] == "1" and summary["n_failed"] == "0"
    warnings = _box_warnings(caplog)
    assert len(warnings) == 1 and "00000.npy: 12 face boxes for 13 frames" in warnings[0]
    assert "does not fit protocol" not in caplog.text                  # a 160×160 clip fits; only the count warns
    # PSNR/SSIM compare the common frames: the same numbers as the generated clip cut to the boxes, unflagged
    exact, exact_summary = _run(tmp_path / "equal", N_REF)
    assert not exact.get("input_flags") and exact_summary["n_flagged"] == "0"
    assert 0 < float(row["psnr"]) < 60 and float(row["psnr"]) == float(exact["psnr"])
    assert float(row["ssim"]) == float(exact["ssim"])


def test_evaluate_makes_three_frames_over_an_error_row(tmp_path: Path) -> None:
    row, summary = _run(tmp_path, N_REF + 3)
    assert not row.get("psnr") and summary["n_failed"] == "1" and not row.get("input_flags")
    assert "00000.npy: 12 face boxes for 15 frames" in row["error"]
    assert f"only up to {MAX_REUSED_BOXES} last frames may reuse the last box" in row["error"]
    assert "-frames:v 12" in row["error"]


def test_a_routed_clip_one_frame_longer_than_its_boxes_reuses_the_last_box(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """An HD clip cut around its suite boxes (talklip2023 routes it): the 80th frame is cut by the 79th box."""
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    for folder in (gen, ref):
        folder.mkdir()
        shutil.copyfile(REAL, folder / "real.avi")
    boxes = np.array([[400 + 2 * (i % 3), 160, 620, 380] for i in range(79)])
    np.save(ref / "real.npy", boxes)
    pair = suites.load_suite("folder", gen, ref, None).pairs[0]
    observers = measure.ObserverSetup("talklip2023", ("psnr",)).build()
    with caplog.at_level(logging.WARNING):
        data, flags = measure._clip_data(pair, observers, observers.inputs)
    assert flags == ["frame-size=976x528", "face-track", "box-count=79/80"]
    assert data.generated.num_frames == 80 and data.boxes[-1].tolist() == data.boxes[-2].tolist()
    assert len(_box_warnings(caplog)) == 1
