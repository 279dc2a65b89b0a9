"""Measuring one clip: decode it once, run every observer of the run on it, keep what each gave.

The unit of work that every engine runs, in this process or in a worker: an :class:`ObserverSetup` (picklable:
protocol, metrics, device, weights, options, the run's face-track cache) builds the run's observers once, with the
protocol's :class:`InputPolicy` (what a clip must be, how it is read: :class:`talkbench.protocols.Expects`);
:func:`measure_clip` turns a :class:`~talkbench.suites.ClipPair` into a :class:`Measurement` (per-clip columns,
per-clip feature arrays for set-level metrics, the error text). An observer that fails on a clip, or writes a non-finite number or a column
its spec does not declare, loses only its own columns.

An engine is anything with :meth:`Engine.measure`: given the run's :class:`ObserverSetup` and the clips still to
compute, it yields each clip's :class:`Measurement` as soon as it is finished (in any order), after reporting,
once, the provenance of the observers it built (card sha256 prefixes, the JPEG route). :class:`LocalEngine`
measures in this process, one clip after the other; the engines beyond one machine (Ray, SLURM) live in
:mod:`talkbench.engines`, above :mod:`talkbench.evaluate` (the driver, the only writer of the run's store).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from talkbench import media, protocols, suites, tracks
from talkbench.boxes import MAX_REUSED_BOXES, BoxCountError, check_boxes
from talkbench.crops.face import set_clip_face_track
from talkbench.observers import ClipData, ClipSkipped, Observer, ObserverSpec, build, check_compatible

logger = logging.getLogger(__name__)

#: Largest decoded size (bytes of uint8 BGR frames, estimated from the header before decoding) of a clip side that
#: is decoded whole (clips not cut around their face track); with the observers' copies a run stays under 2 GB.
#: A larger clip is that clip's error row, with the fix, never a killed run.
MAX_WHOLE_CLIP_BYTES = 512 * 2**20
#: Per-clip column listing how a clip does not fit its protocol (:meth:`talkbench.protocols.Expects.flags`).
FLAGS_COLUMN = "input_flags"
#: Input flag ``box-count=B/T``: the suite's box file has B < T boxes for the clip's T frames (T - B at most
#: :data:`talkbench.boxes.MAX_REUSED_BOXES`), the last frames reuse the last box (:func:`suite_boxes`).
BOX_COUNT_FLAG = "box-count"


@dataclass(frozen=True)
class InputPolicy:
    """How clips are checked and read for one protocol (see :class:`talkbench.protocols.Expects`).

    Attributes:
        protocol: the protocol's name (messages).
        expects: what the protocol assumes about each clip.
        tracks_dir: where face tracks are cached (``<run dir>/tracks``), or None (not cached).
        track_settings: how face tracks are made (:class:`talkbench.tracks.TrackSettings`).
        max_whole_clip_bytes: memory guard of clips decoded whole (:data:`MAX_WHOLE_CLIP_BYTES`).
    """

    protocol: str = ""
    expects: protocols.Expects = field(default_factory=protocols.Expects)
    tracks_dir: Path | None = None
    track_settings: tracks.TrackSettings = field(default_factory=tracks.TrackSettings)
    max_whole_clip_bytes: int = MAX_WHOLE_CLIP_BYTES


class BuiltObservers(list):
    """The run's :class:`BuiltObserver` list, carrying the :class:`InputPolicy` of its protocol (``.inputs``), so
    that every engine that calls :func:`measure_clip` with it checks and reads clips the same way."""

    def __init__(self, observers: Sequence["BuiltObserver"], inputs: InputPolicy) -> None:
        super().__init__(observers)
        self.inputs = inputs


@dataclass(frozen=True)
class ObserverSetup:
    """Everything needed to build a run's observers, in any process (picklable).

    Attributes:
        protocol: the protocol's name.
        metrics: the metrics asked for.
        device: torch device string.
        weights: card name -> local checkpoint path (``--weights``).
        options: the observer options the user set.
        tracks_dir: where the clips' face tracks are cached (``<run dir>/tracks``), or None.
        suite_kind: the suite's layout (``lrs2``, ``lrw``, …): what the protocol expects of a clip may depend on it
            (:meth:`talkbench.protocols.Expects.for_suite`).
    """

    protocol: str
    metrics: tuple[str, ...]
    device: str = "cpu"
    weights: Mapping[str, Path] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    tracks_dir: Path | None = None
    suite_kind: str = ""

    def build(self) -> BuiltObservers:
        """Build (load) the observers of the run, each once, with the protocol's :class:`InputPolicy`."""
        protocol = protocols.get(self.protocol)
        specs = protocol.observer_specs(self.metrics)
        check_compatible(specs)
        ctx = protocol.context(self.metrics, self.device, self.weights, self.options)
        inputs = InputPolicy(protocol=protocol.name, expects=protocol.expects.for_suite(self.suite_kind),
                             tracks_dir=self.tracks_dir)
        return BuiltObservers([BuiltObserver(spec, build(spec, ctx)) for spec in specs], inputs)


