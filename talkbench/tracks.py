"""One face track per clip: detection on downscaled frames, IoU tracking, smoothing, and the crops cut from it.

The one owner of "where is the face in this clip" when a suite gives no ``<id>.npy`` boxes. Every face-based
crop of a clip without boxes is cut from its :class:`ClipTrack`: the 96×96 PSNR/SSIM crops, the SyncNet
pipeline crops, the lip readers' mouth crops (through the face-centred frames of :func:`face_square`), the
boxes TalkLip's generator reads, and the LRS2-style clips of ``talkbench prepare``.

The rule (:func:`face_track`, settings in :class:`TrackSettings`, documented in ``docs/tracks.md``):

1. **Detection on downscaled frames**: every ``every``-th frame is shrunk (INTER_AREA) so that its long side is
   at most ``max_side`` pixels, faces are detected there (:func:`talkbench.faces.detect_faces`: dlib HOG with
   ``upsample`` upsamplings, or S3FD) and the boxes are scaled back to full-frame pixels. Detector cost is
   bounded by ``max_side`` whatever the clip's resolution.
2. **Tracking**: syncnet_python's greedy IoU tracking (:func:`talkbench.faces.track_faces`: IoU > 0.5 with the
   track's last face, at most 25 frames apart) over the detected frames; the clip's track is the one with the
   most detections (the speaker of a talking-head clip). Frames between its detections get linearly
   interpolated boxes; frames before its first / after its last detection hold the nearest box.
3. **Smoothing**: a running median over ``smooth`` frames (``scipy.ndimage.median_filter``, edges repeated) of
   the box centre x, centre y, width and height, as syncnet_python smooths its crops (kernel 13 = 0.52 s at
   25 fps; it zero-pads the edges, here the edge values repeat so the first and last boxes do not shrink).

Frames are indexed as :func:`talkbench.media.decode_clip` returns them (25 fps after ``ffmpeg -r 25``
conversion), so a track computed from a file (streamed, never holding the clip) lines up with the decoded clip.

Tracks are cached as ``<dir>/<clip id>.npz`` next to the settings they were made with (:func:`cached_track`):
a resumed run reads them instead of detecting again; other settings or another file recompute them.

All frames are uint8 BGR; boxes are float64 ``x1, y1, x2, y2`` in full-frame pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
from scipy import ndimage

from talkbench import faces, media

logger = logging.getLogger(__name__)

#: Default long side of the detector's input, pixels (dlib HOG finds faces of >= ~80 px at upsample 0,
#: ~40 px at upsample 1: a face filling 1/6 of a 1080p frame's long side is still found).
MAX_SIDE = 480
#: Default detection stride (1 = every frame; see docs/tracks.md for the measured effect of larger strides).
EVERY = 1
#: Running-median length of the smoothing, frames (syncnet_python's crop smoothing).
SMOOTH = 13
#: Face-centred square: side = SQUARE_SCALE × the box's larger side (a dlib box is ~half of an LRS2 frame).
SQUARE_SCALE = 2.0
#: Grey of the padding when a square reaches past the frame (syncnet_python's crop padding value).
PAD_VALUE = 110
#: Format version of the cached track files.
CACHE_VERSION = 1


class NoFaceError(ValueError):
    """No face was found in a clip; the message names the clip and the fixes."""


@dataclass(frozen=True)
class TrackSettings:
    """How a clip's face track is made (recorded with every cached track).

    Attributes:
        detector: ``"dlib"`` (HOG, no download) or ``"s3fd"`` (needs ``s3fd_weights``).
        max_side: long side of the detector's input, pixels (frames are only shrunk, never enlarged).
        every: detect on every ``every``-th frame (1 = all), interpolate between.
        upsample: dlib HOG upsamplings (ignored by S3FD); with 0 (default, 4× faster than 1) a clip where no face
            is found is scanned again with 1 (faces down to ~40 px in the detector's input).
        smooth: running-median length in frames (1 = none; odd).
    """

    detector: str = "dlib"
    max_side: int = MAX_SIDE
    every: int = EVERY
    upsample: int = 0
    smooth: int = SMOOTH

    def __post_init__(self) -> None:
        if self.detector not in faces.DETECTORS:
            raise ValueError(f"Track detector must be one of {faces.DETECTORS}, got {self.detector!r}.")
        if self.max_side < 32 or self.every < 1 or self.upsample < 0 or self.smooth < 1 or self.smooth % 2 == 0:
            raise ValueError(f"Bad track settings {self}: need max_side >= 32, every >= 1, upsample >= 0 and an "
                             "odd smooth >= 1.")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ClipTrack:
    """The face track of one clip.

    Attributes:
        boxes: float64 ``N×4`` smoothed x1, y1, x2, y2 per frame, full-frame pixels (what crops use).
        raw: float64 ``N×4`` the boxes before smoothing (detections, interpolated and held between them).
        detected: bool ``N``: True where the track's box is a detection (False: interpolated or held).
        frame_size: ``(height, width)`` of the full frames.
        settings: how it was made.
        indices: int64 ``N``, for a track made from a file: the decoded frame each (25 fps) frame shows
            (:attr:`talkbench.media.VideoTimeline.indices`; spares :func:`face_centred_clip` a decoding pass); or None.
    """

    boxes: np.ndarray
    raw: np.ndarray
    detected: np.ndarray
    frame_size: tuple[int, int]
    settings: TrackSettings = field(default_factory=TrackSettings)
    indices: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def detected_fraction(self) -> float:
        """Share of the frames whose box was detected (the rest is interpolated or held)."""
        return float(self.detected.mean()) if len(self) else 0.0

    def int_boxes(self) -> np.ndarray:
        """int64 ``N×4`` boxes rounded and clipped to the frame, as :func:`talkbench.boxes.check_boxes` accepts."""
        return int_boxes(self.boxes, self.frame_size)

    @classmethod
    def from_boxes(cls, boxes: np.ndarray, frame_size: tuple[int, int]) -> "ClipTrack":
        """A track made of given per-frame boxes ``N×4`` (a suite's ``<id>.npy``), used as they are: every frame
        counts as detected, nothing is smoothed."""
        b = np.asarray(boxes, dtype=np.float64)
        return cls(boxes=b.copy(), raw=b.copy(), detected=np.ones(len(b), dtype=bool),
                   frame_size=(int(frame_size[0]), int(frame_size[1])), settings=TrackSettings(smooth=1))

    def in_square(self, size: int, scale: float = SQUARE_SCALE, shift_y: float = 0.0) -> "ClipTrack":
        """This track in the coordinates of its own face-centred ``size×size`` squares (:func:`face_centred_clip`)."""
        return ClipTrack(boxes=track_in_square(self, size, scale, shift_y),
                         raw=np.stack([box_in_square(r, b, size, scale, shift_y) for r, b in zip(self.raw, self.boxes)])
                         if len(self) else np.zeros((0, 4)),
                         detected=self.detected.copy(), frame_size=(size, size), settings=self.settings)

    def as_shot_track(self) -> faces.FaceTrack:
        """The track as a :class:`talkbench.faces.FaceTrack` over every frame (for SyncNet's pipeline crops)."""
        return faces.FaceTrack(frames=np.arange(len(self)), boxes=self.boxes.copy(),
                               n_detections=int(self.detected.sum()))


def int_boxes(boxes: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """Float boxes ``N×4`` -> int64, rounded, clipped to ``frame_size`` ``(h, w)``, at least one pixel wide/high."""
    h, w = frame_size
    out = np.rint(np.asarray(boxes, dtype=np.float64)).astype(np.int64)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
    out[:, 2] = np.maximum(out[:, 2], np.minimum(out[:, 0] + 1, w))
    out[:, 0] = np.minimum(out[:, 0], out[:, 2] - 1)
    out[:, 3] = np.maximum(out[:, 3], np.minimum(out[:, 1] + 1, h))
    out[:, 1] = np.minimum(out[:, 1], out[:, 3] - 1)
    return out


# ---------------------------------------------------------------------------------------------
# Detection on downscaled frames
# ---------------------------------------------------------------------------------------------

def detector_scale(frame_size: tuple[int, int], max_side: int) -> float:
    """Factor (<= 1) that brings a frame ``(h, w)`` to at most ``max_side`` on its long side."""
    return min(1.0, max_side / float(max(frame_size)))


def detect_downscaled(frame_bgr: np.ndarray, settings: TrackSettings = TrackSettings(),
                      s3fd_weights: Path | None = None, device: str = "cpu",
                      full_size: tuple[int, int] | None = None) -> np.ndarray:
    """Faces of one frame, detected on the frame shrunk to ``settings.max_side`` and scaled back.

    Args:
        frame_bgr: uint8 BGR ``H×W×3``: the full frame, or (with ``full_size``) the frame already shrunk.
        full_size: ``(height, width)`` of the full frame when ``frame_bgr`` is already shrunk.
    Returns:
        float64 ``K×5``: x1, y1, x2, y2 in full-frame pixels, score.
    """
    small = frame_bgr
    full_h, full_w = full_size if full_size is not None else frame_bgr.shape[:2]
    if full_size is None:
        scale = detector_scale(frame_bgr.shape[:2], settings.max_side)
        if scale < 1.0:
            size = (max(1, round(full_w * scale)), max(1, round(full_h * scale)))
            small = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_AREA)
    kwargs = {"upsample": settings.upsample} if settings.detector == "dlib" else {"device": device}
    dets = faces.detect_faces(small, settings.detector, s3fd_weights, **kwargs)
    if len(dets) and small.shape[:2] != (full_h, full_w):
        dets = dets.copy()
        dets[:, [0, 2]] *= full_w / small.shape[1]
        dets[:, [1, 3]] *= full_h / small.shape[0]
    return dets


# ---------------------------------------------------------------------------------------------
# Tracking + smoothing
# ---------------------------------------------------------------------------------------------

def track_from_detections(dets: Sequence[np.ndarray | None], frame_size: tuple[int, int],
                          settings: TrackSettings = TrackSettings(), label: str = "clip") -> ClipTrack:
    """The clip's track from per-frame detections (None = frame not looked at, ``0×5`` = no face found).

    Args:
        dets: one entry per frame: ``K×5`` detections in full-frame pixels, or None.
        frame_size: ``(height, width)``.
        label: the clip, for the error message.
    Raises:
        NoFaceError: no face in any frame looked at.
    """
    n = len(dets)
    filled = [d if d is not None else np.zeros((0, 5)) for d in dets]
    tracks = faces.track_faces(filled, min_track=0, min_face_size=0)
    if not tracks:
        looked = sum(d is not None for d in dets)
        raise NoFaceError(f"{label}: no face found in the {looked} frame(s) the {settings.detector} detector looked "
                          f"at (of {n}); give face boxes (<id>.npy) or prepare the clip with `talkbench prepare` "
                          "(which also reports the frames without a face).")
    best = max(tracks, key=lambda t: t.n_detections)
    # the detections of the best track: frames whose box equals a detection of that frame
    detected = np.zeros(n, dtype=bool)
    for k, f in enumerate(best.frames):
        d = filled[int(f)]
        if len(d) and np.any(np.all(np.abs(d[:, :4] - best.boxes[k]) < 1e-9, axis=1)):
            detected[int(f)] = True
    idx = np.flatnonzero(detected)
    t = np.arange(n)
    raw = np.stack([np.interp(t, idx, best.boxes[np.searchsorted(best.frames, idx), k]) for k in range(4)], axis=1)
    return ClipTrack(boxes=smooth_boxes(raw, settings.smooth), raw=raw, detected=detected,
                     frame_size=(int(frame_size[0]), int(frame_size[1])), settings=settings)


def smooth_boxes(boxes: np.ndarray, kernel: int = SMOOTH) -> np.ndarray:
    """Running median (edges repeated) of centre x, centre y, width and height of boxes ``N×4``; returns ``N×4``."""
    if kernel <= 1 or len(boxes) < 2:
        return np.asarray(boxes, dtype=np.float64).copy()
    b = np.asarray(boxes, dtype=np.float64)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    cx, cy, w, h = (ndimage.median_filter(v, size=kernel, mode="nearest") for v in (cx, cy, w, h))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def face_track(source: str | Path | Iterable[np.ndarray], settings: TrackSettings = TrackSettings(), *,
               s3fd_weights: Path | None = None, device: str = "cpu", label: str | None = None,
               progress: Callable[[int, int], object] | None = None,
               max_frame_pixels: int | None = None) -> ClipTrack:
    """The face track of a clip (see the module docstring for the rule).

    Args:
        source: a video file (decoded as a stream, one frame at a time; frames indexed as
            :func:`talkbench.media.decode_clip` returns them, 25 fps) or an iterable of uint8 BGR ``H×W×3``
            frames (a ``T×H×W×3`` array; an iterator is consumed once, so the upsample-1 retry needs a sequence).
        settings: detector, detector input size, stride, smoothing.
        s3fd_weights: checkpoint, for ``detector="s3fd"``.
        label: the clip's name in messages (default: the file name).
        progress: called as ``progress(frames_detected, frames_to_detect_estimate)`` while detecting.
    Returns:
        the :class:`ClipTrack` (its ``settings`` are the ones that found the face).
    Raises:
        NoFaceError: no face found; :class:`talkbench.media.MediaError` for unreadable files.
    """
    kwargs = dict(s3fd_weights=s3fd_weights, device=device, label=label, progress=progress,
                  max_frame_pixels=max_frame_pixels)
    try:
        return _face_track(source, settings, **kwargs)
    except NoFaceError:
        retry = settings.detector == "dlib" and settings.upsample == 0 and \
            (isinstance(source, (str, Path, np.ndarray)) or isinstance(source, Sequence))
        if not retry:
            raise
        logger.info("%s: no face at upsample 0; detecting again with upsample 1", label or source)
        return _face_track(source, replace(settings, upsample=1), **kwargs)


def _face_track(source: str | Path | Iterable[np.ndarray], settings: TrackSettings = TrackSettings(), *,
               s3fd_weights: Path | None = None, device: str = "cpu", label: str | None = None,
               progress: Callable[[int, int], object] | None = None,
               max_frame_pixels: int | None = None) -> ClipTrack:
    """:func:`face_track` with one setting of ``upsample``."""
    if isinstance(source, (str, Path)):
        label = label or str(source)
        header = media.probe_video(source)
        full_size = (header.height, header.width)
        total = max(1, header.n_frames // settings.every)
        by_decoded: dict[int, np.ndarray] = {}

        def on_frame(i: int, small: np.ndarray) -> None:   # shrunk by the decoder (swscale, area filter)
            size = full_size if (small.shape[0] >= small.shape[1]) == (full_size[0] >= full_size[1]) else \
                full_size[::-1]
            by_decoded[i] = detect_downscaled(small, settings, s3fd_weights, device, full_size=size)
            if progress is not None:
                progress(len(by_decoded), total)

        timeline = media.scan_video(source, on_frame, every=settings.every, max_side=settings.max_side,
                                    max_frame_pixels=max_frame_pixels)
        seen: set[int] = set()
        dets: list[np.ndarray | None] = []
        for d in timeline.indices:   # a decoded frame repeated at 25 fps is detected once, counted once
            dets.append(by_decoded.get(d) if d not in seen else None)
            seen.add(d)
        track = track_from_detections(dets, timeline.frame_size, settings, label)
        track.indices = np.asarray(timeline.indices, dtype=np.int64)
        return track
    label = label or "clip"
    dets = []
    frame_size = None
    for t, frame in enumerate(source):
        if frame_size is None:
            frame_size = frame.shape[:2]
        dets.append(detect_downscaled(frame, settings, s3fd_weights, device) if t % settings.every == 0 else None)
        if progress is not None:
            progress(t + 1, 0)
    if frame_size is None:
        raise NoFaceError(f"{label}: no frames to track.")
    return track_from_detections(dets, frame_size, settings, label)


# ---------------------------------------------------------------------------------------------
# Face-centred squares
# ---------------------------------------------------------------------------------------------

def square_region(box: Sequence[float], scale: float = SQUARE_SCALE,
                  shift_y: float = 0.0) -> tuple[float, float, float]:
    """The face-centred square of a box: ``(cx, cy, side)``; side = ``scale`` × max(w, h), centre moved down by
    ``shift_y`` × side (0: the box centre)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    side = scale * max(x2 - x1, y2 - y1)
    return (x1 + x2) / 2, (y1 + y2) / 2 + shift_y * side, side


def face_square(frame_bgr: np.ndarray, box: Sequence[float], size: int, scale: float = SQUARE_SCALE,
                shift_y: float = 0.0, pad_value: int = PAD_VALUE) -> np.ndarray:
    """A face-centred square cut from one frame by a track box, resized to ``size×size``.

    The square (:func:`square_region`) is cut with sub-pixel accuracy: the pixels under it (plus a 1-pixel
    border; parts outside the frame are ``pad_value`` grey) are shrunk with INTER_AREA to at most twice ``size``
    when larger, then resampled to ``size×size`` by an affine warp (INTER_LINEAR, pixel-centre convention).

    Args:
        frame_bgr: uint8 BGR ``H×W×3``.
        box: x1, y1, x2, y2 in the frame's pixels.
        size: output side, pixels.
    Returns:
        uint8 BGR ``size×size×3``.
    """
    cx, cy, side = square_region(box, scale, shift_y)
    side = max(side, 1.0)
    x0, y0 = int(np.floor(cx - side / 2)) - 1, int(np.floor(cy - side / 2)) - 1
    x1, y1 = int(np.ceil(cx + side / 2)) + 1, int(np.ceil(cy + side / 2)) + 1
    h, w = frame_bgr.shape[:2]
    region = frame_bgr[max(y0, 0):max(min(y1, h), 0), max(x0, 0):max(min(x1, w), 0)]
    pads = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if region.size == 0:      # the square lies outside the frame
        region = np.full((y1 - y0, x1 - x0, 3), pad_value, np.uint8)
    elif any(pads):
        region = cv2.copyMakeBorder(region, *pads, cv2.BORDER_CONSTANT, value=(pad_value, pad_value, pad_value))
    fx = fy = 1.0
    if side > 2 * size:    # shrink first (INTER_AREA) so that the warp does not alias
        target = (max(1, round(region.shape[1] * 2 * size / side)), max(1, round(region.shape[0] * 2 * size / side)))
        fx, fy = target[0] / region.shape[1], target[1] / region.shape[0]
        region = cv2.resize(region, target, interpolation=cv2.INTER_AREA)
    zoom = size / side
    # output pixel u (centre u + 0.5) shows frame coordinate cx + (u + 0.5 - size/2) / zoom; region pixel
    # xr (centre xr + 0.5) holds frame coordinate x0 + (xr + 0.5) / fx
    m = np.array([[zoom / fx, 0.0, zoom * (x0 - cx) + size / 2 + 0.5 * zoom / fx - 0.5],
                  [0.0, zoom / fy, zoom * (y0 - cy) + size / 2 + 0.5 * zoom / fy - 0.5]])
    return cv2.warpAffine(region, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(pad_value, pad_value, pad_value))


def box_in_square(box: Sequence[float], square_box: Sequence[float], size: int, scale: float = SQUARE_SCALE,
                  shift_y: float = 0.0) -> np.ndarray:
    """``box`` (full-frame pixels) in the coordinates of the ``size×size`` square cut around ``square_box``.

    Returns:
        float64 ``4``.
    """
    cx, cy, side = square_region(square_box, scale, shift_y)
    zoom = size / side
    b = np.asarray(box[:4], dtype=np.float64)
    return np.array([(b[0] - cx) * zoom + size / 2, (b[1] - cy) * zoom + size / 2,
                     (b[2] - cx) * zoom + size / 2, (b[3] - cy) * zoom + size / 2])


def square_frames(frames: Iterable[np.ndarray], track: ClipTrack, size: int, scale: float = SQUARE_SCALE,
                  shift_y: float = 0.0, limit: int | None = None) -> np.ndarray:
    """Face-centred squares of a stream of frames by the track: uint8 ``T×size×size×3`` (``T = min(len(track),
    frames, limit)``). Only the squares are held: pass a generator (:func:`talkbench.media.iter_frames`) to
    never hold the full-size clip."""
    n = len(track) if limit is None else min(len(track), limit)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    t = 0
    for frame in frames:
        if t >= n:
            break
        out[t] = face_square(frame, track.boxes[t], size, scale, shift_y)
        t += 1
    return out[:t]


def track_in_square(track: ClipTrack, size: int, scale: float = SQUARE_SCALE, shift_y: float = 0.0) -> np.ndarray:
    """The track's boxes in the coordinates of its own face-centred squares: float64 ``N×4``."""
    return np.stack([box_in_square(b, b, size, scale, shift_y) for b in track.boxes]) if len(track) else \
        np.zeros((0, 4))


def face_centred_clip(path: str | Path, track: ClipTrack, size: int, scale: float = SQUARE_SCALE,
                      shift_y: float = 0.0, max_frame_pixels: int | None = None,
                      indices: Sequence[int] | None = None) -> media.Clip:
    """A video cut around a face track, streamed: its 25-fps frames (as :func:`talkbench.media.decode_clip` would
    give them) replaced by the face-centred squares of the track (:func:`face_square`), and its audio.

    Memory: the squares (``T×size×size×3``) and the audio; the full-size frames are decoded one at a time.

    Args:
        path: the video (any size; its frames are indexed as the track's).
        track: the clip's track (full-frame pixels of this video).
        size: side of the squares.
        indices: the file's 25-fps timeline when known (``track.indices`` for the file the track was made from);
            else read by one more pass (:func:`talkbench.media.scan_video`) for files of another rate.
    Returns:
        a :class:`talkbench.media.Clip` with ``frames`` uint8 ``T×size×size×3`` (``T = min(len(track), frames)``),
        ``fps`` 25, ``audio_int16`` (None without an audio stream), ``path`` the video.
    Raises:
        MediaError: the video cannot be read, or its frames are not the track's size.
    """
    path = Path(path)
    header = media.probe_video(path)
    if header.width and (header.height, header.width) != tuple(track.frame_size):
        raise media.MediaError(f"{path}: frames are {header.width}×{header.height} but the face track was made on "
                               f"{track.frame_size[1]}×{track.frame_size[0]} frames; one track cannot cut both. "
                               "Export the generated clip at its reference's size, or cut each side around its "
                               "own face first: `talkbench prepare GEN_DIR OUT_DIR` and `talkbench prepare REF_DIR "
                               "OUT_DIR` (without --track-from), then evaluate the prepared folders.")
    if indices is None and abs(header.source_fps - media.TARGET_FPS) > 1e-6:
        indices = media.scan_video(path, max_frame_pixels=max_frame_pixels).indices
    frames = square_frames(media.iter_frames(path, indices, max_frame_pixels=max_frame_pixels), track, size, scale,
                           shift_y)
    if len(frames) == 0:
        raise media.MediaError(f"{path}: the video stream has no decodable frames. Re-export the clip.")
    audio = media.read_wav_int16(path) if header.has_audio else None
    return media.Clip(path=path, frames=frames, fps=media.TARGET_FPS, audio_int16=audio, source_fps=header.source_fps)


# ---------------------------------------------------------------------------------------------
# Cache (run directory)
# ---------------------------------------------------------------------------------------------

def _cache_name(clip_id: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in clip_id)
    return f"{safe}-{hashlib.sha256(clip_id.encode('utf-8')).hexdigest()[:8]}.npz"


def _file_signature(path: Path) -> list[int]:
    st = Path(path).stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def cached_track(cache_dir: Path | None, clip_id: str, path: str | Path, settings: TrackSettings = TrackSettings(),
                 **kwargs) -> ClipTrack:
    """The clip's track from ``cache_dir`` when it was made from the same file with the same settings, else
    computed by :func:`face_track` and written there (atomically) as ``<clip id>-<hash>.npz`` holding
    ``boxes``, ``raw``, ``detected``, ``frame_size``, ``indices`` and ``meta`` (JSON: settings, source file signature,
    version).

    Args:
        cache_dir: e.g. ``<run dir>/tracks``; None = no cache.
        clip_id: the clip's id in its suite (names the file).
        path: the video the track is made from.
        kwargs: passed to :func:`face_track`.
    """
    path = Path(path)
    meta = {"version": CACHE_VERSION, "settings": settings.to_dict(), "source": _file_signature(path)}
    target = Path(cache_dir) / _cache_name(clip_id) if cache_dir is not None else None
    if target is not None and target.is_file():
        try:
            with np.load(target, allow_pickle=False) as z:
                if json.loads(str(z["meta"])) == meta:
                    return ClipTrack(boxes=z["boxes"], raw=z["raw"], detected=z["detected"].astype(bool),
                                     frame_size=(int(z["frame_size"][0]), int(z["frame_size"][1])), settings=settings,
                                     indices=z["indices"])
            logger.info("%s: cached face track made from another file or settings; detecting again", clip_id)
        except (OSError, ValueError, KeyError) as err:
            logger.warning("%s: unreadable cached face track %s (%s); detecting again", clip_id, target, err)
    track = face_track(path, settings, label=clip_id, **kwargs)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.getpid()}.part.npz")
        np.savez(temp, boxes=track.boxes, raw=track.raw, detected=track.detected,
                 frame_size=np.array(track.frame_size), meta=np.array(json.dumps(meta)),
                 indices=track.indices if track.indices is not None else np.arange(len(track)))
        os.replace(temp, target)
    return track


__all__ = ["CACHE_VERSION", "ClipTrack", "EVERY", "MAX_SIDE", "NoFaceError", "PAD_VALUE", "SMOOTH", "SQUARE_SCALE",
           "TrackSettings", "box_in_square", "cached_track", "detect_downscaled", "detector_scale", "face_centred_clip",
           "face_square", "face_track", "int_boxes", "smooth_boxes", "square_frames", "square_region",
           "track_from_detections", "track_in_square"]
