"""The observer contract: a scoring unit = network + card + preprocessing + per-clip measurement.

The evaluation runner only knows this contract. It never branches on an observer's name: it asks the
protocol (:mod:`talkbench.protocols`) which observer produces each requested metric, builds it once with an
:class:`ObserverContext` and calls :meth:`Observer.measure` once per clip. The summary is computed later,
without any network, by the observer *module*'s ``summarize(rows)`` over the stored per-clip rows (and, for
set-level metrics, ``summarize_features(features)`` over the stored per-clip feature arrays), so that a run,
a resumed run and a merge of shards use the same code. What each observer produces is declared in its
:class:`ObserverSpec` (:mod:`talkbench.observers.specs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from talkbench.crops import ClipCache
from talkbench.media import Clip
from talkbench.statistics import Aggregation, Direction

#: A per-clip measurement: column name -> raw value (float, int, str or None).
Row = dict[str, Any]


@dataclass(frozen=True)
class MetricSpec:
    """One summary column, declared once: what it is, which way is better, how clips are aggregated.

    Attributes:
        column: the summary column (and, for per-clip metrics, the per-clip column), e.g. ``"lse_c"``.
        direction: ``higher``, ``lower`` or ``zero`` (best at 0, ranked by absolute value;
            :data:`talkbench.statistics.Direction`).
        unit: unit of the value (``"%"``, ``"dB"``, ``"frames"``, ``""``).
        aggregation: see :data:`talkbench.statistics.Aggregation`.
        description: one line for the README, charts and ``--help``.
        per_clip: the per-clip column whose presence says that a clip was scored for this metric (None for a
            set-level metric, which has per-clip features instead).
        inputs: where the aggregation's per-clip inputs live in a stored row, ``((field, row key), ...)`` with the
            fields of :data:`talkbench.statistics.FIELDS_BY_AGGREGATION` (e.g. corpus WER: edits and reference
            words); what the confidence intervals and paired tests resample. Empty for set-level metrics.
    """

    column: str
    direction: Direction
    unit: str
    aggregation: Aggregation
    description: str
    per_clip: str | None = None
    inputs: tuple[tuple[str, str], ...] = ()

    @property
    def higher_is_better(self) -> bool:
        """True when a higher value is better (False for ``lower`` and ``zero``)."""
        return self.direction == "higher"


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("", "0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return bool(value)


_PARSERS: dict[str, Callable[[Any], Any]] = {"bool": _as_bool, "int": int, "float": float, "str": str,
                                             "path": lambda v: str(Path(str(v)).expanduser())}


@dataclass(frozen=True)
class OptionSpec:
    """One observer option (``--option NAME=VALUE`` on the command line).

    Attributes:
        name: option name, e.g. ``"lse_mode"``.
        type: ``bool``, ``int``, ``float``, ``str`` or ``path``.
        default: the value when neither the user nor the protocol sets it (None: unset).
        doc: one line for ``--help`` and the docs.
        choices: the allowed values, or None.
        changes_numbers: False for options that change only speed or memory (e.g. a chunk size); the others
            are recorded in the summary row and keep rows apart on the leaderboard.
        minimum: smallest allowed value of a number, or None.
    """

    name: str
    type: Literal["bool", "int", "float", "str", "path"]
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    changes_numbers: bool = True
    minimum: float | None = None

    def parse(self, value: Any) -> Any:
        """The typed value of ``value`` (a command-line string or a Python value).

        Raises:
            ValueError: not of the option's type, not one of its choices, or below its minimum.
        """
        if value is None:
            return None
        try:
            parsed = _PARSERS[self.type](value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Option `{self.name}` must be {self.type}, but got {value!r} ({err}).") from None
        if self.choices is not None and parsed not in self.choices:
            raise ValueError(f"Option `{self.name}` must be one of {', '.join(map(str, self.choices))}, but got "
                             f"{value!r}.")
        if self.minimum is not None and parsed < self.minimum:
            raise ValueError(f"Option `{self.name}` must be >= {self.minimum:g}, but got {value!r}.")
        return parsed


@dataclass(frozen=True)
class ObserverSpec:
    """What an observer is, declared without importing it (its module is imported only to build it).

    Attributes:
        name: short name, e.g. ``"syncnet"`` (the prefix of its error messages).
        module: the module with ``build(ctx) -> Observer`` and ``summarize(rows) -> dict`` (plus, for set-level
            metrics, ``summarize_features(features) -> dict``).
        cards: the weights cards it loads (``--weights NAME=PATH``).
        metrics: the summary columns it produces.
        clip_columns: every per-clip column its ``measure`` may write (checked: no two observers of a protocol
            share one, and an observer writes no other).
        options: its options.
        features: names of the per-clip feature arrays it stores for set-level metrics.
    """

    name: str
    module: str
    cards: tuple[str, ...]
    metrics: tuple[MetricSpec, ...]
    clip_columns: tuple[str, ...]
    options: tuple[OptionSpec, ...] = ()
    features: tuple[str, ...] = ()

    @property
    def metric_columns(self) -> tuple[str, ...]:
        return tuple(m.column for m in self.metrics)


class ClipSkipped(Exception):
    """Raised by an observer when a clip cannot be scored (e.g. too long, no face track).

    The runner records the message in the clip's ``error`` column and goes on.
    """


@dataclass
class ClipData:
    """Everything an observer may need about one clip; decoded once, shared by all observers.

    Attributes:
        clip_id: relative id of the clip inside its suite (e.g. ``main/5535415699068794046/00001``).
        generated: the decoded generated clip (frames BGR uint8 ``T×H×W×3`` at 25 fps, 16 kHz audio).
        reference: the decoded ground-truth clip, or None when the suite gives none.
        text: transcript (LRS2 ``Text:`` line) or LRW word label, or None.
        boxes: per-frame face boxes ``T×4`` (x1, y1, x2, y2) in pixels, or None (= full frame).
        cache: the crops observers share, computed once per clip by the accessors of :mod:`talkbench.crops`
            (typed :class:`talkbench.crops.CropKey` -> array).
    """

    clip_id: str
    generated: Clip
    reference: Clip | None = None
    text: str | None = None
    boxes: np.ndarray | None = None
    cache: ClipCache = field(default_factory=dict)


@dataclass(frozen=True)
class ObserverContext:
    """How to build observers for one run.

    Built by :meth:`talkbench.protocols.Protocol.context`, which fills ``options`` (typed, every option of
    the run's observers) and the protocol's recipes; observers read these fields and never branch on the
    protocol's name.

    Attributes:
        device: torch device string, ``"cpu"`` or ``"cuda"`` (or ``"cuda:1"``).
        protocol: protocol name, e.g. ``"talklip2023"`` (provenance and messages only).
        weights: card name -> local checkpoint path given with ``--weights NAME=PATH``.
        options: observer options (e.g. ``lse_mode``, ``lse_jpeg_compat``, ``max_frames``), typed by their specs;
            a module's ``build`` gets only its own, parsed and checked by :func:`talkbench.observers.build`.
        mouth_roi: the lip readers' crop recipe (``centre88`` or ``landmark-aligned``).
        text_normalisation: how transcripts are normalised for WER1 (``talkbench.metrics.text.NORMALISATIONS``).
    """

    device: str = "cpu"
    protocol: str = "talklip2023"
    weights: Mapping[str, Path] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    mouth_roi: str = "centre88"
    text_normalisation: str = "lower"


@runtime_checkable
class Observer(Protocol):
    """A scoring unit.

    Attributes:
        name: short name, e.g. ``"syncnet"``.
        metrics: summary columns this observer produces (e.g. ``("lse_c", "lse_d", "av_offset")``).
        needs_reference: True when :meth:`measure` needs ``ClipData.reference``.
        needs_text: True when :meth:`measure` needs ``ClipData.text``.
        weights_sha256: sha256 prefixes of the checkpoints used (card name -> 12 hex chars), for provenance.
    """

    name: str
    metrics: tuple[str, ...]
    needs_reference: bool
    needs_text: bool
    weights_sha256: Mapping[str, str]

    def measure(self, clip: ClipData) -> Row:
        """Measure one clip; returns per-clip columns (raw values). Raise ClipSkipped to record an error."""
        ...

    def summarize(self, rows: Sequence[Row]) -> dict[str, float]:
        """Aggregate successful per-clip rows into the summary metrics, as the protocol defines it."""
        ...
