"""The summary row of a run: fixed schema, raw floats, provenance columns.

The per-metric aggregation belongs to each observer module (module-level ``summarize(rows)``), so
that a run, a resumed run and a merge of shards all compute the summary with the same code from the
stored per-clip rows, without loading any network.

Each metric's aggregate uses every clip whose row has that metric's per-clip column: a clip on which
one observer failed still counts in the other observers' metrics. ``n_failed`` counts the clips with any
error; ``n_failed_by_metric`` says, per requested metric, how many clips it could not score; ``n_flagged`` counts
the clips that do not fit what the protocol expects (their ``input_flags`` column, see
:class:`talkbench.protocols.Expects`).

Every metric has a confidence interval next to it (``<metric>_lo``, ``<metric>_hi``): a percentile bootstrap
over clips that respects the metric's aggregation (:mod:`talkbench.statistics`: corpus WER recomputed as
Σedits/Σwords on each resample, means of utterances, frame means weighted by frames, accuracies; set-level
metrics from the resampled sums of their per-clip statistics), seeded and deterministic; optionally a block
bootstrap over speakers. The ``ci`` column says how the intervals were made (empty when they are off).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from talkbench import __version__, protocols, statistics, suites
from talkbench.observers import METRIC_COLUMNS, METRICS, module
from talkbench.store import ClipRecord

def metric_columns(metric: str) -> tuple[str, str, str]:
    """``(metric, metric_lo, metric_hi)``."""
    return metric, f"{metric}_lo", f"{metric}_hi"


#: Columns of ``summary.csv`` and of the leaderboard, in this order: the metric columns come from the specs.
SUMMARY_COLUMNS: tuple[str, ...] = (
    ("model", "suite", "split", "protocol", "options", "transcripts", "n_clips", "n_failed")
    + tuple(c for m in METRIC_COLUMNS for c in metric_columns(m))
    + ("n_failed_by_metric", "n_flagged", "partial", "ci", "observers", "talkbench_version", "date", "source", "citation")
)
#: Block bootstrap choices: ``none`` (clips are independent) or ``speaker`` (clips of one LRS2 speaker folder,
#: the clip id's parent, are resampled together).
CI_BLOCKS: tuple[str, ...] = ("none", "speaker")


@dataclass(frozen=True)
class IntervalSettings:
    """How the summary's confidence intervals are made.

    Attributes:
        level: coverage (0 turns the intervals off).
        resamples: bootstrap resamples (set-level metrics use at most :data:`SET_LEVEL_RESAMPLES`).
        seed: seed of the resampling (the same seed gives the same intervals).
        block: ``none`` or ``speaker`` (:data:`CI_BLOCKS`).
    """

    level: float = 0.95
    resamples: int = 10_000
    seed: int = 0
    block: str = "none"

    def __post_init__(self) -> None:
        if not 0 <= self.level < 1:
            raise ValueError(f"--ci-level must be in [0, 1) (0 = no intervals), got {self.level}.")
        if self.level and self.resamples < 100:
            raise ValueError(f"--ci-resamples must be at least 100, got {self.resamples}.")
        if self.block not in CI_BLOCKS:
            raise ValueError(f"--ci-block must be one of {', '.join(CI_BLOCKS)}, got {self.block!r}.")

    @property
    def enabled(self) -> bool:
        return self.level > 0

    def label(self) -> str:
        """The ``ci`` column: e.g. ``95% percentile bootstrap over clips, 10000 resamples, seed 0``."""
        if not self.enabled:
            return ""
        unit = "speakers (block)" if self.block == "speaker" else "clips"
        return f"{100 * self.level:g}% percentile bootstrap over {unit}, {self.resamples} resamples, seed {self.seed}"


NO_INTERVALS = IntervalSettings(level=0.0)
#: Set-level metrics evaluate their statistic once per resample in Python (a Fréchet distance: ~0.02 ms each).
SET_LEVEL_RESAMPLES = 2_000

#: Loads stored feature arrays (clip id -> name -> array) for the given names; ``ResultStore.features``.
FeatureLoader = Callable[[Iterable[str]], Mapping[str, Mapping[str, np.ndarray]]]

logger = logging.getLogger(__name__)


def speaker_groups(clip_ids: Sequence[str]) -> list[str]:
    """The block of each clip for a speaker bootstrap: its id's parent folder (LRS2 ``main/<speaker>/<utt>``)."""
    return [clip_id.rsplit("/", 1)[0] if "/" in clip_id else clip_id for clip_id in clip_ids]


