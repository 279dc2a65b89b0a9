import math
import multiprocessing
import os
import sqlite3

import pytest

from talkbench.store import ResultStore, RunDirBusyError, RunDirError, StoreMismatchError


def test_rows_survive_reopen_and_keep_raw_floats(tmp_path):
    with ResultStore(tmp_path, {"metrics": ["psnr"]}) as store:
        store.put("b", {"psnr": 31.123456789012345, "n": 3})
        store.put("a", {"psnr": float("inf")}, None)
        store.put("c", {}, "input: broken")
    with ResultStore(tmp_path, {"metrics": ["psnr"]}) as store:
        records = list(store.records())
        assert [r.clip_id for r in records] == ["a", "b", "c"]
        assert records[1].values == {"psnr": 31.123456789012345, "n": 3}
        assert math.isinf(records[0].values["psnr"])
        assert records[2].error == "input: broken"
        assert store.finished_ids() == {"a", "b", "c"}
        assert store.finished_ids(include_failed=False) == {"a", "b"}


def test_resuming_with_other_settings_is_refused(tmp_path):
    with ResultStore(tmp_path, {"metrics": ["psnr"], "protocol": "talklip2023"}) as store:
        store.put("a", {"psnr": 30.0})
    with pytest.raises(StoreMismatchError, match="protocol"):
        ResultStore(tmp_path, {"metrics": ["psnr"], "protocol": "avhubert-official"})


def test_a_store_without_clips_takes_new_settings(tmp_path):
    # a run that stopped before its first clip (e.g. a missing checkpoint) must not block the natural retry
    ResultStore(tmp_path, {"metrics": ["wer1"], "protocol": "talklip2023", "observers": {"x": "1"}}).close()
    with ResultStore(tmp_path, {"metrics": ["wer1"], "protocol": "mini"}) as store:
        assert store.meta() == {"metrics": ["wer1"], "protocol": "mini"}


def test_input_signatures_are_stored_per_clip(tmp_path):
    with ResultStore(tmp_path, {}) as store:
        store.put("a", {"psnr": 1.0}, None, inputs={"generated": [10, 5]})
        store.put("b", {"psnr": 2.0})
    with ResultStore(tmp_path, {}) as store:
        assert store.inputs() == {"a": {"generated": [10, 5]}, "b": {}}
        assert [r.inputs for r in store.records()] == [{"generated": [10, 5]}, {}]


def test_an_old_store_without_input_signatures_is_upgraded(tmp_path):
    with sqlite3.connect(tmp_path / "store.sqlite") as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE clips (clip_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, values_json TEXT NOT NULL, "
                   "error TEXT)")
        db.execute("INSERT INTO clips VALUES ('a', 1, '{\"psnr\": 3.0}', NULL)")
    with ResultStore(tmp_path) as store:
        assert [(r.clip_id, r.values, r.inputs) for r in store.records()] == [("a", {"psnr": 3.0}, {})]
        store.put("b", {}, "input: x", inputs={"generated": [1, 2]})


def _hold_store(run_dir, ready, release):
    with ResultStore(run_dir, {"metrics": ["psnr"]}):
        ready.set()
        release.wait(30)


def test_a_second_process_is_refused_while_the_first_holds_the_run_dir(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_store, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(RunDirBusyError, match=f"pid {holder.pid}"):
            ResultStore(tmp_path, {"metrics": ["psnr"]})
    finally:
        release.set()
        holder.join(30)
    with ResultStore(tmp_path, {"metrics": ["psnr"]}) as store:  # released when the holder ended
        assert len(store) == 0


def test_a_file_as_run_dir_is_a_clear_error(tmp_path):
    target = tmp_path / "out"
    target.write_text("not a folder")
    with pytest.raises(RunDirError, match="is a file"):
        ResultStore(target, {})


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_dir_is_a_clear_error(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(RunDirError):
            ResultStore(tmp_path / "run", {})
    finally:
        tmp_path.chmod(0o700)


def test_sqlite_failures_name_the_store(tmp_path):
    (tmp_path / "store.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(RunDirError, match="store.sqlite.*cannot be used"):
        ResultStore(tmp_path, {})


def test_put_replaces_a_row_of_the_same_clip(tmp_path):
    with ResultStore(tmp_path, {}) as store:
        store.put("a", {}, "input: transient")
        store.put("a", {"psnr": 30.0})
        assert len(store) == 1
        assert list(store.records())[0].error is None
