"""Lip-reader crops of both protocols (talklip2023 centre crop; avhubert-official landmark alignment)."""

from __future__ import annotations

import numpy as np
import pytest

from talkbench.crops import mouth as mr
from test_avhubert_common import FIXTURE, arrays


def test_gray_conversion_is_opencv_bit_exact() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    ours = mr.bgr_to_gray(frames)
    assert ours.dtype == np.uint8
    for frame, gray in zip(frames, ours):
        np.testing.assert_array_equal(gray, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))


def test_center_crop_offsets() -> None:
    frames = np.arange(2 * 160 * 161).reshape(2, 160, 161)
    crop = mr.center_crop(frames, 88)
    assert crop.shape == (2, 88, 88)
    assert crop[0, 0, 0] == frames[0, 36, 36]  # 73 // 2 = 36 for the odd width
    with pytest.raises(ValueError, match="smaller"):
        mr.center_crop(np.zeros((1, 80, 80)), 88)


@pytest.mark.parametrize("clip", ["meeting", "another"])
def test_talklip2023_crops_equal_reference_inputs(clip: str) -> None:
    from talkbench.media import decode_clip

    frames = decode_clip(FIXTURE / f"{clip}.mp4", need_audio=False).frames
    crops = mr.mouth_crops(frames, "centre88")
    np.testing.assert_array_equal(crops, arrays("inputs.npz")[f"{clip}.input_gray_uint8_crop88"])


def test_interpolate_landmarks_fills_gaps_and_ends() -> None:
    a, b = np.zeros((68, 2)), np.full((68, 2), 4.0)
    filled = mr.interpolate_landmarks([None, a, None, None, None, b, None])
    assert [float(f[0, 0]) for f in filled] == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    assert mr.interpolate_landmarks([None, None]) is None


def test_similarity_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + shift
    matrix = mr.similarity_transform(src, dst)
    np.testing.assert_allclose(mr.apply_transform(matrix, src), dst, atol=1e-9)
    skt = pytest.importorskip("skimage.transform")
    noisy = dst + rng.normal(0, 2, dst.shape)
    np.testing.assert_allclose(mr.similarity_transform(src, noisy),
                               skt.estimate_transform("similarity", src, noisy).params, atol=1e-12)


def _synthetic_video(frames: int = 16, seed: int = 2):
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 256, (frames, 160, 160, 3), dtype=np.uint8)
    video[:, 0, 0] = 0     # value range [0, 255]: scikit-image 0.17 and today's clip rules then agree
    video[:, 0, 1] = 255
    face = mr.mean_face()
    landmarks = []
    for t in range(frames):
        angle, scale = 0.1 * np.cos(t), 0.5 + 0.02 * np.sin(t)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        landmarks.append(np.round((face - 128) @ rot.T * scale + 80 + rng.normal(0, 1, (68, 2))))
    landmarks[3] = landmarks[4] = None
    return video, landmarks


def test_official_rois_equal_a_scikit_image_run_of_align_mouth() -> None:
    skt = pytest.importorskip("skimage.transform")
    video, landmarks = _synthetic_video()
    ours = mr.official_mouth_rois(video, landmarks)
    # the reference's crop_patch loop, with scikit-image doing the transform and the warp
    filled = mr.interpolate_landmarks(landmarks)
    stable = list(mr.STABLE_POINTS)
    margin, expected = min(len(video), 12), []
    for i, frame in enumerate(video):
        if i + margin <= len(video):
            smoothed = np.mean(filled[i: i + margin], axis=0)
            tform = skt.estimate_transform("similarity", smoothed[stable], mr.mean_face()[stable])
        warped = (skt.warp(frame, inverse_map=tform.inverse, output_shape=(256, 256)) * 255).astype("uint8")
        expected.append(mr.cut_patch(warped, tform(filled[i])[48:68], 48, 48))
    assert ours.shape == (len(video), 96, 96, 3)
    np.testing.assert_array_equal(ours, np.stack(expected))
    crops = mr.official_crops(video, landmarks)
    assert crops.shape == (len(video), 88, 88)
    np.testing.assert_array_equal(crops, mr.bgr_to_gray(ours)[:, 4:92, 4:92])


def test_warp_clips_to_the_frame_range_like_scikit_image_017() -> None:
    image = np.full((10, 10), 200, dtype=np.uint8)
    image[5, 5] = 150                                   # frame range [150, 200]; cval 0 lies outside it
    shift = np.array([[1.0, 0.0, 1.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # 1.5 pixels to the right
    out = mr.warp_image(image, shift, (10, 10))
    assert out[0, 0] == 0            # both neighbours outside the frame: exactly cval, kept
    assert out[0, 1] >= 149          # half cval, half 200 = 100, clipped up to the frame minimum 150
    assert out[0, 5] >= 199          # inside
    assert out[5, 6] in (174, 175)   # between 150 and 200


def test_cut_patch_pushes_a_mouth_at_the_edge_inside() -> None:
    # align_mouth.py clamps the centre before its "too much bias" checks, so those never fire
    image = np.arange(256 * 256, dtype=np.int64).reshape(256, 256)
    patch = mr.cut_patch(image, np.array([[10.0, 128.4], [10.0, 128.6]]), 48, 48)
    np.testing.assert_array_equal(patch, image[80:176, 0:96])
    patch = mr.cut_patch(image, np.array([[250.0, 3.0]]), 48, 48)
    np.testing.assert_array_equal(patch, image[0:96, 160:256])


def test_no_face_anywhere_falls_back_to_resized_frames() -> None:
    pytest.importorskip("cv2")
    video = np.zeros((3, 120, 100, 3), dtype=np.uint8)
    rois = mr.official_mouth_rois(video, [None, None, None])
    assert rois.shape == (3, 96, 96, 3)


def test_unknown_recipe() -> None:
    with pytest.raises(ValueError, match="Unknown mouth crop recipe `lrs3`"):
        mr.mouth_crops(np.zeros((1, 96, 96, 3), dtype=np.uint8), "lrs3")


def test_official_protocol_with_dlib_landmarks_on_a_real_face() -> None:
    faces = pytest.importorskip("talkbench.faces")
    from talkbench.media import decode_clip

    frames = decode_clip(FIXTURE / "meeting.mp4", need_audio=False).frames[:8]
    landmarks = faces.dlib_landmarks(frames)
    assert any(lm is not None for lm in landmarks)
    crops = mr.official_crops(frames, landmarks)
    assert crops.shape == (8, 88, 88) and crops.dtype == np.uint8
    assert crops.std() > 5  # a textured mouth region, not an empty border


def test_h264_roundtrip_keeps_shape_and_is_close() -> None:
    video, landmarks = _synthetic_video(frames=6)
    rois = mr.official_mouth_rois(video, landmarks)
    smooth = np.repeat(np.repeat(rois[:, ::8, ::8], 8, axis=1), 8, axis=2)  # compressible content
    back = mr.h264_roundtrip(np.ascontiguousarray(smooth), crf=20)
    assert back.shape == smooth.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - smooth.astype(int)).mean() < 12
    crops = mr.official_crops(video, landmarks, roundtrip=True)
    assert crops.shape == (6, 88, 88)
