"""talkbench.merge: shards are merged only as a complete, non-overlapping set (unless allow_partial)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from talkbench.merge import PARTIAL_KEY, merge_runs
from talkbench.store import ResultStore

META = {"metrics": ["psnr"], "model": "m", "suite": "lrs2", "split": "test", "protocol": "talklip2023",
        "generated": "/gen", "options": {}}
CLIPS = [f"main/s/{i:05d}" for i in range(10)]


def make_run(run_dir: Path, shard: tuple[int, int] | None, clips: list[str] | None = None) -> Path:
    """A run directory as `talkbench evaluate --shard K/N` leaves it (rows put directly, no evaluation)."""
    if clips is None:
        clips = CLIPS if shard is None else [c for i, c in enumerate(CLIPS) if i % shard[1] == shard[0] - 1]
    with ResultStore(run_dir, dict(META, shard=list(shard) if shard else None)) as store:
        for clip_id in clips:
            store.put(clip_id, {"psnr": 30.0 + CLIPS.index(clip_id), "psnr_talklip_compat": 31.0, "n_frames": 5})
    return run_dir


def shards(tmp_path: Path, numbers: list[int], n: int = 3) -> list[Path]:
    return [make_run(tmp_path / f"shard{k}of{n}-{i}", (k, n)) for i, k in enumerate(numbers)]


def merged_meta(out: Path) -> dict:
    with ResultStore(out) as store:
        return store.meta()


def test_complete_shards_merge_into_all_clips(tmp_path):
    summary = merge_runs(shards(tmp_path, [3, 1, 2]), tmp_path / "merged")
    assert summary["n_clips"] == 10 and summary["n_failed"] == 0
    assert summary["psnr"] == pytest.approx(sum(30.0 + i for i in range(10)) / 10)
    meta = merged_meta(tmp_path / "merged")
    assert meta["shard"] is None and PARTIAL_KEY not in meta
    with (tmp_path / "merged" / "clips.csv").open() as handle:
        assert [row["clip_id"] for row in csv.DictReader(handle)] == CLIPS


def test_missing_shards_are_refused_by_number(tmp_path):
    runs = shards(tmp_path, [1, 2])
    with pytest.raises(ValueError, match=r"missing shard\(s\) 3 of 3.*--allow-partial"):
        merge_runs(runs, tmp_path / "merged")
    assert not (tmp_path / "merged" / "summary.csv").exists()
    with pytest.raises(ValueError, match=r"missing shard\(s\) 2, 4 of 4"):
        merge_runs(shards(tmp_path, [1, 3], n=4), tmp_path / "merged4")


def test_allow_partial_records_the_missing_shards(tmp_path):
    summary = merge_runs(shards(tmp_path, [1, 2]), tmp_path / "merged", allow_partial=True)
    assert summary["n_clips"] == 7  # clips 0,1,3,4,6,7,9
    assert merged_meta(tmp_path / "merged")[PARTIAL_KEY] == [3]


def test_allow_partial_with_every_shard_records_nothing(tmp_path):
    merge_runs(shards(tmp_path, [1, 2, 3]), tmp_path / "merged", allow_partial=True)
    assert PARTIAL_KEY not in merged_meta(tmp_path / "merged")


def test_duplicate_shard_is_refused_even_with_allow_partial(tmp_path):
    runs = shards(tmp_path, [1, 2, 2, 3])
    with pytest.raises(ValueError, match=r"shard 2/3 is given twice.*shard2of3-1.*shard2of3-2"):
        merge_runs(runs, tmp_path / "merged", allow_partial=True)


def test_shards_of_different_n_are_refused(tmp_path):
    runs = shards(tmp_path, [1, 2, 3]) + shards(tmp_path, [1], n=2)
    with pytest.raises(ValueError, match=r"is shard \d/3 but .*shard1of2-0 is shard 1/2: shards of different"):
        merge_runs(runs, tmp_path / "merged", allow_partial=True)


def test_whole_run_mixed_with_shards_is_refused(tmp_path):
    runs = shards(tmp_path, [1, 2]) + [make_run(tmp_path / "whole", None)]
    with pytest.raises(ValueError, match=r"whole.*not a shard"):
        merge_runs(runs, tmp_path / "merged", allow_partial=True)
    with pytest.raises(ValueError, match="given twice"):
        merge_runs([tmp_path / "whole", tmp_path / "whole"], tmp_path / "merged2")


def test_a_single_whole_run_merges_as_itself(tmp_path):
    summary = merge_runs([make_run(tmp_path / "whole", None)], tmp_path / "merged")
    assert summary["n_clips"] == 10
    assert PARTIAL_KEY not in merged_meta(tmp_path / "merged")


def test_other_settings_are_still_refused(tmp_path):
    a = make_run(tmp_path / "a", (1, 2))
    with ResultStore(tmp_path / "b", dict(META, shard=[2, 2], protocol="mini")) as store:
        store.put(CLIPS[1], {"psnr": 1.0, "n_frames": 5})
    with pytest.raises(ValueError, match="protocol"):
        merge_runs([a, tmp_path / "b"], tmp_path / "merged")


def test_remerging_into_a_partial_merge_is_refused_unless_identical(tmp_path):
    out = tmp_path / "merged"
    merge_runs(shards(tmp_path, [1, 2]), out, allow_partial=True)
    merge_runs(shards(tmp_path, [1, 2]), out, allow_partial=True)  # the same merge again: fine
    with pytest.raises(ValueError, match=f"{PARTIAL_KEY}.*another --out"):
        merge_runs(shards(tmp_path, [1, 2, 3]), out)
    assert merged_meta(out)[PARTIAL_KEY] == [3]


def test_a_shard_without_clips_counts_as_present(tmp_path):
    """A tiny suite split in many shards: a shard's store may hold no clip (and no observers list)."""
    runs = [make_run(tmp_path / "s1", (1, 3)), make_run(tmp_path / "s2", (2, 3)), make_run(tmp_path / "s3", (3, 3), [])]
    for run in runs[:2]:
        with ResultStore(run) as store:
            store.set_meta("observers", {"syncnet-v2": "abc"})
    summary = merge_runs(runs, tmp_path / "merged")
    assert summary["n_clips"] == 7
    assert merged_meta(tmp_path / "merged")["observers"] == {"syncnet-v2": "abc"}
