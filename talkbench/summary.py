"""The summary row of a run: fixed schema, raw floats, provenance columns.

The per-metric aggregation belongs to each observer module (module-level ``summarize(rows)``), so
that a run, a resumed run and a merge of shards all compute the summary with the same code from the
stored per-clip rows, without loading any network.

Each metric's aggregate uses every clip whose row has that metric's per-clip column: a clip on which
one observer failed still counts in the other observers' metrics. ``n_failed`` counts the clips with any
error; ``n_failed_by_metric`` says, per requested metric, how many clips it could not score.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from talkbench import __version__, protocols
from talkbench.observers import METRIC_COLUMNS, METRICS, module
from talkbench.store import ClipRecord

#: Columns of ``summary.csv`` and of the leaderboard, in this order: the metric columns come from the specs.
SUMMARY_COLUMNS: tuple[str, ...] = (
    ("model", "suite", "split", "protocol", "options", "n_clips", "n_failed") + METRIC_COLUMNS
    + ("n_failed_by_metric", "partial", "observers", "talkbench_version", "date", "source", "citation")
)

#: Loads stored feature arrays (clip id -> name -> array) for the given names; ``ResultStore.features``.
FeatureLoader = Callable[[Iterable[str]], Mapping[str, Mapping[str, np.ndarray]]]


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


def summary_row(meta: Mapping[str, Any], records: Sequence[ClipRecord], features: FeatureLoader | None = None
                ) -> dict[str, Any]:
    """The one-row summary of a run, in :data:`SUMMARY_COLUMNS` order (metrics not run are empty).

    Args:
        meta: the run's stored settings (metrics, protocol, options, ...).
        records: its stored clips.
        features: loads its stored feature arrays (``ResultStore.features``), for set-level metrics.
    """
    metrics = list(meta["metrics"])
    protocol = protocols.get(meta.get("protocol", "talklip2023"))
    values = aggregate(metrics, records, protocol.name, features)
    failures = failures_by_metric(metrics, records, protocol.name, features)
    row: dict[str, Any] = {column: "" for column in SUMMARY_COLUMNS}
    row.update(
        model=meta.get("model", ""),
        suite=meta.get("suite", ""),
        split=meta.get("split", "test"),
        protocol=protocol.name,
        options=protocols.options_label(protocol, meta.get("options", {})),
        n_clips=len(records),
        n_failed=sum(1 for r in records if r.error is not None),
        n_failed_by_metric=";".join(f"{m}={n}" for m, n in failures.items() if n),
        partial=",".join(f"shard {k} missing" for k in meta.get("partial_missing_shards") or ()),
        observers=";".join(f"{k}={v}" for k, v in sorted(meta.get("observers", {}).items())),
        talkbench_version=__version__,
        date=_dt.date.today().isoformat(),
        source="measured",
        citation="",
    )
    for column, value in values.items():
        row[column] = value
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