def provenance(observers: Sequence["BuiltObserver"]) -> dict[str, str]:
    """card name -> sha256 prefix (and other provenance entries, e.g. the JPEG route) of the built observers."""
    return {k: v for o in observers for k, v in o.observer.weights_sha256.items()}


@dataclass(frozen=True)
class BuiltObserver:
    """An observer of the run with its spec (what it may write)."""

    spec: ObserverSpec
    observer: Observer


@dataclass
class Measurement:
    """What one clip gave: per-clip columns, per-clip feature arrays (set-level metrics), the error text."""

    values: dict[str, Any]
    features: dict[str, np.ndarray]
    error: str | None


def _clip_data(pair: suites.ClipPair, observers: Sequence[BuiltObserver], inputs: InputPolicy
               ) -> tuple[ClipData, list[str]]:
    """Check and decode one clip: (the :class:`ClipData`, its input flags).

    A clip the protocol expects face-centred but that is not (:meth:`talkbench.protocols.Expects.routes`) is cut
    around its face track, streamed (:func:`talkbench.tracks.face_centred_clip`); other clips are decoded whole,
    after a memory guard on the header (:attr:`InputPolicy.max_whole_clip_bytes`).
    """
    if pair.error:
        raise ClipSkipped(pair.error)
    if pair.generated is None:
        raise ClipSkipped("no generated clip for this reference clip (expected at the same relative path)")
    needs_reference = any(o.observer.needs_reference for o in observers)
    if needs_reference and pair.reference is None:
        raise ClipSkipped("no reference clip for this generated clip (needed by PSNR/SSIM)")
    if any(o.observer.needs_text for o in observers) and not pair.text:
        raise ClipSkipped("no transcript/label for this clip (needed by the lip-reading metrics)")
    header = media.probe_video(pair.generated)
    flags = inputs.expects.flags(header, (pair.generated, pair.reference))
    try:
        if inputs.expects.routes(header):
            return _face_centred_data(pair, header, needs_reference, inputs, flags), flags
        generated = _decode_whole(pair.generated, header, inputs)
        reference = None
        if needs_reference:
            reference = _decode_whole(pair.reference, media.probe_video(pair.reference), inputs)
        boxes = suite_boxes(pair.boxes, generated.num_frames, flags) if pair.boxes is not None else None
    except (media.MediaError, ClipSkipped, OSError, ValueError) as err:
        raise FlaggedInputError(err, flags) from err
    return ClipData(clip_id=pair.clip_id, generated=generated, reference=reference, text=pair.text, boxes=boxes), flags


def suite_boxes(path: Path, n_frames: int, flags: list[str]) -> np.ndarray:
    """A suite's face boxes (``<id>.npy``, :func:`talkbench.suites.load_boxes`) for a clip of ``n_frames`` frames.

    Extra rows are dropped (unchecked). A file short by at most :data:`talkbench.boxes.MAX_REUSED_BOXES` rows (a
    generated clip a re-encode made a frame or two longer than its reference) gives its last box to the last frames:
    one warning naming the file, the counts and the fix, and ``box-count=B/T`` appended to ``flags``.

    Returns:
        int64 ``n_frames×4``.
    Raises:
        ValueError: an unreadable file; :class:`talkbench.boxes.BoxError` for boxes it refuses (more frames missing:
            the message names the file, both counts, the tolerance and the fix).
    """
    try:
        return suites.load_boxes(path, n_frames)
    except BoxCountError:
        given = suites.load_boxes(path)      # shorter than the clip: every row is used, so every row is checked
    boxes = check_boxes(given, n_frames, None, str(path), reuse_last=MAX_REUSED_BOXES)
    flags.append(f"{BOX_COUNT_FLAG}={len(given)}/{n_frames}")
    return boxes


