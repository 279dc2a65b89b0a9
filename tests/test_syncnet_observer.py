"""The SyncNet observer (talkbench.observers.syncnet): options, modes, skips and summary."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from talkbench import jpeg_compat
from talkbench.crops import CropKey, Kind
from talkbench.media import Clip, decode_clip
from talkbench.observers import SPECS, ClipData, ClipSkipped, ObserverContext, build, own_options
from talkbench.protocols import build_observers
from talkbench.observers import syncnet as obs

FIX = Path(__file__).resolve().parent / "fixtures" / "syncnet"


@pytest.fixture(scope="module")
def observer(syncnet_checkpoint: Path) -> obs.SyncNetObserver:
    # frames scored in memory (talklip2023's default JPEG round trip is tested below)
    ctx = ObserverContext(device="cpu", weights={"syncnet-v2": syncnet_checkpoint}, options={"lse_jpeg_compat": False})
    (built,) = build_observers(["lse_c", "lse_d", "av_offset"], ctx)
    return built


def _clip(path: Path, audio: np.ndarray | None, n_frames: int | None = None) -> Clip:
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="bgr24") for f in c.decode(video=0)])
    if n_frames is not None:
        frames = frames[:n_frames]
    return Clip(path=path, frames=frames, fps=25.0, audio_int16=audio, source_fps=25.0)


@pytest.fixture(scope="module")
def another_audio() -> np.ndarray:
    with np.load(FIX / "expected_slim.npz") as z:
        return z["another/audio_int16"]


def test_build_and_contract(observer: obs.SyncNetObserver) -> None:
    assert observer.metrics == ("lse_c", "lse_d", "av_offset")
    assert not observer.needs_reference and not observer.needs_text
    assert len(observer.weights_sha256["syncnet-v2"]) == 12
    assert observer.options == obs.LSEOptions()


def test_the_protocol_sets_the_jpeg_step() -> None:
    from talkbench.protocols import MINI, TALKLIP2023

    assert TALKLIP2023.options(["lse_c"], {})["lse_jpeg_compat"] is True
    assert MINI.options(["lse_c"], {})["lse_jpeg_compat"] is False
    assert TALKLIP2023.options(["lse_c"], {"lse_jpeg_compat": "false"})["lse_jpeg_compat"] is False


def test_options_are_validated() -> None:
    """The spec parses the command line's strings (talkbench.observers.own_options); LSEOptions takes them typed."""
    parsed = obs.LSEOptions.from_mapping(own_options(SPECS["syncnet"], {
        "lse_mode": "pipeline", "lse_jpeg_compat": "true", "lse_min_track": "20", "lse_track_agg": "mean"}))
    assert (parsed.mode, parsed.jpeg_compat, parsed.min_track, parsed.track_agg) == ("pipeline", True, 20, "mean")
    assert obs.LSEOptions.from_mapping(own_options(SPECS["syncnet"], {"lse_jpeg_compat": "off"})).jpeg_compat is False
    assert obs.LSEOptions.from_mapping(own_options(SPECS["syncnet"], {})) == obs.LSEOptions()  # the same defaults
    for bad, match in [({"lse_mode": "full"}, "lse_mode"), ({"lse_track_agg": "max"}, "lse_track_agg"),
                       ({"lse_min_track": "many"}, "lse_min_track"), ({"lse_detector": "mtcnn"}, "lse_detector")]:
        with pytest.raises(ValueError, match=match):
            build(SPECS["syncnet"], ObserverContext(options=bad))


def test_wav2lip_mode_row_and_jpeg_compat(observer: obs.SyncNetObserver, another_audio: np.ndarray) -> None:
    expected = json.loads((FIX / "expected.json").read_text())["per_clip"]["another"]
    clip = ClipData("another", _clip(FIX / "another.mp4", another_audio))
    row = observer.measure(clip)
    assert set(row) == {"lse_c", "lse_d", "av_offset", "n_windows"}
    assert row["av_offset"] == expected["videocapture"]["offset"] and row["n_windows"] == 77
    assert row["lse_d"] == pytest.approx(expected["videocapture"]["LSE_D"], abs=5e-4)
    assert row["lse_c"] == pytest.approx(expected["videocapture"]["LSE_C"], abs=5e-4)

    compat = obs.SyncNetObserver(model=observer.model, device=observer.device,
                                 options=obs.LSEOptions(jpeg_compat=True))
    row_jpg = compat.measure(ClipData("another", _clip(FIX / "another.mp4", another_audio)))
    assert row_jpg["lse_d"] == pytest.approx(expected["jpg"]["LSE_D"], abs=5e-4)
    assert row_jpg["lse_c"] == pytest.approx(expected["jpg"]["LSE_C"], abs=5e-4)
    assert abs(row_jpg["lse_d"] - row["lse_d"]) > 1.0          # the round trip matters on this fixture

    summary = observer.summarize([row, row_jpg, {"lse_c": None, "lse_d": None, "av_offset": None}])
    assert summary["lse_d"] == pytest.approx((row["lse_d"] + row_jpg["lse_d"]) / 2)
    assert summary["av_offset"] == pytest.approx(-15.0)


