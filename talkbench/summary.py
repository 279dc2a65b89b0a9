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
import importlib
import io
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from talkbench import __version__
from talkbench.observers import observer_modules
from talkbench.store import ClipRecord

#: Columns of ``summary.csv`` and of the leaderboard, in this order.
METRIC_COLUMNS: tuple[str, ...] = (
    "psnr", "psnr_talklip_compat", "ssim", "lse_c", "lse_d", "av_offset",
    "wer1", "cer1", "wer2", "wer2_corpus", "acc", "acc_top5",
)
SUMMARY_COLUMNS: tuple[str, ...] = (
    ("model", "suite", "split", "protocol", "n_clips", "n_failed") + METRIC_COLUMNS
    + ("n_failed_by_metric", "partial", "observers", "talkbench_version", "date", "source", "citation")
)
#: The per-clip column whose presence says a clip was scored for a metric that has no per-clip value of its own.
PER_CLIP_COLUMN: dict[str, str] = {"wer2_corpus": "wer2"}
#: Whether a higher value is better, per metric column (for ranking and charts).
HIGHER_IS_BETTER: dict[str, bool] = {
    "psnr": True, "psnr_talklip_compat": True, "ssim": True, "lse_c": True, "lse_d": False,
    "av_offset": False, "wer1": False, "cer1": False, "wer2": False, "wer2_corpus": False,
    "acc": True, "acc_top5": True,
}
#: Metrics whose best value is 0 (an audio-visual offset in frames): ranked by absolute value.
ZERO_IS_BEST: frozenset[str] = frozenset({"av_offset"})


def aggregate(metrics: Sequence[str], records: Iterable[ClipRecord], protocol: str = "talklip2023") -> dict[str, float]:
    """Dataset-level metrics from stored clips; each metric uses the clips that have its per-clip columns.

    Args:
        metrics: the metric columns asked for.
        records: the stored clips.
        protocol: the run's protocol (it selects the observer modules).
    Returns:
        metric column -> value, for every column the involved observer modules produce.
    """
    rows = [r.values for r in records if r.values]
    result: dict[str, float] = {}
    for module_name in observer_modules(metrics, protocol):
        module = importlib.import_module(module_name)
        if rows:
            result.update(module.summarize(rows))
    return result


def failures_by_metric(metrics: Sequence[str], records: Sequence[ClipRecord]) -> dict[str, int]:
    """Per requested metric, the number of stored clips without a value for it (any failure, input or observer)."""
    counts: dict[str, int] = {}
    for metric in metrics:
        column = PER_CLIP_COLUMN.get(metric, metric)
        counts[metric] = sum(1 for r in records if r.values.get(column) is None)
    return counts


def summary_row(meta: Mapping[str, Any], records: Sequence[ClipRecord]) -> dict[str, Any]:
    """The one-row summary of a run, in :data:`SUMMARY_COLUMNS` order (metrics not run are empty)."""
    metrics = list(meta["metrics"])
    values = aggregate(metrics, records, meta.get("protocol", "talklip2023"))
    row: dict[str, Any] = {column: "" for column in SUMMARY_COLUMNS}
    row.update(
        model=meta.get("model", ""),
        suite=meta.get("suite", ""),
        split=meta.get("split", "test"),
        protocol=meta.get("protocol", ""),
        n_clips=len(records),
        n_failed=sum(1 for r in records if r.error is not None),
        n_failed_by_metric=";".join(f"{m}={n}" for m, n in failures_by_metric(metrics, records).items() if n),
        partial=",".join(f"shard {k} missing" for k in meta.get("partial_missing_shards") or ()),
        observers=";".join(f"{k}={v}" for k, v in sorted(meta.get("observers", {}).items())),
        talkbench_version=__version__,
        date=_dt.date.today().isoformat(),
        source="measured",
        citation="",
    )
    for column in METRIC_COLUMNS:
        if column in values:
            row[column] = float(values[column])
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
