"""TalkLip inference: face boxes → 96×96 crops → generator → paste back → video with the input audio.

The procedure is the reference's ``inf_test.py`` (what the paper's test-set videos were made with):

1. Frames as uint8 BGR (25 fps; other rates are converted as ``ffmpeg -r 25`` does, the rule of
   :func:`talkbench.media.decode_clip`, on the stream's timeline :func:`talkbench.media.scan_video`),
   audio as 16 kHz mono int16 (any rate/format is converted by :func:`talkbench.media.read_wav_int16`).
2. One face box per frame: given (TalkLip's bbx ``.npy``: x1, y1, x2, y2 per frame), else the clip's face track
   (:mod:`talkbench.tracks`: S3FD with official weights when given, else dlib's HOG detector, which needs no
   download, run on frames shrunk to at most 480 px on the long side, IoU-tracked and median-smoothed; the
   reference detects on every full frame and does not smooth).
3. Crops: ``cv2.resize(frame[y1:y2, x1:x2], (96, 96))`` (INTER_LINEAR on uint8; :func:`talkbench.crops.face.face_crops`,
   the crop PSNR/SSIM use), scaled by 1/255.
   Generator input = [target crop with rows 48..95 zeroed | reference crop] (6 channels, BGR).
   The reference crop is frame 0's by default (inf_test); ``reference_frame=None`` uses the same frame
   unmasked (inf_demo); any other index uses that frame.
4. Audio: stacked log-fbank (104-d at 25 Hz), per-row layer norm, then aligned to the frame count
   (inf_test: a longer feature sequence is cut evenly at both ends, a shorter one zero-padded at the end;
   ``align="audio"`` instead repeats frames to the audio length, as inf_demo does).
5. The AV-HuBERT audio encoder runs once over the whole utterance; the U-Net runs in batches of frames.
6. Paste back: each predicted face × 255 is resized to its box (bilinear, antialiased, as torchvision's
   ``Resize``), written over the **whole** box, and the frame is truncated to uint8 (no rounding). This hard
   paste is the default (parity with the reference); ``paste="feather"`` blends the face into the frame with a
   mask that ramps from 0 at the box edge to 1 at ``feather`` × the box's shorter side inside it (identical to the
   hard paste away from the edge).
7. The video is written at 25 fps with the input audio muxed (PyAV; h264 or lossless ffv1).

Memory: :func:`generate_video` never holds the clip: the video is streamed twice (:func:`talkbench.media.iter_frames`):
once for the face track (when no boxes are given), once to crop, generate, paste back and encode a batch of frames
at a time — at most ``batch_size`` full-size frames (and never more than :data:`MAX_HELD_BYTES` of them) are held,
whatever the clip's length. The audio embedding of the whole utterance is computed first, from the audio alone.

Differences from the reference, on purpose: boxes are checked by :func:`talkbench.boxes.check_boxes`
(whole, finite, non-negative, non-empty) and clipped to the frame on both axes (the reference clips x2 and y2 by
the frame *height* when cropping and would wrap negative coordinates; identical on square frames such as LRS2's
160×160), and the audio is read through FFmpeg's resampler, so inputs that
are not 16 kHz mono (which the reference refuses) are converted first (logged).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from talkbench import media, suites, tracks
from talkbench import weights as weights_mod
from talkbench.audio_features import avhubert_audio_features
from talkbench.boxes import BoxError, check_boxes
from talkbench.crops.face import face_crops
from talkbench.devices import resolve_device
from talkbench.faces import DETECTORS
from talkbench.nets.talklip import fuse_for_inference, load_talklip_generator

logger = logging.getLogger(__name__)

FPS = 25.0
SAMPLE_RATE = 16000
ALIGN_MODES = ("video", "audio")
PASTE_MODES = ("hard", "feather")
#: Default width of the feathered paste's ramp, as a fraction of the box's shorter side.
FEATHER = 0.15

#: Most bytes of full-size frames :func:`generate_video` holds at once (the batch is made smaller for large frames).
MAX_HELD_BYTES = 96 * 2**20

#: ``progress(stage, done, total)`` callback of :func:`generate_video`: stages ``faces`` (detection; total =
#: the header's frame estimate, 0 when unknown) and ``generate`` (frames generated, pasted and written; exact).
StageProgress = Callable[[str, int, int], None]


class GenerateError(ValueError):
    """Generation cannot proceed with these inputs; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------------
