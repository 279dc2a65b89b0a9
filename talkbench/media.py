"""Decode and encode audio-visual clips with PyAV (FFmpeg's libraries, no subprocess).

Frames come out as uint8 ``T×H×W×3`` in **BGR** order, which is what the reference scripts see
through ``cv2.VideoCapture`` (bit-identical on H.264 and MPEG-4 Part 2 clips: same swscale conversion);
audio comes out as mono 16 kHz, resampled by FFmpeg's own resampler (``swr``), as
``ffmpeg -ac 1 -ar 16000 -acodec pcm_s16le`` does. The samples are kept as int16 (what the reference
scripts read from a wav file with ``scipy.io.wavfile``) and as float32 in [-1, 1).

Frame rate: the reference pipelines run ``ffmpeg -r 25`` on clips of other rates. That is *not* the
``fps`` filter: the FFmpeg CLI (5.1, the version of the reference machine) converts with its
"video sync" rule in constant-frame-rate mode, which lets the output lag the input by up to ~1.1
frames before it drops one and duplicates a frame only once the lead exceeds ~1.1 frames (for 30 fps
input it keeps frames 0–12 and drops 13, 19, 25, …; the fps filter drops 3, 9, 15, …).
:func:`cfr_frame_indices` reimplements that rule on timestamps; on 26 test clips (12.5–60 fps,
29.97 fps, variable frame rate, gaps, video starting after audio) it picks exactly the frames
``ffmpeg -i IN -r 25 OUT.mp4`` of FFmpeg 5.1.9 writes. :func:`decode_clip` applies it to clips whose
stream rate is not 25; 25 fps clips are returned as decoded, as ``cv2.VideoCapture`` reads them.

Rotation: a stream's display matrix (MP4/MOV ``tkhd`` matrix, Matroska projection, the old ``rotate`` tag;
PyAV 18 exposes it as ``DISPLAYMATRIX`` side data on each decoded frame, read here from the first frame) is
applied to the frames as the ffmpeg 5.1 CLI's autorotate applies it, the route of the JPEG step
(:mod:`talkbench.jpeg_compat`): with ``theta`` = the clockwise angle rounded to whole degrees, 90 ->
``transpose=clock`` (``cclock_flip`` when the matrix mirrors), 180 -> ``hflip`` and/or ``vflip`` by the signs
of the diagonal, 270 -> ``transpose=cclock`` (``clock_flip`` when mirrored), 0 -> ``vflip`` when the matrix
flips vertically, else nothing (:func:`orientation_ops`). For pure rotations this is also what OpenCV
(>= 4.5, ``CAP_PROP_ORIENTATION_AUTO`` on by default) returns, bit for bit (OpenCV ignores mirroring, the
CLI does not). Angles that are not a multiple of 90° (the CLI's ``rotate`` filter, with black corners) are
refused with a :class:`MediaError`.

Files are always opened as local files (``file:`` + absolute path, :func:`local_url`), never as FFmpeg URLs:
a clip named ``concat:t.mp4`` or ``pipe:1.mp4`` is that file.

Memory: :func:`decode_clip` keeps every frame as uint8 BGR. It refuses clips whose frames are larger than
:data:`MAX_FRAME_PIXELS` or whose frames would take more than :data:`MAX_DECODED_BYTES`, first from the
header (frame size, frame count or duration) before decoding anything, then while decoding (the header may
lie) and before assembling the 25 fps output; both limits are keyword arguments of :func:`decode_clip`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Sequence

import av
import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
TARGET_FPS = 25.0

#: Largest frame :func:`decode_clip` accepts, in pixels: 3840×2160 (UHD "4K", 8.3 MP; any aspect ratio with
#: that many pixels). The metrics work on 96×96 to 224×224 crops, and every observer holds several copies of
#: the clip (a 1-s 4096×4096 clip took one to 9.5 GB and a 45-clip suite died), so larger sources are
#: refused with the command that downscales them. Override per call with ``max_frame_pixels=``.
MAX_FRAME_PIXELS = 3840 * 2160

#: Largest total of decoded frames :func:`decode_clip` holds, in bytes of uint8 BGR (4 GiB: 27 s of 1080p,
#: 2.6 min of 720p, 14 h of 160×160 at 25 fps). Checked on the header before decoding, while decoding and
#: on the 25 fps output. Override per call with ``max_decoded_bytes=``.
MAX_DECODED_BYTES = 4 * 2**30


class MediaError(ValueError):
    """A media file cannot be used; the message names the file and says what to do."""


@dataclass
class Clip:
    """One decoded clip.

    Attributes:
        path: the file it came from.
        frames: uint8 array ``T×H×W×3``, BGR, at ``fps``.
        fps: frame rate of ``frames`` (25.0 after conversion).
        audio_int16: int16 array ``N`` (mono, 16 kHz), or None when the file has no audio stream.
        source_fps: frame rate of the file before any conversion.
    """

    path: Path
    frames: np.ndarray
    fps: float
    audio_int16: np.ndarray | None
    source_fps: float

    @property
    def audio(self) -> np.ndarray | None:
        """float32 mono samples in [-1, 1) at 16 kHz, ``N``; None without audio."""
        if self.audio_int16 is None:
            return None
        return self.audio_int16.astype(np.float32) / 32768.0

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


#: Extensions of the video files that talkbench reads and matches (suites pair by stem + any of these).
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov")

#: ``fps_mode`` values of :func:`decode_clip`.
FPS_MODES: tuple[str, ...] = ("auto", "cfr", "passthrough")

# Container formats whose stream frame count comes from a complete sample index: fewer packets than
# that count means the file was cut short (an AVI's count also holds dropped-frame entries, so it is
# not used as evidence).
_INDEXED_FORMATS = ("mov", "mp4")

# Leading bytes of containers we recognise; an unreadable file that starts like one of these is a
# damaged media file rather than "not a media file".
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/MOV"), (4, b"moov", "MP4/MOV"), (4, b"mdat", "MP4/MOV"), (4, b"free", "MP4/MOV"),
    (4, b"wide", "MP4/MOV"), (0, b"\x1aE\xdf\xa3", "Matroska/WebM"), (8, b"AVI ", "AVI"), (8, b"WAVE", "WAV"),
    (0, b"OggS", "Ogg"), (0, b"fLaC", "FLAC"), (0, b"ID3", "MP3"), (0, b"FLV", "FLV"),
)

_WRITE_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
_CODEC_EXTENSIONS = {"h264": (".mp4", ".mov", ".mkv"), "ffv1": (".mkv", ".avi")}

# libx264 settings of every H.264 write, so that the same frames give the same bytes run to run.
# mbtree=0: libx264's macroblock-tree rate control, in its AVX-512 code (picked on CPUs that have
# AVX-512), reads uninitialised memory: on 160x160 clips the bitstream then changed from one encode
# of the same frames to the next, decoded pixels by up to 46 grey levels (with glibc's malloc perturb
# byte fixed the output became repeatable and changed with the byte; AVX2 code or mbtree=0 were
# repeatable). Cost, measured on 6 corpus clips at crf 23: PSNR 0.08 dB lower, video streams 17% larger.
# threads=1: the bitstream does not depend on the number of cores of the machine (libx264's frame
# threads change it); small clips encode no slower.
_X264_OPTIONS: dict[str, str] = {"threads": "1", "x264-params": "mbtree=0"}


def _read_umask() -> int:
    # os.umask can only be read by setting it: done once, at import
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


# --------------------------------------------------------------------------------------------------
# Frame-rate conversion (ffmpeg -r 25)
# --------------------------------------------------------------------------------------------------

def _round_half_away(x: Fraction) -> int:
    """``av_rescale_q``'s rounding: to nearest, halves away from zero."""
    magnitude = abs(x)
    whole = int(magnitude)
    if magnitude - whole >= Fraction(1, 2):
        whole += 1
    return whole if x >= 0 else -whole


