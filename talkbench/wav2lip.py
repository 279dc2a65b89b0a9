"""Wav2Lip inference, as Rudrabha/Wav2Lip's ``inference.py`` does it (``talkbench generate --model wav2lip``).

Per clip:

1. Frames as uint8 BGR at 25 fps (streamed with :func:`talkbench.media.iter_frames`, the frames
   :func:`talkbench.media.decode_clip` gives), speech as 16 kHz mono (:func:`talkbench.generate.read_audio`;
   ``librosa.load`` floats = int16 / 32768).
2. Audio: Wav2Lip's mel spectrogram and its 16-column windows, one per output frame
   (:mod:`talkbench.wav2lip_audio`): window ``i`` starts at column ``int(i · 80 / fps)``, the last one is the
   final 16 columns. The output has one frame per window; input frame ``i mod T`` is used for output frame ``i``
   (the video is cut to the audio's length, or looped when the audio is longer).
3. Face boxes of the frames used: given (a ``.npy`` of x1, y1, x2, y2 per frame, taken as the detector's
   rectangles) or the face track of :func:`talkbench.tracks.face_track` (its own smoothing off); padded
   by ``pads`` = (top, bottom, left, right) = (0, 10, 0, 0) and clipped to the frame, then averaged over the next
   5 frames
   (``get_smoothened_boxes``, T = 5, written in place into an integer array: truncated, and the last 4 boxes
   average a window that already holds smoothed boxes).
4. Crops ``cv2.resize(frame[y1:y2, x1:x2], (96, 96))``; generator input = [crop with rows 48-95 zeroed | the
   same crop] / 255 (the reference frame is the frame itself), 6×96×96 BGR; batches of ``batch_size``
   (128 in the reference; the batch size does not change the output).
5. Paste-back: ``cv2.resize((pred · 255).astype(uint8), (x2 - x1, y2 - y1))`` (bilinear on the truncated
   uint8 face) written over the box.
6. The video is written at 25 fps with the whole driving audio (:class:`talkbench.media.StreamWriter`, frame
   by frame: HD clips are never held whole).

The reference writes its frames through an intermediate DIVX ``.avi`` before muxing with ffmpeg; talkbench
writes the pasted frames directly (h264 or lossless ffv1). ``evaluation/gen_videos_from_filelist.py`` (the
script of the paper's LRS2 numbers) differs from ``inference.py`` in two settings, available here as options:
``pads=(0, 0, 0, 0)`` and ``clamp_last=False`` (no last clamped window; a video shorter than its audio's
windows is refused).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping

import cv2
import numpy as np
import torch

from talkbench import generate as gen
from talkbench import media, tracks
from talkbench import weights as weights_mod
from talkbench.boxes import BoxError, check_boxes
from talkbench.crops.face import face_crops
from talkbench.devices import resolve_device
from talkbench.nets.wav2lip import Wav2LipGenerator, load_wav2lip
from talkbench.wav2lip_audio import mel_windows, melspectrogram

logger = logging.getLogger(__name__)

#: (top, bottom, left, right) pixels added to each detected box (inference.py ``--pads``)
PADS = (0, 10, 0, 0)
#: frames averaged by the box smoothing (inference.py ``get_smoothened_boxes(boxes, T=5)``)
SMOOTH_FRAMES = 5
#: frames per generator call in the reference (``--wav2lip_batch_size``)
BATCH_SIZE = 128
FACE_SIZE = 96


@dataclass(frozen=True)
class Wav2LipConfig:
    """How ``talkbench generate --model wav2lip`` makes its videos.

    Attributes:
        checkpoint: card name (``wav2lip``, ``wav2lip-gan``) or a checkpoint file.
        pads: (top, bottom, left, right) added to each box before smoothing.
        smooth: average each box with the next 4 (inference.py's default; ``--nosmooth`` turns it off).
        clamp_last: end the mel windows with one clamped to the audio's end (inference.py) or not
            (gen_videos_from_filelist.py; then the video must have a frame for every window).
        batch_size: frames per generator call.
        codec, crf, device, detector, s3fd_weights, weights: as :class:`talkbench.generate.GenerateConfig`.
    """

    checkpoint: str | Path = "wav2lip-gan"
    pads: tuple[int, int, int, int] = PADS
    smooth: bool = True
    clamp_last: bool = True
    batch_size: int = BATCH_SIZE
    codec: str = "h264"
    crf: int | None = None
    device: str = "cpu"
    detector: str = "dlib"
    s3fd_weights: Path | None = None
    weights: Mapping[str, Path] = field(default_factory=dict)

    def check(self, needs_detector: bool = True) -> None:
        """Refuse bad options before anything is loaded or decoded.

        Raises:
            talkbench.generate.GenerateError: bad batch size, detector, pads; ValueError: an unusable device.
        """
        gen.check_options(batch_size=self.batch_size, detector=self.detector if needs_detector else None,
                          s3fd_weights=self.s3fd_weights)
        if len(self.pads) != 4 or any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0
                                      for p in self.pads):
            raise gen.GenerateError(f"pads {self.pads!r}: give four pixel counts >= 0 (top, bottom, left, right).")
        resolve_device(self.device)


# ----------------------------------------------------------------------------------------------------
# Boxes, inputs, paste-back
# ----------------------------------------------------------------------------------------------------

def pad_boxes(rects: np.ndarray, frame_size: tuple[int, int], pads: tuple[int, int, int, int] = PADS) -> np.ndarray:
    """inference.py's ``face_detect`` padding: ``y1 - top``, ``y2 + bottom``, ``x1 - left``, ``x2 + right``,
    clipped to the frame.

    Args:
        rects: int ``T×4`` x1, y1, x2, y2 (detector rectangles).
        frame_size: (height, width).
    Returns:
        int64 ``T×4`` x1, y1, x2, y2.
    """
    top, bottom, left, right = pads
    h, w = frame_size
    r = np.asarray(rects, dtype=np.int64)
    return np.stack([np.maximum(0, r[:, 0] - left), np.maximum(0, r[:, 1] - top),
                     np.minimum(w, r[:, 2] + right), np.minimum(h, r[:, 3] + bottom)], axis=1)


def smooth_boxes(boxes: np.ndarray, window: int = SMOOTH_FRAMES) -> np.ndarray:
    """``get_smoothened_boxes``: box ``i`` = mean of boxes ``i..i+window-1`` (the last ``window`` for the tail).

    As the reference, the means are written in place into the integer array (truncated), so the tail's
    windows average boxes already smoothed; and the tail's window is ``boxes[T - window:]`` with Python's
    negative indexing, so a clip of ``T < window`` frames averages its last ``window - T`` boxes (all of them
    when ``2T <= window``).

    Returns:
        int64 ``T×4`` (a new array).
    """
    out = np.array(boxes, dtype=np.int64)
    n = len(out)
    for i in range(n):
        part = out[n - window:] if i + window > n else out[i:i + window]
        out[i] = np.mean(part, axis=0)
    return out


def generator_inputs(crops: np.ndarray) -> torch.Tensor:
    """``N×6×96×96`` float32: [crop with rows 48-95 zeroed | the same crop] / 255 (inference.py ``datagen``)."""
    return gen.generator_inputs(crops, crops)


def paste_faces(frames: np.ndarray, boxes: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Write each face into its frame: ``frame[y1:y2, x1:x2] = cv2.resize(face, (x2 - x1, y2 - y1))``.

    Args:
        frames: uint8 ``N×H×W×3`` (one per face; not modified).
        boxes: int ``N×4`` x1, y1, x2, y2.
        pixels: uint8 ``N×96×96×3`` faces (:func:`generate_face_pixels`).
    Returns:
        uint8 ``N×H×W×3``.
    """
    out = frames.copy()
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.int64)):
        out[i, y1:y2, x1:x2] = cv2.resize(pixels[i], (int(x2 - x1), int(y2 - y1)))
    return out