# Generator inputs and paste-back (boxes and crops: talkbench.crops)
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenerateConfig:
    """How ``talkbench generate`` makes its videos (single clip or a suite), like ``EvaluateConfig`` for evaluate.

    Attributes:
        checkpoint: card name or file of a TalkLip generator (ignored when a loaded generator is passed).
        reference_frame: identity frame index (0 = inf_test) or None (each frame unmasked, inf_demo).
        codec: ``h264`` (.mp4/.mov/.mkv) or ``ffv1`` (lossless, .mkv/.avi).
        crf: libx264 quality (h264 only; None = 23).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        detector: face detector when no boxes are given: ``dlib`` (no download) or ``s3fd``.
        s3fd_weights: the S3FD checkpoint (``detector="s3fd"``).
        align: ``video`` (inf_test) or ``audio`` (frames repeated to the speech's length, inf_demo).
        batch_size: frames per generator call.
        weights: card name -> local checkpoint (``--weights NAME=PATH``).
        paste: ``hard`` (the reference's paste over the whole box, default, for parity) or ``feather``.
        feather: ramp width of the feathered paste, fraction of the box's shorter side (0 < feather <= 0.5).
        detect_max_side: long side of the detector's input in pixels (frames are shrunk to it, never enlarged).
        detect_every: detect faces on every n-th frame, interpolate between (1 = every frame).
        smooth: running-median length of the face track's boxes, frames (odd; 1 = no smoothing).
    """

    checkpoint: str | Path = "talklip-gc"
    reference_frame: int | None = 0
    codec: str = "h264"
    crf: int | None = None
    device: str = "cpu"
    detector: str = "dlib"
    s3fd_weights: Path | None = None
    align: str = "video"
    batch_size: int = 32
    weights: Mapping[str, Path] = field(default_factory=dict)
    paste: str = "hard"
    feather: float = FEATHER
    detect_max_side: int = tracks.MAX_SIDE
    detect_every: int = tracks.EVERY
    smooth: int = tracks.SMOOTH

    def track_settings(self) -> tracks.TrackSettings:
        """The face-track settings of clips without boxes (:class:`talkbench.tracks.TrackSettings`).

        Raises:
            GenerateError: a setting out of range (the message names the option).
        """
        try:
            return tracks.TrackSettings(detector=self.detector, max_side=self.detect_max_side,
                                        every=self.detect_every, smooth=self.smooth)
        except ValueError as err:
            raise GenerateError(f"--detect-max-side {self.detect_max_side}, --detect-every {self.detect_every}, "
                                f"--smooth {self.smooth}: {err}") from None

    def check(self, needs_detector: bool = True) -> None:
        """Refuse bad options before anything is loaded or decoded (:func:`check_options`, the device).

        Raises:
            GenerateError: bad options; ValueError: an unusable device.
        """
        check_options(self.reference_frame, self.batch_size, self.align, self.detector if needs_detector else None,
                      self.s3fd_weights)
        check_paste(self.paste, self.feather)
        if needs_detector:
            self.track_settings()
        resolve_device(self.device)


