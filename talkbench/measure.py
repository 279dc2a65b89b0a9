"""Measuring one clip: decode it once, run every observer of the run on it, keep what each gave.

The unit of work that every engine runs, in this process or in a worker: an :class:`ObserverSetup` (picklable:
protocol, metrics, device, weights, options) builds the run's observers once; :func:`measure_clip` turns a
:class:`~talkbench.suites.ClipPair` into a :class:`Measurement` (per-clip columns, per-clip feature arrays for
set-level metrics, the error text). An observer that fails on a clip, or writes a non-finite number or a column
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

from talkbench import media, protocols, suites
from talkbench.observers import ClipData, ClipSkipped, Observer, ObserverSpec, build, check_compatible

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObserverSetup:
    """Everything needed to build a run's observers, in any process (picklable).

    Attributes:
        protocol: the protocol's name.
        metrics: the metrics asked for.
        device: torch device string.
        weights: card name -> local checkpoint path (``--weights``).
        options: the observer options the user set.
    """

    protocol: str
    metrics: tuple[str, ...]
    device: str = "cpu"
    weights: Mapping[str, Path] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> list["BuiltObserver"]:
        """Build (load) the observers of the run, each once."""
        protocol = protocols.get(self.protocol)
        specs = protocol.observer_specs(self.metrics)
        check_compatible(specs)
        ctx = protocol.context(self.metrics, self.device, self.weights, self.options)
        return [BuiltObserver(spec, build(spec, ctx)) for spec in specs]


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


def _clip_data(pair: suites.ClipPair, observers: Sequence[BuiltObserver]) -> ClipData:
    if pair.error:
        raise ClipSkipped(pair.error)
    if pair.generated is None:
        raise ClipSkipped("no generated clip for this reference clip (expected at the same relative path)")
    generated = media.decode_clip(pair.generated, need_audio=False)
    reference = None
    if any(o.observer.needs_reference for o in observers):
        if pair.reference is None:
            raise ClipSkipped("no reference clip for this generated clip (needed by PSNR/SSIM)")
        reference = media.decode_clip(pair.reference, need_audio=False)
    if any(o.observer.needs_text for o in observers) and not pair.text:
        raise ClipSkipped("no transcript/label for this clip (needed by the lip-reading metrics)")
    boxes = suites.load_boxes(pair.boxes, generated.num_frames) if pair.boxes is not None else None
    return ClipData(clip_id=pair.clip_id, generated=generated, reference=reference, text=pair.text, boxes=boxes)


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

    Returns:
        the :class:`Measurement`. Each observer's failure is recorded (``observer: message``) and costs only
        that observer's columns: the values of observers that succeeded are kept and count in their metrics.
    """
    try:
        data = _clip_data(pair, observers)
    except (media.MediaError, ClipSkipped, OSError, ValueError) as err:
        return Measurement({}, {}, f"input: {err}")
    values: dict[str, Any] = {}
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