def clip_stats(metric: str, records: Sequence[ClipRecord], protocol: str = "talklip2023",
               features: FeatureLoader | None = None
               ) -> tuple[statistics.ClipStats, statistics.SetStatistic | None]:
    """The per-clip arrays one metric's aggregation needs, from the stored clips (with clip ids), and, for a
    set-level metric, the statistic of its summed per-clip arrays (its observer module's ``set_statistic``)."""
    spec = METRICS[metric]
    if spec.aggregation != "set":
        return statistics.ClipStats.from_rows([r.values for r in records], spec.inputs,
                                              clip_ids=[r.clip_id for r in records]), None
    observer = next(o for o in protocols.get(protocol).observer_specs([metric]))
    set_statistic = getattr(module(observer), "set_statistic", None)
    if set_statistic is None:  # no resampling statistic (FID, FVD: per-frame features): no interval, no paired test
        return statistics.ClipStats(features=np.zeros((0, 0)), clip_ids=()), None
    stored = features(observer.features) if features is not None else {}
    return statistics.ClipStats.from_features(stored, observer.features), set_statistic


def intervals(metrics: Sequence[str], records: Sequence[ClipRecord], protocol: str = "talklip2023",
              features: FeatureLoader | None = None, settings: IntervalSettings = IntervalSettings()
              ) -> dict[str, tuple[float, float]]:
    """metric column -> (lo, hi) of its confidence interval (NaN where no clip, or no interval, can be had)."""
    out: dict[str, tuple[float, float]] = {}
    if not settings.enabled:
        return out
    for metric in metrics:
        stats, set_statistic = clip_stats(metric, records, protocol, features)
        groups = speaker_groups(stats.clip_ids or ()) if settings.block == "speaker" else None
        resamples = min(settings.resamples, SET_LEVEL_RESAMPLES) if set_statistic else settings.resamples
        if stats.n < 2:
            out[metric] = (math.nan, math.nan)
            continue
        _, lo, hi = statistics.bootstrap_interval(stats, METRICS[metric].aggregation, settings.level, resamples,
                                                  settings.seed, groups=groups, set_statistic=set_statistic)
        out[metric] = (lo, hi)
    return out


def aggregate(metrics: Sequence[str], records: Iterable[ClipRecord], protocol: str = "talklip2023",
              features: FeatureLoader | None = None) -> dict[str, float]:
    """Dataset-level metrics from stored clips; each metric uses the clips that have its per-clip columns.

    Args:
        metrics: the metric columns asked for.
        records: the stored clips.
        protocol: the run's protocol (it selects the observers).
        features: loads the stored per-clip feature arrays, for set-level metrics.
    Returns:
        metric column -> value, for every asked-for column (NaN where no clip could be scored).
    """
    rows = [r.values for r in records if r.values]
    result: dict[str, float] = {}
    for spec in protocols.get(protocol).observer_specs(metrics):
        observer_module = module(spec)
        if spec.features:
            stored = features(spec.features) if features is not None else {}
            result.update(observer_module.summarize_features(stored))
        else:
            result.update(observer_module.summarize(rows))
    values = {m: float(v) for m, v in result.items() if m in METRICS}
    return {**{m: math.nan for m in metrics}, **values}


def failures_by_metric(metrics: Sequence[str], records: Sequence[ClipRecord], protocol: str = "talklip2023",
                       features: FeatureLoader | None = None) -> dict[str, int]:
    """Per requested metric, the number of stored clips it could not score (any failure, input or observer).

    A per-clip metric counts a clip as scored when the clip's row has the metric's per-clip column; a set-level
    metric when the clip's feature arrays were stored.
    """
    counts: dict[str, int] = {}
    for spec in protocols.get(protocol).observer_specs(metrics):
        scored_by_features = set(features(spec.features)) if spec.features and features is not None else set()
        for metric in spec.metrics:
            if metric.column not in metrics:
                continue
            if metric.per_clip is not None:
                counts[metric.column] = sum(1 for r in records if r.values.get(metric.per_clip) is None)
            else:
                counts[metric.column] = sum(1 for r in records if r.clip_id not in scored_by_features)
    return {m: counts[m] for m in metrics if m in counts}