def _lrintf(x: float) -> int:
    """C ``lrintf``: the double is narrowed to float32, then rounded half to even."""
    return int(np.rint(np.float32(x)))


def _encoder_pts(pts: int, time_base: Fraction, out_tb: Fraction) -> float:
    """The CLI's high-precision frame time in output ticks (``adjust_frame_pts_to_encoder_tb``)."""
    extra_bits = min(max(29 - (out_tb.denominator.bit_length() - 1), 0), 16)
    scaled = _round_half_away(pts * time_base / (out_tb / (1 << extra_bits))) / (1 << extra_bits)
    # the CLI nudges every time off exact midpoints; FFSIGN(0) is -1
    return scaled + (1.0 if scaled > 0 else -1.0) / (1 << 17)


def cfr_frame_indices(pts: Sequence[int], time_base: Fraction, durations: Sequence[int | None],
                      stream_rate: Fraction | None, start_pts: int = 0, fps: Fraction | float = 25,
                      single_stream: bool = False) -> list[int]:
    """Which decoded frame fills each output frame of ``ffmpeg -i IN -r FPS OUT.mp4`` (FFmpeg 5.1).

    The CLI converts in its "video sync" step, constant-frame-rate mode: with ``delta`` = where the
    frame's end falls relative to the next output tick (in ticks), a frame is dropped when
    ``delta < -1.1``, written ``round(delta)`` times when ``delta > 1.1`` (the first of those copies
    may repeat the previous frame to fill a gap), else written once; at the end the last frame is
    repeated as often as the median of the last three gap fills. A frame's length is its packet
    duration rounded to whole output ticks (``lrintf``), else ``min(1/stream_rate, 1 tick)``.

    Args:
        pts: presentation times of the decoded frames, in ``time_base`` units, in output order.
        time_base: the stream's time base (seconds per unit).
        durations: packet durations in ``time_base`` units (0 or None when unknown).
        stream_rate: the stream's guessed frame rate (frames/s), or None.
        start_pts: the file's start time in ``time_base`` units (the CLI shifts the file to start at 0;
            a video stream starting after the audio gets leading copies of its first frame).
        fps: output frame rate.
        single_stream: the input file has only this stream (the CLI then does not pad a late start).
    Returns:
        indices into the decoded frames, one per output frame.
    """
    if len(durations) != len(pts):
        raise ValueError(f"cfr_frame_indices: {len(pts)} pts but {len(durations)} durations.")
    out_tb = 1 / Fraction(fps).limit_denominator(1_000_000)
    nominal = min(float(1 / (Fraction(stream_rate) * out_tb)), 1.0) if stream_rate else 0.0
    next_tick = 0
    chosen: list[int] = []
    gap_history = [0, 0, 0]  # the CLI's last_nb0_frames
    previous: int | None = None
    for i, (frame_pts, packet_duration) in enumerate(zip(pts, durations)):
        sync = _encoder_pts(frame_pts - start_pts, time_base, out_tb)
        duration = nominal
        if packet_duration:
            rounded = _lrintf(float(packet_duration * time_base / out_tb))
            if rounded > 0:
                duration = float(rounded)
        delta0 = sync - next_tick  # drift of this frame's start against the next output tick
        delta = delta0 + duration
        copies, gap_fill = 1, 0
        if delta0 < 0 < delta:  # the frame started a little before its tick: clipped to start on it
            delta0 = 0.0
        if single_stream and not chosen and delta0 >= 0.5:  # "VSCFR": no leading copies
            delta, delta0 = duration, 0.0
            next_tick = int(np.rint(sync))
        if delta < -1.1:
            copies = 0
        elif delta > 1.1:
            copies = _lrintf(delta)
            if delta0 > 1.1:
                gap_fill = _lrintf(delta0 - 0.6)
        gap_fill = min(gap_fill, copies)
        gap_history = [gap_fill] + gap_history[:2]
        for k in range(copies):
            chosen.append(previous if (k < gap_fill and previous is not None) else i)
        next_tick += copies
        previous = i
    if previous is not None:
        chosen.extend([previous] * sorted(gap_history)[1])
    return chosen


