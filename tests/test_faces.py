"""Face detection, landmarks, tracking and crops (talkbench.faces) and the S3FD network."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from talkbench import faces
from talkbench.crops.syncnet import CROP_PAD_VALUE, crop_track, smooth_track
from talkbench.nets.s3fd import FACE_ALIGNMENT_RENAMES, S3FDNet, load_s3fd, nms

FIX = Path(__file__).resolve().parent / "fixtures" / "syncnet"


@pytest.fixture(scope="module")
def real_frames() -> np.ndarray:
    """50 frames (488×264) of syncnet_python's example clip; HOG finds the face on frames 8..39."""
    with av.open(str(FIX / "real_face_cut.mp4")) as c:
        return np.stack([f.to_ndarray(format="bgr24") for f in c.decode(video=0)])


# ------------------------------------------------------------------------------------------ dlib

def test_dlib_landmarks_on_a_real_face(real_frames: np.ndarray) -> None:
    picked = real_frames[[0, 20, 30]]
    marks = faces.dlib_landmarks(picked, cnn_fallback=False)
    assert len(marks) == 3
    assert marks[0] is None                                  # no frontal face found by HOG in frame 0
    box = faces.detect_faces(real_frames[20])[0]
    for m in marks[1:]:
        assert m is not None and m.shape == (68, 2) and m.dtype == np.float64
        assert np.array_equal(m, np.round(m))               # integer pixel positions, as the reference
        mouth = m[48:68].mean(0)
        assert box[0] - 20 < mouth[0] < box[2] + 20 and (box[1] + box[3]) / 2 < mouth[1] < box[3] + 20
    with pytest.raises(ValueError, match="T×H×W×3"):
        faces.dlib_landmarks(real_frames[0])


def test_detect_faces_and_main_boxes(real_frames: np.ndarray) -> None:
    dets = faces.detect_faces(real_frames[20])
    assert dets.shape[1] == 5 and len(dets) >= 1
    x1, y1, x2, y2, _ = dets[0]
    assert 0 <= x1 < x2 <= real_frames.shape[2] + 20 and 0 <= y1 < y2 <= real_frames.shape[1] + 20
    boxes = faces.face_boxes_per_frame(real_frames[::5])
    assert boxes.shape == (10, 4) and boxes.dtype == np.int64
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    with pytest.raises(ValueError, match="No face found in any of the 3 frames"):
        faces.face_boxes_per_frame(np.full((3, 64, 64, 3), 127, np.uint8))
    with pytest.raises(ValueError, match="detector"):
        faces.detect_faces(real_frames[0], detector="mtcnn")
    with pytest.raises(ValueError, match="s3fd_weights"):
        faces.detect_faces(real_frames[0], detector="s3fd")


def test_main_face_boxes_interpolate_and_hold() -> None:
    empty = np.zeros((0, 5))
    dets = [empty, np.array([[10, 10, 50, 50, 1.0], [0, 0, 5, 5, 2.0]]), empty, empty,
            np.array([[40, 10, 80, 50, 0.5]]), empty]
    boxes = faces.main_face_boxes(dets, frame_size=(100, 70))
    np.testing.assert_array_equal(boxes[0], [10, 10, 50, 50])     # held before the first detection
    np.testing.assert_array_equal(boxes[1], [10, 10, 50, 50])     # largest face, not highest score
    np.testing.assert_array_equal(boxes[2], [20, 10, 60, 50])     # linear between frames 1 and 4
    np.testing.assert_array_equal(boxes[4], [40, 10, 70, 50])     # clipped to the frame width
    np.testing.assert_array_equal(boxes[5], boxes[4])


# ------------------------------------------------------------------------------------------ tracking

def _moving_face(n: int, start: int = 0, x0: float = 100, size: float = 120) -> list[np.ndarray]:
    return [np.array([[x0 + 0.5 * t, 50, x0 + 0.5 * t + size, 50 + size, 0.99]]) for t in range(start, start + n)]


def test_track_faces_length_rule_is_strict() -> None:
    assert faces.track_faces(_moving_face(100), min_track=100) == []          # needs MORE than min_track
    tracks = faces.track_faces(_moving_face(101), min_track=100)
    assert len(tracks) == 1 and len(tracks[0]) == 101 and tracks[0].n_detections == 101


def test_track_faces_gaps_interpolation_and_size() -> None:
    dets = _moving_face(30)
    for t in range(10, 20):                       # 10 missed frames: bridged and interpolated
        dets[t] = np.zeros((0, 5))
    tracks = faces.track_faces(dets, min_track=5)
    assert len(tracks) == 1
    np.testing.assert_array_equal(tracks[0].frames, np.arange(30))
    np.testing.assert_allclose(tracks[0].boxes[15], [107.5, 50, 227.5, 170])
    gap = _moving_face(10) + [np.zeros((0, 5))] * 26 + _moving_face(10, start=36)
    assert [len(t) for t in faces.track_faces(gap, min_track=5)] == [10, 10]   # 26 missed > 25: split
    assert faces.track_faces(_moving_face(30, size=90), min_track=5) == []      # mean size <= 100 px
    assert len(faces.track_faces(_moving_face(30, size=90), min_track=5, min_face_size=80)) == 1