@pytest.mark.skipif(jpeg_compat.active_route() != "reference", reason="no ffmpeg 5.1 executable here")
def test_jpeg_compat_scores_meeting_like_the_reference_end_to_end(syncnet_checkpoint: Path) -> None:
    """The clip decoded as `evaluate` decodes it; frames and audio through the reference ffmpeg (route recorded)."""
    expected = json.loads((FIX / "expected.json").read_text())["per_clip"]["meeting"]["jpg"]
    ctx = ObserverContext(device="cpu", weights={"syncnet-v2": syncnet_checkpoint}, options={"lse_jpeg_compat": True})
    (compat,) = build_observers(["lse_c", "lse_d", "av_offset"], ctx)
    assert compat.weights_sha256[obs.JPEG_ROUTE_KEY] == "reference"
    clip = ClipData("meeting", decode_clip(FIX / "meeting.mp4"))
    row = compat.measure(clip)
    with np.load(FIX / "expected_slim.npz") as z:
        np.testing.assert_array_equal(obs.clip_audio(clip, jpeg_compat_audio=True), z["meeting/audio_int16"])
    assert row["av_offset"] == expected["offset"] and row["n_windows"] == expected["n_windows"]
    assert row["lse_d"] == pytest.approx(expected["LSE_D"], abs=2.5e-4)            # 2 float32 ulps at 1056
    assert row["lse_c"] == pytest.approx(expected["LSE_C"], abs=2.5e-4)


def test_clips_that_cannot_be_scored_are_skipped(observer: obs.SyncNetObserver, another_audio: np.ndarray) -> None:
    with pytest.raises(ClipSkipped, match="no audio"):
        observer.measure(ClipData("silent", _clip(FIX / "another.mp4", None)))
    with pytest.raises(ClipSkipped, match="Too short"):
        observer.measure(ClipData("short", _clip(FIX / "another.mp4", another_audio, n_frames=5)))


def test_pipeline_mode_tracks_a_real_face(observer: obs.SyncNetObserver) -> None:
    with av.open(str(FIX / "real_face_cut.mp4")) as c:
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        chunks = [r.to_ndarray().reshape(-1) for f in c.decode(stream) for r in resampler.resample(f)]
    audio = np.concatenate(chunks)
    clip = _clip(FIX / "real_face_cut.mp4", audio)
    default = obs.SyncNetObserver(model=observer.model, device=observer.device,
                                  options=obs.LSEOptions(mode="pipeline"))
    with pytest.raises(ClipSkipped, match=r"50 frames.*more than 100"):
        default.measure(ClipData("real", clip))
    loose = obs.SyncNetObserver(model=observer.model, device=observer.device,
                                options=obs.LSEOptions(mode="pipeline", min_track=20, min_face_size=50))
    data = ClipData("real", clip)
    row = loose.measure(data)
    assert row["n_tracks"] == 1 and row["n_windows"] >= 20
    assert np.isfinite(row["lse_d"]) and row["lse_c"] >= 0 and -15 <= row["av_offset"] <= 15
    assert CropKey(Kind.FACE_DETECTIONS, recipe="dlib") in data.cache      # detections are shared per clip
    strict = obs.SyncNetObserver(model=observer.model, device=observer.device,
                                 options=obs.LSEOptions(mode="pipeline", min_track=40, min_face_size=50))
    with pytest.raises(ClipSkipped, match="no face track with more than 40 detections"):
        strict.measure(data)


def test_aggregate_tracks() -> None:
    from talkbench.lse import LSEResult

    a = LSEResult(lse_c=1.0, lse_d=8.0, av_offset=2, n_windows=10, mean_dists=np.zeros(31))
    b = LSEResult(lse_c=3.0, lse_d=6.0, av_offset=0, n_windows=20, mean_dists=np.zeros(31))
    assert obs.aggregate_tracks([a, b], "first")["lse_c"] == 1.0
    assert obs.aggregate_tracks([a, b], "best") == {"lse_c": 3.0, "lse_d": 6.0, "av_offset": 0, "n_windows": 20}
    mean = obs.aggregate_tracks([a, b], "mean")
    assert mean["lse_d"] == 7.0 and mean["av_offset"] == 1.0 and mean["n_windows"] == 30