# --------------------------------------------------------------------------------------------------
# Opening files
# --------------------------------------------------------------------------------------------------

def _sniff(path: Path) -> str | None:
    """Name of the container the file's first bytes announce, or None."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def local_url(path: str | Path) -> str:
    """The FFmpeg URL of a local file: ``file:`` + its absolute path.

    FFmpeg reads a bare name as a URL when it starts with a protocol name and a colon (``concat:t.mp4``
    reads ``t.mp4``, ``pipe:1.mp4`` reads stdin, ``subfile:…`` a byte range of another file); its ``file``
    protocol strips the ``file:`` prefix and opens the rest as a path, whatever it contains. Format
    probing is unchanged (the extension is still at the end).
    """
    return "file:" + os.path.abspath(os.fspath(path))


def open_input(path: str | Path) -> av.container.InputContainer:
    """Open a local media file for reading with PyAV (as a file, see :func:`local_url`).

    Raises:
        MediaError: missing file, folder, empty file, no permission, not a media file, truncated or
            corrupt container. The message names the file and says what to do.
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found. Check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise MediaError(f"{path}: is a folder, not a media file. Give the path of a video or audio file.")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: file is empty (0 bytes). Re-create or re-download it.")
    try:
        return av.open(local_url(path), mode="r")
    except PermissionError as err:
        raise MediaError(f"{path}: cannot be read ({err.strerror}). Fix its permissions.") from err
    except av.error.FFmpegError as err:
        known = _sniff(path)
        if known is not None:
            raise MediaError(
                f"{path}: truncated or corrupt {known} file (FFmpeg: {err.strerror}). "
                "Re-export or re-download it; an interrupted write leaves such files."
            ) from err
        raise MediaError(
            f"{path}: not a media file FFmpeg can read (FFmpeg: {err.strerror}). "
            f"Give a video ({', '.join(VIDEO_EXTENSIONS)}) or an audio file."
        ) from err


# --------------------------------------------------------------------------------------------------
# Rotation (display matrix) and memory limits
# --------------------------------------------------------------------------------------------------

#: Frame transforms of :func:`orientation_ops`, named after the ffmpeg filters the CLI inserts
#: (``transpose`` directions, ``hflip``, ``vflip``); each maps an ``H×W[×C]`` array to its display form.
_ORIENTATION_TRANSFORMS = {
    "clock": lambda a: np.rot90(a, -1),                     # transpose=clock: 90° clockwise
    "cclock": lambda a: np.rot90(a, 1),                     # transpose=cclock: 90° counter-clockwise
    "cclock_flip": lambda a: a.swapaxes(0, 1),              # 90° counter-clockwise + vertical flip
    "clock_flip": lambda a: a[::-1, ::-1].swapaxes(0, 1),   # 90° clockwise + vertical flip
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
}


def display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's ``DISPLAYMATRIX`` side data as int32 ``9`` (16.16 fixed point, row-major 3×3), or None."""
    for data in frame.side_data:
        if data.type.name == "DISPLAYMATRIX":
            return np.frombuffer(bytes(data), dtype=np.int32)[:9].copy()
    return None


def _round_c(x: float) -> float:
    """C ``round``: halves away from zero."""
    return math.copysign(math.floor(abs(x) + 0.5), x)


def orientation_ops(matrix: np.ndarray | None, source: str | Path = "<clip>") -> list[str]:
    """The transforms ffmpeg 5.1's autorotate applies for a display matrix, in order (see the module docstring).

    Args:
        matrix: int32 ``9`` (:func:`display_matrix`), or None (no matrix: no transform).
        source: the file, for the error message.
    Returns:
        names of :data:`_ORIENTATION_TRANSFORMS` (``[]`` for an upright clip).
    Raises:
        MediaError: a rotation that is not a multiple of 90° (the CLI's ``rotate`` filter, not reproduced).
    """
    if matrix is None:
        return []
    m = [int(v) for v in matrix[:9]]
    scale0, scale1 = math.hypot(m[0] / 65536, m[3] / 65536), math.hypot(m[1] / 65536, m[4] / 65536)
    if scale0 == 0.0 or scale1 == 0.0:         # av_display_rotation_get gives NaN: the CLI applies nothing
        return []
    # av_display_rotation_get (counter-clockwise degrees), then the CLI's get_rotation (clockwise, [0, 360))
    counter_clockwise = -math.degrees(math.atan2(m[1] / 65536 / scale1, m[0] / 65536 / scale0))
    theta = -_round_c(counter_clockwise)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1.0:
        return ["cclock_flip" if m[3] > 0 else "clock"]
    if abs(theta - 180) < 1.0:
        return [op for op, flipped in (("hflip", m[0] < 0), ("vflip", m[4] < 0)) if flipped]
    if abs(theta - 270) < 1.0:
        return ["clock_flip" if m[3] < 0 else "cclock"]
    if abs(theta) > 1.0:
        raise MediaError(
            f"{source}: its display matrix says the video is rotated by {theta:g}° clockwise "
            f"({(360 - theta) % 360:g}° counter-clockwise), not a multiple "
            "of 90°; talkbench cannot reproduce the reference ffmpeg's rotate filter. Drop the rotation "
            "(ffmpeg 5.1: ffmpeg -i IN -metadata:s:v:0 rotate=0 -c copy OUT; FFmpeg >= 6: ffmpeg "
            "-display_rotation 0 -i IN -c copy OUT) or render it into the pixels (ffmpeg -i IN OUT.mp4).")
    return ["vflip"] if m[4] < 0 else []


def apply_orientation(image: np.ndarray, ops: Sequence[str]) -> np.ndarray:
    """Apply :func:`orientation_ops` transforms to one ``H×W`` or ``H×W×C`` image (a plane or a BGR frame).

    Returns:
        the image in display orientation (``W×H[×C]`` after a quarter turn); ``image`` itself when ``ops``
        is empty, else a new C-contiguous array.
    """
    if not ops:
        return image
    for op in ops:
        image = _ORIENTATION_TRANSFORMS[op](image)
    return np.ascontiguousarray(image)


