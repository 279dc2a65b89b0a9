"""Wav2Lip as a second generator (issue #21): mel spectrogram, network, inference and paste-back against the parity
fixture made with Rudrabha/Wav2Lip's own inference.py (tests/fixtures/wav2lip/PROVENANCE.md), checkpoint loading in
the official layout, and `talkbench generate --model wav2lip` (one clip, an LRS2-layout suite, compare with
TalkLip-mini)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
import torch
from typer.testing import CliRunner

from recipe import filled_state_dict
from talkbench import media
from talkbench import wav2lip as w2l
from talkbench import wav2lip_audio as wa
from talkbench.cli import app
from talkbench.compare import compare_runs
from talkbench.evaluate import EvaluateConfig, evaluate
from talkbench.generate import GenerateError
from talkbench.nets.checkpoint_keys import CheckpointError
from talkbench.nets.wav2lip import Wav2LipGenerator, load_wav2lip, save_wav2lip_checkpoint, unwrap_state_dict

FIX = Path(__file__).parent / "fixtures" / "wav2lip"
MEDIA = Path(__file__).parent / "fixtures" / "media"
N_SAMPLES = 16000       # the fixture's audio: the first second of meeting.wav


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIX / "expected.npz"))


@pytest.fixture(scope="module")
def samples():
    return media.read_wav_int16(MEDIA / "meeting.wav")[:N_SAMPLES]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The stand-in weights saved as the released files are: {"state_dict": {"module." + key}, "optimizer", ...}."""
    state = filled_state_dict(FIX / "keys.json")
    assert all(k.startswith("module.") for k in state)
    tiny = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(tiny.parameters(), lr=1e-4)
    tiny(torch.ones(1, 2)).sum().backward()
    optimizer.step()                       # an Adam state dict with per-parameter state, as the released files hold
    path = tmp_path_factory.mktemp("w2l") / "wav2lip_gan.pth"
    torch.save({"state_dict": state, "optimizer": optimizer.state_dict(), "global_step": 250000,
                "global_epoch": 100}, path)
    return path


@pytest.fixture(scope="module")
def generator(checkpoint):
    torch.set_num_threads(1)
    return load_wav2lip(checkpoint)


# ----------------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------------

def test_mel_filter_bank_equals_librosa(expected):
    # librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600), float32: equal to float32 rounding
    np.testing.assert_allclose(wa.mel_filter_bank(), expected["mel_basis"], rtol=1e-6, atol=1e-9)


def test_mel_spectrogram_and_windows_match_the_reference(expected, samples):
    mel = wa.melspectrogram(samples)
    assert mel.shape == expected["mel"].shape == (80, 81)
    # reference spread (its STFT in complex64 vs complex128) 1.6e-7; float32 rounding of values up to 4: 2.4e-7
    assert np.abs(mel - expected["mel"]).max() < 1e-6
    assert np.abs(mel - expected["mel_stft_complex128"]).max() < 1e-6
    starts = wa.mel_window_starts(mel.shape[1])
    assert len(starts) == len(expected["coords"]) == 22
    assert list(starts[:4]) == [0, 3, 6, 9] and starts[-1] == 81 - 16          # int(i * 3.2); last one clamped
    windows = wa.mel_windows(mel)
    assert np.abs(windows[expected["chunk_index"]] - expected["chunks"]).max() < 1e-6


def test_mel_windows_without_the_clamped_last_window_and_too_short_audio():
    assert len(wa.mel_window_starts(81, clamp_last=False)) == 21
    assert list(wa.mel_window_starts(16)) == [0, 0]          # one window fits, then the clamped one
    with pytest.raises(ValueError, match="at least 16"):
        wa.mel_window_starts(15)
    with pytest.raises(GenerateError, match="too short"):
        w2l.audio_windows(np.zeros(300, dtype=np.int16))


# ----------------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------------

