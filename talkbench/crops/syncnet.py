"""SyncNet's video inputs, uint8 BGR 224×224, in its two modes (:mod:`talkbench.observers.syncnet`).

* wav2lip mode (Wav2Lip's ``evaluation/scores_LSE``): whole frames resized with ``cv2.resize(img, (224, 224))``
  (INTER_LINEAR, also when downscaling) — recipe ``resize``; or, as the reference reads them, after its ffmpeg
  JPEG round trip (:mod:`talkbench.jpeg_compat`), resized right after decoding — recipe ``jpeg-compat``.
  Shared per clip through :func:`syncnet224`.
* pipeline mode (syncnet_python's ``run_pipeline.py``): faces detected on every frame (shared per clip through
  :func:`face_detections`), tracked (:func:`talkbench.faces.track_faces`), then each track cropped by
  :func:`crop_track`: median-filtered box size and centre, grey padding, a crop with the chin shift, 224×224.
  Track crops depend on the observer's tracking options and have one user, so they are not cached.
  A clip cut around its face track (:mod:`talkbench.tracks`) is not detected again: its one track is cropped
  (:func:`talkbench.crops.face.clip_face_track`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from scipy import signal

from talkbench import jpeg_compat, media
from talkbench.crops import ClipCache, CropKey, Kind, Side, cached
from talkbench.faces import FaceTrack, detect_faces_per_frame
from talkbench.media import Clip
from talkbench.reference_ffmpeg import ReferenceFFmpegError

logger = logging.getLogger(__name__)

FRAME_SIZE = 224
#: syncnet_python run_pipeline.py crop defaults
SMOOTH_KERNEL = 13
CROP_SCALE = 0.4
CROP_PAD_VALUE = 110


def resize_frames(frames_bgr: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
    """Whole frames resized as the reference does: ``cv2.resize(img, (size, size))`` (INTER_LINEAR).

    Args:
        frames_bgr: uint8 ``T×H×W×3``.
    Returns:
        uint8 ``T×size×size×3`` (the input itself when already that size).
    """
    if frames_bgr.ndim != 4 or frames_bgr.shape[-1] != 3:
        raise ValueError(f"Expected frames T×H×W×3 (BGR uint8), got shape {frames_bgr.shape}.")
    if frames_bgr.shape[1:3] == (size, size):
        return frames_bgr
    out = np.empty((frames_bgr.shape[0], size, size, 3), dtype=np.uint8)
    for t, frame in enumerate(frames_bgr):
        out[t] = cv2.resize(frame, (size, size))
    return out


def jpeg_frames(clip: Clip, label: str = "clip") -> np.ndarray:
    """A clip's frames after the reference's ffmpeg JPEG round trip, resized to 224×224: uint8 BGR ``T×224×224×3``.

    Exact when the clip's file is encoded (:func:`talkbench.jpeg_compat.reference_frames` with ``path``)
    and gives the decoded number of frames; otherwise (fps conversion, missing file, ffmpeg failure) an
    approximation from the decoded BGR frames (logged with ``label``, the clip's id).
    """
    path = getattr(clip, "path", None)
    if path is not None and Path(path).is_file() and _same_size(Path(path), clip.frames):
        try:
            frames = jpeg_compat.reference_frames(path=path, size=FRAME_SIZE)
            if len(frames) == clip.num_frames:
                return frames
            logger.warning("%s: %d frames in the file vs %d after 25 fps conversion; JPEG round trip "
                           "approximated from the converted frames.", label, len(frames), clip.num_frames)
        except (ValueError, ReferenceFFmpegError) as err:
            logger.warning("%s: %s; JPEG round trip approximated from BGR frames.", label, err)
    return jpeg_compat.reference_frames(frames_bgr=clip.frames, size=FRAME_SIZE)


def _same_size(path: Path, frames: np.ndarray) -> bool:
    """True when the file's frames are the clip's (False for a clip cut around its face track: its frames are
    the face-centred squares, so the file's whole frames must not be read)."""
    try:
        header = media.probe_video(path)
    except media.MediaError:
        return False
    return (header.height, header.width) == tuple(frames.shape[1:3])


def syncnet224(cache: ClipCache, clip: Clip, recipe: str = "resize", label: str = "clip",
               side: Side = "generated") -> np.ndarray:
    """Whole frames of a clip side at 224×224 (recipe ``resize``: :func:`resize_frames`; ``jpeg-compat``:
    :func:`jpeg_frames`), computed once per clip: uint8 BGR ``T×224×224×3``.

    Raises:
        ValueError: an unknown recipe.
    """
    key = CropKey(Kind.SYNCNET224, side, recipe)
    if recipe == "jpeg-compat":
        return cached(cache, key, lambda: jpeg_frames(clip, label))
    return cached(cache, key, lambda: resize_frames(clip.frames))


def face_detections(cache: ClipCache, frames_bgr: np.ndarray, detector: str = "dlib",
                    s3fd_weights: Path | None = None, device: str = "cpu",
                    side: Side = "generated") -> list[np.ndarray]:
    """Faces of every frame of a clip side (:func:`talkbench.faces.detect_faces_per_frame` with the pipeline's
    settings: dlib without upsampling, S3FD on ``device``), computed once per clip and detector: T arrays ``K_t×5``.

    Raises:
        ValueError: an unknown detector, or ``s3fd`` without weights.
    """
    kwargs = {"upsample": 0} if detector == "dlib" else {"device": device}
    return cached(cache, CropKey(Kind.FACE_DETECTIONS, side, detector),
                  lambda: detect_faces_per_frame(frames_bgr, detector, s3fd_weights, **kwargs))


def smooth_track(track: FaceTrack, kernel: int = SMOOTH_KERNEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median-filtered half-size and centre of a track's boxes (``scipy.signal.medfilt``, zero-padded edges).

    Returns:
        (s, cx, cy), each float64 ``n``: s = max(w, h) / 2, box centre x and y.
    """
    b = track.boxes
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    cy = (b[:, 1] + b[:, 3]) / 2
    cx = (b[:, 0] + b[:, 2]) / 2
    return (signal.medfilt(s, kernel_size=kernel), signal.medfilt(cx, kernel_size=kernel),
            signal.medfilt(cy, kernel_size=kernel))


def crop_track(frames_bgr: np.ndarray, track: FaceTrack, crop_scale: float = CROP_SCALE,
               size: int = FRAME_SIZE, pad_value: int = CROP_PAD_VALUE, kernel: int = SMOOTH_KERNEL) -> np.ndarray:
    """Face-track crops as syncnet_python's ``crop_video`` makes them (before its lossy XVID write).

    Each frame is padded by ``int(s·(1+2·crop_scale))`` pixels of value ``pad_value``; the crop spans
    ``s·(1+crop_scale)`` left and right of the smoothed centre, ``s`` above it and ``s·(1+2·crop_scale)``
    below it (the chin shift), and is resized to ``size×size`` with INTER_LINEAR.

    Args:
        frames_bgr: the clip's uint8 BGR frames ``T×H×W×3`` (indexed by ``track.frames``).
    Returns:
        uint8 BGR ``n×size×size×3``.
    """
    s_all, cx_all, cy_all = smooth_track(track, kernel)
    out = np.empty((len(track), size, size, 3), dtype=np.uint8)
    for k, fidx in enumerate(track.frames):
        bs = s_all[k]
        bsi = int(bs * (1 + 2 * crop_scale))
        padded = np.pad(frames_bgr[fidx], ((bsi, bsi), (bsi, bsi), (0, 0)), "constant",
                        constant_values=(pad_value, pad_value))
        my = cy_all[k] + bsi
        mx = cx_all[k] + bsi
        face = padded[int(my - bs):int(my + bs * (1 + 2 * crop_scale)),
                      int(mx - bs * (1 + crop_scale)):int(mx + bs * (1 + crop_scale))]
        out[k] = cv2.resize(face, (size, size))
    return out


__all__ = ["CROP_PAD_VALUE", "CROP_SCALE", "FRAME_SIZE", "SMOOTH_KERNEL", "crop_track", "face_detections",
           "jpeg_frames", "resize_frames", "smooth_track", "syncnet224"]
