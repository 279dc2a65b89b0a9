"""``talkbench merge``: combine the run directories of shards into the summary of a single run.

The shards must be one complete set: every ``K`` of ``1..N`` exactly once, all of the same ``N``, all
run with the same settings (each shard's store records ``shard: [K, N]``). A set with missing shards
is refused, naming them, unless ``allow_partial=True``: then the merged store's meta records the missing
shard numbers under :data:`PARTIAL_KEY` (a sorted list of ints; the key is absent when the set is
complete), so that the summary can say the numbers cover only part of the suite. A shard given twice,
shards of different ``N`` and a whole run (no ``--shard``) mixed with shards are always refused. A single
whole run "merges" as itself; two whole runs are the same shard twice.

The merged run directory is derived from the shards alone: merging into an ``out`` whose store already
holds clips is accepted only when that store was written by the same merge (identical settings, identical
missing shards, no clip that the shards lack); anything else is refused rather than mixed. Each row keeps
the input signature and the feature arrays (set-level metrics) its shard stored with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from talkbench.evaluate import CLIPS_KEY, export
from talkbench.store import STORE_NAME, ResultStore
from talkbench.summary import IntervalSettings

#: Settings that may differ between shards of one run.
_PER_SHARD_KEYS = ("shard", CLIPS_KEY)
#: Meta key of a ``--allow-partial`` merge of shards that did not finish: ``["<dir> holds k of its n clips", ...]``.
UNFINISHED_KEY = "partial_unfinished_shards"
#: Meta key of a merged store: the shard numbers that were missing (only with ``allow_partial``).
PARTIAL_KEY = "partial_missing_shards"


def _shard_of(run_dir: Path, meta: dict[str, Any]) -> tuple[int, int] | None:
    """``(K, N)`` of a shard's store, or None for a whole run (no ``--shard``)."""
    shard = meta.get("shard")
    if shard is None:
        return None
    try:
        k, n = (int(x) for x in shard)
    except (TypeError, ValueError):
        raise ValueError(f"{run_dir}: stored shard {shard!r} is not [K, N]; "
                         "this store was not written by `talkbench evaluate --shard K/N`.") from None
    if not 1 <= k <= n:
        raise ValueError(f"{run_dir}: stored shard {k}/{n} is out of range (1 <= K <= N).")
    return k, n


def _missing_shards(run_dirs: Sequence[Path], shards: Sequence[tuple[int, int] | None]) -> list[int]:
    """Missing shard numbers of a set of shards (empty when complete).

    Raises:
        ValueError: a shard given twice, shards of different N, or a whole run mixed with shards.
    """
    given: dict[tuple[int, int] | None, Path] = {}
    for run_dir, shard in zip(run_dirs, shards):
        if shard in given:
            what = "the whole run (no --shard)" if shard is None else f"shard {shard[0]}/{shard[1]}"
            raise ValueError(f"{what} is given twice: {given[shard]} and {run_dir}; "
                             "pass each shard's run directory once.")
        given[shard] = run_dir
    if None in given and len(given) > 1:
        other_dir, other = next((d, s) for s, d in given.items() if s is not None)
        raise ValueError(f"{given[None]} is a whole run (not a shard) but {other_dir} is shard {other[0]}/{other[1]}; "
                         "merge only the shard run directories of one sharded run.")
    if None in given:
        return []
    split = {shard: run_dir for shard, run_dir in given.items() if shard is not None}
    by_total: dict[int, tuple[Path, tuple[int, int]]] = {}
    for (k, n), run_dir in split.items():
        by_total.setdefault(n, (run_dir, (k, n)))
    if len(by_total) > 1:
        (dir_a, (ka, na)), (dir_b, (kb, nb)) = list(by_total.values())[:2]
        raise ValueError(f"{dir_a} is shard {ka}/{na} but {dir_b} is shard {kb}/{nb}: shards of different "
                         "--shard K/N splits cannot be combined; merge the shards of one split.")
    n = next(iter(by_total))
    present = {k for k, _ in split}
    return [k for k in range(1, n + 1) if k not in present]


