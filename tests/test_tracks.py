"""Face tracks (talkbench.tracks): squares, tracking rule, every-k detection, streaming, the run-directory cache."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from talkbench import faces, media, tracks
from talkbench.evaluate import TRACKS_DIR, EvaluateConfig, evaluate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "media"
ABOUT = FIXTURES / "about_256.mp4"          # 256×256 face clip, 23 frames
REAL = FIXTURES / "syncnet_example_cut.avi"  # 976×528 MPEG-4 + MP3, real speaker, 80 frames


def _blurred(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), (7, 7), 2)


def test_face_square_is_exact_at_whole_pixels_and_pads_outside() -> None:
    frame = _blurred((300, 400))
    box = [120, 70, 200, 150]                     # side 80 -> square 160 around (160, 110)
    assert np.array_equal(tracks.face_square(frame, box, 160), frame[30:190, 80:240])
    half = tracks.face_square(frame, box, 80)     # shrink by 2: close to the 2×2 mean
    mean = frame[30:190, 80:240].reshape(80, 2, 80, 2, 3).mean(axis=(1, 3))
    assert np.abs(half.astype(float) - mean).max() <= 1.0
    outside = tracks.face_square(frame, [1000, 1000, 1080, 1080], 64)
    assert (outside == tracks.PAD_VALUE).all()
    corner = tracks.face_square(frame, [0, 0, 40, 40], 80)   # square (-20..60): the top-left 20 px are padding
    assert (corner[:20] == tracks.PAD_VALUE).all() and np.array_equal(corner[20:, 20:], frame[:60, :60])


def test_box_in_square_centres_the_track_box() -> None:
    box = np.array([100.0, 50.0, 180.0, 150.0])    # 80×100 -> side 200
    inside = tracks.box_in_square(box, box, 160)
    assert inside == pytest.approx([80 - 32, 80 - 40, 80 + 32, 80 + 40])
    shifted = tracks.box_in_square(box, box, 160, shift_y=0.1)
    assert shifted[1] == pytest.approx(inside[1] - 16)


def _dets(n: int, box: list[float], every: int = 1, spurious_at: int | None = None) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for t in range(n):
        if t % every:
            out.append(None)
            continue
        rows = [[box[0] + t, box[1], box[2] + t, box[3], 1.0]]
        if t == spurious_at:
            rows.append([500, 500, 900, 900, 2.0])   # a larger face for one frame only
        out.append(np.array(rows))
    return out


def test_track_keeps_the_longest_face_interpolates_and_holds() -> None:
    dets = _dets(40, [100, 100, 200, 200], every=5, spurious_at=10)
    dets[0] = np.zeros((0, 5))                                  # looked at, no face: held from frame 5
    track = tracks.track_from_detections(dets, (1000, 1000), tracks.TrackSettings(smooth=1))
    assert len(track) == 40 and track.detected.sum() == 7 and not track.detected[0]
    assert track.raw[0] == pytest.approx([105, 100, 205, 200])            # held before the first detection
    assert track.raw[7] == pytest.approx([107, 100, 207, 200])            # interpolated between 5 and 10
    assert track.raw[39] == pytest.approx([135, 100, 235, 200])           # held after the last one
    assert (track.raw[:, 2] < 500).all()                                  # the one-frame large face is not the track


def test_smoothing_removes_a_one_frame_jump() -> None:
    boxes = np.tile([100.0, 100, 200, 200], (30, 1))
    boxes[15] += 60
    smooth = tracks.smooth_boxes(boxes, 13)
    assert smooth == pytest.approx(np.tile([100.0, 100, 200, 200], (30, 1)))
    assert tracks.smooth_boxes(boxes, 1) == pytest.approx(boxes)


def test_no_face_is_a_clear_error() -> None:
    with pytest.raises(tracks.NoFaceError, match="talkbench prepare"):
        tracks.track_from_detections([np.zeros((0, 5))] * 5, (100, 100), label="x.mp4")
    with pytest.raises(ValueError, match="odd smooth"):
        tracks.TrackSettings(smooth=4)


def _count_detections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    real = faces.detect_faces

    def counting(frame, *args, **kwargs):
        calls.append(frame.shape[:2])
        return real(frame, *args, **kwargs)

    monkeypatch.setattr(faces, "detect_faces", counting)
    return calls


def test_file_and_frames_give_the_same_track_and_every_k(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_detections(monkeypatch)
    clip = media.decode_clip(ABOUT)
    from_file = tracks.face_track(ABOUT)
    assert len(calls) == clip.num_frames and len(from_file) == clip.num_frames
    from_frames = tracks.face_track(clip.frames)
    assert from_frames.boxes == pytest.approx(from_file.boxes)     # 256 px < max_side: same detector input
    assert from_file.detected.all() and from_file.indices.tolist() == list(range(clip.num_frames))
    calls.clear()
    every = tracks.face_track(ABOUT, tracks.TrackSettings(every=5))
    assert len(calls) == -(-clip.num_frames // 5) and every.detected.sum() == len(calls)
    side = from_file.boxes[0, 2] - from_file.boxes[0, 0]
    assert np.median(np.abs(every.boxes - from_file.boxes)) < 0.05 * side   # held/interpolated between detections


def test_detector_input_is_bounded_and_boxes_come_back_in_full_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_detections(monkeypatch)
    track = tracks.face_track(REAL, tracks.TrackSettings(every=8))
    assert calls and all(max(shape) <= tracks.MAX_SIDE for shape in calls)
    assert track.frame_size == (528, 976)
    centre = (track.boxes[:, :2] + track.boxes[:, 2:]) / 2
    assert (centre[:, 0] > 300).all() and (centre[:, 0] < 700).all()      # the speaker, not the cards on the left


def test_streamed_squares_equal_squares_of_decoded_frames() -> None:
    track = tracks.face_track(REAL, tracks.TrackSettings(every=10))
    clip = tracks.face_centred_clip(REAL, track, 160)
    decoded = media.decode_clip(REAL)
    assert clip.frames.shape == (decoded.num_frames, 160, 160, 3) and clip.fps == 25.0
    for t in (0, 40, decoded.num_frames - 1):
        assert np.array_equal(clip.frames[t], tracks.face_square(decoded.frames[t], track.boxes[t], 160))
    assert np.array_equal(clip.audio_int16, decoded.audio_int16)


def test_track_lands_on_the_dlib_landmarks() -> None:
    """Frames where dlib's 68 landmarks sit on the speaker: the track box holds them and the mouth falls in the
    centre 88×88 of the 160×160 square (what WER1 under talklip2023 reads)."""
    decoded = media.decode_clip(REAL)
    track = tracks.face_track(REAL)
    marks = faces.dlib_landmarks(decoded.frames[::4], cnn_fallback=False)
    on_face = 0
    looked = 0
    for t, points in zip(range(0, decoded.num_frames, 4), marks):
        if points is None:
            continue
        looked += 1
        box = track.boxes[t]
        inside = np.mean((points[:, 0] >= box[0] - 10) & (points[:, 0] <= box[2] + 10)
                         & (points[:, 1] >= box[1] - 10) & (points[:, 1] <= box[3] + 10))
        mouth = np.array([tracks.box_in_square([*p, *p], box, 160)[:2] for p in points[48:68]])
        if inside >= 0.85 and (mouth >= 36).all() and (mouth <= 124).all():
            on_face += 1
    assert looked >= 5 and on_face / looked >= 0.6


def test_cached_track_is_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_detections(monkeypatch)
    video = tmp_path / "clip.mp4"
    video.write_bytes(ABOUT.read_bytes())
    first = tracks.cached_track(tmp_path / "tracks", "main/clip", video)
    n = len(calls)
    again = tracks.cached_track(tmp_path / "tracks", "main/clip", video)
    assert len(calls) == n and np.array_equal(again.boxes, first.boxes) and np.array_equal(again.indices, first.indices)
    tracks.cached_track(tmp_path / "tracks", "main/clip", video, tracks.TrackSettings(every=2))
    assert len(calls) > n                                               # other settings: detected again
    n = len(calls)
    os.utime(video, ns=(1, 1))                                          # another file under the same id
    tracks.cached_track(tmp_path / "tracks", "main/clip", video, tracks.TrackSettings(every=2))
    assert len(calls) > n


def test_resumed_run_does_not_detect_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 256×256 clip under talklip2023 (160×160 expected) is cut around its track; the track is cached in the run
    directory, so a run that has to measure the clip again (its row lost) reads it instead of detecting."""
    for folder in ("gen", "ref"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.mp4").write_bytes(ABOUT.read_bytes())
    calls = _count_detections(monkeypatch)
    config = EvaluateConfig(generated=tmp_path / "gen", reference=tmp_path / "ref", out=tmp_path / "run",
                            metrics=("psnr", "ssim"), suite="folder")
    first = evaluate(config)
    assert len(calls) > 0 and first.summary["n_flagged"] == 1
    assert list((tmp_path / "run" / TRACKS_DIR).glob("a-*.npz"))
    with sqlite3.connect(tmp_path / "run" / "store.sqlite") as db:   # the row is lost, the tracks folder is not
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            if "clip_id" in [c[1] for c in db.execute(f"PRAGMA table_info({table})")]:
                db.execute(f"DELETE FROM {table}")
    n = len(calls)
    second = evaluate(config)
    assert second.computed == 1 and len(calls) == n
    assert second.summary["ssim"] == pytest.approx(first.summary["ssim"])


def test_tracking_and_cutting_a_clip_never_hold_its_full_frames() -> None:
    """Memory by design: the track pass and the square pass hold one full-size frame at a time (traced numpy
    allocations stay far below the 124 MB the 80 decoded 976×528 frames take)."""
    import tracemalloc

    whole = 80 * 528 * 976 * 3
    tracemalloc.start()
    try:
        track = tracks.face_track(REAL, tracks.TrackSettings(every=4))
        clip = tracks.face_centred_clip(REAL, track, 160, indices=track.indices)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert clip.frames.shape == (80, 160, 160, 3)
    assert peak < whole / 5, f"peak {peak / 2**20:.1f} MiB"