class FlaggedInputError(ValueError):
    """A clip that could not be read, with the input flags found before (kept in its error row)."""

    def __init__(self, err: Exception, flags: list[str]) -> None:
        super().__init__(str(err))
        self.flags = flags


def _decode_whole(path: Path, header: media.VideoHeader, inputs: InputPolicy) -> media.Clip:
    """Decode a clip whole, unless its header says its frames would take more than the memory guard."""
    estimate = header.n_frames * header.frame_bytes
    if estimate > inputs.max_whole_clip_bytes:
        raise ClipSkipped(
            f"{path}: {header.n_frames} frames of {header.width}×{header.height} would take "
            f"{estimate / 2**30:.2f} GiB decoded, over the {inputs.max_whole_clip_bytes / 2**30:.2f} GiB a clip may "
            "take when protocol "
            f"{inputs.protocol or '?'} reads whole frames ({inputs.expects.summary}); make a protocol-ready copy "
            "with `talkbench prepare IN_DIR OUT_DIR` (face-centred 160×160 clips + boxes), or cut it shorter "
            "(ffmpeg -i IN -t SECONDS OUT.mp4)")
    return media.decode_clip(path, need_audio=False, max_decoded_bytes=max(inputs.max_whole_clip_bytes, 1))


def _face_centred_data(pair: suites.ClipPair, header: media.VideoHeader, needs_reference: bool,
                       inputs: InputPolicy, flags: list[str]) -> ClipData:
    """The clip (and its reference) cut around its face track into face-centred squares, streamed.

    The track is the suite's boxes when it has them, else detected (:func:`talkbench.tracks.cached_track`, cached
    in :attr:`InputPolicy.tracks_dir`); the clip's boxes become the track's boxes in the squares, and the track
    is shared with the observers (:func:`talkbench.crops.face.set_clip_face_track`). A short box file adds its
    flag to ``flags`` (:func:`suite_boxes`).
    """
    size = inputs.expects.route_size
    frame_size = (header.height, header.width)
    if pair.boxes is not None:   # one box per 25-fps frame, checked as for clips read whole
        indices = media.scan_video(pair.generated).indices
        track = tracks.ClipTrack.from_boxes(suite_boxes(pair.boxes, len(indices), flags), frame_size)
        track.indices = np.asarray(indices, dtype=np.int64)
    else:
        try:
            track = tracks.cached_track(inputs.tracks_dir, pair.clip_id, pair.generated, inputs.track_settings)
        except tracks.NoFaceError as err:
            raise ClipSkipped(f"{err} Protocol {inputs.protocol} reads face-centred clips "
                              f"({inputs.expects.summary}); this {header.width}×{header.height} clip is not cropped "
                              "blindly.") from None
    generated = tracks.face_centred_clip(pair.generated, track, size, indices=track.indices)
    reference = None
    if needs_reference:
        reference = tracks.face_centred_clip(pair.reference, track, size)
    in_square = track.in_square(size)
    n = generated.num_frames
    data = ClipData(clip_id=pair.clip_id, generated=generated, reference=reference, text=pair.text,
                    boxes=in_square.int_boxes()[:n])
    set_clip_face_track(data.cache, tracks.ClipTrack(boxes=in_square.boxes[:n], raw=in_square.raw[:n],
                                                     detected=in_square.detected[:n], frame_size=(size, size),
                                                     settings=in_square.settings))
    return data


_FLAG_MEANINGS = {
    "frame-size": "frames of another size than the protocol's clips",
    "fps": "another frame rate (converted to 25 fps as ffmpeg -r 25)",
    "face-track": "measured on face-centred squares cut around the clip's face track (as `talkbench prepare` cuts "
                  "them), not on its frames as they are",
    "not-synthetic": "not under a synthetic-corpus root: the mini observers, trained on the corpus' renders, give "
                     "noise on other faces",
    BOX_COUNT_FLAG: "the suite's box file has fewer boxes than the clip has frames: the last frames reuse the last box",
}


def _flag(clip_id: str, flags: Sequence[str], inputs: InputPolicy) -> dict[str, Any]:
    """Log how a clip does not fit its protocol (one warning; ``box-count`` has its own, from
    :func:`talkbench.boxes.check_boxes`) and return its :data:`FLAGS_COLUMN` value (``{}`` without flags)."""
    if not flags:
        return {}
    misfits = [f for f in flags if not f.startswith(BOX_COUNT_FLAG)]   # box-count: warned by talkbench.boxes
    if misfits:
        logger.warning("%s: does not fit protocol %s (%s): %s", clip_id, inputs.protocol, inputs.expects.summary,
                       explain_flags(misfits))
    return {FLAGS_COLUMN: ";".join(flags)}