def test_pads_and_smoothing_reproduce_the_reference_boxes(expected):
    rects = expected["rects"][:22]
    boxes = w2l.clip_boxes((160, 160), rects)
    y1, y2, x1, x2 = expected["coords"].T           # inference.py's coords: (y1, y2, x1, x2)
    assert np.array_equal(boxes, np.stack([x1, y1, x2, y2], axis=1))
    assert not np.array_equal(boxes, w2l.pad_boxes(rects, (160, 160)))   # the smoothing did something


def test_smoothing_of_a_clip_shorter_than_the_window_follows_python_slicing():
    boxes = np.array([[0, 0, 10, 10], [2, 2, 12, 12], [4, 4, 14, 14]])
    # T = 3 < 5: every window is boxes[3 - 5:] = the last two rows, (2 + 4) / 2 = 3, then (3 + 4) / 2 -> 3
    assert np.array_equal(w2l.smooth_boxes(boxes), np.tile([3, 3, 13, 13], (3, 1)))
    assert np.array_equal(w2l.pad_boxes(np.array([[5, 5, 150, 155]]), (160, 160)), [[5, 5, 150, 160]])


# ----------------------------------------------------------------------------------------------------
# Network and checkpoint
# ----------------------------------------------------------------------------------------------------

def test_network_matches_the_reference(generator, expected):
    faces = torch.from_numpy(expected["inputs_u8"]).double().div(255.0).float().permute(0, 3, 1, 2)
    mel = torch.from_numpy(expected["chunks"]).float()[:, None]
    with torch.no_grad():
        pred = generator(mel, faces).numpy()
    # reference float32 vs float64 spread 8.5e-7 (PROVENANCE.md)
    assert np.abs(pred - expected["pred"]).max() < 1e-5


def test_the_reference_inputs_are_masked_crop_then_the_same_crop(expected):
    inputs = expected["inputs_u8"]
    assert (inputs[:, 48:, :, :3] == 0).all() and np.array_equal(inputs[:, :48, :, :3], inputs[:, :48, :, 3:])
    made = w2l.generator_inputs(np.ascontiguousarray(inputs[..., 3:]))
    assert torch.equal(made, torch.from_numpy(inputs).float().div(255.0).permute(0, 3, 1, 2))


def test_official_layout_loads_and_wrong_files_are_refused(checkpoint, generator, tmp_path):
    state = generator.state_dict()
    assert "audio_encoder.0.conv_block.0.weight" in state and "output_block.1.weight" in state
    official = filled_state_dict(FIX / "keys.json")
    assert all(torch.equal(state[k[len("module."):]], v) for k, v in official.items())
    # every key but one, as 1-element broadcast tensors (a small file; the keys are checked before any value is used)
    broken = {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in official.items()}
    broken.pop("module.output_block.1.bias")
    torch.save({"state_dict": broken}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="broken.pth.*missing keys: output_block.1.bias"):
        load_wav2lip(tmp_path / "broken.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a Wav2Lip checkpoint"):
        load_wav2lip(tmp_path / "other.pth")


def test_quarter_width_generator_round_trips(tmp_path):
    model = Wav2LipGenerator(width_divisor=4).eval()
    path = tmp_path / "mini.pth"
    save_wav2lip_checkpoint(path, model)
    loaded, _ = w2l.load_generator(path)
    assert loaded.width_divisor == 4
    x, m = torch.rand(2, 6, 96, 96), torch.rand(2, 1, 80, 16)
    with torch.no_grad():
        assert torch.equal(loaded(m, x), model(m, x))
    assert unwrap_state_dict({"state_dict": {"module.a": torch.zeros(1)}}) == {"a": torch.zeros(1)}


# ----------------------------------------------------------------------------------------------------
# Inference and paste-back
# ----------------------------------------------------------------------------------------------------

def _assert_pasted_like_reference(frames: np.ndarray, expected: dict, source: np.ndarray) -> None:
    y0, y1, x0, x1 = expected["pasted_region"]
    picked = frames[expected["pasted_index"], y0:y1, x0:x1].astype(int)
    assert np.abs(picked - expected["pasted"].astype(int)).max() <= 1      # within 1 grey level
    outside = np.ones(frames.shape[1:3], dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(frames[:, outside], source[:len(frames)][:, outside])   # the rest of the frame untouched


def test_inference_reproduces_the_reference_pasted_frames(generator, expected, samples):
    clip = media.decode_clip(MEDIA / "meeting.mp4")
    frames, boxes = w2l.synthesize(generator, clip.frames, expected["rects"], samples)
    assert frames.shape == (22, 160, 160, 3)       # one frame per mel window, not per video frame
    assert np.array_equal(boxes[:, [1, 3, 0, 2]], expected["coords"])
    _assert_pasted_like_reference(frames, expected, clip.frames)


def test_audio_longer_than_the_video_loops_its_frames(generator, samples):
    clip = media.decode_clip(MEDIA / "meeting.mp4")
    rects = np.tile([30, 25, 130, 130], (5, 1))
    frames, boxes = w2l.synthesize(generator, clip.frames[:5], rects, samples[:6400], batch_size=4)
    assert len(frames) == 7 and np.array_equal(boxes[5], boxes[0])     # 33 mel columns: 7 windows, 5 frames looped
    outside = np.ones((160, 160), dtype=bool)
    outside[25:140, 30:130] = False
    assert np.array_equal(frames[5][outside], clip.frames[0][outside])
    with pytest.raises(GenerateError, match="at least as long"):
        w2l.synthesize(generator, clip.frames[:5], rects, samples[:6400], clamp_last=False)


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------

def test_cli_generates_the_fixture_clip(checkpoint, expected, samples, tmp_path):
    wav, rects, out = tmp_path / "speech.wav", tmp_path / "rects.npy", tmp_path / "out.mkv"
    scipy.io.wavfile.write(wav, 16000, samples)
    np.save(rects, expected["rects"])
    # no --checkpoint: --model wav2lip defaults to the wav2lip-gan card, here given with --weights
    result = CliRunner().invoke(app, ["generate", "--model", "wav2lip", "--weights", f"wav2lip-gan={checkpoint}",
                                      "--video", str(MEDIA / "meeting.mp4"), "--audio", str(wav), "--boxes",
                                      str(rects), "--codec", "ffv1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    made = media.decode_clip(out)
    assert made.frames.shape == (22, 160, 160, 3) and np.array_equal(made.audio_int16, samples)
    _assert_pasted_like_reference(made.frames, expected, media.decode_clip(MEDIA / "meeting.mp4").frames)


def test_cli_generates_an_hd_clip_without_boxes_on_its_face(checkpoint, tmp_path):
    # 976×528 MPEG-4 + MP3, no boxes: the face track finds the face; only pixels in its padded boxes change
    from talkbench import tracks

    source, out = MEDIA / "syncnet_example_cut.avi", tmp_path / "hd.mkv"
    result = CliRunner().invoke(app, ["generate", "--model", "wav2lip", "--weights", f"wav2lip-gan={checkpoint}",
                                      "--video", str(source), "--codec", "ffv1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    made, frames = media.decode_clip(out).frames, media.decode_clip(source, need_audio=False).frames
    assert made.shape[1:] == frames.shape[1:] == (528, 976, 3) and 60 <= len(made) <= len(frames)
    boxes = tracks.face_track(source, tracks.TrackSettings(smooth=1)).boxes
    for t in range(0, len(made), 10):
        ys, xs = np.nonzero(np.any(made[t] != frames[t], axis=2))
        assert len(ys) > 500, t                                    # a face was generated and pasted
        x1, y1, x2, y2 = boxes[t]
        margin = 0.15 * (x2 - x1)                                  # 5-frame box smoothing; pads (0, 10, 0, 0)
        assert x1 - margin <= xs.min() and xs.max() <= x2 + margin, t
        assert y1 - margin <= ys.min() and ys.max() <= y2 + 10 + margin, t


def test_cli_refuses_a_talklip_file_and_a_missing_checkpoint(tmp_path):
    runner = CliRunner()
    bundled = Path(w2l.__file__).parent / "data" / "mini" / "talklip-mini.pth"
    result = runner.invoke(app, ["generate", "--model", "wav2lip", "--checkpoint", str(bundled), "--video",
                                 str(MEDIA / "meeting.mp4"), "--out", str(tmp_path / "o.mp4")])
    assert result.exit_code == 2 and "not a Wav2Lip generator checkpoint" in result.output
    result = runner.invoke(app, ["generate", "--model", "wav2lip", "--checkpoint", str(tmp_path / "none.pth"),
                                 "--video", str(MEDIA / "meeting.mp4"), "--out", str(tmp_path / "o.mp4")])
    assert result.exit_code == 2 and "checkpoint file not found" in result.output
    result = runner.invoke(app, ["generate", "--model", "sadtalker", "--video", str(MEDIA / "meeting.mp4"),
                                 "--out", str(tmp_path / "o.mp4")])
    assert result.exit_code != 0 and "talklip or wav2lip" in result.output


def _mini_suite(root: Path) -> Path:
    """3 LRS2-layout clips of 15 frames (160×160 faces) with a boxes .npy beside each."""
    talklip = MEDIA.parent / "talklip"
    for k, name in enumerate(("meeting", "another", "meeting")):
        clip = media.decode_clip(talklip / f"{name}.mp4")
        target = root / "main" / f"spk{k}" / "00000.mp4"
        target.parent.mkdir(parents=True)
        media.write_clip(target, clip.frames[k:k + 15], clip.audio_int16[k * 640:k * 640 + 9600], crf=18)
        np.save(target.with_suffix(".npy"), np.tile([30, 25, 130, 130], (15, 1)))
        target.with_suffix(".txt").write_text("Text:  " + (talklip / f"{name}.txt").read_text())
    return root


def test_suite_generation_and_compare_with_talklip_mini(checkpoint, tmp_path):
    reference = _mini_suite(tmp_path / "ref")
    runner = CliRunner()
    outs = {}
    for model, ckpt in (("wav2lip", str(checkpoint)), ("talklip", "talklip-mini")):
        outs[model] = tmp_path / model
        result = runner.invoke(app, ["generate", "--model", model, "--checkpoint", ckpt, "--reference",
                                     str(reference), "--suite", "lrs2", "--out", str(outs[model])])
        assert result.exit_code == 0, result.output
    made = sorted(p.relative_to(outs["wav2lip"]) for p in outs["wav2lip"].rglob("*.mp4"))
    assert made == sorted(p.relative_to(reference) for p in reference.rglob("*.mp4"))
    speech = media.read_wav_int16(reference / made[0])          # the decoded AAC track: longer than 9600 samples
    assert media.decode_clip(outs["wav2lip"] / made[0]).num_frames == len(w2l.audio_windows(speech)) < 15
    again = runner.invoke(app, ["generate", "--model", "wav2lip", "--checkpoint", str(checkpoint), "--reference",
                                str(reference), "--suite", "lrs2", "--out", str(outs["wav2lip"])])
    assert again.exit_code == 0 and "already there 3" in again.output
    runs = {m: evaluate(EvaluateConfig(generated=outs[m], reference=reference, out=tmp_path / f"run-{m}",
                                       metrics=("psnr", "ssim"), suite="lrs2", model=m)).run_dir for m in outs}
    table = {r.metric: r for r in compare_runs(runs["talklip"], runs["wav2lip"])}
    assert {"psnr", "ssim"} <= set(table)
    assert all(np.isfinite([table[m].a, table[m].b]).all() for m in ("psnr", "ssim"))
    result = runner.invoke(app, ["compare", str(runs["talklip"]), str(runs["wav2lip"]), "--format", "json"])
    assert result.exit_code == 0 and "psnr" in result.output
