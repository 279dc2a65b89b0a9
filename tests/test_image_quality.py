"""The image-quality observer against a step-by-step re-enactment of TalkLip's visual_quality.py."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from talkbench.media import decode_clip, write_clip
from talkbench.observers import ClipData, ClipSkipped, ObserverContext
from talkbench.protocols import build_observers
from talkbench.observers import image_quality

MEDIA = Path(__file__).resolve().parent / "fixtures" / "media"


def read_like_cv2(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    return frames


def visual_quality_script(clips: list[tuple[Path, Path, np.ndarray]]) -> tuple[float, float]:
    """What the script prints, redone from its description: per-frame lists over all clips, then means."""
    ssims, psnrs = [], []
    for gt_path, synt_path, boxes in clips:
        gt, synt = read_like_cv2(gt_path), read_like_cv2(synt_path)
        for i in range(min(len(synt), len(gt))):
            x1, y1, x2, y2 = boxes[i]
            gt_crop = cv2.resize(gt[i][y1:y2, x1:x2, :], (96, 96))
            synt_crop = cv2.resize(synt[i][y1:y2, x1:x2, :], (96, 96))
            ssims.append(structural_similarity(gt_crop, synt_crop, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                               use_sample_covariance=False, data_range=255))
            mse = np.mean((gt_crop - synt_crop) ** 2)  # uint8, as the script
            psnrs.append(100 if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse)))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def jittered_boxes(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x1 = size // 8 + rng.integers(-3, 4, n)
    y1 = size // 6 + rng.integers(-3, 4, n)
    return np.stack([x1, y1, x1 + size // 2 + rng.integers(0, 5, n), y1 + size // 2 + rng.integers(0, 5, n)], axis=1)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Two clips: meeting degraded by H.264 (crf 35), about_256 shifted in colour and cut short."""
    folder = tmp_path_factory.mktemp("iq")
    meeting = decode_clip(MEDIA / "meeting.mp4")
    write_clip(folder / "meeting.mp4", meeting.frames, meeting.audio_int16, crf=35)
    about = decode_clip(MEDIA / "about_256.mp4")
    shifted = np.clip(about.frames[:18].astype(int) + 9, 0, 255).astype(np.uint8)
    write_clip(folder / "about_256.mp4", shifted, about.audio_int16, crf=10)
    return [(MEDIA / "meeting.mp4", folder / "meeting.mp4", jittered_boxes(73, 160, 0)),
            (MEDIA / "about_256.mp4", folder / "about_256.mp4", jittered_boxes(23, 256, 1))]


def clip_data(gt: Path, synt: Path, boxes: np.ndarray | None) -> ClipData:
    return ClipData(clip_id=synt.stem, generated=decode_clip(synt, need_audio=False),
                    reference=decode_clip(gt, need_audio=False), boxes=boxes)


def test_matches_the_reference_script(suite):
    observer = image_quality.build(ObserverContext())
    rows = [observer.measure(clip_data(*clip)) for clip in suite]
    summary = observer.summarize(rows)
    psnr_script, ssim_script = visual_quality_script(suite)
    assert summary["psnr_talklip_compat"] == pytest.approx(psnr_script, abs=1e-9)
    assert summary["ssim"] == pytest.approx(ssim_script, abs=1e-12)
    # the true PSNR is well below the wrapped one on these degraded clips
    assert 20 < summary["psnr"] < summary["psnr_talklip_compat"]
    assert image_quality.summarize(rows) == summary  # the module-level function the summary code calls


def test_row_columns_and_frame_mismatch(suite):
    gt, synt, boxes = suite[1]
    row = image_quality.build(ObserverContext()).measure(clip_data(gt, synt, boxes))
    assert set(row) == {"psnr", "psnr_talklip_compat", "ssim", "n_frames", "n_frames_generated", "n_frames_reference"}
    # the script compares the common prefix; the lengths are recorded
    assert (row["n_frames"], row["n_frames_generated"], row["n_frames_reference"]) == (18, 18, 23)


def test_summary_weighs_frames_not_clips():
    rows = [{"psnr": 30.0, "psnr_talklip_compat": 31.0, "ssim": 0.9, "n_frames": 10},
            {"psnr": 20.0, "psnr_talklip_compat": 29.0, "ssim": 0.5, "n_frames": 30},
            {"lse_c": 7.0}]  # another observer's row: ignored
    summary = image_quality.summarize(rows)
    assert summary["psnr"] == pytest.approx((30 * 10 + 20 * 30) / 40)
    assert summary["ssim"] == pytest.approx((0.9 * 10 + 0.5 * 30) / 40)
    assert all(math.isnan(v) for v in image_quality.summarize([]).values())


def test_identical_clips_and_full_frames():
    clip = decode_clip(MEDIA / "about_256.mp4")
    row = image_quality.build(ObserverContext()).measure(ClipData("about", clip, clip))
    assert row["psnr"] == row["psnr_talklip_compat"] == 100.0
    assert row["ssim"] == pytest.approx(1.0, abs=1e-12)


def test_registry_builds_one_observer():
    observers = build_observers(["psnr", "ssim", "psnr_talklip_compat"], ObserverContext())
    assert len(observers) == 1
    observer = observers[0]
    assert observer.metrics == ("psnr", "psnr_talklip_compat", "ssim")
    assert observer.needs_reference and not observer.needs_text and dict(observer.weights_sha256) == {}


def test_skips(suite):
    observer = image_quality.build(ObserverContext())
    gt, synt, boxes = suite[0]
    data = clip_data(gt, synt, boxes)
    with pytest.raises(ClipSkipped, match="no reference clip"):
        observer.measure(ClipData("x", data.generated, None))
    with pytest.raises(ClipSkipped, match=r"10 face boxes for \d+ frames"):
        observer.measure(ClipData("x", data.generated, data.reference, boxes=boxes[:10]))
    small = decode_clip(MEDIA / "about_256.mp4")
    with pytest.raises(ClipSkipped, match="one face box cannot crop both"):
        observer.measure(ClipData("x", small, data.reference, boxes=boxes))


def test_a_size_mismatch_without_boxes_is_logged(caplog):
    import logging

    from talkbench.media import Clip
    from talkbench.observers.base import ClipData
    from talkbench.observers.image_quality import ImageQualityObserver

    small = np.zeros((2, 64, 64, 3), np.uint8)
    large = np.zeros((2, 128, 96, 3), np.uint8)
    clip = ClipData("c1", Clip(Path("g.mp4"), small, 25.0, None, 25.0), Clip(Path("r.mp4"), large, 25.0, None, 25.0))
    with caplog.at_level(logging.WARNING, logger="talkbench.crops.face"):
        ImageQualityObserver().measure(clip)
    assert "c1: generated frames are 64×64, reference frames 96×128" in caplog.text
