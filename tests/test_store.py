import math

import pytest

from talkbench.store import ResultStore, StoreMismatchError


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
    ResultStore(tmp_path, {"metrics": ["psnr"], "protocol": "talklip2023"}).close()
    with pytest.raises(StoreMismatchError, match="protocol"):
        ResultStore(tmp_path, {"metrics": ["psnr"], "protocol": "avhubert-official"})


def test_put_replaces_a_row_of_the_same_clip(tmp_path):
    with ResultStore(tmp_path, {}) as store:
        store.put("a", {}, "input: transient")
        store.put("a", {"psnr": 30.0})
        assert len(store) == 1
        assert list(store.records())[0].error is None