def clip_boxes(frame_size: tuple[int, int], rects: np.ndarray, pads: tuple[int, int, int, int] = PADS,
               smooth: bool = True) -> np.ndarray:
    """Padded and smoothed boxes from the detector rectangles of a clip's frames (step 3 of the module doc).

    Args:
        frame_size: (height, width).
        rects: int ``T×4`` x1, y1, x2, y2.
    Raises:
        talkbench.generate.GenerateError: a box that smoothing left empty.
    """
    boxes = pad_boxes(rects, frame_size, pads)
    if smooth:
        boxes = smooth_boxes(boxes)
    empty = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if len(empty):
        raise gen.GenerateError(f"face box of frame {empty[0]} is empty after padding and smoothing; give larger "
                                "boxes or turn smoothing off.")
    return boxes


# ----------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------

def audio_windows(audio: np.ndarray, fps: float = gen.FPS, clamp_last: bool = True) -> np.ndarray:
    """The generator's mel windows ``N×80×16`` of ``audio`` (16 kHz mono), one per output frame.

    Raises:
        talkbench.generate.GenerateError: the audio is too short for one window (about 0.2 s).
    """
    try:
        return mel_windows(melspectrogram(audio), fps, clamp_last)
    except ValueError as err:
        raise gen.GenerateError(f"the driving audio is too short for Wav2Lip: {err}.") from None


