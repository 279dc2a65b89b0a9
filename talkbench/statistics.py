"""Uncertainty of summary metrics: bootstrap intervals over clips, paired comparisons of runs, MAPSSWE, Holm.

Pure math on per-clip arrays (numpy + scipy, no I/O, nothing else from talkbench: a contract of pyproject.toml
checks it): the caller reads the stored per-clip rows (or feature arrays) of a run, builds a :class:`ClipStats`
with :meth:`ClipStats.from_rows` (the metric's ``MetricSpec.inputs`` say which row keys it needs) or
:meth:`ClipStats.from_features`, and asks for an interval with :func:`bootstrap_interval` or a comparison of two
runs with :func:`paired_bootstrap`. The vocabulary of metrics it works with (:data:`Aggregation`,
:data:`Direction`) is declared here and used by the observers' specs (:class:`talkbench.observers.base.MetricSpec`).

How the bootstrap works here. A resample draws the suite's clips with replacement; it is stored as the
number of times each clip is drawn (a row of an ``R×n`` count matrix, :func:`resample_counts`). Every
per-clip aggregation is a ratio of two sums over clips, ``scale · Σ cᵢ·aᵢ / Σ cᵢ·bᵢ``, so one matrix product
``counts @ [a b]`` per chunk of resamples gives all of them at once:

==================  ==========================  ================================  =====
aggregation         per-clip inputs             statistic of counts c             scale
==================  ==========================  ================================  =====
``clip-mean``       value v                     Σc·v / Σc                         1
``frame-mean``      value v, weight w (frames)  Σc·v·w / Σc·w                     1
``corpus``          edits e, units u            Σc·e / Σc·u  (Bisani & Ney 2004)  100
``utterance-mean``  edits e, units u            Σc·(e/u) / Σc                     100
``accuracy``        hit h ∈ {0, 1}              Σc·h / Σc                         100
``set``             sufficient statistics S     f(Σc·S)  (f from the caller)      —
==================  ==========================  ================================  =====

With ``groups`` (a label per clip, e.g. the LRS2 speaker) the resample is a **block bootstrap**: groups are
drawn with replacement and a clip is drawn as often as its group (Peng & Liu, "Statistical Testing on ASR
Performance via Blockwise Bootstrap", Interspeech 2020, arXiv:1912.09508). Use it when clips of one group are
correlated (utterances of one speaker); the plain bootstrap then understates the uncertainty.

Intervals are **percentile** intervals of the bootstrap distribution; the point estimate is the statistic of
the full sample (every clip once), which is what the observer modules' ``summarize`` compute. Resamples are
seeded with ``numpy.random.default_rng(seed)`` and do not depend on the chunk size (a memory knob only).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator, Literal, Mapping, Sequence

import numpy as np
from scipy import stats as _scipy_stats

logger = logging.getLogger(__name__)

#: Which value of a metric is best: the highest, the lowest, or the one closest to zero (an offset).
Direction = Literal["higher", "lower", "zero"]
#: How a metric's dataset value is made from the clips (the protocol's aggregation):
#: ``clip-mean`` mean over clips; ``frame-mean`` mean over all frames of all clips; ``corpus`` Σ edits / Σ reference
#: units over the corpus; ``utterance-mean`` mean of per-utterance ratios; ``accuracy`` share of clips right;
#: ``set`` a statistic of features pooled over the whole suite (e.g. a Fréchet distance).
Aggregation = Literal["clip-mean", "frame-mean", "corpus", "utterance-mean", "accuracy", "set"]

#: Which :class:`ClipStats` fields each aggregation reads (``features`` for ``set``).
FIELDS_BY_AGGREGATION: dict[str, tuple[str, ...]] = {
    "clip-mean": ("values",),
    "frame-mean": ("values", "weights"),
    "corpus": ("edits", "units"),
    "utterance-mean": ("edits", "units"),
    "accuracy": ("hits",),
    "set": ("features",),
}

#: Bytes one ``chunk×n`` int64/float64 work array may take; four such arrays live at once while counting
#: (drawn indices, bincount, int32 counts, float64 counts), so a chunk stays under ~30 MB whatever n.
CHUNK_BYTES = 8 * 2 ** 20

#: A set-level statistic: summed per-clip sufficient statistics ``(d,)`` -> the metric's value.
SetStatistic = Callable[[np.ndarray], float]
#: ``(n,)`` a group label per clip (any hashable, e.g. the LRS2 speaker) for a block bootstrap.
Groups = Sequence[Hashable] | np.ndarray

_RATE_SCALE = {"clip-mean": 1.0, "frame-mean": 1.0, "corpus": 100.0, "utterance-mean": 100.0, "accuracy": 100.0}


# ------------------------------------------------------------------------------------------------ per-clip inputs

def _array(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array (one value per clip), but got shape {array.shape}.")
    return array


@dataclass(frozen=True)
class ClipStats:
    """The per-clip arrays one metric needs, aligned by clip (all of length n; absent fields are None).

    Attributes:
        values: ``(n,)`` float64 per-clip value (``clip-mean``, ``frame-mean``: the clip's mean over its frames).
        weights: ``(n,)`` float64 per-clip weight (``frame-mean``: the number of frames).
        edits: ``(n,)`` float64 edit counts (``corpus``, ``utterance-mean``).
        units: ``(n,)`` float64 reference words or characters (``corpus``, ``utterance-mean``).
        hits: ``(n,)`` float64, 1 for a right clip and 0 for a wrong one (``accuracy``).
        features: ``(n, d)`` float64 additive sufficient statistics per clip (``set``).
        clip_ids: the clips' ids in this order, or None when unknown (used to align two runs).
    """

    values: np.ndarray | None = None
    weights: np.ndarray | None = None
    edits: np.ndarray | None = None
    units: np.ndarray | None = None
    hits: np.ndarray | None = None
    features: np.ndarray | None = None
    clip_ids: tuple[str, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        lengths = {}
        for name in ("values", "weights", "edits", "units", "hits"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _array(value, name))
                lengths[name] = len(getattr(self, name))
        if self.features is not None:
            features = np.asarray(self.features, dtype=np.float64)
            if features.ndim != 2:
                raise ValueError(f"`features` must be an n×d array, but got shape {features.shape}.")
            object.__setattr__(self, "features", features)
            lengths["features"] = len(features)
        if self.clip_ids is not None:
            object.__setattr__(self, "clip_ids", tuple(self.clip_ids))
            lengths["clip_ids"] = len(self.clip_ids)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"ClipStats arrays must have one entry per clip, but got lengths {lengths}.")

    @property
    def n(self) -> int:
        """Number of clips."""
        for name in ("values", "weights", "edits", "units", "hits", "features", "clip_ids"):
            value = getattr(self, name)
            if value is not None:
                return len(value)
        return 0

    def subset(self, index: np.ndarray | Sequence[int]) -> ClipStats:
        """The clips at ``index`` (integer positions), in that order."""
        index = np.asarray(index, dtype=np.intp)
        picked = {name: None if getattr(self, name) is None else getattr(self, name)[index]
                  for name in ("values", "weights", "edits", "units", "hits", "features")}
        ids = None if self.clip_ids is None else tuple(self.clip_ids[i] for i in index)
        return ClipStats(**picked, clip_ids=ids)

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]], inputs: Sequence[tuple[str, str]],
                  clip_ids: Sequence[str] | None = None) -> ClipStats:
        """A metric's per-clip arrays from stored per-clip rows (dicts, as ``ClipRecord.values``).

        A clip counts when its row holds every input key with a non-None value, and (for a ``weights``
        input) a positive weight: the same clips the observer's ``summarize`` uses.

        Args:
            rows: per-clip rows, in the order the clips should have (the store's is by clip id).
            inputs: ``((field, row key), ...)``: the metric's ``MetricSpec.inputs``.
            clip_ids: the rows' clip ids (same length as ``rows``), kept for the counted clips.
        Raises:
            ValueError: no inputs (a set-level metric: :meth:`from_features`), or ``clip_ids`` of another length.
        """
        if not inputs:
            raise ValueError("ClipStats.from_rows needs the metric's per-clip inputs (MetricSpec.inputs); set-level "
                             "metrics use ClipStats.from_features.")
        if clip_ids is not None and len(clip_ids) != len(rows):
            raise ValueError(f"`clip_ids` must give one id per row: {len(clip_ids)} ids for {len(rows)} rows.")
        columns: dict[str, list[float]] = {name: [] for name, _ in inputs}
        kept: list[str] = []
        for i, row in enumerate(rows):
            raw = {name: row.get(key) for name, key in inputs}
            if any(v is None for v in raw.values()) or ("weights" in raw and not float(raw["weights"]) > 0):
                continue
            for name, value in raw.items():
                columns[name].append(float(value))
            if clip_ids is not None:
                kept.append(clip_ids[i])
        return cls(**{name: np.asarray(v, dtype=np.float64) for name, v in columns.items()},
                   clip_ids=tuple(kept) if clip_ids is not None else None)

    @classmethod
    def from_features(cls, features: Mapping[str, Mapping[str, np.ndarray]], names: Sequence[str]) -> ClipStats:
        """Per-clip sufficient statistics of a set-level metric, from stored feature arrays.

        Clips are taken in sorted clip-id order (the order ``summarize_features`` adds them in) and only those
        holding every named array; each clip's arrays are flattened and concatenated in ``names`` order, so
        for ``fd_colour`` (``colour_generated``, ``colour_reference``: 73 values each) ``features`` is ``n×146``.

        Args:
            features: clip id -> feature name -> array (as ``ResultStore.features``).
            names: the metric's feature names (its ``ObserverSpec.features``).
        """
        ids = [clip_id for clip_id in sorted(features) if all(name in features[clip_id] for name in names)]
        if not ids:
            return cls(features=np.zeros((0, 0)), clip_ids=())
        matrix = np.stack([np.concatenate([np.asarray(features[clip_id][name], dtype=np.float64).ravel()
                                           for name in names]) for clip_id in ids])
        return cls(features=matrix, clip_ids=tuple(ids))


def common_clips(stats_a: ClipStats, stats_b: ClipStats) -> tuple[ClipStats, ClipStats]:
    """Both runs restricted to the clips they share, in the order of ``stats_a`` (a paired test needs this).

    Raises:
        ValueError: either side has no ``clip_ids``.
    """
    if stats_a.clip_ids is None or stats_b.clip_ids is None:
        raise ValueError("common_clips needs clip_ids on both sides (ClipStats.from_rows(..., clip_ids=...)).")
    position_b = {clip_id: i for i, clip_id in enumerate(stats_b.clip_ids)}
    index_a = [i for i, clip_id in enumerate(stats_a.clip_ids) if clip_id in position_b]
    index_b = [position_b[stats_a.clip_ids[i]] for i in index_a]
    return stats_a.subset(index_a), stats_b.subset(index_b)


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in FIELDS_BY_AGGREGATION:
        raise ValueError(f"Argument `aggregation` must be one of {', '.join(FIELDS_BY_AGGREGATION)}, but got "
                         f"{aggregation!r}.")


def _ratio_parts(stats: ClipStats, aggregation: str) -> np.ndarray:
    """``(n, 2)`` float64 [numerator, denominator] per clip whose count-weighted sums give the statistic.

    Raises:
        ValueError: a field the aggregation needs is missing, or (``utterance-mean``) an empty reference.
    """
    missing = [name for name in FIELDS_BY_AGGREGATION[aggregation] if getattr(stats, name) is None]
    if missing:
        raise ValueError(f"aggregation {aggregation!r} needs ClipStats field(s) {', '.join(missing)}.")
    ones = np.ones(stats.n)
    if aggregation == "clip-mean":
        return np.stack([stats.values, ones], axis=1)
    if aggregation == "frame-mean":
        return np.stack([stats.values * stats.weights, stats.weights], axis=1)
    if aggregation == "corpus":
        return np.stack([stats.edits, stats.units], axis=1)
    if aggregation == "utterance-mean":
        empty = np.flatnonzero(stats.units == 0)
        if empty.size:
            raise ValueError(f"utterance-mean: clip(s) {empty[:5].tolist()} have an empty reference (rate undefined).")
        return np.stack([stats.edits / stats.units, ones], axis=1)
    return np.stack([stats.hits, ones], axis=1)  # accuracy


def _ratio(numerator: np.ndarray, denominator: np.ndarray, aggregation: str) -> np.ndarray:
    """``scale·numerator/denominator``, NaN where the denominator is 0; rounded in the order the summarize
    functions use (``corpus_rate``: ``(100·Σe)/Σu``; the means: ``100·(Σh/n)``), so integer sums agree exactly."""
    scale = _RATE_SCALE[aggregation]
    safe = np.where(denominator > 0, denominator, 1.0)
    value = (scale * numerator) / safe if aggregation == "corpus" else scale * (numerator / safe)
    return np.where(denominator > 0, value, np.nan)


def point_estimate(stats: ClipStats, aggregation: Aggregation,
                   set_statistic: SetStatistic | None = None) -> float:
    """The metric over the full sample (every clip once), as the observer's ``summarize`` computes it.

    Sums run in clip order (numpy's pairwise sum for per-clip arrays, sequential for set-level features, as
    ``summarize_features``), so values agree with ``summarize`` to rounding (~1e-15 relative) and exactly for
    the integer-count aggregations. NaN without clips or with an empty denominator (no reference words).

    Raises:
        ValueError: unknown aggregation, a missing field, or ``set`` without ``set_statistic``.
    """
    _check_aggregation(aggregation)
    if aggregation == "set":
        if set_statistic is None:
            raise ValueError("aggregation 'set' needs `set_statistic` (summed statistics -> value).")
        if stats.features is None or stats.n == 0:
            return math.nan
        total = np.zeros(stats.features.shape[1])
        for row in stats.features:  # sequential, in clip-id order: the same sum as summarize_features
            total = total + row
        return float(set_statistic(total))
    if stats.n == 0:
        return math.nan
    sums = _ratio_parts(stats, aggregation).sum(axis=0)
    return float(_ratio(sums[:1], sums[1:], aggregation)[0])


# ------------------------------------------------------------------------------------------------ resampling

def _auto_chunk(n_items: int, n_resamples: int) -> int:
    return int(max(1, min(n_resamples, CHUNK_BYTES // (8 * max(n_items, 1)))))


def resample_counts(n_items: int, n_resamples: int, seed: int = 0, groups: Groups | None = None,
                    chunk: int | None = None) -> Iterator[np.ndarray]:
    """Bootstrap resamples as count matrices: how many times each item is drawn in each resample.

    Plain bootstrap: each resample draws ``n_items`` items uniformly with replacement (a multinomial of n over
    n). Block bootstrap (``groups`` given): each resample draws the ``g`` distinct groups uniformly with
    replacement, ``g`` times, and an item's count is its group's count (so the number of items drawn varies).

    The draws come from one ``numpy.random.default_rng(seed)`` stream (``integers`` then ``bincount``), so the
    same seed gives the same resamples whatever ``chunk`` is.

    Args:
        n_items: n, the number of clips.
        n_resamples: R, the number of resamples.
        seed: the generator's seed.
        groups: ``(n,)`` a group label per item (any hashable, e.g. the speaker), or None.
        chunk: resamples per yielded matrix; None = as many as fit :data:`CHUNK_BYTES` per int64 work array
            (804 for n = 1,243: about 8 MB each, under 30 MB in all).
    Yields:
        int32 ``(m, n_items)`` count matrices, ``m <= chunk``, R rows in all; each row sums to ``n_items``
        (plain) or to the sizes of the drawn groups (block).
    Raises:
        ValueError: negative sizes, ``chunk < 1``, or ``groups`` not of length ``n_items``.
    """
    if n_items < 0 or n_resamples < 0:
        raise ValueError(f"Arguments `n_items` and `n_resamples` must be >= 0, but got {n_items}, {n_resamples}.")
    if chunk is None:
        chunk = _auto_chunk(n_items, n_resamples)
    if chunk < 1:
        raise ValueError(f"Argument `chunk` must be >= 1, but got {chunk}.")
    inverse: np.ndarray | None = None
    n_draw = n_items
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape != (n_items,):
            raise ValueError(f"Argument `groups` must hold one label per item ({n_items}), but got shape "
                             f"{labels.shape}.")
        _, inverse = np.unique(labels, return_inverse=True)
        inverse = inverse.reshape(-1)
        n_draw = int(inverse.max()) + 1 if n_items else 0
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - start)
        if n_draw == 0:
            yield np.zeros((m, n_items), dtype=np.int32)
            continue
        # int64 draws: numpy then takes 32-bit words from the generator's own buffer, so the stream does not
        # depend on how the resamples are split into chunks (int32 draws would drop a buffered word per call).
        drawn = rng.integers(0, n_draw, size=(m, n_draw), dtype=np.int64)
        drawn += (np.arange(m, dtype=np.int64) * n_draw)[:, None]
        counts = np.bincount(drawn.ravel(), minlength=m * n_draw).reshape(m, n_draw).astype(np.int32)
        yield counts if inverse is None else counts[:, inverse]


# ------------------------------------------------------------------------------------------------ distributions

def _replicates(runs: Sequence[ClipStats], aggregation: str, n_resamples: int, seed: int,
                groups: Groups | None, set_statistic: SetStatistic | None,
                chunk: int | None) -> np.ndarray:
    """``(k, R)`` bootstrap replicates of the statistic of each of k runs, all under the same resamples."""
    n = runs[0].n
    if any(run.n != n for run in runs):
        raise ValueError(f"paired runs must hold the same clips, but got {[run.n for run in runs]} clips.")
    out = np.empty((len(runs), n_resamples))
    if aggregation == "set":
        if set_statistic is None:
            raise ValueError("aggregation 'set' needs `set_statistic` (summed statistics -> value).")
        if any(run.features is None for run in runs):
            raise ValueError("aggregation 'set' needs ClipStats.features.")
        matrices = [run.features for run in runs]
        row = 0
        for counts in resample_counts(n, n_resamples, seed, groups, chunk):
            weights = counts.astype(np.float64)
            summed = [weights @ matrix for matrix in matrices]  # k × (m, d): every resample's sums at once
            for j in range(len(counts)):
                for k, sums in enumerate(summed):
                    try:
                        out[k, row + j] = set_statistic(sums[j])
                    except (ValueError, np.linalg.LinAlgError) as err:
                        logger.debug("set statistic failed on resample %d: %s", row + j, err)
                        out[k, row + j] = math.nan
            row += len(counts)
        return out
    parts = np.concatenate([_ratio_parts(run, aggregation) for run in runs], axis=1)  # (n, 2k)
    row = 0
    for counts in resample_counts(n, n_resamples, seed, groups, chunk):
        sums = counts.astype(np.float64) @ parts  # (m, 2k): every resample's sums in one product
        out[:, row:row + len(counts)] = _ratio(sums[:, 0::2], sums[:, 1::2], aggregation).T
        row += len(counts)
    return out


def _finite_inputs(run: ClipStats, aggregation: str) -> bool:
    arrays = [getattr(run, name) for name in FIELDS_BY_AGGREGATION[aggregation]]
    return all(a is None or bool(np.isfinite(a).all()) for a in arrays)


def bootstrap_distribution(stats: ClipStats, aggregation: Aggregation, n_resamples: int = 10_000, seed: int = 0,
                           groups: Groups | None = None,
                           set_statistic: SetStatistic | None = None, chunk: int | None = None) -> np.ndarray:
    """The statistic under each bootstrap resample of the clips: ``(R,)`` float64 (NaN where undefined).

    For per-clip aggregations all resamples come from one matrix product per chunk (10,000 resamples of
    1,243 clips: ~0.07 s on the 2-core benchmark machine, 0.055 s of it drawing the counts). For ``set`` the
    summed statistics come from one product per chunk and ``set_statistic`` is called once per resample in a
    Python loop (``fd_colour``: ~0.02 ms per call; 1,000 resamples of 1,243 clips take ~0.04 s in all; see
    benchmarks/bench_statistics.py); a resample on which it raises ValueError/LinAlgError gives NaN.

    Args:
        stats: the run's per-clip arrays (n clips).
        aggregation: the metric's aggregation (its ``MetricSpec.aggregation``).
        n_resamples: R.
        seed: seed of :func:`resample_counts`.
        groups: ``(n,)`` group labels for a block bootstrap, or None.
        set_statistic: for ``set``: summed ``(d,)`` statistics -> value (e.g. ``fd_colour``'s Fréchet distance).
        chunk: resamples per matrix product (None: automatic, see :func:`resample_counts`).
    Raises:
        ValueError: unknown aggregation or a field it needs is missing.
    """
    _check_aggregation(aggregation)
    return _replicates([stats], aggregation, n_resamples, seed, groups, set_statistic, chunk)[0]


def _percentiles(replicates: np.ndarray, level: float, what: str) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if finite.size < replicates.size:
        logger.warning("%s: %d of %d resamples have no defined value (e.g. no reference words drawn); the "
                       "interval uses the others.", what, replicates.size - finite.size, replicates.size)
    if finite.size == 0:
        return math.nan, math.nan
    alpha = 1.0 - level
    lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _check_level(level: float, n_resamples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"Argument `level` must be in (0, 1), but got {level}.")
    if n_resamples < 1:
        raise ValueError(f"Argument `n_resamples` must be >= 1, but got {n_resamples}.")


def bootstrap_interval(stats: ClipStats, aggregation: Aggregation, level: float = 0.95, n_resamples: int = 10_000,
                       seed: int = 0, groups: Groups | None = None,
                       set_statistic: SetStatistic | None = None,
                       chunk: int | None = None) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap interval of a summary metric.

    The point estimate is the full-sample statistic (:func:`point_estimate`, equal to the observer's
    ``summarize``); ``lo`` and ``hi`` are the ``(1−level)/2`` and ``(1+level)/2`` quantiles (numpy's linear
    interpolation) of the statistic over ``n_resamples`` resamples of the clips (:func:`bootstrap_distribution`;
    a block bootstrap with ``groups``). The percentile interval is not forced to contain the point.

    Returns:
        ``(point, lo, hi)`` in the metric's unit; all NaN without clips; ``lo``/``hi`` NaN when a per-clip
        input is not finite (e.g. an infinite PSNR: the resampled means are not defined).
    Raises:
        ValueError: bad ``level``/``n_resamples``, unknown aggregation or a missing field.
    """
    _check_level(level, n_resamples)
    point = point_estimate(stats, aggregation, set_statistic)
    if stats.n == 0:
        return math.nan, math.nan, math.nan
    if not _finite_inputs(stats, aggregation):
        logger.warning("%s: non-finite per-clip inputs; no interval.", aggregation)
        return point, math.nan, math.nan
    replicates = bootstrap_distribution(stats, aggregation, n_resamples, seed, groups, set_statistic, chunk)
    lo, hi = _percentiles(replicates, level, aggregation)
    return point, lo, hi


# ------------------------------------------------------------------------------------------------ comparisons

@dataclass(frozen=True)
class PairedResult:
    """Run B against run A on the same clips.

    Attributes:
        a: A's point estimate.
        b: B's point estimate.
        difference: ``b − a`` (for direction ``zero`` too: the raw difference; the p-value compares |b| and |a|).
        lo: lower bound of the percentile bootstrap interval of ``b − a``.
        hi: upper bound.
        p_value: share of resamples in which B is **not** better than A (ties count as not better).
        n_resamples: resamples used.
    """

    a: float
    b: float
    difference: float
    lo: float
    hi: float
    p_value: float
    n_resamples: int


def _not_better(rep_a: np.ndarray, rep_b: np.ndarray, direction: str) -> np.ndarray:
    if direction == "higher":
        return rep_b <= rep_a
    if direction == "lower":
        return rep_b >= rep_a
    return np.abs(rep_b) >= np.abs(rep_a)  # zero: closer to 0 is better


def paired_bootstrap(stats_a: ClipStats, stats_b: ClipStats, aggregation: Aggregation, direction: Direction,
                     level: float = 0.95, n_resamples: int = 10_000, seed: int = 0,
                     groups: Groups | None = None,
                     set_statistic: SetStatistic | None = None, chunk: int | None = None) -> PairedResult:
    """Paired bootstrap comparison of two runs on the same clips (Koehn 2004; Bisani & Ney 2004).

    Each resample draws the clips once and evaluates **both** runs on that draw, so the difference
    distribution keeps the pairing (clip difficulty cancels). ``p_value`` is the bootstrap estimate of
    P(B not better than A) under the metric's ``direction`` (``higher``, ``lower``, or ``zero`` = smaller
    absolute value is better): below 0.05, B is better with 95 % confidence (one-sided); identical runs give 1.
    This is Koehn's reading of the bootstrap distribution, not a test of a null-centred one; for a classical
    two-sided test on word errors see :func:`mapsswe`, and correct for many comparisons with :func:`holm`.

    Args:
        stats_a: run A's per-clip arrays, ``(n,)`` each.
        stats_b: run B's, aligned with A clip by clip (see :func:`common_clips`).
        aggregation: the metric's aggregation.
        direction: the metric's direction.
        level, n_resamples, seed, groups, set_statistic, chunk: as :func:`bootstrap_interval`.
    Returns:
        :class:`PairedResult`; NaN fields without clips.
    Raises:
        ValueError: the runs differ in length or clip ids, unknown direction or aggregation.
    """
    _check_level(level, n_resamples)
    _check_aggregation(aggregation)
    if direction not in ("higher", "lower", "zero"):
        raise ValueError(f"Argument `direction` must be one of higher, lower, zero, but got {direction!r}.")
    if stats_a.n != stats_b.n:
        raise ValueError(f"paired runs must hold the same clips, but got {stats_a.n} and {stats_b.n} clips.")
    if stats_a.clip_ids is not None and stats_b.clip_ids is not None and stats_a.clip_ids != stats_b.clip_ids:
        raise ValueError("paired runs must hold the same clips in the same order (see common_clips).")
    a = point_estimate(stats_a, aggregation, set_statistic)
    b = point_estimate(stats_b, aggregation, set_statistic)
    if stats_a.n == 0:
        return PairedResult(a, b, math.nan, math.nan, math.nan, math.nan, 0)
    if not (_finite_inputs(stats_a, aggregation) and _finite_inputs(stats_b, aggregation)):
        logger.warning("%s: non-finite per-clip inputs; no paired comparison.", aggregation)
        return PairedResult(a, b, b - a, math.nan, math.nan, math.nan, 0)
    rep_a, rep_b = _replicates([stats_a, stats_b], aggregation, n_resamples, seed, groups, set_statistic, chunk)
    defined = np.isfinite(rep_a) & np.isfinite(rep_b)
    lo, hi = _percentiles(np.where(defined, rep_b - rep_a, np.nan), level, f"paired {aggregation}")
    p_value = float(_not_better(rep_a[defined], rep_b[defined], direction).mean()) if defined.any() else math.nan
    return PairedResult(a, b, b - a, lo, hi, p_value, n_resamples)


def mapsswe(edits_a: np.ndarray | Sequence[int], edits_b: np.ndarray | Sequence[int]) -> tuple[float, float]:
    """Matched-pairs sentence-segment word error (MAPSSWE) test, in its sentence-level form.

    NIST SCTK's ``sc_stats -t mapsswe`` (Gillick & Cox 1989; Pallett et al. 1990) cuts each aligned sentence
    into segments bounded by runs of words both systems got right (``min_num_good`` = 2) and tests the
    per-segment error differences. Here the segments are the whole sentences (talkbench keeps per-clip edit
    counts, not alignments): with ``zᵢ = edits_a[i] − edits_b[i]``, ``μ = mean(z)``, ``s² = Σ(zᵢ−μ)²/(n−1)``,

        ``W = μ / (s/√n)``,  two-sided ``p = 2·(1 − Φ(|W|))``,

    as sc_stats' ``calc_mean_var_std_dev_Zstat`` and ``conf`` compute them; like sc_stats, ``W = 0`` (p = 1)
    when all differences are equal (zero variance). ``W > 0`` means B made fewer errors.

    Args:
        edits_a: ``(n,)`` per-utterance error counts of run A.
        edits_b: ``(n,)`` of run B, same utterances.
    Returns:
        ``(W, p_value)``; NaN for fewer than 2 utterances.
    Raises:
        ValueError: arrays of different shapes or not 1-D.
    """
    a, b = _array(edits_a, "edits_a"), _array(edits_b, "edits_b")
    if a.shape != b.shape:
        raise ValueError(f"mapsswe needs the same utterances: {len(a)} and {len(b)} counts.")
    z = a - b
    n = len(z)
    if n < 2:
        return math.nan, math.nan
    mean = float(z.mean())
    squares = float(((z - mean) ** 2).sum())
    if squares == 0.0:
        return 0.0, 1.0
    w = mean / (math.sqrt(squares / (n - 1)) / math.sqrt(n))
    return w, float(2.0 * _scipy_stats.norm.sf(abs(w)))


def holm(p_values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (family-wise error control over m tests).

    Sorted ascending, ``p̃₍ᵢ₎ = max_{j≤i} min(1, (m − j + 1)·p₍ⱼ₎)``; reject where ``p̃ <= α``. NaN entries are
    left NaN and do not count in m.

    Args:
        p_values: ``(m,)`` raw p-values.
    Returns:
        ``(m,)`` adjusted p-values, in the input order.
    """
    p = _array(p_values, "p_values")
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    if finite.size == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted
