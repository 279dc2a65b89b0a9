"""talkbench.media: decoding (= cv2, = FFmpeg's CLI), 25 fps conversion, writing, and every error message."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import scipy.io.wavfile

from talkbench import media
from talkbench.media import MediaError, cfr_frame_indices, decode_clip, read_wav_int16, write_clip

MEDIA = Path(__file__).resolve().parent / "fixtures" / "media"
sys.path.insert(0, str(MEDIA))
from index_clips import SPECS, ClipSpec, index_frame, read_index, write_index_clip  # noqa: E402


def cv2_frames(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return np.stack(frames)


def noise_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour frames (compressible, so that lossy round trips stay close)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (width, height))
    shifts = np.arange(n)[:, None, None, None]
    return np.clip(base[None].astype(int) + 3 * shifts, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["meeting.mp4", "about_256.mp4"])
def test_frames_equal_cv2_on_sample_clips(name):
    clip = decode_clip(MEDIA / name)
    expected = cv2_frames(MEDIA / name)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == expected.shape
    assert np.array_equal(clip.frames, expected)
    assert clip.fps == 25.0 and clip.source_fps == 25.0
    assert clip.audio_int16.dtype == np.int16 and clip.audio_int16.ndim == 1


def test_frames_equal_cv2_on_mpeg4_avi_with_mp3_44k(tmp_path):
    """Another codec/container (MPEG-4 Part 2 in AVI, 44.1 kHz stereo MP3), as the SyncNet example clip."""
    path = tmp_path / "clip.avi"
    frames = noise_frames(20, 72, 96)
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 96, 72, "yuv420p"
        audio = out.add_stream("libmp3lame", rate=44100, layout="stereo")
        for frame in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(video.encode(None))
        tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(44100) / 44100)).astype(np.int16)
        for start in range(0, len(tone), 1152):
            chunk = np.repeat(tone[None, start:start + 1152], 2, axis=0).T.reshape(1, -1)  # packed stereo
            block = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="s16", layout="stereo")
            block.sample_rate, block.pts, block.time_base = 44100, start, Fraction(1, 44100)
            out.mux(audio.encode(block))
        out.mux(audio.encode(None))
    clip = decode_clip(path)
    assert np.array_equal(clip.frames, cv2_frames(path))
    samples = clip.audio_int16.astype(np.float64)
    assert abs(len(samples) - 16000) < 1600  # 1 s of sound, give or take the codec's padding
    spectrum = np.abs(np.fft.rfft(samples[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 3  # the tone survives 44.1 kHz -> 16 kHz


def test_audio_matches_ffmpeg_cli():
    """``ffmpeg -i meeting.mp4 -async 1 -ac 1 -ar 16000 -acodec pcm_s16le`` (FFmpeg 5.1.9, stored)."""
    expected = np.load(MEDIA / "meeting_audio_ffmpeg51.npz")["samples"]
    samples = decode_clip(MEDIA / "meeting.mp4").audio_int16
    assert samples.shape == expected.shape
    diff = np.abs(samples.astype(np.int32) - expected)
    # FFmpeg 5.1's and PyAV's (FFmpeg 8) AAC decoders differ by one float ulp on a few samples
    assert diff.max() <= 1 and np.count_nonzero(diff) <= 50


def test_read_wav_int16_equals_scipy_on_16k_wav():
    rate, expected = scipy.io.wavfile.read(MEDIA / "meeting.wav")
    assert rate == 16000
    assert np.array_equal(read_wav_int16(MEDIA / "meeting.wav"), expected)


def test_read_wav_int16_resamples_and_downmixes(tmp_path):
    t = np.arange(48000) / 48000
    left = (10000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    scipy.io.wavfile.write(tmp_path / "stereo48k.wav", 48000, np.stack([left, left], axis=1))
    samples = read_wav_int16(tmp_path / "stereo48k.wav")
    assert samples.dtype == np.int16 and len(samples) == 16000
    reference = 10000 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    assert np.abs(samples[200:-200] - reference[200:-200]).max() < 200  # same tone, same level


def test_decode_without_audio_stream(tmp_path):
    path = tmp_path / "silent.mkv"
    write_clip(path, noise_frames(5, 32, 32), None, codec="ffv1")
    clip = decode_clip(path, need_audio=False)
    assert clip.audio_int16 is None and clip.audio is None and clip.num_frames == 5
    with pytest.raises(MediaError, match=r"silent\.mkv: has no audio stream.*Mux the audio track"):
        decode_clip(path)


# ------------------------------------------------------------------------------------------------
# 25 fps conversion
# ------------------------------------------------------------------------------------------------

EXPECTED_FPS = json.loads((MEDIA / "fps_expected.json").read_text())


@pytest.fixture(scope="module")
def index_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("index_clips")
    return {name: write_index_clip(folder / name, spec) for name, spec in SPECS.items()}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_cfr_conversion_matches_ffmpeg_cli(index_clips, name):
    """Frame choice of ``ffmpeg -i IN -r 25 OUT.mp4`` (FFmpeg 5.1.9), frame for frame."""
    clip = decode_clip(index_clips[name], need_audio=False, fps_mode="cfr")
    assert [read_index(f) for f in clip.frames] == EXPECTED_FPS["clips"][name]
    assert clip.fps == 25.0


def test_auto_mode_converts_only_other_rates(index_clips):
    converted = decode_clip(index_clips["r30.mp4"], need_audio=False)
    assert converted.fps == 25.0 and converted.source_fps == 30.0
    assert [read_index(f) for f in converted.frames] == EXPECTED_FPS["clips"]["r30.mp4"]
    # 25 fps with a timestamp gap: "auto" keeps the frames as cv2 reads them, "cfr" fills the gap as the CLI
    as_read = decode_clip(index_clips["gap25.mp4"])
    assert [read_index(f) for f in as_read.frames] == list(range(46))
    assert np.array_equal(as_read.frames, cv2_frames(index_clips["gap25.mp4"]))
    filled = decode_clip(index_clips["gap25.mp4"], fps_mode="cfr")
    assert len(filled.frames) == 50
    passthrough = decode_clip(index_clips["r30.mp4"], need_audio=False, fps_mode="passthrough")
    assert passthrough.fps == 30.0 and len(passthrough.frames) == 93


def test_cfr_frame_indices_by_hand():
    tb = Fraction(1, 30)
    # 30 fps: the CLI lets the output lag until the drift passes 1.1 frames (duration = 1 tick)
    chosen = cfr_frame_indices(list(range(31)), tb, [1] * 31, Fraction(30))
    assert 13 not in chosen and 19 not in chosen and chosen[:13] == list(range(13))
    assert len(chosen) == 31 - 3  # 13, 19, 25 dropped
    # 25 fps in, 25 fps out: identity
    assert cfr_frame_indices(list(range(10)), Fraction(1, 25), [1] * 10, Fraction(25)) == list(range(10))
    # 15 fps: each frame lasts round(25/15) = 2 ticks; the drift decides 1 or 2 copies
    assert cfr_frame_indices([0, 1, 2, 3], Fraction(1, 15), [1] * 4, Fraction(15)) == [0, 0, 1, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="durations"):
        cfr_frame_indices([0, 1], tb, [1], Fraction(30))


def test_unknown_fps_mode():
    with pytest.raises(ValueError, match="fps_mode must be one of"):
        decode_clip(MEDIA / "meeting.mp4", fps_mode="nearest")


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".mkv", ".avi"])
def test_ffv1_round_trip_is_lossless(tmp_path, suffix):
    frames = noise_frames(12, 48, 66)  # even and odd-looking sizes are fine for ffv1
    frames[:, :, 65] = 255
    audio = (np.random.default_rng(1).normal(0, 3000, 12 * 640)).astype(np.int16)
    path = tmp_path / f"clip{suffix}"
    write_clip(path, frames, audio, codec="ffv1")
    clip = decode_clip(path)
    assert np.array_equal(clip.frames, frames)
    assert np.array_equal(clip.audio_int16, audio)
    assert np.array_equal(cv2_frames(path), frames)


def test_h264_round_trip(tmp_path):
    source = decode_clip(MEDIA / "meeting.mp4")
    path = tmp_path / "out" / "meeting.mp4"  # the folder is created
    write_clip(path, source.frames, source.audio_int16, crf=18)
    clip = decode_clip(path)
    assert clip.frames.shape == source.frames.shape and clip.fps == 25.0
    mse = np.mean((clip.frames.astype(float) - source.frames) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 35
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert container.streams.audio[0].codec_context.name == "aac"
    # AAC adds at most a frame of padding; the sound itself is kept
    assert 0 <= len(clip.audio_int16) - len(source.audio_int16) <= 1024
    n = len(source.audio_int16)
    corr = np.corrcoef(clip.audio_int16[:n].astype(float), source.audio_int16.astype(float))[0, 1]
    assert corr > 0.99
    lossy = tmp_path / "lossy.mp4"
    write_clip(lossy, source.frames, None, crf=40)
    assert lossy.stat().st_size < path.stat().st_size


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "clip.mkv"
    frames = noise_frames(3, 16, 16)
    write_clip(path, frames, None, codec="ffv1")
    before = path.read_bytes()

    def interrupted(target, *args, **kwargs):
        target.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(media, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_clip(path, noise_frames(3, 16, 16, seed=5), None, codec="ffv1")
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv"]  # no temporary left


@pytest.mark.parametrize("kwargs, message", [
    (dict(frames=np.zeros((2, 15, 16, 3), np.uint8)), "even width and height"),
    (dict(frames=np.zeros((2, 16, 16, 3), np.float32)), "uint8 array T×H×W×3"),
    (dict(frames=np.zeros((0, 16, 16, 3), np.uint8)), "non-empty"),
    (dict(audio=np.zeros(10, np.float32)), "1-D int16"),
    (dict(codec="vp9"), "codec must be one of"),
    (dict(codec="ffv1", crf=20, name="clip.mkv"), "crf applies to h264 only"),
    (dict(crf=60), "within 0..51"),
    (dict(name="clip.avi"), "change the file extension"),
    (dict(fps=0.0), "fps must be positive"),
])
def test_write_argument_errors(tmp_path, kwargs, message):
    path = tmp_path / kwargs.get("name", "clip.mp4")
    with pytest.raises(ValueError, match=message):
        write_clip(path, kwargs.get("frames", np.zeros((2, 16, 16, 3), np.uint8)), kwargs.get("audio"),
                   fps=kwargs.get("fps", 25.0), codec=kwargs.get("codec", "h264"), crf=kwargs.get("crf"))
    assert not path.exists()


# ------------------------------------------------------------------------------------------------
# errors: every message names the file and the fix
# ------------------------------------------------------------------------------------------------

def test_error_missing_file(tmp_path):
    with pytest.raises(MediaError, match=r"nope\.mp4: file not found\. Check the path"):
        decode_clip(tmp_path / "nope.mp4")
    with pytest.raises(MediaError, match="file not found"):
        read_wav_int16(tmp_path / "nope.wav")


def test_error_folder_and_empty_file(tmp_path):
    with pytest.raises(MediaError, match="is a folder, not a media file"):
        decode_clip(tmp_path)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty\.mp4: file is empty \(0 bytes\)\. Re-create"):
        decode_clip(tmp_path / "empty.mp4")


def test_error_not_a_media_file(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are my notes, not a video\n" * 20)
    with pytest.raises(MediaError, match=r"notes\.mp4: not a media file FFmpeg can read.*Give a video"):
        decode_clip(path)


def test_error_no_video_stream(tmp_path):
    with pytest.raises(MediaError, match=r"meeting\.wav: has no video stream.*Give a video file"):
        decode_clip(MEDIA / "meeting.wav")


def test_error_no_audio_for_read_wav(tmp_path):
    path = tmp_path / "silent.mkv"
    write_clip(path, noise_frames(2, 16, 16), None, codec="ffv1")
    with pytest.raises(MediaError, match=r"silent\.mkv: has no audio stream\. Give a wav"):
        read_wav_int16(path)


def test_error_zero_frames(tmp_path):
    path = tmp_path / "noframes.mkv"  # a video stream in the header, only audio packets in the file
    with av.open(str(path), "w") as out:
        video = out.add_stream("ffv1", rate=25)
        video.width = video.height = 16
        video.pix_fmt = "bgr0"
        audio = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        block = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        block.sample_rate, block.pts = 16000, 0
        out.mux(audio.encode(block))
        out.mux(audio.encode(None))
    with pytest.raises(MediaError, match=r"noframes\.mkv: the video stream has no decodable frames\. Re-export"):
        decode_clip(path, need_audio=False)


def test_error_truncated_file_without_index(tmp_path):
    data = (MEDIA / "meeting.mp4").read_bytes()  # the index (moov) is at the end of this file
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"cut\.mp4: truncated or corrupt MP4/MOV file.*Re-export or re-download"):
        decode_clip(path)


def test_error_truncated_file_with_index(tmp_path):
    """Index first (``+faststart``), data cut at a packet boundary: no decoder error, frames missing."""
    source = decode_clip(MEDIA / "meeting.mp4")
    full = tmp_path / "full.mp4"
    with av.open(str(full), "w", options={"movflags": "+faststart"}) as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 160, 160, "yuv420p"
        for frame in source.frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(video.encode(None))
    with av.open(str(full)) as container:
        positions = [p.pos for p in container.demux(video=0) if p.size]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: positions[40]])
    with pytest.raises(MediaError, match=r"cut\.mp4: truncated file: its index lists 73 video frames but the data "
                                         r"stops after 40\. Re-export"):
        decode_clip(cut, need_audio=False)


def test_error_corrupt_stream(tmp_path):
    data = bytearray((MEDIA / "meeting.mp4").read_bytes())
    for k in range(20000, 40000, 50):
        data[k] = (data[k] + 77) % 256
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError, match=r"corrupt\.mp4: truncated or corrupt stream, decoding failed.*Re-export"):
        decode_clip(path)


def test_index_clip_helper_round_trip():
    assert all(read_index(index_frame(i)[..., ::-1]) == i for i in (0, 1, 255, 1000, 65535))
    assert isinstance(SPECS["r30.mp4"], ClipSpec)


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    out = tmp_path / "clip.mkv"
    media.write_clip(out, np.zeros((3, 16, 16, 3), np.uint8), None, codec="ffv1")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