def explain_flags(flags: Sequence[str]) -> str:
    """The flags of a clip in words, for the run log."""
    return "; ".join(f"{f} ({_FLAG_MEANINGS.get(f.split('=')[0], '')})" for f in flags)


def non_finite(row: Mapping[str, Any]) -> list[str]:
    """The columns of a per-clip row whose number is NaN or infinite."""
    return [k for k, v in row.items() if isinstance(v, (float, np.floating)) and not math.isfinite(float(v))]


def _split_row(spec: ObserverSpec, row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An observer's row -> (per-clip columns, feature arrays); a column its spec does not declare is an error."""
    undeclared = sorted(set(row) - set(spec.clip_columns) - set(spec.features))
    if undeclared:
        raise RuntimeError(f"wrote undeclared column(s) {', '.join(undeclared)} (a bug: declare them in its spec)")
    features = {k: np.asarray(row[k]) for k in spec.features if k in row}
    values = {k: v for k, v in row.items() if k not in spec.features}
    bad = non_finite(values) + [k for k, a in features.items() if not np.all(np.isfinite(a))]
    if bad:
        shown = ", ".join(f"{k}={values[k]}" if k in values else k for k in bad)
        raise ClipSkipped(f"non-finite {shown}; the checkpoint or the clip gives no usable number")
    return values, features


def measure_clip(pair: suites.ClipPair, observers: Sequence[BuiltObserver]) -> Measurement:
    """Decode one clip once and run every observer on it.

    ``observers`` from :meth:`ObserverSetup.build` carry the protocol's :class:`InputPolicy`: the clip is checked
    against what the protocol expects (a clip that does not fit is logged and gets the :data:`FLAGS_COLUMN`
    column) and read as the policy says (face-centred squares of its face track, or whole under a memory guard).

    Returns:
        the :class:`Measurement`. Each observer's failure is recorded (``observer: message``) and costs only
        that observer's columns: the values of observers that succeeded are kept and count in their metrics.
    """
    inputs = getattr(observers, "inputs", None) or InputPolicy()
    try:
        data, flags = _clip_data(pair, observers, inputs)
    except FlaggedInputError as err:
        return Measurement(_flag(pair.clip_id, err.flags, inputs), {}, f"input: {err}")
    except (media.MediaError, ClipSkipped, OSError, ValueError) as err:
        return Measurement({}, {}, f"input: {err}")
    values: dict[str, Any] = _flag(pair.clip_id, flags, inputs)
    features: dict[str, np.ndarray] = {}
    errors: list[str] = []
    for built in observers:
        name = built.spec.name
        try:
            row_values, row_features = _split_row(built.spec, built.observer.measure(data))
            values.update(row_values)
            features.update(row_features)
        except (ClipSkipped, media.MediaError, ValueError) as err:
            errors.append(f"{name}: {err}")
        except Exception as err:  # noqa: BLE001 - an observer bug on one clip must not lose the run
            logger.debug("observer %s failed on %s", name, pair.clip_id, exc_info=True)
            errors.append(f"{name}: {type(err).__name__}: {err}")
    return Measurement(values, features, "; ".join(errors) or None)


#: Called once with the observers' provenance (card -> sha256 prefix), before the first measurement.
OnBuilt = Callable[[dict[str, str]], None]


class Engine(Protocol):
    """Measures clips somewhere (this process, a Ray cluster, ...)."""

    name: str

    def measure(self, setup: ObserverSetup, pairs: Sequence[suites.ClipPair], on_built: OnBuilt
                ) -> Iterator[tuple[suites.ClipPair, Measurement]]:
        """Yield ``(pair, measurement)`` for every pair, each as soon as it is done; call ``on_built`` first."""
        ...


class LocalEngine:
    """Builds the observers once in this process and measures the clips one after the other."""

    name = "local"

    def measure(self, setup: ObserverSetup, pairs: Sequence[suites.ClipPair], on_built: OnBuilt
                ) -> Iterator[tuple[suites.ClipPair, Measurement]]:
        observers = setup.build()
        on_built(provenance(observers))
        for pair in pairs:
            yield pair, measure_clip(pair, observers)
