"""The registry of observers: their specs (:mod:`talkbench.observers.specs`) and how to build them.

Everything that describes a metric is read from the specs: summary columns (:data:`METRIC_COLUMNS`), which
way is better (:func:`metric_spec`), the options and their types (:func:`option_spec`). Modules are imported
only when an observer is built or a run is summarised, so that e.g. PSNR needs no torch model. Which
observer measures a metric is the protocol's choice (:mod:`talkbench.protocols`).
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Any, Iterable, Mapping

from talkbench.observers.base import (ClipData, ClipSkipped, MetricSpec, Observer, ObserverContext, ObserverSpec,
                                      OptionSpec, Row)
from talkbench.observers.specs import ALL_SPECS


class RegistryError(ValueError):
    """Two specs contradict each other (a column or option declared twice, differently)."""


def _register(specs: Iterable[ObserverSpec]) -> tuple[dict[str, ObserverSpec], dict[str, MetricSpec],
                                                     dict[str, OptionSpec]]:
    """Index the specs; a spec that redeclares a name differently is an error at import, not a silent overwrite.

    Several observers may produce the same metric column (protocol alternatives, e.g. AV-HuBERT and the mini
    lip reader both give ``wer1``) only with the identical :class:`MetricSpec`; an option may be shared only as
    the identical :class:`OptionSpec`. Per-clip columns must be unique among observers that produce different
    metrics (:func:`check_compatible` checks the observers of one run).
    """
    observers: dict[str, ObserverSpec] = {}
    metrics: dict[str, MetricSpec] = {}
    options: dict[str, OptionSpec] = {}
    for spec in specs:
        if spec.name in observers:
            raise RegistryError(f"observer `{spec.name}` is declared twice")
        observers[spec.name] = spec
        if len(set(spec.clip_columns)) != len(spec.clip_columns):
            raise RegistryError(f"observer `{spec.name}` declares a per-clip column twice")
        for metric in spec.metrics:
            if metrics.setdefault(metric.column, metric) != metric:
                raise RegistryError(f"metric `{metric.column}` of `{spec.name}` differs from its earlier declaration")
            if metric.per_clip is not None and metric.per_clip not in spec.clip_columns:
                raise RegistryError(f"metric `{metric.column}` of `{spec.name}`: per-clip column `{metric.per_clip}` "
                                    "is not among the observer's clip_columns")
        for option in spec.options:
            if options.setdefault(option.name, option) != option:
                raise RegistryError(f"option `{option.name}` of `{spec.name}` differs from its earlier declaration")
    return observers, metrics, options


SPECS, METRICS, OPTIONS = _register(ALL_SPECS)
#: Every metric column, in summary order.
METRIC_COLUMNS: tuple[str, ...] = tuple(METRICS)


def metric_spec(column: str) -> MetricSpec:
    """The spec of a summary column.

    Raises:
        ValueError: unknown column (the message lists the known ones).
    """
    if column not in METRICS:
        raise ValueError(f"Unknown metric `{column}`; choose from {', '.join(METRIC_COLUMNS)}.")
    return METRICS[column]


def option_spec(name: str) -> OptionSpec:
    """The spec of an observer option.

    Raises:
        ValueError: unknown option (the message lists the known ones).
    """
    if name not in OPTIONS:
        raise ValueError(f"Unknown option `{name}`; the options are {', '.join(sorted(OPTIONS))}.")
    return OPTIONS[name]


def check_compatible(specs: Iterable[ObserverSpec]) -> None:
    """Observers of one run must not write the same per-clip column (one would overwrite the other).

    Raises:
        RegistryError: two of them share a per-clip column.
    """
    owner: dict[str, str] = {}
    for spec in specs:
        for column in spec.clip_columns + spec.features:
            if column in owner:
                raise RegistryError(f"observers `{owner[column]}` and `{spec.name}` both write `{column}`")
            owner[column] = spec.name


def parse_options(specs: Iterable[ObserverSpec], given: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The typed options of ``specs``: ``given`` over ``defaults`` (a protocol's) over each option's default.

    Raises:
        ValueError: an option no observer of the run has (the message lists the valid ones), or a bad value.
    """
    specs = list(specs)
    valid = {o.name: o for s in specs for o in s.options}
    unknown = sorted(set(given) - set(valid))
    if unknown:
        known = ", ".join(sorted(valid)) or "none"
        raise ValueError(f"Unknown option(s) {', '.join(unknown)} for the metrics asked for; their options are: "
                         f"{known}.")
    merged = {**{k: v for k, v in (defaults or {}).items() if k in valid}, **given}
    return {name: option.parse(merged.get(name, option.default)) for name, option in sorted(valid.items())}


def module(spec: ObserverSpec) -> ModuleType:
    """The observer's module (imported on first use)."""
    return importlib.import_module(spec.module)


def own_options(spec: ObserverSpec, options: Mapping[str, Any]) -> dict[str, Any]:
    """``spec``'s own options, typed and checked by their :class:`OptionSpec`, with defaults filled (also for an
    option given as None: unset); the options of other observers (e.g. of the same run) are left out.

    Raises:
        ValueError: a bad value, or a name that is no observer's option (the message lists the known ones).
    """
    for name in options:
        option_spec(name)
    own = {o.name for o in spec.options}
    return parse_options([spec], {k: v for k, v in options.items() if k in own and v is not None})


def build(spec: ObserverSpec, ctx: ObserverContext) -> Observer:
    """Build the observer of ``spec`` with ``ctx`` (loads its networks).

    The module's ``build`` receives ``ctx`` with only its own options, parsed by the spec (:func:`own_options`):
    typed, defaults filled, choices and minimums checked before any file is looked for. The specs own these
    checks; a module's ``build`` checks only what a spec cannot say (a file, two options that conflict).

    Raises:
        ValueError: a bad option (see :func:`own_options`), or what the module's ``build`` raises.
    """
    return module(spec).build(dataclasses.replace(ctx, options=own_options(spec, ctx.options)))


__all__ = ["ClipData", "ClipSkipped", "METRICS", "METRIC_COLUMNS", "MetricSpec", "OPTIONS", "Observer",
           "ObserverContext", "ObserverSpec", "OptionSpec", "RegistryError", "Row", "SPECS", "build",
           "check_compatible", "metric_spec", "module", "option_spec", "own_options", "parse_options"]
