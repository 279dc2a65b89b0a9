"""TalkLip inference: crops/inputs/paste-back parity, end-to-end generation, the batch form over a suite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from talkbench import media
from talkbench.boxes import BoxError, check_boxes
from talkbench.crops.face import face_crops
from talkbench.generate import (GenerateConfig, GenerateError, align_audio_features, generate_suite, generate_video,
                                generator_inputs, paste_faces, repeat_frames_to_audio, resize_faces, suite_jobs)
from test_talklip_support import TALKLIP, read_frames, read_wav, short_lrs2_folder, tiny_generator_file

FULL = np.array([0, 0, 160, 160])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(TALKLIP / "expected.npz")), json.loads((TALKLIP / "expected.json").read_text())


@pytest.fixture(scope="module")
def generator_path(tmp_path_factory):
    return tiny_generator_file(tmp_path_factory.mktemp("talklip") / "talklip_tiny.pth")


@pytest.fixture(scope="module")
def generator(generator_path):
    from talkbench.nets.talklip import load_talklip_generator

    return load_talklip_generator(generator_path, attention_heads=4)


def test_crops_and_inputs_match_reference(expected):
    ex, _ = expected
    frames = read_frames("meeting", 8)
    boxes = check_boxes(np.tile(FULL, (8, 1)), 8, (160, 160))
    crops = face_crops(frames, boxes)
    np.testing.assert_array_equal(crops, ex["crops96_bgr_u8"])
    np.testing.assert_array_equal(crops[0], ex["ref_crop96_bgr_u8"])
    inp = generator_inputs(crops, crops[0])
    assert inp.shape == (8, 6, 96, 96)
    assert float(inp[:, :3, 48:].abs().max()) == 0.0
    np.testing.assert_allclose(inp[:, :3, :48].numpy(), crops[:, :48].transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    np.testing.assert_allclose(inp[:, 3:].numpy(), np.broadcast_to(crops[0].transpose(2, 0, 1) / 255.0, (8, 3, 96, 96)),
                               atol=1e-7)


def test_paste_back_matches_reference(expected):
    ex, _ = expected
    frames = read_frames("meeting", 3)
    pasted = paste_faces(frames, np.tile(FULL, (3, 1)), torch.from_numpy(ex["pred"]))
    assert np.abs(pasted.astype(int) - ex["pasted_u8"]).max() <= 1


def test_paste_back_other_boxes_and_truncation():
    frames = np.full((2, 40, 50, 3), 7, dtype=np.uint8)
    boxes = np.array([[5, 6, 29, 30], [10, 0, 60, 40]])          # second box clipped to the frame
    boxes = check_boxes(boxes, 2, (40, 50))
    assert boxes[1].tolist() == [10, 0, 50, 40]
    faces = torch.full((2, 3, 96, 96), 0.5)
    out = paste_faces(frames, boxes, faces)
    assert out[0, 6:30, 5:29].min() == 127 and out[0, 6:30, 5:29].max() == 127      # 127.5 truncated
    assert out[0, :6].max() == 7 and out[1, :, :10].max() == 7
    # a shrinking resize is antialiased (torchvision Resize on tensors): a checkerboard averages out
    checker = torch.zeros(1, 3, 96, 96)
    checker[..., ::2, ::2] = 1
    checker[..., 1::2, 1::2] = 1
    small = resize_faces(checker, 24, 24)
    assert float((small - 127.5).abs().max()) < 1.0


def test_box_errors():
    with pytest.raises(BoxError, match="T×4"):
        check_boxes(np.zeros((3, 5)), 3, (10, 10), "b.npy")
    with pytest.raises(BoxError, match="2 face boxes for 3 frames"):
        check_boxes(np.zeros((2, 4)), 3, (10, 10), "b.npy")
    with pytest.raises(BoxError, match=r"frame 0 is \[5, 5, 5, 9\] \(empty: x2 <= x1"):
        check_boxes(np.array([[5, 5, 5, 9]]), 1, (10, 10), "b.npy")
    with pytest.raises(BoxError, match=r"frame 0 is \[12, 0, 20, 9\] \(outside the 10×10 frame"):
        check_boxes(np.array([[12, 0, 20, 9]]), 1, (10, 10), "b.npy")


def test_audio_alignment_rules():
    feats = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 104), np.float32)
    assert align_audio_features(feats, 7)[:, 0].tolist() == [1, 2, 3, 4, 5, 6, 7]     # diff 3: 1 left, 2 right
    padded = align_audio_features(feats, 12)
    assert padded.shape == (12, 104) and float(np.abs(padded[10:]).max()) == 0.0
    assert repeat_frames_to_audio(3, 7).tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert repeat_frames_to_audio(5, 3).tolist() == [0, 1, 2]


def test_generate_video_end_to_end_matches_reference(tmp_path, generator_path, expected):
    ex, js = expected
    boxes = tmp_path / "meeting.npy"
    np.save(boxes, np.tile(FULL, (73, 1)))
    out = generate_video(TALKLIP / "meeting.mp4", tmp_path / "out.mkv", audio=TALKLIP / "meeting.wav", boxes=boxes,
                         config=GenerateConfig(checkpoint=generator_path, codec="ffv1"))
    clip = media.decode_clip(out)
    assert clip.frames.shape == (73, 160, 160, 3) and clip.fps == 25.0
    assert np.abs(clip.frames[:3].astype(int) - ex["pasted_u8"]).max() <= 1
    np.testing.assert_array_equal(clip.audio_int16, read_wav("meeting"))     # the input audio, muxed unchanged
    assert not list(tmp_path.glob(".*part"))


def test_generate_detects_faces_and_writes_h264(tmp_path, generator):
    # 12 frames of the fixture clip; boxes from dlib's detector; a different speech drives it
    frames = read_frames("meeting", 12)
    media.write_clip(tmp_path / "face.mp4", frames, read_wav("meeting")[:12 * 640])
    out = generate_video(tmp_path / "face.mp4", tmp_path / "gen.mp4", audio=TALKLIP / "another.wav",
                         generator=generator, config=GenerateConfig(reference_frame=3))
    clip = media.decode_clip(out)
    assert clip.frames.shape == (12, 160, 160, 3)
    assert clip.audio_int16 is not None and abs(len(clip.audio_int16) - len(read_wav("another"))) < 2048
    # align="audio" (inf_demo): the frames are repeated to the speech's length (20 frames of speech here)
    from scipy.io import wavfile

    wavfile.write(tmp_path / "speech.wav", 16000, read_wav("another")[:20 * 640])
    out2 = generate_video(tmp_path / "face.mp4", tmp_path / "gen2.mkv", audio=tmp_path / "speech.wav",
                          generator=generator, boxes=None,
                          config=GenerateConfig(align="audio", codec="ffv1", reference_frame=None))
    assert media.decode_clip(out2).num_frames == 20


def test_batch_form_writes_a_folder_evaluate_scores(tmp_path, generator):
    from talkbench.evaluate import EvaluateConfig, evaluate

    ref, gen_dir = tmp_path / "ref", tmp_path / "gen"
    short_lrs2_folder(ref)
    jobs = suite_jobs(ref, "lrs2")
    assert [j.clip_id for j in jobs] == ["main/spk0/00001", "main/spk1/00001"]
    assert all(j.boxes is not None for j in jobs)
    first = generate_suite(jobs, gen_dir, generator=generator)
    assert first.written == [j.clip_id for j in jobs] and not first.failed
    again = generate_suite(jobs, gen_dir, generator=generator)                      # resumable: nothing to redo
    assert again.skipped == first.written and not again.written
    (gen_dir / "main/spk1/00001.mp4").unlink()
    third = generate_suite(jobs, gen_dir, generator=generator)
    assert third.written == ["main/spk1/00001"]
    result = evaluate(EvaluateConfig(generated=gen_dir, reference=ref, out=tmp_path / "run", metrics=("psnr", "ssim"),
                                     suite="lrs2"))
    assert result.n_clips == 2 and result.n_failed == 0
    assert 5.0 < float(result.summary["psnr"]) < 60.0


def test_batch_form_records_failures(tmp_path, generator):
    ref = tmp_path / "ref"
    short_lrs2_folder(ref, clips=("meeting",))
    np.save(ref / "main/spk0/00001.npy", np.zeros((3, 4)))                         # wrong frame count
    result = generate_suite(suite_jobs(ref, "lrs2"), tmp_path / "gen", generator=generator)
    assert list(result.failed) == ["main/spk0/00001"] and "face boxes" in result.failed["main/spk0/00001"]
    with pytest.raises(GenerateError):
        generate_suite(suite_jobs(ref, "lrs2"), tmp_path / "gen", generator=generator, strict=True)


def test_other_frame_and_sample_rates_are_converted(tmp_path, generator, caplog):
    from scipy.io import wavfile

    frames = read_frames("meeting", 15)
    media.write_clip(tmp_path / "face30.mp4", frames, None, fps=30.0)                    # 0.5 s at 30 fps
    speech = read_wav("meeting")[:8000].astype(np.float64)
    stereo_44k = np.interp(np.arange(0, len(speech), 16000 / 44100), np.arange(len(speech)), speech)
    wavfile.write(tmp_path / "speech44k.wav", 44100, np.stack([stereo_44k, stereo_44k], 1).astype(np.int16))
    with caplog.at_level("INFO", logger="talkbench.generate"):
        out = generate_video(tmp_path / "face30.mp4", tmp_path / "out.mp4", audio=tmp_path / "speech44k.wav",
                             generator=generator, boxes=None)
    clip = media.decode_clip(out)
    # one output frame per input frame after media's 25 fps conversion (ffmpeg's fps filter rule)
    assert clip.fps == 25.0 and clip.num_frames == media.decode_clip(tmp_path / "face30.mp4", need_audio=False).num_frames
    assert abs(len(clip.audio_int16) - 8000) < 1024
    text = caplog.text
    assert "converted to 25 fps" in text and "44100 Hz, 2 channel(s)" in text
