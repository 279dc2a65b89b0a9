"""Face detection, landmarks and face tracks, as the reference pipelines compute them.

* :func:`dlib_landmarks` — 68-point landmarks the way AV-HuBERT's ``preparation/detect_landmark.py``
  makes them (dlib HOG detector on the grey frame with one upsampling, the CNN "mmod" detector as a
  fallback, the **last** detected face kept, integer coordinates). The model files come from the
  ``face-recognition-models`` package; nothing is downloaded.
* :func:`detect_faces` / :func:`face_boxes_per_frame` — per-frame face boxes with dlib's HOG detector
  (default; no download) or S3FD (official weights, :mod:`talkbench.nets.s3fd`).
* :func:`track_faces` — syncnet_python's ``run_pipeline.py`` IoU tracking (the tracks' crops are
  :func:`talkbench.crops.syncnet.crop_track`).

All frames are uint8 BGR (what :class:`talkbench.media.Clip` holds).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

DETECTORS: tuple[str, ...] = ("dlib", "s3fd")

#: syncnet_python run_pipeline.py defaults
S3FD_CONF_THRESHOLD = 0.9
S3FD_SCALE = 0.25
TRACK_IOU_THRESHOLD = 0.5
TRACK_NUM_FAILED_DET = 25
TRACK_MIN_LENGTH = 100
TRACK_MIN_FACE_SIZE = 100


# ---------------------------------------------------------------------------------------------
# dlib models (shipped by the face-recognition-models package)
# ---------------------------------------------------------------------------------------------

def face_models_dir() -> Path:
    """Directory holding dlib's model files of the ``face-recognition-models`` package.

    Found by path: importing ``face_recognition_models`` itself needs ``pkg_resources``.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "dlib's model files come from the `face-recognition-models` package, which is not installed; "
            "install it with `pip install face-recognition-models`.")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _model_file(name: str) -> str:
    path = face_models_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall `face-recognition-models`.")
    return str(path)


@functools.lru_cache(maxsize=1)
def _hog_detector():
    import dlib  # lazy: dlib loads only to detect or mark faces (crops, so PSNR-only runs, import faces)

    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def _cnn_detector():
    import dlib  # lazy: dlib loads only to detect or mark faces (crops, so PSNR-only runs, import faces)

    return dlib.cnn_face_detection_model_v1(_model_file("mmod_human_face_detector.dat"))


@functools.lru_cache(maxsize=1)
def _shape_predictor():
    import dlib  # lazy: dlib loads only to detect or mark faces (crops, so PSNR-only runs, import faces)

    return dlib.shape_predictor(_model_file("shape_predictor_68_face_landmarks.dat"))


def _as_frames(frames_bgr: np.ndarray | Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    """Accept ``T×H×W×3`` or a sequence of ``H×W×3`` uint8 BGR frames."""
    if isinstance(frames_bgr, np.ndarray):
        if frames_bgr.ndim == 3:
            raise ValueError("Expected frames T×H×W×3 (BGR uint8), got one frame H×W×3; wrap it as frames[None].")
        if frames_bgr.ndim != 4 or frames_bgr.shape[-1] != 3:
            raise ValueError(f"Expected frames T×H×W×3 (BGR uint8), got shape {frames_bgr.shape}.")
    return frames_bgr


def _check_frame(frame_bgr: np.ndarray) -> np.ndarray:
    if not isinstance(frame_bgr, np.ndarray) or frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        shape = getattr(frame_bgr, "shape", None)
        raise ValueError(f"Expected one frame H×W×3 (BGR uint8), got shape {shape}.")
    if frame_bgr.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 frame, got {frame_bgr.dtype}; convert with .astype(np.uint8).")
    return np.ascontiguousarray(frame_bgr)


# ---------------------------------------------------------------------------------------------
# Landmarks (AV-HuBERT's official mouth-ROI protocol)
# ---------------------------------------------------------------------------------------------

def dlib_landmarks(frames_bgr: np.ndarray | Sequence[np.ndarray], upsample: int = 1,
                   cnn_fallback: bool = True) -> list[np.ndarray | None]:
    """68-point dlib landmarks per frame, as AV-HuBERT's ``detect_landmark.py`` computes them.

    Per frame: grey image (the reference converts its RGB frames with ``COLOR_RGB2GRAY``; we convert
    BGR with ``COLOR_BGR2GRAY``, the same luma), HOG detector with ``upsample`` upsamplings; when it
    finds nothing and ``cnn_fallback`` is on, the CNN (mmod) detector; the 68-point shape predictor on
    every detected face, and — as in the reference loop, which overwrites its result — the landmarks of
    the **last** face are kept.

    Args:
        frames_bgr: uint8 BGR frames ``T×H×W×3`` (or a sequence of ``H×W×3``).
        upsample: HOG upsampling count (reference: 1).
        cnn_fallback: run the CNN detector on frames where HOG finds no face (reference: yes; slow on CPU).
    Returns:
        list of T entries: float64 ``68×2`` (x, y) pixel coordinates (integer-valued, like the
        reference's int32 array), or None where no face was found.
    """
    hog = _hog_detector()
    predictor = _shape_predictor()
    out: list[np.ndarray | None] = []
    for frame in _as_frames(frames_bgr):
        gray = cv2.cvtColor(_check_frame(frame), cv2.COLOR_BGR2GRAY)
        rects = list(hog(gray, upsample))
        if not rects and cnn_fallback:
            rects = [d.rect for d in _cnn_detector()(gray)]
        coords = None
        for rect in rects:  # the reference keeps the last face's landmarks
            shape = predictor(gray, rect)
            coords = np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64)
        out.append(coords)
    return out