def merge_runs(run_dirs: Sequence[Path], out: Path, allow_partial: bool = False,
               ci: IntervalSettings = IntervalSettings()) -> dict[str, Any]:
    """Merge shard stores into ``out`` (store, clips.csv, summary.csv); returns the summary row.

    Args:
        run_dirs: the shards' run directories (any order), or a single whole run.
        out: the run directory to write.
        allow_partial: merge even when shards are missing; their numbers are stored in the merged
            store's meta under :data:`PARTIAL_KEY`.
        ci: how the merged summary's confidence intervals are made.
    Raises:
        ValueError: a directory holds no store, the shards were run with different settings, a shard is
            missing (without ``allow_partial``) or given twice, shards of different ``N`` or a whole run
            are mixed, two shards hold different results for the same clip, or ``out`` holds another run.
    """
    if not run_dirs:
        raise ValueError("merge needs at least one run directory.")
    run_dirs = [Path(d) for d in run_dirs]
    out = Path(out)
    metas: list[dict[str, Any]] = []
    shard_ids: set[str] = set()
    empty: list[bool] = []
    unfinished: list[str] = []
    for run_dir in run_dirs:
        if not (run_dir / STORE_NAME).is_file():
            raise ValueError(f"{run_dir}: no {STORE_NAME} here; pass run directories written by `talkbench evaluate`.")
        with ResultStore(run_dir) as store:
            metas.append(store.meta())
            ids = store.finished_ids()
        shard_ids |= ids
        empty.append(not ids)
        expected = metas[-1].get(CLIPS_KEY)
        if expected is not None and len(ids) < int(expected):
            unfinished.append(f"{run_dir} holds {len(ids)} of its {expected} clips")
    if unfinished and not allow_partial:
        raise ValueError("unfinished shard(s): " + "; ".join(unfinished) + ". Run the same `talkbench evaluate` "
                         "command for them again (it resumes), or --allow-partial to merge what is there.")
    # a shard without clips never built its observers: it may lack their checkpoint list
    first = next((i for i, is_empty in enumerate(empty) if not is_empty), 0)
    common = {k: v for k, v in metas[first].items() if k not in _PER_SHARD_KEYS}
    for run_dir, meta, is_empty in zip(run_dirs, metas, empty):
        other = {k: v for k, v in meta.items() if k not in _PER_SHARD_KEYS}
        if is_empty and "observers" not in other and "observers" in common:
            other["observers"] = common["observers"]
        if other != common:
            differing = sorted(k for k in set(common) | set(other) if common.get(k) != other.get(k))
            raise ValueError(f"{run_dir}: run with other settings than {run_dirs[first]} ({', '.join(differing)}).")
    missing = _missing_shards(run_dirs, [_shard_of(d, m) for d, m in zip(run_dirs, metas)])
    n_total = len(missing) + len(run_dirs)  # N: every given shard is distinct
    if missing and not allow_partial:
        raise ValueError(f"missing shard(s) {', '.join(map(str, missing))} of {n_total}: got only "
                         f"{len(run_dirs)} of {n_total} shard run directories ({', '.join(map(str, run_dirs))}). "
                         "Pass every shard's run directory (re-run the missing shards first), or --allow-partial "
                         "to merge what is there (the merged run then records the missing shards).")
    merged_meta = dict(common, shard=None)
    merged_meta.pop(PARTIAL_KEY, None)
    merged_meta.pop(CLIPS_KEY, None)
    if missing:
        merged_meta[PARTIAL_KEY] = missing
    if unfinished:
        merged_meta[UNFINISHED_KEY] = unfinished
    _check_out(out, merged_meta, shard_ids)
    seen: dict[str, Any] = {}
    with ResultStore(out, merged_meta) as target:
        for run_dir in run_dirs:
            with ResultStore(run_dir) as source:
                features = source.features()
                for record in source.records():
                    key = (record.values, record.error)
                    if record.clip_id in seen and seen[record.clip_id] != key:
                        raise ValueError(f"{run_dir}: clip {record.clip_id} differs from another shard's row.")
                    seen[record.clip_id] = key
                    target.put(record.clip_id, record.values, record.error, inputs=record.inputs,
                               features=features.get(record.clip_id))
        return export(out, target, ci)


def _check_out(out: Path, merged_meta: dict[str, Any], shard_ids: set[str]) -> None:
    """Refuse an ``out`` whose store holds another run (other settings, other missing shards, other clips)."""
    if not (out / STORE_NAME).is_file():
        return
    with ResultStore(out) as existing:
        stored = existing.meta()
        held = existing.finished_ids()
    if not held:
        return  # an empty store takes the new settings
    stale = sorted(held - shard_ids)
    wanted = json.loads(json.dumps(merged_meta, sort_keys=True))
    differing = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if differing:
        details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {wanted.get(k)!r}" for k in differing)
        raise ValueError(f"{out}: already holds a run with other settings ({details}). "
                         "Use another --out directory, or delete this one to merge again.")
    if stale:
        raise ValueError(f"{out}: holds {len(stale)} clip(s) that none of the given shards has "
                         f"(first: {', '.join(stale[:5])}); it is not this merge's output. "
                         "Use another --out directory, or delete this one to merge again.")
