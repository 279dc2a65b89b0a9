"""LMD: the definition against an independent computation, and the observer on dlib's landmarks of real frames.

The reference is a definition (Chen et al. 2018; RAD-NeRF's mouth-centred variant), not code: the tests recompute it
by hand with plain Python loops on the same points, and check known answers (identical → 0, a translation by
(3, 4) → 5 px raw and 0 centred).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from talkbench.faces import dlib_landmarks
from talkbench.media import Clip, decode_clip
from talkbench.observers import SPECS, ClipData, ClipSkipped, ObserverContext, build
from talkbench.observers import landmark_distance
from talkbench.observers.landmark_distance import mouth_distance

MEETING = Path(__file__).resolve().parent / "fixtures" / "media" / "meeting.mp4"


def by_hand(gen68: np.ndarray, ref68: np.ndarray, centre: bool) -> list[float]:
    """Per frame: mean over points 48..67 of the Euclidean distance, optionally after centring each mouth."""
    out = []
    for g, r in zip(gen68, ref68):
        g_pts = [(float(x), float(y)) for x, y in g[48:68]]
        r_pts = [(float(x), float(y)) for x, y in r[48:68]]
        if centre:
            gx, gy = sum(p[0] for p in g_pts) / 20, sum(p[1] for p in g_pts) / 20
            rx, ry = sum(p[0] for p in r_pts) / 20, sum(p[1] for p in r_pts) / 20
            g_pts = [(x - gx, y - gy) for x, y in g_pts]
            r_pts = [(x - rx, y - ry) for x, y in r_pts]
        out.append(sum(math.hypot(a[0] - b[0], a[1] - b[1]) for a, b in zip(g_pts, r_pts)) / 20)
    return out


@pytest.fixture(scope="module")
def meeting() -> Clip:
    clip = decode_clip(MEETING, need_audio=False)
    return Clip(clip.path, clip.frames[:6], clip.fps, None, clip.source_fps)


@pytest.fixture(scope="module")
def meeting_marks(meeting) -> np.ndarray:
    marks = dlib_landmarks(meeting.frames)
    assert all(m is not None for m in marks)
    return np.stack(marks)


def test_definition_against_a_hand_computation_on_dlib_points(meeting_marks):
    gen, ref = meeting_marks[1:], meeting_marks[:-1]   # consecutive frames: the jaw moves between them
    for align, centre in (("none", False), ("mouth-centre", True)):
        got = mouth_distance(gen, ref, align)
        assert got.shape == (5,)
        np.testing.assert_allclose(got, by_hand(gen, ref, centre), rtol=1e-12)
    assert mouth_distance(gen, ref).max() > 0


def test_identical_and_translated_landmarks(meeting_marks):
    marks = meeting_marks
    assert np.all(mouth_distance(marks, marks) == 0)
    moved = marks + np.array([3.0, 4.0])
    np.testing.assert_allclose(mouth_distance(moved, marks), 5.0)
    np.testing.assert_allclose(mouth_distance(moved, marks, "mouth-centre"), 0.0, atol=1e-12)
    # only the mouth counts: moving the other 48 points changes nothing
    other = marks.copy()
    other[:, :48] += 7.0
    assert np.all(mouth_distance(other, marks) == 0)
    with pytest.raises(ValueError, match="align"):
        mouth_distance(marks, marks, "procrustes")


def test_a_clip_against_itself_is_zero(meeting):
    row = landmark_distance.build(ObserverContext()).measure(ClipData("self", meeting, meeting))
    assert row == {"lmd": 0.0, "n_frames_lmd": 6, "n_no_face_lmd": 0}


def shifted(clip: Clip, dx: int, dy: int) -> Clip:
    frames = np.zeros_like(clip.frames)
    frames[:, dy:, dx:] = clip.frames[:, :clip.frames.shape[1] - dy, :clip.frames.shape[2] - dx]
    return Clip(clip.path, frames, 25.0, None, 25.0)


def test_a_shifted_face_gives_the_shift(meeting):
    moved = ClipData("moved", shifted(meeting, 3, 4), meeting)
    raw = landmark_distance.LandmarkDistanceObserver("none").measure(moved)
    centred = landmark_distance.LandmarkDistanceObserver("mouth-centre").measure(moved)
    # dlib re-detects the moved face: its points follow the (3, 4) shift to within about a pixel
    assert raw["n_frames_lmd"] == 6 and 4.0 < raw["lmd"] < 6.0
    assert centred["lmd"] < 1.5 and centred["lmd"] < raw["lmd"] - 3


def test_observer_pairs_frames_skips_faceless_ones_and_scales_sizes(meeting, meeting_marks, monkeypatch):
    """With given landmarks (no detector): pairing over the common frames, skipped frames, size scaling."""
    gen_marks = [m + np.array([1.0, 0.0]) for m in meeting_marks]
    gen_marks[2] = None
    ref_marks = [m * 2.0 for m in meeting_marks[:5]]          # reference frames twice as large, one frame shorter
    ref_marks[4] = None

    def given(cache, frames, side, first_only=False):
        return gen_marks if side == "generated" else ref_marks

    monkeypatch.setattr(landmark_distance, "face_landmarks", given)
    big = Clip(meeting.path, np.zeros((5, 320, 320, 3), np.uint8), 25.0, None, 25.0)
    row = landmark_distance.LandmarkDistanceObserver().measure(ClipData("pairs", meeting, big))
    assert row["n_frames_lmd"] == 3 and row["n_no_face_lmd"] == 2       # frames 0, 1, 3 of the 5 common ones
    assert row["lmd"] == pytest.approx(1.0)                             # scaled back: only the 1-px shift is left


def test_no_face_is_an_error_row(meeting):
    blank = Clip(meeting.path, np.zeros((2, 160, 160, 3), np.uint8), 25.0, None, 25.0)
    observer = landmark_distance.LandmarkDistanceObserver()
    with pytest.raises(ClipSkipped, match="no frame of the 2 common frames has a face in both clips"):
        observer.measure(ClipData("blank", blank, meeting))
    with pytest.raises(ClipSkipped, match="no reference clip"):
        observer.measure(ClipData("no-ref", meeting, None))


def test_summary_is_the_mean_over_all_frames():
    rows = [{"lmd": 2.0, "n_frames_lmd": 3}, {"lmd": 6.0, "n_frames_lmd": 1}, {"error": "landmark_distance: x"}]
    assert landmark_distance.summarize(rows)["lmd"] == pytest.approx(3.0)
    assert math.isnan(landmark_distance.summarize([])["lmd"])


def test_bad_option_is_refused():
    with pytest.raises(ValueError, match="lmd_align"):
        build(SPECS["landmark_distance"], ObserverContext(options={"lmd_align": "procrustes"}))


def test_resized_reference_frames_give_a_small_distance(meeting):
    """A ground truth at twice the size: its landmarks are scaled to the generated frame before the distance."""
    big = Clip(meeting.path, np.stack([cv2.resize(f, (320, 320)) for f in meeting.frames[:2]]), 25.0, None, 25.0)
    small = Clip(meeting.path, meeting.frames[:2], 25.0, None, 25.0)
    row = landmark_distance.LandmarkDistanceObserver().measure(ClipData("sizes", small, big))
    assert row["n_frames_lmd"] == 2 and row["lmd"] < 1.5
