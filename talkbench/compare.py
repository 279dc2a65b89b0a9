"""``talkbench compare RUN_A RUN_B``: is B better than A on the same clips, metric by metric?

Clips are paired by id. For every metric both runs have, the difference ``B − A``, its paired-bootstrap
interval and p-value (the share of resamples in which B is *not* better than A, so a small p says B is
better; :func:`talkbench.statistics.paired_bootstrap`), and, for word error rates, the matched-pairs
sentence-segment word error test (MAPSSWE, sentence-level, :func:`talkbench.statistics.mapsswe`; two-sided).
Runs are refused when they differ in suite, protocol, options that change numbers or clip set (the message
says which clips are missing on which side): a difference would then not be the models'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from talkbench import protocols, statistics
from talkbench.observers import METRICS, module
from talkbench.store import STORE_NAME, ClipRecord, ResultStore
from talkbench.summary import IntervalSettings, clip_stats, speaker_groups

#: How many missing clip ids a refusal names.
_NAMED = 5
#: Metrics whose per-clip inputs are word edit counts: MAPSSWE applies.
_WORD_ERROR_INPUTS = {("edits", "edits1"), ("edits", "edits2")}


class CompareError(ValueError):
    """The two runs cannot be compared (other suite, protocol, options or clips); the message says what differs."""


@dataclass(frozen=True)
class MetricComparison:
    """One metric of run B against run A.

    Attributes:
        metric: the column.
        direction: which way is better (``higher``, ``lower``, ``zero``).
        a, b: the two runs' values on the common clips.
        difference: ``b − a``.
        lo, hi: the paired-bootstrap interval of the difference.
        p_value: P(B not better than A), from the paired bootstrap.
        n_clips: clips that both runs scored for this metric.
        mapsswe_w, mapsswe_p: the MAPSSWE statistic and two-sided p-value (word error rates only, else NaN).
    """

    metric: str
    direction: str
    a: float
    b: float
    difference: float
    lo: float
    hi: float
    p_value: float
    n_clips: int
    mapsswe_w: float = math.nan
    mapsswe_p: float = math.nan

    def row(self) -> dict[str, Any]:
        """A flat dict for CSV/JSON/table output."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class StoredRun:
    """A run directory read once: its settings, its clips and its per-clip feature arrays."""

    path: Path
    meta: dict[str, Any]
    records: list[ClipRecord]
    features: dict[str, dict[str, Any]]

    def feature_loader(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored feature arrays of ``names`` (as ``ResultStore.features``)."""
        return {c: {n: a for n, a in f.items() if n in names} for c, f in self.features.items()}


def load_run(run_dir: Path) -> StoredRun:
    """Read a run directory's store once (to compare it with several others).

    Raises:
        CompareError: not a run directory.
    """
    if not (Path(run_dir) / STORE_NAME).is_file():
        raise CompareError(f"{run_dir}: no {STORE_NAME} here; pass run directories written by `talkbench evaluate`.")
    with ResultStore(run_dir) as store:
        return StoredRun(Path(run_dir), store.meta(), list(store.records()), store.features())


def check_comparable(meta_a: dict[str, Any], meta_b: dict[str, Any], ids_a: set[str], ids_b: set[str],
                     names: tuple[str, str]) -> None:
    """Refuse runs of other suites, protocols, options or clip sets.

    Raises:
        CompareError: what differs, with the first clip ids missing on each side.
    """
    problems = []
    settings_a, settings_b = meta_a.get("suite_settings", {}), meta_b.get("suite_settings", {})
    if meta_a.get("suite") != meta_b.get("suite") or settings_a.get("reference") != settings_b.get("reference"):
        problems.append(f"suite: {meta_a.get('suite')} at {settings_a.get('reference')} vs {meta_b.get('suite')} at "
                        f"{settings_b.get('reference')}")
    if meta_a.get("protocol") != meta_b.get("protocol"):
        problems.append(f"protocol: {meta_a.get('protocol')} vs {meta_b.get('protocol')}")
    else:
        protocol = protocols.get(meta_a.get("protocol", "talklip2023"))
        label_a = protocols.options_label(protocol, meta_a.get("options", {}))
        label_b = protocols.options_label(protocol, meta_b.get("options", {}))
        if label_a != label_b:
            problems.append(f"options: {label_a or 'protocol defaults'} vs {label_b or 'protocol defaults'}")
    for side, missing in ((names[1], sorted(ids_a - ids_b)), (names[0], sorted(ids_b - ids_a))):
        if missing:
            more = ", …" if len(missing) > _NAMED else ""
            problems.append(f"{len(missing)} clip(s) missing in {side} (first: {', '.join(missing[:_NAMED])}{more})")
    if problems:
        raise CompareError(f"{names[0]} and {names[1]} cannot be compared clip by clip: " + "; ".join(problems) + ".")


def compare_runs(run_a: Path | StoredRun, run_b: Path | StoredRun, ci: IntervalSettings = IntervalSettings(),
                 metrics: Sequence[str] | None = None) -> list[MetricComparison]:
    """Compare run B with run A on their common clips, for every metric both computed (or ``metrics``).

    Args:
        run_a, run_b: run directories, or runs already read with :func:`load_run`.
    Raises:
        CompareError: not run directories, or runs that differ in suite, protocol, options or clips.
    """
    a = run_a if isinstance(run_a, StoredRun) else load_run(run_a)
    b = run_b if isinstance(run_b, StoredRun) else load_run(run_b)
    meta_a, records_a, features_a = a.meta, a.records, a.feature_loader
    meta_b, records_b, features_b = b.meta, b.records, b.feature_loader
    check_comparable(meta_a, meta_b, {r.clip_id for r in records_a}, {r.clip_id for r in records_b},
                     (str(a.path), str(b.path)))
    protocol = meta_a.get("protocol", "talklip2023")
    shared = [m for m in meta_a["metrics"] if m in meta_b["metrics"]]
    wanted = list(metrics) if metrics else _with_companions(shared, protocol)
    results = []
    for metric in wanted:
        spec = METRICS[metric]
        stats_a, set_statistic = clip_stats(metric, records_a, protocol, features_a)
        if spec.aggregation == "set" and set_statistic is None:
            results.append(_without_resampling(metric, protocol, a, b))
            continue
        stats_b, _ = clip_stats(metric, records_b, protocol, features_b)
        stats_a, stats_b = statistics.common_clips(stats_a, stats_b)
        groups = speaker_groups(stats_a.clip_ids or ()) if ci.block == "speaker" else None
        paired = statistics.paired_bootstrap(stats_a, stats_b, spec.aggregation, spec.direction, ci.level or 0.95,
                                             ci.resamples, ci.seed, groups=groups, set_statistic=set_statistic)
        w, p = math.nan, math.nan
        if spec.aggregation in ("corpus", "utterance-mean") and set(spec.inputs) & _WORD_ERROR_INPUTS:
            w, p = statistics.mapsswe(stats_a.edits, stats_b.edits)
        results.append(MetricComparison(metric, spec.direction, paired.a, paired.b, paired.difference, paired.lo,
                                        paired.hi, paired.p_value, stats_a.n, w, p))
    return results


def _without_resampling(metric: str, protocol: str, a: StoredRun, b: StoredRun) -> MetricComparison:
    """A set-level metric whose observer has no resampling statistic (FID, FVD: one ``sqrtm`` of a 2048² matrix
    per value): both values on the common clips and their difference, without interval or p-value."""
    spec = METRICS[metric]
    observer = protocols.get(protocol).observer_specs([metric])[0]
    common = {r.clip_id for r in a.records} & {r.clip_id for r in b.records}
    values = [module(observer).summarize_features({c: f for c, f in run.feature_loader(observer.features).items()
                                                   if c in common})[metric] for run in (a, b)]
    return MetricComparison(metric, spec.direction, values[0], values[1], values[1] - values[0], math.nan, math.nan,
                            math.nan, len(common), math.nan, math.nan)


def _with_companions(metrics: Sequence[str], protocol: str) -> list[str]:
    """The asked metrics and the others their observers produce (``wer1`` brings ``cer1``), in summary order."""
    produced = {m.column for spec in protocols.get(protocol).observer_specs(metrics) for m in spec.metrics}
    return [m for m in METRICS if m in produced]


__all__ = ["CompareError", "MetricComparison", "StoredRun", "check_comparable", "compare_runs", "load_run"]