# ---------------------------------------------------------------------------------------------
# Face detection
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _s3fd_model(weights: str, device: str):
    from talkbench.nets.s3fd import load_s3fd  # lazy: torch + S3FD only for detector="s3fd"; PSNR runs import faces

    return load_s3fd(Path(weights), device=device)


def _check_detector(detector: str, s3fd_weights: Path | None) -> None:
    if detector not in DETECTORS:
        raise ValueError(f"Argument `detector` must be one of {DETECTORS}, but got {detector!r}.")
    if detector == "s3fd" and s3fd_weights is None:
        raise ValueError("detector='s3fd' needs `s3fd_weights` (the official sfd_face.pth or "
                         "s3fd-619a316812.pth); use detector='dlib' to run without downloaded weights.")


def detect_faces(frame_bgr: np.ndarray, detector: str = "dlib", s3fd_weights: Path | None = None, *,
                 upsample: int = 1, conf_threshold: float = S3FD_CONF_THRESHOLD, scale: float = S3FD_SCALE,
                 device: str = "cpu") -> np.ndarray:
    """Faces in one frame.

    Args:
        frame_bgr: uint8 BGR ``H×W×3``.
        detector: ``"dlib"`` (HOG, no download; ``upsample`` upsamplings of the RGB frame) or ``"s3fd"``
            (syncnet_python's settings: frame scaled by ``scale`` with INTER_LINEAR, score > ``conf_threshold``,
            NMS 0.1).
        s3fd_weights: checkpoint path, needed for ``"s3fd"``.
    Returns:
        float64 ``K×5``: x1, y1, x2, y2 (pixels of the input frame), score. dlib scores are HOG SVM
        margins (>= 0, unbounded); S3FD scores are probabilities.
    """
    _check_detector(detector, s3fd_weights)
    frame = _check_frame(frame_bgr)
    if detector == "dlib":
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        rects, scores, _ = _hog_detector().run(rgb, upsample, 0.0)
        if not rects:
            return np.zeros((0, 5))
        return np.array([[r.left(), r.top(), r.right(), r.bottom(), s] for r, s in zip(rects, scores)],
                        dtype=np.float64)
    model = _s3fd_model(str(s3fd_weights), device)
    return model.detect(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), conf_threshold=conf_threshold, scales=(scale,))


def detect_faces_per_frame(frames_bgr: np.ndarray | Sequence[np.ndarray], detector: str = "dlib",
                           s3fd_weights: Path | None = None, **kwargs) -> list[np.ndarray]:
    """:func:`detect_faces` on every frame; list of T arrays ``K_t×5``."""
    _check_detector(detector, s3fd_weights)
    return [detect_faces(f, detector, s3fd_weights, **kwargs) for f in _as_frames(frames_bgr)]


def face_boxes_per_frame(frames_bgr: np.ndarray, detector: str = "dlib", s3fd_weights: Path | None = None,
                         **kwargs) -> np.ndarray:
    """One box of the main face per frame.

    The main face of a frame is its largest detection (the speaker of a talking-head clip). Frames
    without a detection get the box linearly interpolated between the nearest detected frames, or held
    from the nearest one at the start/end of the clip. Boxes are clipped to the frame.

    Args:
        frames_bgr: uint8 BGR ``T×H×W×3``.
        detector, s3fd_weights, kwargs: as :func:`detect_faces`.
    Returns:
        int64 ``T×4``: x1, y1, x2, y2.
    Raises:
        ValueError: no frame has a face.
    """
    frames = _as_frames(frames_bgr)
    dets = detect_faces_per_frame(frames, detector, s3fd_weights, **kwargs)
    return main_face_boxes(dets, frame_size=(frames[0].shape[0], frames[0].shape[1]), detector=detector)