def _gib(n_bytes: float) -> str:
    return f"{int(n_bytes)} bytes" if n_bytes < 2**20 else f"{n_bytes / 2**30:.2f} GiB"


def _too_large_frames(path: Path, width: int, height: int, limit: int) -> MediaError:
    named = " (3840×2160)" if limit == 3840 * 2160 else ""
    return MediaError(
        f"{path}: its frames are {width}×{height} ({width * height / 1e6:.1f} MP), over talkbench's limit of "
        f"{limit} pixels per frame{named}; decoding would hold {_gib(width * height * 3)} per frame as BGR. "
        "Downscale it: ffmpeg -i IN -vf scale=-2:1080 OUT.mp4 (or raise the limit: decode_clip(..., "
        "max_frame_pixels=N) / talkbench.media.MAX_FRAME_PIXELS).")


def _too_many_bytes(path: Path, what: str, total: float, limit: int) -> MediaError:
    return MediaError(
        f"{path}: {what} would take {_gib(total)} as BGR, over the limit of {_gib(limit)} of decoded frames. "
        "Downscale it (ffmpeg -i IN -vf scale=-2:720 OUT.mp4) or cut it into shorter clips (ffmpeg -i IN -ss "
        "START -t SECONDS OUT.mp4), or raise the limit: decode_clip(..., max_decoded_bytes=N) / "
        "talkbench.media.MAX_DECODED_BYTES.")


def _check_header_size(path: Path, video: av.video.stream.VideoStream, converts: bool, max_frame_pixels: int,
                       max_decoded_bytes: int) -> None:
    """Refuse, before decoding, a clip whose header shows frames or a frame total over the limits."""
    width, height = video.codec_context.width, video.codec_context.height
    if not width or not height:
        return
    if width * height > max_frame_pixels:
        raise _too_large_frames(path, width, height, max_frame_pixels)
    rate = video.guessed_rate or video.average_rate
    seconds = float(video.duration * video.time_base) if video.duration and video.time_base else None
    count = int(video.frames or 0) or (int(math.ceil(seconds * float(rate))) if seconds and rate else 0)
    if converts:   # the 25 fps output repeats frames of slower clips
        count = max(count, int(math.ceil(seconds * TARGET_FPS)) if seconds else
                    (int(math.ceil(count * TARGET_FPS / float(rate))) if rate else count))
    if count * width * height * 3 > max_decoded_bytes:
        raise _too_many_bytes(path, f"its {count} frames of {width}×{height}", count * width * height * 3,
                              max_decoded_bytes)


def _corrupt(path: Path, err: av.error.FFmpegError) -> MediaError:
    return MediaError(f"{path}: truncated or corrupt stream, decoding failed (FFmpeg: {err.strerror}). "
                      "Re-export or re-download the file.")


def _audio_chunks(resampler: av.AudioResampler, frame: av.AudioFrame | None) -> list[np.ndarray]:
    """Resample one decoded frame (None = flush) to 16 kHz mono s16; returns int16 sample blocks."""
    return [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]


def _join_audio(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks).astype(np.int16, copy=False) if chunks else np.zeros(0, np.int16)


@dataclass
class _Decoded:
    """Everything one demux pass yields: BGR frames with their timing, and the resampled audio."""

    frames: list[np.ndarray]
    pts: list[int | None]
    durations: list[int | None]
    audio: np.ndarray | None
    n_video_packets: int


def _decode_streams(path: Path, container: av.container.InputContainer, video: av.video.stream.VideoStream,
                    audio: av.audio.stream.AudioStream | None, max_frame_pixels: int = MAX_FRAME_PIXELS,
                    max_decoded_bytes: int = MAX_DECODED_BYTES) -> _Decoded:
    """Decode the video (to BGR) and audio (to 16 kHz mono int16) streams in one pass over the file.

    Frames are turned upright by the first frame's display matrix (:func:`orientation_ops`); decoding stops
    with a :class:`MediaError` at the first frame that is larger than ``max_frame_pixels`` or takes the
    running total of BGR bytes past ``max_decoded_bytes``.
    """
    decoded = _Decoded([], [], [], None, 0)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    ops: list[str] | None = None
    total = 0
    try:
        for packet in container.demux(*[s for s in (video, audio) if s is not None]):
            is_video = packet.stream.index == video.index
            decoded.n_video_packets += int(is_video and packet.size > 0)
            for frame in packet.decode():
                if is_video:
                    if frame.width * frame.height > max_frame_pixels:
                        raise _too_large_frames(path, frame.width, frame.height, max_frame_pixels)
                    total += frame.width * frame.height * 3
                    if total > max_decoded_bytes:
                        raise _too_many_bytes(path, f"decoding stopped after {len(decoded.frames) + 1} frames: they",
                                              total, max_decoded_bytes)
                    if ops is None:
                        ops = orientation_ops(display_matrix(frame), path)
                        if ops:
                            logger.info("%s: display matrix -> %s (as ffmpeg's autorotate)", path, "+".join(ops))
                    # swscale, as cv2 converts; then the rotation, as cv2 (>= 4.5) rotates its BGR frames
                    decoded.frames.append(apply_orientation(frame.to_ndarray(format="bgr24"), ops))
                    decoded.pts.append(frame.pts)
                    decoded.durations.append(frame.duration)
                else:
                    chunks.extend(_audio_chunks(resampler, frame))
        if audio is not None:
            chunks.extend(_audio_chunks(resampler, None))
            decoded.audio = _join_audio(chunks)
    except av.error.FFmpegError as err:
        raise _corrupt(path, err) from err
    return decoded