@torch.no_grad()
def generate_face_pixels(generator: Wav2LipGenerator, crops: np.ndarray, windows: np.ndarray,
                         batch_size: int = BATCH_SIZE, device: str | torch.device = "cpu",
                         progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Run the generator over ``N`` (crop, mel window) pairs in batches; faces as the reference pastes them.

    Args:
        crops: uint8 ``N×96×96×3`` BGR crops (one per window).
        windows: ``N×80×16`` mel windows.
    Returns:
        uint8 ``N×96×96×3``: ``(pred · 255).astype(uint8)`` (truncated), BGR.
    """
    out = np.empty((len(windows), FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    for start in range(0, len(windows), batch_size):
        stop = min(start + batch_size, len(windows))
        mel = torch.from_numpy(np.ascontiguousarray(windows[start:stop], dtype=np.float32))[:, None].to(device)
        pred = generator(mel, generator_inputs(crops[start:stop]).to(device)).float().cpu().numpy()
        out[start:stop] = (np.transpose(pred, (0, 2, 3, 1)) * 255.0).astype(np.uint8)
        if progress is not None:
            progress(stop, len(windows))
    return out


def synthesize(generator: Wav2LipGenerator, frames: np.ndarray, rects: np.ndarray, audio: np.ndarray,
               fps: float = gen.FPS, pads: tuple[int, int, int, int] = PADS, smooth: bool = True,
               clamp_last: bool = True, batch_size: int = BATCH_SIZE, device: str | torch.device = "cpu",
               progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generate a lip-synced clip from frames in memory (frames only), as inference.py.

    Args:
        generator: a :class:`talkbench.nets.wav2lip.Wav2LipGenerator` in eval mode on ``device``.
        frames: uint8 ``T×H×W×3`` BGR at ``fps``.
        rects: int ``≥T'×4`` detector rectangles (x1, y1, x2, y2) of the frames used, ``T' = min(T, windows)``.
        audio: 16 kHz mono samples (int16, or floats in [-1, 1]).
    Returns:
        (uint8 frames ``N×H×W×3``, one per mel window; their int64 boxes ``N×4``).
    Raises:
        talkbench.generate.GenerateError: audio too short for one window; with ``clamp_last=False``, a video with
            fewer frames than windows; empty boxes.
    """
    windows = audio_windows(audio, fps, clamp_last)
    used = frames[:frames_used(len(frames), len(windows), clamp_last)]
    boxes = clip_boxes(used.shape[1:3], np.asarray(rects)[:len(used)], pads, smooth)
    index = np.arange(len(windows)) % len(used)
    crops = face_crops(used, boxes)[index]
    pixels = generate_face_pixels(generator, crops, windows, batch_size, device, progress)
    return paste_faces(used[index], boxes[index], pixels), boxes[index]


def frames_used(n_frames: int, n_windows: int, clamp_last: bool = True) -> int:
    """How many input frames the output uses: ``min(T, windows)`` (inference.py cuts the video to the audio).

    Raises:
        talkbench.generate.GenerateError: ``clamp_last=False`` and fewer frames than windows
            (gen_videos_from_filelist.py skips such clips).
    """
    if not clamp_last and n_frames < n_windows:
        raise gen.GenerateError(f"{n_frames} frames for {n_windows} audio windows; without the clamped last "
                                "window (clamp_last=False) the video must be at least as long as the audio.")
    return min(n_frames, n_windows)


def load_generator(checkpoint: str | Path, weights: Mapping[str, Path] | None = None,
                   device: str | torch.device = "cpu") -> tuple[Wav2LipGenerator, Path]:
    """A Wav2Lip generator from a card name (``wav2lip``, ``wav2lip-gan``) or a file; returns (model, file)."""
    path = Path(checkpoint)
    if not path.is_file():
        name = str(checkpoint)
        if os.sep in name or name.endswith((".pth", ".pt", ".ckpt")):
            raise gen.GenerateError(f"{path}: checkpoint file not found; pass an existing file or a card name "
                                    "(wav2lip, wav2lip-gan).")
        path = weights_mod.resolve(name, dict(weights or {}))
    return load_wav2lip(path, device=device), path


def generate_video(video: str | Path, out: str | Path, audio: str | Path | None = None,
                   boxes: str | Path | None = None, config: Wav2LipConfig = Wav2LipConfig(),
                   generator: Wav2LipGenerator | None = None) -> Path:
    """``talkbench generate --model wav2lip``: make ``out`` from a face video and a speech track.

    The video is streamed as :func:`talkbench.generate.generate_video` streams it (never held whole, so HD clips
    fit in memory): one pass finds the face track (:func:`talkbench.tracks.face_track`) or reads the
    timeline, one cuts the 96×96 crops, one (per loop of the video) pastes the faces and encodes
    (:class:`talkbench.media.StreamWriter`).

    Args:
        video: the face video (any frame rate; converted to 25 fps).
        out: output video (written under a temporary name, then renamed).
        audio: the driving speech; default the video's own audio.
        boxes: ``.npy`` of detector rectangles (x1, y1, x2, y2 per 25-fps frame, at least one per frame used);
            default: the face track of ``config.detector`` (unsmoothed: Wav2Lip's own smoothing follows).
        generator: an already loaded generator (else ``config.checkpoint`` is loaded).
    Returns:
        The written path.
    Raises:
        talkbench.generate.GenerateError: bad options, paths or inputs (checked before the model is loaded); no
            face found; audio too short.
    """
    video, out = Path(video), Path(out)
    config.check(needs_detector=boxes is None)
    gen.check_output_file(out, config.codec, config.crf)
    for path, what in ((video, "face video"), (audio, "speech file"), (boxes, "boxes file")):
        if path is not None and not Path(path).is_file():
            raise gen.GenerateError(f"{path}: {what} not found; pass an existing file.")
    if generator is None:
        generator, _ = load_generator(config.checkpoint, config.weights, config.device)
    header = media.probe_video(video)
    if audio is not None:
        samples = gen.read_audio(Path(audio))
    elif not header.has_audio:
        raise gen.GenerateError(f"{video}: no audio track; pass the speech with --audio.")
    else:
        samples = media.read_wav_int16(video)
    windows = audio_windows(samples, gen.FPS, config.clamp_last)
    if boxes is None:
        settings = tracks.TrackSettings(detector=config.detector, smooth=1)
        try:
            track = tracks.face_track(video, settings, s3fd_weights=config.s3fd_weights, device=config.device)
            indices = list(track.indices)
        except tracks.NoFaceError as err:
            raise gen.GenerateError(str(err)) from None
        frame_size, rects, source = track.frame_size, track.int_boxes(), f"{video}: {config.detector} face track"
    else:
        timeline = media.scan_video(video)
        indices, frame_size, rects, source = timeline.indices, timeline.frame_size, np.load(boxes), str(boxes)
    n_used = frames_used(len(indices), len(windows), config.clamp_last)
    indices = list(indices[:n_used])
    try:
        rects = check_boxes(rects, n_used, frame_size, source)
    except BoxError as err:
        raise gen.GenerateError(str(err)) from None
    box_array = clip_boxes(frame_size, rects, config.pads, config.smooth)
    crops = np.empty((n_used, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    for t, frame in enumerate(media.iter_frames(video, indices)):
        crops[t] = face_crops(frame[None], box_array[t:t + 1], source=source)[0]
    order = np.arange(len(windows)) % n_used
    pixels = generate_face_pixels(generator, crops[order], windows, config.batch_size, config.device)
    del crops
    with media.StreamWriter(out, frame_size[0], frame_size[1], samples, fps=gen.FPS, codec=config.codec,
                          crf=config.crf) as writer:
        for start in range(0, len(windows), n_used):          # one pass per loop of the video
            count = min(n_used, len(windows) - start)
            for t, frame in enumerate(media.iter_frames(video, indices[:count])):
                writer.write(paste_faces(frame[None], box_array[t:t + 1], pixels[start + t:start + t + 1])[0])
    logger.info("wrote %s (%d frames)", out, len(windows))
    return out


def generate_suite(jobs: Iterable[gen.GenerationJob], out_dir: str | Path, config: Wav2LipConfig = Wav2LipConfig(),
                   generator: Wav2LipGenerator | None = None, strict: bool = False,
                   progress: Callable[[int, int, str], None] | None = None) -> gen.BatchResult:
    """Generate every job (:func:`talkbench.generate.suite_jobs`) into ``out_dir``, resumably, as
    :func:`talkbench.generate.generate_suite` does for TalkLip (existing outputs skipped, stale partial files
    removed, a failing clip recorded in ``failed`` unless ``strict``).

    Raises:
        talkbench.generate.GenerateError: bad options or ``out_dir``; talkbench.weights.WeightsError: no checkpoint.
    """
    jobs = list(jobs)
    config.check(needs_detector=any(j.boxes is None for j in jobs))
    state = {"generator": generator}

    def make(job: gen.GenerationJob, target: Path) -> None:
        generate_video(job.video, target, audio=job.audio, boxes=job.boxes, config=config,
                       generator=state["generator"])

    def load() -> None:
        if state["generator"] is None:
            state["generator"], _ = load_generator(config.checkpoint, config.weights, config.device)

    return gen.run_jobs(jobs, Path(out_dir), config.codec, config.crf, make, load, strict, progress)


#: the CLI's --checkpoint default (TalkLip's card), replaced by :data:`DEFAULT_CHECKPOINT` under --model wav2lip
TALKLIP_DEFAULT_CHECKPOINT = "talklip-gc"
DEFAULT_CHECKPOINT = "wav2lip-gan"
OFFLINE_HINT = ("The Wav2Lip weights are published on Google Drive (cards wav2lip, wav2lip-gan; see "
                "docs/wav2lip.md): download wav2lip_gan.pth or wav2lip.pth in a browser and pass it with "
                "`--weights wav2lip-gan=PATH` or `--checkpoint PATH`.")


def generate_from_cli(out: Path, video: Path | None = None, audio: Path | None = None,
                      checkpoint: str = DEFAULT_CHECKPOINT, boxes: Path | None = None, codec: str = "h264",
                      crf: int | None = None, device: str = "cpu", detector: str = "dlib",
                      batch_size: int = BATCH_SIZE, weights: Mapping[str, Path] | None = None,
                      reference: Path | None = None, suite: str | None = None, filelist: Path | None = None,
                      boxes_dir: Path | None = None, strict: bool = False) -> gen.BatchResult | None:
    """``talkbench generate --model wav2lip``: one clip (``video``) or every clip of a suite (``reference``).

    The TalkLip default checkpoint name is read as :data:`DEFAULT_CHECKPOINT`. Options are checked before the
    model is loaded or a frame decoded.

    Returns:
        The batch form's :class:`talkbench.generate.BatchResult`; None for one clip.
    Raises:
        talkbench.generate.GenerateError, talkbench.weights.WeightsError: problems the user can fix.
    """
    if checkpoint == TALKLIP_DEFAULT_CHECKPOINT:
        checkpoint = DEFAULT_CHECKPOINT
    weights = dict(weights or {})
    config = Wav2LipConfig(checkpoint=checkpoint, batch_size=batch_size, codec=codec, crf=crf, device=device,
                           detector=detector, weights=weights)
    config.check(needs_detector=False)
    if reference is not None:
        gen.check_output_dir(out, codec, crf)
    else:
        gen.check_output_file(out, codec, crf)
    if detector == "s3fd" and (reference is not None or boxes is None):
        config = replace(config, s3fd_weights=weights_mod.resolve("s3fd", weights))
    if reference is None:
        generate_video(video, out, audio=audio, boxes=boxes, config=config)
        return None
    jobs = gen.suite_jobs(reference, suite or "auto", filelist, boxes_dir)
    generator, path = load_generator(config.checkpoint, weights, device)
    logger.info("Wav2Lip generator %s; %d clip(s) -> %s", path, len(jobs), out)
    return generate_suite(jobs, out, config, generator, strict)