def generator_inputs(crops: np.ndarray, reference_crops: np.ndarray) -> Tensor:
    """The 6-channel generator input ``N×6×96×96`` float32 in [0, 1].

    Args:
        crops: uint8 ``N×96×96×3`` target crops; their lower half (rows 48..95) is zeroed.
        reference_crops: uint8 ``N×96×96×3`` (or one ``96×96×3`` crop for all) identity crops.
    """
    target = torch.from_numpy(np.ascontiguousarray(crops)).float().div_(255.0).permute(0, 3, 1, 2)
    ref = np.asarray(reference_crops)
    if ref.ndim == 3:
        ref = np.broadcast_to(ref, crops.shape)
    ref_t = torch.from_numpy(np.ascontiguousarray(ref)).float().div_(255.0).permute(0, 3, 1, 2)
    target = target.clone()
    target[:, :, target.shape[2] // 2:] = 0.0
    return torch.cat([target, ref_t], dim=1).contiguous()


def resize_faces(faces: Tensor, height: int, width: int) -> Tensor:
    """Faces ``N×3×96×96`` in [0, 1] → ``N×3×height×width`` pixel values (×255), as torchvision ``Resize``.

    Bilinear, half-pixel centres, antialiased when shrinking (torchvision's default for tensors);
    differentiable.
    """
    x = faces * 255.0
    if (height, width) == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def feather_mask(height: int, width: int, feather: float = FEATHER) -> np.ndarray:
    """Blend weights of the feathered paste for one box: float32 ``height×width`` in [0, 1].

    The weight of a pixel is a smoothstep of its distance to the nearest box edge (pixel centres), 0 on the edge,
    reaching 1 at ``ramp = max(1, feather × min(height, width))`` pixels inside the box; the interior is exactly 1.
    """
    ramp = max(1.0, feather * min(height, width))
    ys = np.minimum(np.arange(height) + 0.5, height - np.arange(height) - 0.5)
    xs = np.minimum(np.arange(width) + 0.5, width - np.arange(width) - 0.5)
    distance = np.minimum(ys[:, None], xs[None, :]) - 0.5          # 0 for the outermost pixels
    t = np.clip(distance / ramp, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def check_paste(paste: str, feather: float = FEATHER) -> None:
    """Refuse an unknown paste mode or a feather width outside (0, 0.5].

    Raises:
        GenerateError: the message names the option and its valid values.
    """
    if paste not in PASTE_MODES:
        raise GenerateError(f"--paste {paste!r}: use hard (the reference's paste over the whole box, default) or "
                            "feather (the face blended in near the box edge).")
    if not 0.0 < float(feather) <= 0.5:
        raise GenerateError(f"--feather {feather}: give the ramp width as a fraction of the box's shorter side, "
                            "above 0 and at most 0.5 (default 0.15).")


def paste_faces(frames: np.ndarray, boxes: np.ndarray, faces: Tensor, frame_index: Sequence[int] | None = None,
                *, paste: str = "hard", feather: float = FEATHER) -> np.ndarray:
    """Write generated faces back into their frames (reference ``emb_roi2im`` + ``astype(uint8)``).

    Args:
        frames: uint8 ``T×H×W×3`` BGR; not modified.
        boxes: int ``T×4`` boxes of all frames.
        faces: ``N×3×96×96`` in [0, 1], BGR.
        frame_index: the frame of each face (default: 0..N-1).
        paste: ``hard`` (the reference: the resized face replaces the whole box) or ``feather`` (blended by
            :func:`feather_mask`: the frame shows through near the box edge; where the mask is 1, the same
            pixels as ``hard``).
        feather: ramp width of ``feather``, fraction of the box's shorter side.
    Returns:
        uint8 ``T×H×W×3``: a copy with each box replaced by its resized face, truncated (not rounded).
    """
    check_paste(paste, feather)
    out = frames.copy()
    index = np.arange(len(faces)) if frame_index is None else np.asarray(frame_index)
    faces = faces.detach().float().cpu()
    sizes = (boxes[index, 3] - boxes[index, 1]) * 100000 + (boxes[index, 2] - boxes[index, 0])
    for size in np.unique(sizes):      # one batched resize per box size
        group = np.flatnonzero(sizes == size)
        h, w = int(size // 100000), int(size % 100000)
        pixels = resize_faces(faces[torch.from_numpy(group)], h, w).permute(0, 2, 3, 1)
        if paste == "feather":
            mask = torch.from_numpy(feather_mask(h, w, feather))[None, :, :, None]
            under = torch.from_numpy(np.stack([frames[index[g], boxes[index[g], 1]:boxes[index[g], 3],
                                                      boxes[index[g], 0]:boxes[index[g], 2]] for g in group]))
            pixels = under.float() * (1.0 - mask) + pixels * mask        # mask 1: the face's value, exactly
        pixels = pixels.to(torch.uint8).numpy()       # float -> uint8 truncates, as numpy's astype
        for j, g in enumerate(group):
            x1, y1, x2, y2 = boxes[index[g]]
            out[index[g], y1:y2, x1:x2] = pixels[j]
    return out


# ----------------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------------

def align_audio_features(features: np.ndarray, n_frames: int) -> np.ndarray:
    """inf_test's ``audio_visual_align``: cut a longer sequence evenly at both ends, zero-pad a shorter one.

    Args:
        features: ``T'×104`` (already layer-normed).
    Returns:
        ``n_frames×104``.
    """
    diff = len(features) - n_frames
    if diff < 0:
        return np.concatenate([features, np.zeros((-diff, features.shape[1]), dtype=features.dtype)])
    if diff > 0:
        left = diff // 2
        return features[left:left + n_frames]
    return features


def repeat_frames_to_audio(n_frames: int, n_audio: int) -> np.ndarray:
    """inf_demo's ``audio_visual_pad``: frame index per audio step (each frame repeated, then truncated).

    When the audio is longer, every frame is repeated ``ceil(n_audio / n_frames)`` times; the result is
    cut to ``n_audio`` entries (so a shorter audio drops the last frames).
    """
    repeat = -(-n_audio // n_frames) if n_audio > n_frames else 1
    return np.repeat(np.arange(n_frames), repeat)[:n_audio]


# ----------------------------------------------------------------------------------------------------
# Checks done before any heavy work (model loading, decoding, face detection)
# ----------------------------------------------------------------------------------------------------

def check_options(reference_frame: int | None = 0, batch_size: int = 32, align: str = "video",
                  detector: str | None = None, s3fd_weights: str | Path | None = None) -> None:
    """Refuse option values that would fail (or silently do something else) only after the compute.

    Args:
        reference_frame: a frame index >= 0 (its upper bound is checked by :func:`synthesize` once the clip's
            length is known), or None (each frame's own crop).
        batch_size: frames per generator call, >= 1.
        align: one of :data:`ALIGN_MODES`.
        detector: ``dlib`` or ``s3fd`` (the latter needs ``s3fd_weights``); None = not checked.
    Raises:
        GenerateError: the message names the option and its valid values.
    """
    if reference_frame is not None:
        if isinstance(reference_frame, bool) or not isinstance(reference_frame, (int, np.integer)):
            raise GenerateError(f"--reference-frame takes a frame index (0, 1, ...) or 'same', "
                                f"got {reference_frame!r}.")
        if reference_frame < 0:
            raise GenerateError(f"--reference-frame {reference_frame}: frame indexes run from 0 to the clip's frame "
                                "count - 1 (negative indexes are not counted from the end); give 0 or more, or "
                                "'same'.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise GenerateError(f"--batch-size {batch_size}: give a positive number of frames per generator call "
                            "(default 32; smaller uses less memory).")
    if align not in ALIGN_MODES:
        raise GenerateError(f"--align {align!r}: use one of {', '.join(ALIGN_MODES)}.")
    if detector is not None:
        if detector not in DETECTORS:
            raise GenerateError(f"--detector {detector!r}: use one of {', '.join(DETECTORS)} (dlib needs no "
                                "download; s3fd needs --weights s3fd=PATH).")
        if detector == "s3fd" and s3fd_weights is None:
            raise GenerateError("--detector s3fd needs the S3FD weights (--weights s3fd=PATH); use --detector dlib "
                                "to run without them, or pass --boxes.")


def codec_extensions(codec: str) -> tuple[str, ...]:
    """The file extensions :func:`talkbench.media.write_clip` writes ``codec`` to (e.g. ffv1: .mkv, .avi).

    Raises:
        GenerateError: an unknown codec.
    """
    table: dict[str, tuple[str, ...]] = media._CODEC_EXTENSIONS   # media has no public accessor yet
    if codec not in table:
        raise GenerateError(f"--codec {codec!r}: use one of {', '.join(table)}.")
    return tuple(table[codec])


def _check_crf(codec: str, crf: int | None) -> None:
    if crf is None:
        return
    if codec != "h264":
        raise GenerateError(f"--crf applies to h264 only ({codec} is lossless); leave it out.")
    if not 0 <= crf <= 51:
        raise GenerateError(f"--crf {crf}: libx264's CRF runs from 0 (lossless) to 51; the default is 23.")


def _check_writable_parent(path: Path, what: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder we can write into."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise GenerateError(f"{path}: cannot write the {what} there: {parent} is a file, not a folder; choose "
                            "another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GenerateError(f"{path}: cannot write the {what} there: no write permission in {parent}; choose "
                            "another path.")


def check_output_file(out: str | Path, codec: str = "h264", crf: int | None = None) -> Path:
    """Check a single-clip output path before any work: not a folder, an extension the codec is written to,
    a valid ``crf``, and a writable folder.

    Returns:
        ``out`` as a Path.
    Raises:
        GenerateError: the message names the path and the fix.
    """
    out = Path(out)
    extensions = codec_extensions(codec)
    if out.is_dir():
        raise GenerateError(f"--out {out} is a folder; give the output video's file name (e.g. {out / 'out'}"
                            f"{extensions[0]}), or use --reference/--suite to generate a whole folder.")
    if out.suffix.lower() not in extensions:
        raise GenerateError(f"--out {out}: codec {codec} is written to {', '.join(extensions)} files; change the "
                            f"extension (e.g. {out.with_suffix(extensions[0]).name}) or the --codec.")
    _check_crf(codec, crf)
    _check_writable_parent(out, "video")
    return out


def check_output_dir(out_dir: str | Path, codec: str = "h264", crf: int | None = None) -> Path:
    """Check the batch form's output folder before any work: not an existing file, a known codec, a valid
    ``crf``, and a writable location.

    Returns:
        ``out_dir`` as a Path.
    Raises:
        GenerateError: the message names the path and the fix.
    """
    out_dir = Path(out_dir)
    codec_extensions(codec)
    if out_dir.exists() and not out_dir.is_dir():
        raise GenerateError(f"--out {out_dir} is an existing file; the batch form (--reference/--suite) writes a "
                            "folder of clips: give a folder path.")
    _check_crf(codec, crf)
    if out_dir.is_dir():
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise GenerateError(f"--out {out_dir}: no write permission in this folder; choose another one.")
    else:
        _check_writable_parent(out_dir, "output folder")
    return out_dir


def _check_input_file(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "not found"
        raise GenerateError(f"{path}: {what} {state}; {fix}")


def remove_stale_parts(targets: Iterable[str | Path]) -> int:
    """Delete the hidden partial files an interrupted write left beside ``targets``.

    :func:`talkbench.media.write_clip` writes ``.<name>.<random>.part`` in the target's folder and renames it
    when complete; a killed run leaves that file behind. Only files of exactly this pattern, beside one of
    ``targets``, are removed (do not run two batch generations into the same folder at once: one would
    delete the other's file in progress).

    Returns:
        The number of files removed.
    """
    removed = 0
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        target = Path(target)
        by_folder.setdefault(target.parent, set()).add(target.name)
    for folder, names in by_folder.items():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if not (entry.name.startswith(".") and entry.name.endswith(".part")):
                continue
            name, _, random_part = entry.name[1:-len(".part")].rpartition(".")
            if name not in names or not random_part or not entry.is_file():
                continue
            try:
                entry.unlink()
            except FileNotFoundError:      # gone meanwhile
                continue
            removed += 1
            logger.debug("removed stale partial file %s", entry)
    return removed


# ----------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def audio_embedding(generator: torch.nn.Module, audio_int16: np.ndarray, n_frames: int, align: str = "video",
                    device: str | torch.device = "cpu") -> tuple[Tensor, np.ndarray]:
    """Step 4-5's audio side: the generator's audio embedding per output frame, and which input frame each shows.

    Returns:
        (``T_out×D`` embedding on ``device``, int64 ``T_out`` input frame index per output frame: ``0..n-1`` for
        ``align="video"``, frames repeated to the speech's length for ``"audio"``).
    """
    features = avhubert_audio_features(np.asarray(audio_int16))
    if align == "video":
        features = align_audio_features(features, n_frames)
        order = np.arange(n_frames)
    else:
        order = repeat_frames_to_audio(n_frames, len(features))
    audio = torch.from_numpy(np.ascontiguousarray(features.T))[None].to(device)          # 1×104×T
    return generator.encode_audio(audio)[0], order                                       # T×D


@torch.no_grad()
def decode_batch(generator: torch.nn.Module, crops: np.ndarray, reference: np.ndarray | None, embedding: Tensor,
                 device: str | torch.device = "cpu") -> Tensor:
    """One U-Net call: faces ``B×3×96×96`` float32 in [0, 1] (CPU) for crops ``B×96×96×3`` uint8, the identity
    crop ``96×96×3`` (None: each crop unmasked, inf_demo) and the embedding rows ``B×D`` of those frames."""
    inputs = generator_inputs(crops, reference if reference is not None else crops).to(device)
    return generator.decode_faces(inputs, embedding).float().cpu()


@torch.no_grad()
def generate_faces(generator: torch.nn.Module, crops: np.ndarray, audio_int16: np.ndarray,
                   reference_frame: int | None = 0, batch_size: int = 32, align: str = "video",
                   device: str | torch.device = "cpu", progress: Callable[[int, int], None] | None = None,
                   ) -> tuple[Tensor, np.ndarray]:
    """The generator's faces for a clip's 96×96 crops (steps 3-5 of the module docstring), without frames.

    Args:
        generator: a :class:`talkbench.nets.talklip.TalkLipGenerator` in eval mode on ``device``.
        crops: uint8 ``T×96×96×3`` BGR face crops of the clip's frames (:func:`talkbench.crops.face.face_crops`).
        audio_int16: 16 kHz mono samples.
        reference_frame, batch_size, align, device, progress: as :func:`synthesize`.
    Returns:
        (float32 faces ``T_out×3×96×96`` in [0, 1] on the CPU, int64 ``T_out`` index of the input frame each
        output frame shows: ``0..T-1`` for ``align="video"``, frames repeated for ``"audio"``).
    Raises:
        GenerateError: as :func:`synthesize`.
    """
    check_options(reference_frame=reference_frame, batch_size=batch_size, align=align)
    n = len(crops)
    if reference_frame is not None and reference_frame >= n:
        raise GenerateError(f"--reference-frame {reference_frame} is outside the clip's {n} frames; give an index "
                            f"within 0..{n - 1}, or 'same'.")
    embedding, order = audio_embedding(generator, audio_int16, n, align, device)
    reference = crops[reference_frame] if reference_frame is not None else None
    faces = []
    total = len(order)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        faces.append(decode_batch(generator, crops[order[start:stop]], reference, embedding[start:stop], device))
        if progress is not None:
            progress(stop, total)
    return torch.cat(faces), order


def synthesize(generator: torch.nn.Module, frames: np.ndarray, boxes: np.ndarray, audio_int16: np.ndarray,
               reference_frame: int | None = 0, batch_size: int = 32, align: str = "video",
               device: str | torch.device = "cpu", progress: Callable[[int, int], None] | None = None,
               *, paste: str = "hard", feather: float = FEATHER) -> tuple[np.ndarray, np.ndarray]:
    """Generate a lip-synced clip (frames only) from frames held in memory (see :func:`generate_video` for files).

    Args:
        generator: a :class:`talkbench.nets.talklip.TalkLipGenerator` in eval mode on ``device``.
        frames: uint8 ``T×H×W×3`` BGR at 25 fps.
        boxes: int ``T×4`` face boxes (see :func:`talkbench.boxes.check_boxes`).
        audio_int16: 16 kHz mono samples.
        reference_frame: frame whose crop is the identity input for every frame (default 0, inf_test);
            None = each frame's own unmasked crop (inf_demo).
        batch_size: frames per U-Net call.
        align: ``"video"`` (output has the video's length; audio features cut/padded, inf_test) or
            ``"audio"`` (frames repeated to the audio's length, inf_demo).
        progress: called with (frames done, total).
        paste, feather: as :func:`paste_faces`.
    Returns:
        (uint8 frames ``T_out×H×W×3``, the boxes of those frames ``T_out×4``).
    Raises:
        GenerateError: a negative or too large ``reference_frame``, ``batch_size`` < 1, an unknown ``align``.
    """
    check_options(reference_frame=reference_frame, batch_size=batch_size, align=align)
    check_paste(paste, feather)
    if reference_frame is not None and reference_frame >= len(frames):
        raise GenerateError(f"--reference-frame {reference_frame} is outside the clip's {len(frames)} frames; give "
                            f"an index within 0..{len(frames) - 1}, or 'same'.")
    crops = face_crops(frames, boxes)
    faces, order = generate_faces(generator, crops, audio_int16, reference_frame, batch_size, align, device, progress)
    if align == "audio":
        frames, boxes = frames[order], boxes[order]
    return paste_faces(frames, boxes, faces, paste=paste, feather=feather), boxes


def load_generator(checkpoint: str | Path, weights: dict[str, Path] | None = None,
                   device: str | torch.device = "cpu", fuse: bool = True) -> tuple[torch.nn.Module, Path]:
    """A generator from a card name (``talklip-g``, ...) or a file path; returns (model, file).

    ``fuse``: fold BatchNorm into the convolutions and use channels-last tensors (inference only; same
    output up to ~1e-6).
    """
    path = Path(checkpoint)
    if not path.is_file():
        name = str(checkpoint)
        if os.sep in name or name.endswith((".pth", ".pt", ".ckpt")):
            raise GenerateError(f"{path}: checkpoint file not found; pass an existing file or a card name "
                                "such as talklip-g or talklip-gc.")
        path = weights_mod.resolve(name, weights)
    model = load_talklip_generator(path, device=device)
    return (fuse_for_inference(model, inplace=True) if fuse else model), path


def face_boxes(frames: np.ndarray, boxes_path: Path | None = None, detector: str = "dlib",
               s3fd_weights: Path | None = None, *, settings: tracks.TrackSettings | None = None,
               device: str = "cpu", progress: Callable[[int, int], object] | None = None) -> np.ndarray:
    """Per-frame boxes: from a TalkLip bbx ``.npy`` if given, else the frames' face track (:mod:`talkbench.tracks`).

    Args:
        frames: uint8 ``T×H×W×3`` BGR.
        boxes_path: a ``T×4`` ``.npy`` of x1, y1, x2, y2 per frame, or None (detect).
        detector, s3fd_weights: the face detector (``settings.detector`` wins when ``settings`` is given).
        settings: detector input size, stride and smoothing (default: :class:`talkbench.tracks.TrackSettings`).
        progress: called as ``progress(frames_done, total)`` while detecting.
    Returns:
        int64 ``T×4`` checked by :func:`talkbench.boxes.check_boxes` and clipped to the frame.
    Raises:
        GenerateError: the boxes file does not exist, no face was found, or :func:`check_boxes` refuses the boxes
            (its message, which names the file).
    """
    size = frames.shape[1:3]
    if boxes_path is not None:
        boxes_path = Path(boxes_path)
        if not boxes_path.is_file():
            raise GenerateError(f"{boxes_path}: boxes file not found (expected a T×4 .npy of x1, y1, x2, y2).")
        boxes, source = np.load(boxes_path), str(boxes_path)
    else:
        settings = settings or tracks.TrackSettings(detector=detector)
        logger.info("detecting faces in %d frames with %s", len(frames), settings.detector)
        total = len(frames)
        try:
            track = tracks.face_track(frames, settings, s3fd_weights=s3fd_weights, device=device,
                                      progress=None if progress is None else lambda done, _: progress(done, total))
        except tracks.NoFaceError as err:
            raise GenerateError(str(err)) from None
        boxes, source = track.int_boxes(), f"{settings.detector} face track"
    try:
        return check_boxes(boxes, len(frames), size, source)
    except BoxError as err:
        raise GenerateError(str(err)) from None


def read_audio(path: Path) -> np.ndarray:
    """16 kHz mono int16 samples of any audio (or video) file; logs when a conversion happens."""
    try:
        with media.open_input(path) as container:
            if container.streams.audio:
                stream = container.streams.audio[0]
                if stream.rate != SAMPLE_RATE or stream.channels != 1:
                    logger.info("%s: audio is %d Hz, %d channel(s); converting to 16 kHz mono (the reference "
                                "accepts only 16 kHz mono)", path, stream.rate, stream.channels)
    except media.MediaError:  # read_wav_int16 below reports unreadable files with the same clear message
        pass
    return media.read_wav_int16(path)


def generate_video(video: str | Path, out: str | Path, audio: str | Path | None = None,
                   boxes: str | Path | None = None, config: GenerateConfig = GenerateConfig(),
                   generator: torch.nn.Module | None = None, *, save_boxes: str | Path | None = None,
                   progress: StageProgress | None = None) -> Path:
    """``talkbench generate``: make ``out`` from a face video and a speech track.

    The video is streamed, never held (module docstring, "Memory"): one pass finds the face track (or reads the
    timeline when boxes are given), one crops, generates, pastes back and encodes a batch of frames at a time.

    Args:
        video: the face video (any frame rate; converted to 25 fps as :func:`talkbench.media.decode_clip` does).
        out: output video path (written to a temporary name, then renamed).
        audio: the driving speech (any audio or video file; converted to 16 kHz mono); default: the
            video's own audio track.
        boxes: TalkLip bbx ``.npy`` (T×4 x1, y1, x2, y2); default: the video's face track (``config.detector``
            on frames shrunk to ``config.detect_max_side``, smoothed over ``config.smooth`` frames).
        config: the generator and how frames are made and written (:class:`GenerateConfig`).
        generator: an already loaded generator (then ``config.checkpoint`` is not loaded again).
        save_boxes: write the boxes used (int64 ``T×4`` per 25-fps frame of ``video``, the format ``boxes`` reads)
            to this ``.npy`` file.
        progress: ``progress(stage, done, total)`` (:data:`StageProgress`).
    Returns:
        The written path.
    Raises:
        GenerateError: bad options, output path or inputs — checked before the model is loaded and the video
            decoded (see :func:`check_options`, :func:`check_output_file`); no face found.
        ValueError: an unusable ``device`` (:func:`talkbench.devices.resolve_device`), an undecodable file.
        talkbench.weights.WeightsError: the checkpoint card's file is missing and cannot be downloaded.
    """
    video, out = Path(video), Path(out)
    config.check(needs_detector=boxes is None)
    check_output_file(out, config.codec, config.crf)
    if save_boxes is not None:
        save_boxes = check_boxes_output(save_boxes)
    _check_input_file(video, "face video", "pass an existing video with --video.")
    if audio is not None:
        _check_input_file(Path(audio), "speech file", "pass an existing audio or video file with --audio.")
    if boxes is not None:
        _check_input_file(Path(boxes), "boxes file", "pass a T×4 .npy of x1, y1, x2, y2 per frame with --boxes, or "
                                                     "leave it out to detect faces.")
    if generator is None:
        generator, _ = load_generator(config.checkpoint, dict(config.weights), config.device)
    header = media.probe_video(video)
    if abs(header.source_fps - FPS) > 1e-3:
        logger.info("%s: %.3f fps converted to 25 fps (the reference accepts only 25 fps)", video, header.source_fps)
    if audio is not None:
        samples = read_audio(Path(audio))
    else:
        if not header.has_audio:
            raise GenerateError(f"{video}: no audio track; pass the speech with --audio.")
        samples = media.read_wav_int16(video)
    if len(samples) < 400:
        raise GenerateError(f"{audio or video}: the audio is shorter than one 25 ms window; give a longer speech.")

    def stage(name: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, total: progress(name, done, total))

    if boxes is None:
        try:
            track = tracks.face_track(video, config.track_settings(), s3fd_weights=config.s3fd_weights,
                                      device=config.device, progress=stage("faces"))
            indices = list(track.indices)
        except tracks.NoFaceError as err:
            raise GenerateError(str(err)) from None
        frame_size = track.frame_size
        box_array = check_boxes(track.int_boxes(), len(indices), frame_size, f"{video}: {config.detector} face track")
        logger.info("%s: face track over %d frames, %.0f%% detected", video, len(indices),
                    100 * track.detected_fraction)
    else:
        timeline = media.scan_video(video)
        indices, frame_size = list(timeline.indices), timeline.frame_size
        try:
            box_array = check_boxes(np.load(boxes), len(indices), frame_size, str(boxes))
        except BoxError as err:
            raise GenerateError(str(err)) from None
    if save_boxes is not None:
        save_boxes.parent.mkdir(parents=True, exist_ok=True)
        np.save(save_boxes, box_array)
        logger.info("wrote the face boxes to %s", save_boxes)
    n = len(indices)
    if config.reference_frame is not None and config.reference_frame >= n:
        raise GenerateError(f"--reference-frame {config.reference_frame} is outside the clip's {n} frames; give an "
                            f"index within 0..{n - 1}, or 'same'.")
    with torch.no_grad():
        embedding, order = audio_embedding(generator, samples, n, config.align, config.device)
    reference = None
    if config.reference_frame is not None:
        k = config.reference_frame
        for frame in media.iter_frames(video, [indices[k]]):
            reference = face_crops(frame[None], box_array[k:k + 1], source=str(boxes or video))[0]
    total = len(order)
    out_indices = [indices[j] for j in order]
    height, width = frame_size
    chunk = max(1, min(config.batch_size, MAX_HELD_BYTES // (height * width * 3)))
    held: list[np.ndarray] = []          # at most `chunk` full frames at a time

    def flush(stop: int, writer: media.StreamWriter) -> None:
        start = stop - len(held)
        js = order[start:stop]
        crops = np.stack([face_crops(f[None], box_array[j:j + 1], source=str(boxes or video))[0]
                          for f, j in zip(held, js)])
        faces = decode_batch(generator, crops, reference, embedding[start:stop], config.device)
        for i, (frame, j) in enumerate(zip(held, js)):
            writer.write(paste_faces(frame[None], box_array[j:j + 1], faces[i:i + 1], paste=config.paste,
                                     feather=config.feather)[0])
        held.clear()
        if progress is not None:
            progress("generate", stop, total)

    with media.StreamWriter(out, height, width, samples, fps=FPS, codec=config.codec, crf=config.crf) as writer:
        for k, frame in enumerate(media.iter_frames(video, out_indices)):
            held.append(frame)
            if len(held) == chunk or k + 1 == total:
                flush(k + 1, writer)
    logger.info("wrote %s (%d frames)", out, total)
    return out


def check_boxes_output(path: str | Path) -> Path:
    """Check a ``--save-boxes`` file path before any work: a ``.npy`` name in a writable folder.

    Raises:
        GenerateError: the message names the path and the fix.
    """
    path = Path(path)
    if path.is_dir() or path.suffix.lower() != ".npy":
        raise GenerateError(f"--save-boxes {path}: give a .npy file name (e.g. {path.with_suffix('.npy').name}); "
                            "the boxes are saved as a T×4 array, the format --boxes reads.")
    _check_writable_parent(path, "face boxes")
    return path


# ----------------------------------------------------------------------------------------------------
# Batch form over a suite
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenerationJob:
    """One clip of a batch run: its id (relative path without extension) and inputs."""

    clip_id: str
    video: Path
    audio: Path | None = None
    boxes: Path | None = None


@dataclass
class BatchResult:
    """What :func:`generate_suite` did: written, skipped (already complete) and failed clip ids."""

    written: list[str]
    skipped: list[str]
    failed: dict[str, str]


def suite_jobs(reference: Path, suite: str = "auto", filelist: Path | None = None,
               boxes_dir: Path | None = None) -> list[GenerationJob]:
    """Jobs for every reference clip of a suite (its own audio drives it, as TalkLip's test set).

    Uses :func:`talkbench.suites.load_suite` (LRS2, LRW, TalkLip filelist, folder layouts); clip ids
    keep the suite's relative paths so that ``talkbench evaluate`` pairs the outputs with the references.
    """
    # the reference folder stands in for the generated one: every reference clip becomes a pair
    found = suites.load_suite(suite, reference, reference, filelist, boxes_dir=boxes_dir)
    jobs = [GenerationJob(p.clip_id, Path(p.reference), None, p.boxes) for p in found.pairs if p.reference is not None]
    missing = [p.clip_id for p in found.pairs if p.reference is None]
    if missing:
        logger.warning("%d listed clip(s) have no reference video (first: %s)", len(missing), missing[0])
    return jobs


def output_path(out_dir: Path, clip_id: str, codec: str = "h264") -> Path:
    """Where a clip's output goes: same relative path, ``.mp4`` (h264) or ``.mkv`` (ffv1)."""
    return Path(out_dir) / (clip_id + (".mkv" if codec == "ffv1" else ".mp4"))


def generate_suite(jobs: Iterable[GenerationJob], out_dir: str | Path, config: GenerateConfig = GenerateConfig(),
                   generator: torch.nn.Module | None = None, strict: bool = False,
                   progress: Callable[[int, int, str], None] | None = None, *,
                   save_boxes_dir: str | Path | None = None, stage_progress: StageProgress | None = None,
                   ) -> BatchResult:
    """Generate every job into ``out_dir`` (same relative paths), resumably.

    ``save_boxes_dir``: write each clip's boxes as ``<save_boxes_dir>/<clip id>.npy`` (see :func:`generate_video`);
    ``stage_progress``: passed to :func:`generate_video` for the clip being made.

    A clip whose output already exists is skipped: outputs are written under a temporary name and
    renamed when complete, so an existing file is always a finished one; the hidden partial files a killed
    run left beside the outputs are deleted first (:func:`remove_stale_parts`). A failing clip is logged and
    recorded in :attr:`BatchResult.failed` (``strict`` re-raises instead). ``config.align`` is ``video``
    for every clip (the suite's clips are re-generated from their own audio).

    Raises:
        GenerateError: bad options or ``out_dir`` (an existing file, an unknown codec), before any work.
        ValueError: an unusable ``device``.
        talkbench.weights.WeightsError: the checkpoint cannot be found or downloaded (not a per-clip failure).
    """
    out_dir = Path(out_dir)
    jobs = list(jobs)
    config = replace(config, align="video")
    config.check(needs_detector=any(j.boxes is None for j in jobs))
    state = {"generator": generator}

    def make(job: GenerationJob, target: Path) -> None:
        boxes_file = None if save_boxes_dir is None else Path(save_boxes_dir) / f"{job.clip_id}.npy"
        generate_video(job.video, target, audio=job.audio, boxes=job.boxes, config=config,
                       generator=state["generator"], save_boxes=boxes_file, progress=stage_progress)

    def load() -> None:
        if state["generator"] is None:
            state["generator"], _ = load_generator(config.checkpoint, dict(config.weights), config.device)

    return run_jobs(jobs, out_dir, config.codec, config.crf, make, load, strict, progress)


def run_jobs(jobs: Sequence[GenerationJob], out_dir: Path, codec: str, crf: int | None,
             make: Callable[[GenerationJob, Path], None], load: Callable[[], None], strict: bool = False,
             progress: Callable[[int, int, str], None] | None = None) -> BatchResult:
    """The resumable batch loop shared by every generator: ``make(job, target)`` for each job whose output does not
    exist yet, ``load()`` (the model) before the first one, outside the per-clip handler so that a missing
    checkpoint fails the run; stale partial files of a killed run are removed first; a failing clip is logged and
    recorded in :attr:`BatchResult.failed` (``strict`` re-raises).

    Raises:
        GenerateError: ``out_dir`` is an existing file or the codec is unknown, before any work.
    """
    check_output_dir(out_dir, codec, crf)
    targets = [output_path(out_dir, job.clip_id, codec) for job in jobs]
    removed = remove_stale_parts(targets)
    if removed:
        logger.info("%s: removed %d stale partial file(s) left by an interrupted run", out_dir, removed)
    result = BatchResult([], [], {})
    for k, (job, target) in enumerate(zip(jobs, targets)):
        if target.exists():
            result.skipped.append(job.clip_id)
        else:
            load()
            try:
                make(job, target)
                result.written.append(job.clip_id)
            except (ValueError, OSError, RuntimeError) as err:
                if strict:
                    raise
                logger.error("%s: %s", job.clip_id, err)
                result.failed[job.clip_id] = str(err)
        if progress is not None:
            progress(k + 1, len(jobs), job.clip_id)
    return result


def generate_reference_folder(checkpoint: Path, reference: Path, out_dir: Path) -> Path:
    """Generate every clip of ``reference`` (LRS2 layout) with ``checkpoint`` into ``out_dir``; face boxes
    (``.npy`` beside each clip) are copied next to the outputs so image metrics crop the same faces."""
    jobs = suite_jobs(Path(reference), "lrs2")
    generator, _ = load_generator(checkpoint)
    result = generate_suite(jobs, out_dir, GenerateConfig(checkpoint=checkpoint), generator=generator, strict=False)
    if result.failed:
        logger.warning("%s: %d clip(s) failed to generate (first: %s)", checkpoint, len(result.failed),
                       next(iter(result.failed.items())))
    for job in jobs:
        if job.boxes is not None:
            target = Path(out_dir) / f"{job.clip_id}.npy"
            if not target.exists() and target.parent.is_dir():
                shutil.copyfile(job.boxes, target)
    return Path(out_dir)