def main_face_boxes(dets: Sequence[np.ndarray], frame_size: tuple[int, int], detector: str = "?") -> np.ndarray:
    """Reduce per-frame detections (``K_t×5``) to one int box per frame (see :func:`face_boxes_per_frame`).

    Args:
        frame_size: (height, width), for clipping.
    """
    n = len(dets)
    found = np.zeros(n, dtype=bool)
    boxes = np.zeros((n, 4), dtype=np.float64)
    for t, d in enumerate(dets):
        if len(d):
            area = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
            boxes[t] = d[int(np.argmax(area)), :4]
            found[t] = True
    if not found.any():
        raise ValueError(f"No face found in any of the {n} frames with the {detector!r} detector; "
                         "check the video (a visible frontal face is needed) or try another detector.")
    idx = np.flatnonzero(found)
    t = np.arange(n)
    # np.interp holds the end values outside [idx[0], idx[-1]]
    filled = np.stack([np.interp(t, idx, boxes[idx, k]) for k in range(4)], axis=1)
    h, w = frame_size
    filled = np.rint(filled).astype(np.int64)
    filled[:, [0, 2]] = np.clip(filled[:, [0, 2]], 0, w)
    filled[:, [1, 3]] = np.clip(filled[:, [1, 3]], 0, h)
    return filled


# ---------------------------------------------------------------------------------------------
# Face tracks (syncnet_python run_pipeline.py)
# ---------------------------------------------------------------------------------------------

@dataclass
class FaceTrack:
    """A face track: consecutive frame indices and their (interpolated) boxes.

    Attributes:
        frames: int64 ``n`` consecutive frame indices (first..last detection).
        boxes: float64 ``n×4`` x1, y1, x2, y2, linearly interpolated between detections.
        n_detections: detections the track was built from (``<= n``).
    """

    frames: np.ndarray
    boxes: np.ndarray
    n_detections: int

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two x1,y1,x2,y2 boxes, as syncnet_python computes it (no +1 pixel convention)."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return float(inter / float(area_a + area_b - inter))


def track_faces(dets: Sequence[np.ndarray], min_track: int = TRACK_MIN_LENGTH,
                num_failed_det: int = TRACK_NUM_FAILED_DET, iou_threshold: float = TRACK_IOU_THRESHOLD,
                min_face_size: float = TRACK_MIN_FACE_SIZE, frame_offset: int = 0) -> list[FaceTrack]:
    """Greedy IoU tracking of one shot, as syncnet_python's ``track_shot``.

    Repeatedly builds a track by walking the frames in order: the first remaining face starts it; a
    face joins when it is at most ``num_failed_det`` frames after the track's last face and its IoU
    with that face is > ``iou_threshold``; faces taken are removed. A track is kept when it has
    **more than** ``min_track`` detections and its mean width or height exceeds ``min_face_size``.

    Reference quirk kept on purpose: the reference removes faces from a frame's list while iterating
    over it, so after a face is taken the next face of the same frame is skipped in that pass (it can
    still start or join a later track).

    Args:
        dets: per frame of the shot, ``K_t×5`` detections (x1, y1, x2, y2, score).
        frame_offset: index of the shot's first frame in the clip (added to the track frames).
    Returns:
        the kept tracks, in the order they were built.
    """
    remaining = [[np.asarray(row[:4], dtype=np.float64) for row in d] for d in dets]
    tracks: list[FaceTrack] = []
    while True:
        track: list[tuple[int, np.ndarray]] = []
        for f, faces in enumerate(remaining):
            i = 0
            while i < len(faces):
                face = faces[i]
                if not track:
                    track.append((f, face))
                elif f - track[-1][0] <= num_failed_det:
                    if box_iou(face, track[-1][1]) <= iou_threshold:
                        i += 1
                        continue
                    track.append((f, face))
                else:
                    break
                # taken: removed while a list iterator walks the list -> the next face is skipped
                del faces[i]
                i += 1
        if not track:
            break
        if len(track) <= min_track:
            continue
        frame_nums = np.array([f for f, _ in track], dtype=np.int64)
        det_boxes = np.stack([b for _, b in track])
        frames = np.arange(frame_nums[0], frame_nums[-1] + 1)
        boxes = np.stack([np.interp(frames, frame_nums, det_boxes[:, k]) for k in range(4)], axis=1)
        size = max(np.mean(boxes[:, 2] - boxes[:, 0]), np.mean(boxes[:, 3] - boxes[:, 1]))
        if size > min_face_size:
            tracks.append(FaceTrack(frames=frames + frame_offset, boxes=boxes, n_detections=len(track)))
    return tracks


__all__ = ["DETECTORS", "FaceTrack", "box_iou", "detect_faces", "detect_faces_per_frame", "dlib_landmarks",
           "face_boxes_per_frame", "face_models_dir", "main_face_boxes", "track_faces"]
