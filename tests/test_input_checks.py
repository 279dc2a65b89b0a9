"""Input checks per protocol (talkbench.protocols.Expects) and real in-the-wild clips through evaluate.

The real clip is a 3.2-s cut of syncnet_python's example (976×528 MPEG-4 + MP3, tests/fixtures/media/PROVENANCE.md):
under the official protocols it is cut around its face track (flagged ``face-track``), never read whole.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from talkbench import jpeg_compat, media, measure, protocols, suites
from talkbench.crops.face import clip_face_track
from talkbench.crops.syncnet import jpeg_frames
from talkbench.evaluate import EvaluateConfig, evaluate
from talkbench.measure import ObserverSetup
from talkbench.summary import NO_INTERVALS
from test_avhubert_common import filled_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "media"
REAL = FIXTURES / "syncnet_example_cut.avi"
SMALL = FIXTURES / "meeting.mp4"          # 160×160, 25 fps


def _header(width: int, height: int, fps: float = 25.0) -> media.VideoHeader:
    return media.VideoHeader(path=Path("x.mp4"), width=width, height=height, source_fps=fps, n_frames=10,
                             has_audio=True)


def test_each_protocol_states_what_it_expects(tmp_path: Path) -> None:
    lrs2, hd = _header(160, 160), _header(976, 528, 30.0)
    talklip = protocols.TALKLIP2023.expects
    assert talklip.flags(lrs2) == [] and not talklip.routes(lrs2)
    assert talklip.flags(hd) == ["frame-size=976x528", "fps=30", "face-track"] and talklip.routes(hd)
    official = protocols.AVHUBERT_OFFICIAL.expects
    assert official.flags(_header(224, 224)) == [] and official.flags(hd) == ["fps=30", "face-track"]
    mini = protocols.MINI.expects
    corpus = tmp_path / "corpus"
    (corpus / "test" / "main" / "spk00").mkdir(parents=True)
    (corpus / protocols.CORPUS_MARKER).write_text(json.dumps({"format": "talkbench-mini-corpus"}))
    render = corpus / "test" / "main" / "spk00" / "00001.mp4"
    assert mini.flags(lrs2, [None, render]) == []
    assert mini.flags(lrs2, [tmp_path / "elsewhere.mp4"]) == ["not-synthetic"]
    assert mini.flags(hd, [render]) == ["frame-size=976x528", "fps=30"] and not mini.routes(hd)


def test_lrw_suites_expect_lrw_clips_which_are_read_whole(tmp_path: Path) -> None:
    # MVM reads LRW's 256×256 clips whole (its fixed crop box): an LRW suite's clips are not routed or flagged
    lrw = _header(256, 256)
    for protocol in (protocols.TALKLIP2023, protocols.AVHUBERT_OFFICIAL):
        assert protocol.expects.for_suite("lrw").flags(lrw) == [] and not protocol.expects.for_suite("lrw").routes(lrw)
        assert protocol.expects.for_suite("lrs2") is protocol.expects
    assert protocols.TALKLIP2023.expects.for_suite("lrs2").routes(lrw)
    folder = tmp_path / "ABOUT" / "test"
    folder.mkdir(parents=True)
    (folder / "ABOUT_00001.mp4").write_bytes((FIXTURES / "about_256.mp4").read_bytes())
    setup = ObserverSetup("talklip2023", ("psnr",), suite_kind="lrw")
    assert setup.build().inputs.expects.frame_size == (256, 256)
    result = evaluate(EvaluateConfig(generated=tmp_path, reference=tmp_path, out=tmp_path / "run", metrics=("psnr",),
                                     suite="lrw", ci=NO_INTERVALS))
    assert result.n_failed == 0 and not _rows(tmp_path / "run")[0].get("input_flags")


def _suite(root: Path, clip: Path, text: str | None = "I think") -> tuple[Path, Path]:
    gen, ref = root / "gen", root / "ref"
    for folder in (gen, ref):
        folder.mkdir(parents=True)
        (folder / f"real{clip.suffix}").write_bytes(clip.read_bytes())
    if text:
        (ref / "transcripts.csv").write_text(f"path,text\nreal,{text}\n")
    return gen, ref


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "clips.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def avhubert_checkpoint(tmp_path_factory) -> Path:
    return filled_checkpoint(tmp_path_factory.mktemp("avhubert"))


def test_real_hd_clip_under_talklip2023_is_measured_on_its_face_track(
        tmp_path: Path, avhubert_checkpoint: Path, syncnet_checkpoint: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PSNR/SSIM, official WER1 (stand-in weights) and pipeline LSE (stand-in weights) on the 976×528 real clip: all
    read the 160×160 face-centred squares of its one face track; the pipeline crops that track, detecting nothing
    more."""
    from talkbench import faces

    calls = []
    real = faces.detect_faces
    monkeypatch.setattr(faces, "detect_faces", lambda frame, *a, **k: calls.append(frame.shape) or real(frame, *a, **k))
    gen, ref = _suite(tmp_path, REAL)
    config = EvaluateConfig(generated=gen, reference=ref, out=tmp_path / "run", suite="folder",
                            metrics=("psnr", "ssim", "wer1", "lse_c", "lse_d"),
                            options={"lse_mode": "pipeline", "lse_min_track": 20},
                            weights={"avhubert-large-lrs2": avhubert_checkpoint, "syncnet-v2": syncnet_checkpoint})
    with caplog.at_level(logging.WARNING):
        result = evaluate(config)
    [row] = _rows(tmp_path / "run")
    assert row["error"] == "" and result.summary["n_flagged"] == 1 and result.n_failed == 0
    assert row["input_flags"] == "frame-size=976x528;face-track"
    assert "does not fit protocol talklip2023" in caplog.text and "face-track" in caplog.text
    for column in ("psnr", "ssim", "wer1", "lse_c", "lse_d"):
        assert np.isfinite(float(row[column]))
    assert float(row["psnr"]) == 100.0 and row["n_tracks"] == "1"   # generated = reference, cut by the same track
    assert len(calls) == 80 and all(max(shape) <= 480 for shape in calls)   # the track's detections only

    # what the observers were given: 160×160 face-centred squares, the track's boxes inside them (track cached)
    observers = measure.ObserverSetup("talklip2023", ("psnr",), tracks_dir=tmp_path / "run" / "tracks").build()
    pair = suites.load_suite("folder", gen, ref, None).pairs[0]
    data, flags = measure._clip_data(pair, observers, observers.inputs)
    assert len(calls) == 80 and flags == ["frame-size=976x528", "face-track"]
    assert data.generated.frames.shape == (80, 160, 160, 3) and data.reference.frames.shape == (80, 160, 160, 3)
    centres = (data.boxes[:, :2] + data.boxes[:, 2:]) / 2
    assert np.abs(centres - 80).max() <= 1 and clip_face_track(data.cache) is not None

    # the JPEG round trip of wav2lip-mode LSE reads the squares, not the file's whole frames
    seen = []
    real_reference_frames = jpeg_compat.reference_frames
    monkeypatch.setattr(jpeg_compat, "reference_frames",
                        lambda **kwargs: seen.append(sorted(kwargs)) or real_reference_frames(**kwargs))
    assert jpeg_frames(data.generated, "real").shape == (80, 224, 224, 3)
    assert seen == [["frames_bgr", "size"]]


