"""ArcFace's 5-point face alignment to 112×112, and the 68 facial landmarks the identity and LMD observers use.

:func:`norm_crop` is insightface's ``norm_crop`` (``python-package/insightface/utils/face_align.py``, commit
ffa12d315041c0505b077c7ff057ca914bb8dc7e), the alignment arcface_torch's models were trained and are evaluated
with: a least-squares similarity transform (Umeyama; ``skimage.transform.SimilarityTransform.estimate``, here
:func:`talkbench.crops.mouth.similarity_transform`) from the face's 5 points onto the fixed template
:data:`ARCFACE_DST` (eye centres, nose tip, mouth corners of a 112×112 face), then ``cv2.warpAffine`` of the frame
to 112×112 (bilinear, constant border 0).

Where the 5 points come from differs from insightface: its pipeline takes them from its own detector
(RetinaFace / SCRFD regress 5 points per face: eye *centres* (pupils), nose tip, mouth corners). talkbench takes
them from dlib's 68-point landmarks (:func:`five_points`: eye centre = mean of the six eye-contour points 36–41 /
42–47, nose tip 30, mouth corners 48 and 54), because dlib runs offline with the model files talkbench already
depends on (``face-recognition-models``) and the same landmarks serve LMD and AV-HuBERT's mouth crops, whereas
RetinaFace/SCRFD need separate weights (an ONNX file for SCRFD). The two agree on what the points mean but not
exactly on where they land (a contour mean is not a regressed pupil; dlib's 48/54 are the outer lip corners): the
aligned crops differ from insightface's by a few pixels of shift/scale, which moves CSIM a little for every
method alike; the alignment *function* is insightface's exactly (tested to ≤ 1 grey level).

:func:`face_landmarks` is the one place these observers ask for landmarks (so the face finder can be switched
there): dlib landmarks at the frame's own resolution (:func:`talkbench.faces.dlib_landmarks`, shared per clip
through :func:`talkbench.crops.mouth.landmarks`).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from talkbench.crops import ClipCache, Side
from talkbench.crops.mouth import landmarks as clip_landmarks
from talkbench.crops.mouth import similarity_transform
from talkbench.faces import dlib_landmarks

#: insightface's ``arcface_dst``: left eye, right eye (image left/right), nose tip, left and right mouth corner of
#: a 112×112 aligned face; float32 as in the reference (the transform is estimated from these float32 values).
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
ALIGNED_SIZE = 112
#: dlib 68-point indices: eye contours (image-left eye first, as ARCFACE_DST), nose tip, mouth corners.
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
NOSE_TIP = 30
MOUTH_LEFT, MOUTH_RIGHT = 48, 54


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """dlib 68 points → the 5 points of :data:`ARCFACE_DST`, float64 ``5×2`` (x, y).

    Eye centre = mean of the eye's six contour points (36–41 is the eye on the image's left), nose tip = 30, mouth
    corners = 48 (image left) and 54.
    """
    marks = np.asarray(landmarks68, dtype=np.float64)
    if marks.shape != (68, 2):
        raise ValueError(f"expected 68×2 dlib landmarks, got shape {marks.shape}.")
    return np.stack([marks[LEFT_EYE].mean(axis=0), marks[RIGHT_EYE].mean(axis=0), marks[NOSE_TIP],
                     marks[MOUTH_LEFT], marks[MOUTH_RIGHT]])


def estimate_norm(points5: np.ndarray, image_size: int = ALIGNED_SIZE) -> np.ndarray:
    """insightface ``estimate_norm``: the 2×3 similarity mapping ``points5`` onto the template for ``image_size``.

    The template is :data:`ARCFACE_DST` scaled by ``image_size / 112`` (sizes that are multiples of 112), or by
    ``image_size / 128`` and shifted right by ``8 · ratio`` (multiples of 128), as the reference.

    Args:
        points5: ``5×2`` (x, y) in frame pixels.
    Returns:
        float64 ``2×3`` affine matrix (frame → aligned crop).
    """
    points = np.asarray(points5, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"expected 5×2 landmarks, got shape {points.shape}.")
    if image_size % 112 == 0:
        ratio, shift_x = image_size / 112.0, 0.0
    elif image_size % 128 == 0:
        ratio = image_size / 128.0
        shift_x = 8.0 * ratio
    else:
        raise ValueError(f"Argument `image_size` must be a multiple of 112 or 128, but got {image_size}.")
    dst = ARCFACE_DST * np.float32(ratio)        # float32 template, as the reference computes it
    dst[:, 0] += np.float32(shift_x)
    return similarity_transform(points, dst.astype(np.float64))[:2]


def norm_crop(frame: np.ndarray, points5: np.ndarray, image_size: int = ALIGNED_SIZE) -> np.ndarray:
    """insightface ``norm_crop``: the face warped onto the ArcFace template.

    Args:
        frame: uint8 ``H×W×3`` (any channel order; returned in the same).
        points5: ``5×2`` (x, y) landmarks in the frame (:func:`five_points`).
    Returns:
        uint8 ``image_size×image_size×3``; outside the frame is 0.
    """
    matrix = estimate_norm(points5, image_size)
    return cv2.warpAffine(np.ascontiguousarray(frame), matrix, (image_size, image_size), borderValue=0.0)


def aligned_faces(frames_bgr: np.ndarray, marks: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`norm_crop` of every frame that has landmarks.

    Args:
        frames_bgr: uint8 ``T×H×W×3``.
        marks: per frame a ``68×2`` landmark array or None (no face; the frame is left out).
    Returns:
        (uint8 ``K×112×112×3`` crops, int64 ``K`` indices of the frames they come from).
    """
    if len(marks) != len(frames_bgr):
        raise ValueError(f"{len(marks)} landmark entries for {len(frames_bgr)} frames.")
    index = np.array([t for t, m in enumerate(marks) if m is not None], dtype=np.int64)
    crops = np.zeros((len(index), ALIGNED_SIZE, ALIGNED_SIZE, 3), dtype=np.uint8)
    for k, t in enumerate(index):
        crops[k] = norm_crop(frames_bgr[t], five_points(marks[t]))
    return crops, index


def face_landmarks(cache: ClipCache, frames_bgr: np.ndarray, side: Side, first_only: bool = False
                   ) -> list[np.ndarray | None]:
    """68-point landmarks for the identity and LMD observers — the one place they ask for them.

    dlib (HOG, one upsampling, CNN fallback; :func:`talkbench.faces.dlib_landmarks`) at the frame's resolution.
    All frames: shared per clip side with the other landmark users (:func:`talkbench.crops.mouth.landmarks`).
    ``first_only``: frame 0 alone (the identity reference), computed directly (one frame; not cached).

    Returns:
        per frame (one entry with ``first_only``) a float64 ``68×2`` (x, y) array, or None where no face was found.
    """
    if first_only:
        return dlib_landmarks(frames_bgr[:1])
    return clip_landmarks(cache, frames_bgr, side)


__all__ = ["ALIGNED_SIZE", "ARCFACE_DST", "aligned_faces", "estimate_norm", "face_landmarks", "five_points",
           "norm_crop"]