def _assemble(frames: list[np.ndarray | None], indices: Sequence[int]) -> np.ndarray:
    """``np.stack([frames[i] for i in indices])``, releasing each decoded frame after its last use.

    The list is emptied on the way, so that the decoded frames and the output are never held twice over
    (peak ≈ output + one frame, where ``np.stack`` of a list holds both).
    """
    last_use = {index: position for position, index in enumerate(indices)}
    for index in range(len(frames)):
        if index not in last_use:
            frames[index] = None
    first = frames[indices[0]]
    out = np.empty((len(indices), *first.shape), dtype=first.dtype)
    for position, index in enumerate(indices):
        out[position] = frames[index]
        if last_use[index] == position:
            frames[index] = None
    return out


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def decode_clip(path: str | Path, need_audio: bool = True, *, fps_mode: str = "auto",
                max_frame_pixels: int | None = None, max_decoded_bytes: int | None = None) -> Clip:
    """Decode a video file: BGR uint8 frames at 25 fps and 16 kHz mono int16 audio.

    Args:
        path: video file (any container/codec FFmpeg reads), opened as a local file (:func:`local_url`).
        need_audio: raise when the file has no audio stream (else ``audio_int16`` is None then).
        fps_mode: ``"auto"`` converts streams whose frame rate is not 25 as ``ffmpeg -r 25`` does
            (:func:`cfr_frame_indices`) and returns 25 fps streams as decoded (= ``cv2.VideoCapture``);
            ``"cfr"`` applies the ``-r 25`` rule to every stream (fills timestamp gaps as FFmpeg's CLI
            does when it extracts frames, e.g. to JPEG files); ``"passthrough"`` never converts.
        max_frame_pixels: refuse frames with more pixels (default :data:`MAX_FRAME_PIXELS`, 3840×2160).
        max_decoded_bytes: refuse clips whose decoded or 25 fps frames take more bytes as uint8 BGR (default
            :data:`MAX_DECODED_BYTES`, 4 GiB); checked on the header before decoding, while decoding and
            before the output is assembled.
    Returns:
        a :class:`Clip`: ``frames`` uint8 ``T×H×W×3`` BGR, upright (display matrix applied, see the module
        docstring), ``audio_int16`` ``N`` (or None).
    Raises:
        MediaError: missing file, not a media file, no video stream, no audio stream (when needed),
            no frames, truncated or corrupt file, frames over the size limits, a rotation that is not a
            multiple of 90°. The message names the file and the fix.
    """
    if fps_mode not in FPS_MODES:
        raise ValueError(f"fps_mode must be one of {', '.join(FPS_MODES)}, got {fps_mode!r}.")
    max_frame_pixels = MAX_FRAME_PIXELS if max_frame_pixels is None else int(max_frame_pixels)
    max_decoded_bytes = MAX_DECODED_BYTES if max_decoded_bytes is None else int(max_decoded_bytes)
    path = Path(path)
    with open_input(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream (audio only?). Give a video file.")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        if audio is None and need_audio:
            raise MediaError(f"{path}: has no audio stream, and this step needs the clip's sound. "
                             "Mux the audio track into the video (talkbench.media.write_clip does).")
        rate = video.guessed_rate or video.average_rate
        source_fps = float(rate) if rate else TARGET_FPS
        converts = fps_mode == "cfr" or (fps_mode == "auto" and abs(source_fps - TARGET_FPS) > 1e-6)
        _check_header_size(path, video, converts, max_frame_pixels, max_decoded_bytes)
        decoded = _decode_streams(path, container, video, audio, max_frame_pixels, max_decoded_bytes)
        if not decoded.frames:
            raise MediaError(f"{path}: the video stream has no decodable frames. Re-export the clip.")
        declared = int(video.frames or 0)
        if declared > decoded.n_video_packets and any(f in container.format.name for f in _INDEXED_FORMATS):
            raise MediaError(f"{path}: truncated file: its index lists {declared} video frames but the data "
                             f"stops after {decoded.n_video_packets}. Re-export or re-download it.")
        start_us = container.start_time
        single_stream = len(container.streams) == 1
        time_base = video.time_base
    sizes = {f.shape for f in decoded.frames}
    if len(sizes) > 1:
        raise MediaError(f"{path}: the frame size changes inside the clip ({sorted(sizes)}); "
                         "re-encode it at one size.")
    if need_audio and decoded.audio.size == 0:
        raise MediaError(f"{path}: the audio stream has no decodable samples. Re-export the clip with its audio.")

    frames, fps = decoded.frames, source_fps
    indices = list(range(len(frames)))
    if converts:
        start_pts = _round_half_away(Fraction(start_us, 1_000_000) / time_base) if start_us is not None else 0
        indices = cfr_frame_indices(_fill_missing_pts(decoded.pts, time_base, rate), time_base, decoded.durations,
                                    rate, start_pts, TARGET_FPS, single_stream)
        if indices != list(range(len(frames))):
            logger.info("%s: %.3f fps -> 25 fps (%d -> %d frames, as ffmpeg -r 25)",
                        path, source_fps, len(frames), len(indices))
        fps = TARGET_FPS
        if not indices:
            raise MediaError(f"{path}: no frames left after the conversion to 25 fps. Re-export the clip.")
        output_bytes = len(indices) * frames[0].nbytes
        if output_bytes > max_decoded_bytes:
            height, width = frames[0].shape[:2]
            raise _too_many_bytes(path, f"its {len(indices)} frames at 25 fps of {width}×{height}", output_bytes,
                                  max_decoded_bytes)
    return Clip(path=path, frames=_assemble(frames, indices), fps=fps, audio_int16=decoded.audio,
                source_fps=source_fps)


@dataclass
class VideoHeader:
    """What a video's header says, read without decoding (:func:`probe_video`).

    Attributes:
        path: the file.
        width, height: coded frame size (a 90°/270° display matrix swaps them when decoding).
        source_fps: the stream's frame rate (25.0 when unknown).
        n_frames: frames at 25 fps (after ``ffmpeg -r 25`` conversion), estimated from the header (0: unknown).
        has_audio: the file has an audio stream.
    """

    path: Path
    width: int
    height: int
    source_fps: float
    n_frames: int
    has_audio: bool

    @property
    def frame_bytes(self) -> int:
        """Bytes of one uint8 BGR frame."""
        return self.width * self.height * 3


def probe_video(path: str | Path) -> VideoHeader:
    """The header of a video (frame size, rate, 25-fps frame count estimate, audio), without decoding.

    Raises:
        MediaError: missing/unreadable file, or no video stream.
    """
    path = Path(path)
    with open_input(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream (audio only?). Give a video file.")
        video = container.streams.video[0]
        width, height = int(video.codec_context.width or 0), int(video.codec_context.height or 0)
        rate = video.guessed_rate or video.average_rate
        seconds = float(video.duration * video.time_base) if video.duration and video.time_base else None
        if seconds is None and container.duration:
            seconds = container.duration / 1_000_000
        count = int(math.ceil(seconds * TARGET_FPS)) if seconds else int(video.frames or 0)
        return VideoHeader(path=path, width=width, height=height, source_fps=float(rate) if rate else TARGET_FPS,
                           n_frames=count, has_audio=bool(container.streams.audio))


@dataclass
class VideoTimeline:
    """The frame timeline of a video after one streamed pass (:func:`scan_video`).

    Attributes:
        indices: for every output frame (25 fps, as :func:`decode_clip` returns them), the index of the decoded
            frame it shows.
        frame_size: ``(height, width)`` of the upright frames.
        source_fps: the stream's frame rate.
    """

    indices: list[int]
    frame_size: tuple[int, int]
    source_fps: float


def _video_frames(path: Path, container: av.container.InputContainer, video: av.video.stream.VideoStream,
                  max_frame_pixels: int) -> Iterator[tuple[av.VideoFrame, list[str]]]:
    """Decode the video stream one frame at a time: (the PyAV frame, the orientation ops of the clip)."""
    ops: list[str] | None = None
    try:
        for packet in container.demux(video):
            for frame in packet.decode():
                if frame.width * frame.height > max_frame_pixels:
                    raise _too_large_frames(path, frame.width, frame.height, max_frame_pixels)
                if ops is None:
                    ops = orientation_ops(display_matrix(frame), path)
                yield frame, ops
    except av.error.FFmpegError as err:
        raise _corrupt(path, err) from err


def _to_bgr(frame: av.VideoFrame, ops: Sequence[str], max_side: int | None = None) -> np.ndarray:
    """An upright uint8 BGR array of a decoded frame; with ``max_side``, shrunk by swscale (area filter, in the
    same step as the colour conversion) so that its long side is at most ``max_side``."""
    if max_side is not None and max(frame.width, frame.height) > max_side:
        scale = max_side / max(frame.width, frame.height)
        width, height = max(2, round(frame.width * scale)), max(2, round(frame.height * scale))
        return apply_orientation(frame.reformat(width=width, height=height, format="bgr24",
                                                interpolation="AREA").to_ndarray(), ops)
    return apply_orientation(frame.to_ndarray(format="bgr24"), ops)


def scan_video(path: str | Path, on_frame: Callable[[int, np.ndarray], object] | None = None, *, every: int = 1,
               max_side: int | None = None, fps_mode: str = "auto",
               max_frame_pixels: int | None = None) -> VideoTimeline:
    """One streamed pass over a video: the 25-fps timeline :func:`decode_clip` would apply and, on the way,
    ``on_frame(decoded_index, frame)`` for every ``every``-th decoded frame (uint8 BGR, upright; shrunk by swscale
    to at most ``max_side`` on its long side when given; never more than one held).

    Raises:
        MediaError: as :func:`decode_clip` (no video, corrupt stream, frames over ``max_frame_pixels``).
    """
    if fps_mode not in FPS_MODES:
        raise ValueError(f"fps_mode must be one of {', '.join(FPS_MODES)}, got {fps_mode!r}.")
    limit = MAX_FRAME_PIXELS if max_frame_pixels is None else int(max_frame_pixels)
    path = Path(path)
    pts: list[int | None] = []
    durations: list[int | None] = []
    size: tuple[int, int] | None = None
    with open_input(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream (audio only?). Give a video file.")
        video = container.streams.video[0]
        rate = video.guessed_rate or video.average_rate
        source_fps = float(rate) if rate else TARGET_FPS
        converts = fps_mode == "cfr" or (fps_mode == "auto" and abs(source_fps - TARGET_FPS) > 1e-6)
        for i, (frame, ops) in enumerate(_video_frames(path, container, video, limit)):
            shape = (frame.height, frame.width) if len(ops) != 1 or ops[0] in ("hflip", "vflip") else \
                (frame.width, frame.height)
            if size is None:
                size = shape
            elif shape != size:
                raise MediaError(f"{path}: the frame size changes inside the clip; re-encode it at one size.")
            if on_frame is not None and i % every == 0:
                on_frame(i, _to_bgr(frame, ops, max_side))
            pts.append(frame.pts)
            durations.append(frame.duration)
        start_us = container.start_time
        single_stream = len(container.streams) == 1
        time_base = video.time_base
    if size is None:
        raise MediaError(f"{path}: the video stream has no decodable frames. Re-export the clip.")
    indices = list(range(len(pts)))
    if converts:
        start_pts = _round_half_away(Fraction(start_us, 1_000_000) / time_base) if start_us is not None else 0
        indices = cfr_frame_indices(_fill_missing_pts(pts, time_base, rate), time_base, durations, rate, start_pts,
                                    TARGET_FPS, single_stream)
    return VideoTimeline(indices=indices, frame_size=(int(size[0]), int(size[1])), source_fps=source_fps)


def iter_frames(path: str | Path, indices: Sequence[int] | None = None, *,
                max_frame_pixels: int | None = None) -> Iterator[np.ndarray]:
    """Stream a video's upright uint8 BGR frames ``H×W×3``, one at a time: the decoded frames in order, or, given
    ``indices`` (non-decreasing, e.g. :attr:`VideoTimeline.indices`), ``frame[indices[0]], frame[indices[1]], ...``
    — the frames :func:`decode_clip` would return, without holding them."""
    limit = MAX_FRAME_PIXELS if max_frame_pixels is None else int(max_frame_pixels)
    path = Path(path)
    with open_input(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream (audio only?). Give a video file.")
        frames = _video_frames(path, container, container.streams.video[0], limit)
        if indices is None:
            for frame, ops in frames:
                yield _to_bgr(frame, ops)
            return
        position = 0
        for i, (frame, ops) in enumerate(frames):
            if position < len(indices) and indices[position] == i:
                image = _to_bgr(frame, ops)
                while position < len(indices) and indices[position] == i:
                    yield image
                    position += 1
            if position >= len(indices):
                return


def _fill_missing_pts(pts: Sequence[int | None], time_base: Fraction, rate: Fraction | None) -> list[int]:
    """Frames without a timestamp follow the previous one by one nominal frame period."""
    step = int(round(1 / (Fraction(rate) * time_base))) if rate else 1
    filled: list[int] = []
    for value in pts:
        filled.append(value if value is not None else (filled[-1] + step if filled else 0))
    return filled


def read_wav_int16(path: str | Path) -> np.ndarray:
    """Read the first audio stream of any audio or video file as 16 kHz mono int16 (FFmpeg's resampler).

    A 16 kHz mono 16-bit wav comes back sample for sample as ``scipy.io.wavfile.read`` gives it.

    Returns:
        int16 array ``N``.
    Raises:
        MediaError: missing, unreadable or corrupt file; no audio stream; no samples.
    """
    path = Path(path)
    with open_input(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: has no audio stream. Give a wav/mp3/… file or a video with sound.")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(audio=0):
                chunks.extend(_audio_chunks(resampler, frame))
            chunks.extend(_audio_chunks(resampler, None))
        except av.error.FFmpegError as err:
            raise _corrupt(path, err) from err
    samples = _join_audio(chunks)
    if samples.size == 0:
        raise MediaError(f"{path}: the audio stream has no decodable samples. Re-export the file.")
    return samples


def _check_write_args(path: Path, frames_bgr: np.ndarray, audio_int16: np.ndarray | None, fps: float,
                      codec: str, crf: int | None) -> None:
    if codec not in _CODEC_EXTENSIONS:
        raise ValueError(f"codec must be one of {', '.join(_CODEC_EXTENSIONS)}, got {codec!r}.")
    if path.suffix.lower() not in _CODEC_EXTENSIONS[codec]:
        raise ValueError(f"{path}: codec {codec!r} is written to {', '.join(_CODEC_EXTENSIONS[codec])} files; "
                         "change the file extension or the codec.")
    if not isinstance(frames_bgr, np.ndarray) or frames_bgr.dtype != np.uint8 or frames_bgr.ndim != 4 \
            or frames_bgr.shape[-1] != 3 or frames_bgr.shape[0] == 0:
        shape = getattr(frames_bgr, "shape", None)
        dtype = getattr(frames_bgr, "dtype", type(frames_bgr).__name__)
        raise ValueError(f"{path}: frames must be a non-empty uint8 array T×H×W×3 (BGR), got {dtype} {shape}.")
    height, width = frames_bgr.shape[1:3]
    if codec == "h264" and (height % 2 or width % 2):
        raise ValueError(f"{path}: H.264 yuv420p needs an even width and height, got {width}×{height}; "
                         "crop or pad the frames, or use codec='ffv1'.")
    if audio_int16 is not None and (not isinstance(audio_int16, np.ndarray) or audio_int16.dtype != np.int16
                                    or audio_int16.ndim != 1):
        raise ValueError(f"{path}: audio must be a 1-D int16 array (16 kHz mono) or None, "
                         f"got {getattr(audio_int16, 'dtype', type(audio_int16).__name__)} "
                         f"{getattr(audio_int16, 'shape', None)}.")
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}.")
    if crf is not None and codec != "h264":
        raise ValueError(f"{path}: crf applies to h264 only ({codec} is lossless); leave it None.")
    if crf is not None and not 0 <= crf <= 51:
        raise ValueError(f"{path}: crf must be within 0..51 (libx264), got {crf}.")


def write_clip(path: str | Path, frames_bgr: np.ndarray, audio_int16: np.ndarray | None, fps: float = 25.0,
               codec: str = "h264", crf: int | None = None) -> None:
    """Write frames (and audio) to a video file, atomically.

    ``h264``: libx264, yuv420p (BT.601 limited range, as FFmpeg's CLI converts BGR by default), AAC audio,
    in .mp4/.mov/.mkv; ``crf`` None = libx264's default (23). libx264 runs single-threaded without
    macroblock-tree rate control, so the same input gives a byte-identical file on the same machine and
    PyAV build (libx264's SIMD code differs between CPUs, so the bytes may differ between machines).
    ``ffv1``: lossless FFV1 in ``bgr0`` (the decoded frames equal ``frames_bgr`` bit for bit) with PCM
    s16 audio, in .mkv/.avi.
    The file is written to a hidden temporary file in the same folder and renamed into place, so an
    interrupted write never leaves a partial file under ``path``.

    Args:
        path: output file; its folder is created if needed.
        frames_bgr: uint8 ``T×H×W×3`` BGR (H and W even for h264).
        audio_int16: mono 16 kHz int16 ``N``, or None for a silent clip.
        fps: frame rate.
    Raises:
        ValueError: bad arguments (the message says which and how to fix it).
    """
    path = Path(path)
    _check_write_args(path, frames_bgr, audio_int16, fps, codec, crf)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(handle)
    temp = Path(temp_name)
    try:
        _encode(temp, _WRITE_FORMATS[path.suffix.lower()], frames_bgr, audio_int16, fps, codec, crf)
        os.chmod(temp, 0o666 & ~_UMASK)   # mkstemp makes 0600 files; give the usual permissions
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


class StreamWriter:
    """Write a video frame by frame, atomically, with the settings of :func:`write_clip`.

    The same encoders, options and audio interleaving as ``write_clip`` (h264: libx264 yuv420p with
    talkbench's reproducible options + AAC; ffv1: ``bgr0`` + PCM), but frames are handed over one at a time, so a
    long HD clip is never held. Written to a hidden ``.<name>.<random>.part`` file beside ``path`` and renamed on
    a clean :meth:`close`; an exception inside the ``with`` block deletes it.

    Use::

        with StreamWriter(path, height, width, audio_int16, codec="h264") as writer:
            for frame in frames:
                writer.write(frame)
    """

    def __init__(self, path: str | Path, height: int, width: int, audio_int16: np.ndarray | None,
                 fps: float = TARGET_FPS, codec: str = "h264", crf: int | None = None) -> None:
        self.path = Path(path)
        probe = np.zeros((1, height, width, 3), dtype=np.uint8)
        _check_write_args(self.path, probe, audio_int16, fps, codec, crf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part")
        os.close(handle)
        self._temp = Path(temp_name)
        self._audio = audio_int16
        self._rate = Fraction(fps).limit_denominator(100_000)
        self._codec = codec
        self._size = (height, width)
        self._written_audio = 0
        self.frames = 0
        self._out = av.open(local_url(self._temp), mode="w",
                            format=_WRITE_FORMATS[self.path.suffix.lower()])
        if codec == "h264":
            self._video = self._out.add_stream("libx264", rate=self._rate)
            self._video.pix_fmt = "yuv420p"
            self._video.options = {**_X264_OPTIONS, **({"crf": str(crf)} if crf is not None else {})}
        else:
            self._video = self._out.add_stream("ffv1", rate=self._rate)
            self._video.pix_fmt = "bgr0"
        self._video.height, self._video.width = height, width
        self._audio_stream = None
        if audio_int16 is not None:
            self._audio_stream = self._out.add_stream("aac" if codec == "h264" else "pcm_s16le",
                                                      rate=SAMPLE_RATE, layout="mono")

    def write(self, frame_bgr: np.ndarray) -> None:
        """Encode one uint8 ``H×W×3`` BGR frame (and the audio up to its end)."""
        if frame_bgr.shape != (*self._size, 3) or frame_bgr.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame {self.frames} is {frame_bgr.dtype} {frame_bgr.shape}; every frame "
                             f"must be uint8 {self._size[0]}×{self._size[1]}×3.")
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_bgr), format="bgr24")
        if self._codec == "h264":
            picture = picture.reformat(format="yuv420p")
        self._out.mux(self._video.encode(picture))
        self.frames += 1
        if self._audio_stream is not None:
            until = min(len(self._audio), int(round(self.frames * SAMPLE_RATE / float(self._rate))))
            self._written_audio = _mux_audio(self._out, self._audio_stream, self._audio,
                                                   self._written_audio, until)

    def close(self) -> Path:
        """Flush the encoders and move the file into place; returns the path."""
        if self.frames == 0:
            raise ValueError(f"{self.path}: no frames were written.")
        self._out.mux(self._video.encode(None))
        if self._audio_stream is not None:
            _mux_audio(self._out, self._audio_stream, self._audio, self._written_audio, len(self._audio))
            self._out.mux(self._audio_stream.encode(None))
        self._out.close()
        os.chmod(self._temp, 0o666 & ~_UMASK)
        os.replace(self._temp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            self._out.close()
        except Exception:          # noqa: BLE001 - closing a half-written container may fail; the file goes anyway
            pass
        self._temp.unlink(missing_ok=True)

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _encode(target: Path, container_format: str, frames_bgr: np.ndarray, audio_int16: np.ndarray | None,
            fps: float, codec: str, crf: int | None) -> None:
    rate = Fraction(fps).limit_denominator(100_000)
    with av.open(local_url(target), mode="w", format=container_format) as out:   # a file, never a URL
        if codec == "h264":
            video = out.add_stream("libx264", rate=rate)
            video.pix_fmt = "yuv420p"
            video.options = {**_X264_OPTIONS, **({"crf": str(crf)} if crf is not None else {})}
        else:
            video = out.add_stream("ffv1", rate=rate)
            video.pix_fmt = "bgr0"
        video.height, video.width = frames_bgr.shape[1:3]
        audio = None
        if audio_int16 is not None:
            audio = out.add_stream("aac" if codec == "h264" else "pcm_s16le", rate=SAMPLE_RATE, layout="mono")
        written = 0  # audio samples muxed so far; audio is interleaved with the video, frame by frame
        for index, frame in enumerate(frames_bgr):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
            if codec == "h264":
                # The same swscale conversion encode() would do; done here so that the frames handed to
                # libx264 are plainly yuv420p. (Run-to-run pixel differences once blamed on the implicit
                # conversion were libx264's, see _X264_OPTIONS: both paths give the same bytes.)
                picture = picture.reformat(format="yuv420p")
            out.mux(video.encode(picture))
            if audio is not None:
                until = min(len(audio_int16), int(round((index + 1) * SAMPLE_RATE / float(rate))))
                written = _mux_audio(out, audio, audio_int16, written, until)
        out.mux(video.encode(None))
        if audio is not None:
            _mux_audio(out, audio, audio_int16, written, len(audio_int16))
            out.mux(audio.encode(None))


def _mux_audio(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, samples: np.ndarray,
               start: int, stop: int, block: int = 1024) -> int:
    """Encode and mux ``samples[start:stop]`` in blocks; returns ``stop``."""
    for first in range(start, stop, block):
        chunk = np.ascontiguousarray(samples[first:min(first + block, stop)])
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = first
        frame.time_base = Fraction(1, SAMPLE_RATE)
        out.mux(stream.encode(frame))
    return max(start, stop)
