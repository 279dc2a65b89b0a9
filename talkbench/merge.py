"""``talkbench merge``: combine the run directories of shards into the summary of a single run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from talkbench.evaluate import export
from talkbench.store import STORE_NAME, ResultStore

#: Settings that may differ between shards of one run.
_PER_SHARD_KEYS = ("shard",)


def merge_runs(run_dirs: Sequence[Path], out: Path) -> dict[str, Any]:
    """Merge shard stores into ``out`` (store, clips.csv, summary.csv); returns the summary row.

    Raises:
        ValueError: a directory holds no store, the shards were run with different settings, or two
            shards hold different results for the same clip.
    """
    if not run_dirs:
        raise ValueError("merge needs at least one run directory.")
    metas: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        if not (Path(run_dir) / STORE_NAME).is_file():
            raise ValueError(f"{run_dir}: no {STORE_NAME} here; pass run directories written by `talkbench evaluate`.")
        with ResultStore(run_dir) as store:
            metas.append(store.meta())
    common = {k: v for k, v in metas[0].items() if k not in _PER_SHARD_KEYS}
    for run_dir, meta in zip(run_dirs[1:], metas[1:]):
        other = {k: v for k, v in meta.items() if k not in _PER_SHARD_KEYS}
        if other != common:
            differing = sorted(k for k in set(common) | set(other) if common.get(k) != other.get(k))
            raise ValueError(f"{run_dir}: run with other settings than {run_dirs[0]} ({', '.join(differing)}).")
    merged_meta = dict(common, shard=None)
    seen: dict[str, Any] = {}
    with ResultStore(out, merged_meta) as target:
        for run_dir in run_dirs:
            with ResultStore(run_dir) as source:
                for record in source.records():
                    key = (record.values, record.error)
                    if record.clip_id in seen and seen[record.clip_id] != key:
                        raise ValueError(f"{run_dir}: clip {record.clip_id} differs from another shard's row.")
                    seen[record.clip_id] = key
                    target.put(record.clip_id, record.values, record.error)
        return export(Path(out), target)
