"""The observer contract: a scoring unit = network + card + preprocessing + per-clip measurement.

The evaluation runner only knows this contract. It never branches on an observer's name: it asks
the registry (:mod:`talkbench.observers`) which observer produces each requested metric, builds it
once with an :class:`ObserverContext`, calls :meth:`Observer.measure` once per clip and
:meth:`Observer.summarize` once over all stored per-clip rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from talkbench.media import Clip

#: A per-clip measurement: column name -> raw value (float, int, str or None).
Row = dict[str, Any]


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
        cache: per-clip scratch space so that observers share crops (key -> array).
    """

    clip_id: str
    generated: Clip
    reference: Clip | None = None
    text: str | None = None
    boxes: np.ndarray | None = None
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ObserverContext:
    """How to build observers for one run.

    Attributes:
        device: torch device string, ``"cpu"`` or ``"cuda"`` (or ``"cuda:1"``).
        protocol: protocol name, e.g. ``"talklip2023"``.
        weights: card name -> local checkpoint path given with ``--weights NAME=PATH``.
        options: observer options from the CLI (e.g. ``lse_mode``, ``lse_jpeg_compat``, ``max_frames``).
    """

    device: str = "cpu"
    protocol: str = "talklip2023"
    weights: Mapping[str, Path] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


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