def test_full_frame_clip_without_a_face_is_refused_with_the_fix(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.mp4"
    media.write_clip(noise, rng.integers(0, 256, (12, 240, 320, 3), dtype=np.uint8), None)
    gen, ref = _suite(tmp_path, noise, text=None)
    result = evaluate(EvaluateConfig(generated=gen, reference=ref, out=tmp_path / "run", suite="folder",
                                     metrics=("psnr",)))
    [row] = _rows(tmp_path / "run")
    assert result.n_failed == 1 and result.summary["n_flagged"] == 1
    assert "no face found" in row["error"] and "talkbench prepare" in row["error"]
    assert "not cropped blindly" in row["error"]


def test_mini_observers_warn_on_real_faces(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gen, _ = _suite(tmp_path, REAL, text=None)
    with caplog.at_level(logging.WARNING):
        result = evaluate(EvaluateConfig(generated=gen, reference=None, out=tmp_path / "run", suite="folder",
                                         protocol="mini", metrics=("lse_c", "lse_d")))
    [row] = _rows(tmp_path / "run")
    assert row["input_flags"] == "frame-size=976x528;not-synthetic" and result.summary["n_flagged"] == 1
    assert "mini-syncnet was trained on talkbench's synthetic corpus" in caplog.text


def test_memory_guard_refuses_from_the_header(tmp_path: Path) -> None:
    gen, _ = _suite(tmp_path, REAL, text=None)
    pair = suites.load_suite("folder", gen, None, None).pairs[0]
    observers = measure.ObserverSetup("mini", ("psnr",)).build()
    assert observers.inputs.max_whole_clip_bytes == measure.MAX_WHOLE_CLIP_BYTES
    tight = measure.BuiltObservers([], measure.InputPolicy("mini", protocols.MINI.expects,
                                                          max_whole_clip_bytes=50 * 976 * 528 * 3))
    result = measure.measure_clip(pair, tight)
    assert result.error.startswith("input: ") and "would take" in result.error and "talkbench prepare" in result.error
    ok = measure.measure_clip(pair, measure.BuiltObservers([], measure.InputPolicy("mini", protocols.MINI.expects)))
    assert ok.error is None and ok.values["input_flags"] == "frame-size=976x528;not-synthetic"
    small = suites.ClipPair(clip_id="m", generated=SMALL, reference=None, text=None, boxes=None)
    assert measure.measure_clip(small, tight).error is None            # 73 frames of 160×160: under the guard


def test_suite_boxes_are_the_track_of_a_routed_clip(tmp_path: Path) -> None:
    """An HD clip with its <id>.npy boxes under talklip2023: cut around those boxes (no detection); too few boxes
    are refused as for clips read whole."""
    gen, ref = _suite(tmp_path, REAL, text=None)
    boxes = np.tile([400, 160, 620, 380], (80, 1))
    np.save(ref / "real.npy", boxes)
    pair = suites.load_suite("folder", gen, ref, None).pairs[0]
    observers = measure.ObserverSetup("talklip2023", ("psnr",)).build()
    data, flags = measure._clip_data(pair, observers, observers.inputs)
    assert flags == ["frame-size=976x528", "face-track"] and data.generated.frames.shape == (80, 160, 160, 3)
    assert data.boxes.tolist() == [[40, 40, 120, 120]] * 80       # 220-px box, 440-px square -> 80 px of 160
    np.save(ref / "real.npy", boxes[:50])
    result = measure.measure_clip(suites.load_suite("folder", gen, ref, None).pairs[0], observers)
    assert "50 face boxes for 80 frames" in result.error
    assert result.values["input_flags"] == "frame-size=976x528;face-track"