def test_track_faces_iou_and_reference_skip_quirk() -> None:
    a = np.array([10, 10, 130, 130, 0.9])
    a2 = np.array([20, 10, 140, 130, 0.8])        # IoU(a, a2) = 0.85: both could extend the same track
    b = np.array([300, 10, 420, 130, 0.9])        # IoU with a = 0: never joins a's track
    dets = [a[None]] + [np.stack([a, a2, b]) for _ in range(11)]
    tracks = faces.track_faces(dets, min_track=5)
    # The reference removes a taken face from the list it is iterating over, so the face right after
    # it (a2) is skipped in that pass: one face per frame per track. a2's and b's tracks come next.
    assert [t.n_detections for t in tracks] == [12, 11, 11]
    np.testing.assert_allclose(tracks[0].boxes[:, 0], 10)
    np.testing.assert_allclose(tracks[1].boxes[:, 0], 20)
    np.testing.assert_allclose(tracks[2].boxes[:, 0], 300)
    assert faces.box_iou(a[:4], a2[:4]) == pytest.approx(110 * 120 / (2 * 120 * 120 - 110 * 120))
    assert faces.box_iou(a[:4], b[:4]) == 0.0


def test_smooth_and_crop_track() -> None:
    frames = np.zeros((20, 200, 300, 3), np.uint8)
    frames[:, 50:150, 100:200] = 255                               # a white face box
    track = faces.FaceTrack(frames=np.arange(20), boxes=np.tile([100.0, 50, 200, 150], (20, 1)), n_detections=20)
    s, cx, cy = smooth_track(track)
    np.testing.assert_allclose(s[6:-6], 50)
    assert s[0] == 50                                              # medfilt zero padding: median of 7 values and 6 zeros
    crops = crop_track(frames, track)
    assert crops.shape == (20, 224, 224, 3)
    mid = crops[10]
    # crop rows: cy - s .. cy + 1.8 s ; cols: cx - 1.4 s .. cx + 1.4 s  -> the face fills the top-centre
    assert mid[10, 112].min() == 255 and mid[200, 112].max() < 255
    assert mid[112, 5].max() == 0                                  # left of the box: black frame content
    edge = faces.FaceTrack(frames=np.arange(20), boxes=np.tile([0.0, 0, 100, 100], (20, 1)), n_detections=20)
    crops = crop_track(frames, edge)
    assert (crops[10, 2, 2] == CROP_PAD_VALUE).all()         # outside the frame: grey 110 padding


# ------------------------------------------------------------------------------------------ S3FD

def _face_alignment_state(state: dict) -> dict:
    inverse = {v: k for k, v in FACE_ALIGNMENT_RENAMES.items()}
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        out[f"{inverse[prefix]}.{leaf}"] = value
    return out


def test_s3fd_loads_both_official_layouts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = S3FDNet()
    state = net.state_dict()
    assert len(state) == 65 and "vgg.31.weight" in state and "L2Norm3_3.weight" in state
    torch.save(state, tmp_path / "sfd_face.pth")
    fa = _face_alignment_state(state)
    assert "conv3_3_norm_mbox_conf.weight" in fa and "fc6.weight" in fa
    torch.save(fa, tmp_path / "s3fd-619a316812.pth")
    a = load_s3fd(tmp_path / "sfd_face.pth")
    b = load_s3fd(tmp_path / "s3fd-619a316812.pth")
    assert (a.variant, b.variant) == ("syncnet_python", "face_alignment")
    assert a.vgg[31].dilation == (6, 6) and b.vgg[31].dilation == (1, 1) and b.vgg[31].padding == (3, 3)
    torch.testing.assert_close(b.state_dict()["conf.0.weight"], state["conf.0.weight"])
    bad = dict(fa)
    bad["conv9_9.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="conv9_9.weight"):
        load_s3fd(tmp_path / "bad.pth")


def test_s3fd_forward_shapes_and_detect() -> None:
    torch.manual_seed(0)
    net = S3FDNet().eval()
    image = np.random.default_rng(0).integers(0, 256, (128, 96, 3), dtype=np.uint8)
    with torch.inference_mode():
        scores, loc, priors = net(net.preprocess(image, 1.0))
    # priors: sum over levels of (H/stride)·(W/stride) for strides 4..128 (ceil at the pooled levels)
    assert scores.shape[1] == loc.shape[1] == priors.shape[0]
    assert priors.shape[0] == 32 * 24 + 16 * 12 + 8 * 6 + 4 * 3 + 2 * 2 + 1 * 1
    dets = net.detect(image, conf_threshold=0.0, scales=(1.0,))
    assert dets.ndim == 2 and dets.shape[1] == 5 and (dets[:, 4] > 0).all()


def test_nms_keeps_best_and_separate_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=float)
    keep = nms(boxes, np.array([0.5, 0.9, 0.7]), 0.3)
    assert keep.tolist() == [1, 2]