def _read_once(features: FeatureLoader) -> FeatureLoader:
    """The loader, reading each set of feature arrays from the store once (the value, its interval and the failure
    count all need them)."""
    read: dict[tuple[str, ...], Mapping[str, Mapping[str, np.ndarray]]] = {}

    def load(names: Iterable[str]) -> Mapping[str, Mapping[str, np.ndarray]]:
        key = tuple(names)
        if key not in read:
            read[key] = features(key)
        return read[key]

    return load


def summary_row(meta: Mapping[str, Any], records: Sequence[ClipRecord], features: FeatureLoader | None = None,
                ci: IntervalSettings = IntervalSettings()) -> dict[str, Any]:
    """The one-row summary of a run, in :data:`SUMMARY_COLUMNS` order (metrics not run are empty).

    Args:
        meta: the run's stored settings (metrics, protocol, options, ...).
        records: its stored clips.
        features: loads its stored feature arrays (``ResultStore.features``), for set-level metrics.
        ci: how the confidence intervals are made (:data:`NO_INTERVALS` for none).
    """
    metrics = list(meta["metrics"])
    protocol = protocols.get(meta.get("protocol", "talklip2023"))
    features = _read_once(features) if features is not None else None
    values = aggregate(metrics, records, protocol.name, features)
    bounds = intervals(list(values), records, protocol.name, features, ci)  # every computed metric gets one
    failures = failures_by_metric(metrics, records, protocol.name, features)
    row: dict[str, Any] = {column: "" for column in SUMMARY_COLUMNS}
    row.update(
        model=meta.get("model", ""),
        suite=meta.get("suite", ""),
        split=meta.get("split", "test"),
        protocol=protocol.name,
        options=protocols.options_label(protocol, meta.get("options", {})),
        transcripts=suites.transcripts_label(meta.get("transcripts")),  # human, or asr:<card> (talkbench transcribe)
        n_clips=len(records),
        n_failed=sum(1 for r in records if r.error is not None),
        n_failed_by_metric=";".join(f"{m}={n}" for m, n in failures.items() if n),
        n_flagged=sum(1 for r in records if r.values.get("input_flags")),  # measure.FLAGS_COLUMN
        partial="; ".join([f"shard {k} missing" for k in meta.get("partial_missing_shards") or ()]
                          + list(meta.get("partial_unfinished_shards") or ())),
        ci=ci.label(),
        observers=";".join(f"{k}={v}" for k, v in sorted(meta.get("observers", {}).items())),
        talkbench_version=__version__,
        date=_dt.date.today().isoformat(),
        source="measured",
        citation="",
    )
    for column, value in values.items():
        row[column] = value
        lo, hi = bounds.get(column, (math.nan, math.nan))
        if math.isfinite(lo) and math.isfinite(hi):  # no interval (e.g. one clip): the cells stay empty
            row[f"{column}_lo"], row[f"{column}_hi"] = lo, hi
    return row


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write rows with a fixed column order (atomically: temp file then rename)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c, "")) for c in columns})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buffer.getvalue())
    tmp.replace(path)


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # raw float, full precision, no thousands separators
    return value


def clip_columns(records: Sequence[ClipRecord]) -> list[str]:
    """``clip_id``, then every measured column in first-seen order, then ``error``."""
    columns: list[str] = ["clip_id"]
    for record in records:
        for key in record.values:
            if key not in columns:
                columns.append(key)
    columns.append("error")
    return columns


def clip_rows(records: Sequence[ClipRecord]) -> list[dict[str, Any]]:
    """Rows of ``clips.csv``: one per stored clip."""
    return [{"clip_id": r.clip_id, **r.values, "error": r.error or ""} for r in records]
