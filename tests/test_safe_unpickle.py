"""talkbench.safe_unpickle: official checkpoints load, hostile pickles are refused without running anything."""

from __future__ import annotations

import argparse
import builtins
import collections
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from talkbench.safe_unpickle import ForeignObject, UnsafeCheckpointError, load_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "avhubert"


# ---------------------------------------------------------------------------------------------
# Hostile files: nothing may run
# ---------------------------------------------------------------------------------------------

class _Payload:
    """Pickles as a call ``func(*args)``: what an attacker puts in a checkpoint."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch_command(target: Path) -> str:
    return f"{sys.executable} -c \"open({str(target)!r}, 'w').write('pwned')\""


def _hostile_payloads(target: Path) -> dict[str, object]:
    code = f"open({str(target)!r}, 'w').write('pwned')"
    return {
        "os.system": _Payload(os.system, _touch_command(target)),
        "builtins.eval": _Payload(builtins.eval, code),
        "builtins.exec": _Payload(builtins.exec, code),
        "subprocess.Popen": _Payload(subprocess.Popen, [sys.executable, "-c", code]),
        "builtins.open": _Payload(builtins.open, str(target), "w"),
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "builtins.open"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_hostile_checkpoint_is_refused_and_nothing_runs(tmp_path, name, legacy):
    target = tmp_path / "pwned.txt"
    payload = _hostile_payloads(target)[name]
    ckpt = tmp_path / "evil.pt"
    # A checkpoint whose state dict looks normal but carries the payload among its entries.
    torch.save({"model": {"w": torch.ones(2)}, "extra": payload}, ckpt, _use_new_zipfile_serialization=not legacy)
    assert not target.exists()  # saving did not run it
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(ckpt)
    assert not target.exists(), "the payload ran"
    message = str(info.value)
    assert str(ckpt) in message and "allow-list" in message


def test_plain_pickle_with_payload_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_hostile_payloads(target)["os.system"], protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(evil)
    assert not target.exists()


def test_hand_written_protocol0_global_is_refused(tmp_path):
    # GLOBAL 'posix system' / REDUCE, written by hand (no Python object needed to craft it).
    target = tmp_path / "pwned.txt"
    raw = f"cposix\nsystem\n(V{_touch_command(target)}\ntR.".encode()
    evil = tmp_path / "evil0.pkl"
    evil.write_bytes(raw)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        load_checkpoint(evil)
    assert not target.exists()


def test_reconstructor_cannot_build_arbitrary_classes(tmp_path):
    # copy_reg._reconstructor is allowed for fairseq stand-ins only; using it on another class must fail.
    raw = b"ccopy_reg\n_reconstructor\n(ccollections\nOrderedDict\nc__builtin__\nobject\nNtR."
    evil = tmp_path / "recon.pkl"
    evil.write_bytes(raw)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(evil)


def test_whole_module_pickle_is_refused(tmp_path):
    # torch.save(model) pickles the class torch.nn.modules.linear.Linear: not data, refused.
    ckpt = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), ckpt)
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear"):
        load_checkpoint(ckpt)


# ---------------------------------------------------------------------------------------------
# Legitimate files
# ---------------------------------------------------------------------------------------------

def _sample_state() -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    return {
        "state_dict": collections.OrderedDict(
            [("conv.weight", torch.randn(4, 3, 3, 3, generator=gen)),
             ("bn.num_batches_tracked", torch.tensor(7, dtype=torch.int64)),
             ("half.weight", torch.randn(5, 6, generator=gen).half()),
             ("bf16.weight", torch.randn(3, generator=gen).to(torch.bfloat16)),
             ("mask", torch.tensor([True, False]))]),
        "param": torch.nn.Parameter(torch.arange(3.0)),
        "args": argparse.Namespace(lr=1e-4, arch="talklip"),
        "global_step": 12000,
        "best": np.float64(0.25),
        "array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "view": torch.arange(10.0)[2:8:2],  # non-contiguous view sharing storage
        "tuple": (1, 2.5, "x", None, b"bytes"),
        "set": {1, 2},
    }


def _assert_same(loaded: dict, original: dict) -> None:
    for key, tensor in original["state_dict"].items():
        got = loaded["state_dict"][key]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got, tensor)
    assert isinstance(loaded["state_dict"], collections.OrderedDict)
    assert list(loaded["state_dict"]) == list(original["state_dict"])
    assert isinstance(loaded["param"], torch.nn.Parameter) and torch.equal(loaded["param"], original["param"])
    assert loaded["args"] == original["args"]
    assert loaded["global_step"] == 12000
    assert loaded["best"] == 0.25 and isinstance(loaded["best"], np.floating)
    np.testing.assert_array_equal(loaded["array"], original["array"])
    assert loaded["array"].dtype == np.float32
    assert torch.equal(loaded["view"], torch.tensor([2.0, 4.0, 6.0]))
    assert loaded["tuple"] == original["tuple"] and loaded["set"] == {1, 2}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_plain_checkpoint_roundtrip(tmp_path, legacy):
    original = _sample_state()
    ckpt = tmp_path / "ok.pt"
    torch.save(original, ckpt, _use_new_zipfile_serialization=not legacy)
    _assert_same(load_checkpoint(ckpt), original)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_fp16_tensors_keep_dtype_and_values(tmp_path, legacy):
    half = (torch.linspace(-3, 3, 101) * 1.37).half()
    ckpt = tmp_path / "half.pt"
    torch.save({"w": half}, ckpt, _use_new_zipfile_serialization=not legacy)
    loaded = load_checkpoint(ckpt)["w"]
    assert loaded.dtype == torch.float16
    assert torch.equal(loaded, half)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_mmap_request_works_for_both_formats(tmp_path, legacy):
    original = _sample_state()
    ckpt = tmp_path / "m.pt"
    torch.save(original, ckpt, _use_new_zipfile_serialization=not legacy)
    _assert_same(load_checkpoint(ckpt, mmap=True), original)  # legacy files fall back to a normal read


def test_foreign_classes_become_inert_stand_ins(tmp_path, monkeypatch):
    # Pickle an object whose class claims to live in omegaconf, as fairseq checkpoints do.
    fake = types.ModuleType("omegaconf.dictconfig")

    class DictConfig:  # noqa: D401 - stand-in for the real omegaconf class
        def __init__(self, content):
            self._content = content

    DictConfig.__module__ = "omegaconf.dictconfig"
    DictConfig.__qualname__ = "DictConfig"
    fake.DictConfig = DictConfig
    parent = types.ModuleType("omegaconf")
    parent.__path__ = []  # a package, so that `import omegaconf.dictconfig` finds the child in sys.modules
    parent.dictconfig = fake
    monkeypatch.setitem(sys.modules, "omegaconf", parent)
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", fake)
    ckpt = tmp_path / "cfg.pt"
    torch.save({"cfg": DictConfig({"model": {"_name": "av_hubert_seq2seq"}})}, ckpt)
    monkeypatch.delitem(sys.modules, "omegaconf.dictconfig")
    monkeypatch.delitem(sys.modules, "omegaconf")
    cfg = load_checkpoint(ckpt)["cfg"]
    assert isinstance(cfg, ForeignObject)
    assert cfg.foreign_class == "omegaconf.dictconfig.DictConfig"
    assert cfg["model"]["_name"] == "av_hubert_seq2seq"  # _content reachable through the stand-in


def test_not_a_checkpoint_raises_value_error_naming_the_file(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match="notes.txt"):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError, match="--weights"):
        load_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------
# The fairseq checkpoint of the AV-HuBERT parity fixture (real fairseq/sentencepiece pickles)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stub():
    return load_checkpoint(FIXTURE / "checkpoint_stub.pt")


def test_fairseq_stub_structure(stub):
    assert set(stub) >= {"cfg", "model", "task_state", "optimizer_history", "extra_state"}
    assert stub["cfg"]["model"]["_name"] == "av_hubert_seq2seq"
    spec = json.loads((FIXTURE / "keys.json").read_text())
    model = stub["model"]
    assert [k for k, *_ in spec["keys"]] == list(model), "state-dict keys or their order differ from keys.json"
    for key, shape, dtype in spec["keys"]:
        assert list(model[key].shape) == shape, key
        assert str(model[key].dtype) == f"torch.{dtype}", key


def test_fairseq_dictionary_stand_in_keeps_symbols(stub):
    dictionary = stub["task_state"]["target_dictionary"]
    assert isinstance(dictionary, ForeignObject)
    assert dictionary.foreign_class == "fairseq.data.dictionary.Dictionary"
    state = dictionary.state
    symbols = state["symbols"]
    assert len(symbols) == 200
    assert symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert all(state["indices"][s] == i for i, s in enumerate(symbols))
    assert (state["bos_index"], state["pad_index"], state["eos_index"]) == (0, 1, 2)


def test_sentencepiece_stand_in_keeps_a_loadable_model(stub):
    import sentencepiece

    bpe = stub["task_state"]["s2s_tokenizer"]
    assert bpe.foreign_class == "fairseq.data.encoders.sentencepiece_bpe.SentencepieceBPE"
    sp_obj = bpe.state["sp"]
    assert isinstance(sp_obj, ForeignObject) and sp_obj.foreign_class == "sentencepiece.SentencePieceProcessor"
    proto = sp_obj.state["model_proto"]
    assert isinstance(proto, bytes) and len(proto) > 1000
    sp = sentencepiece.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto)
    assert sp.GetPieceSize() == 200
    # The dictionary and the tokenizer agree: fairseq index == sentencepiece id.
    symbols = stub["task_state"]["target_dictionary"].state["symbols"]
    ids = sp.EncodeAsIds("the meeting is about to start")
    assert ids and all(symbols[i] == sp.IdToPiece(i) for i in ids)


def test_loading_the_stub_imports_no_foreign_library(stub):
    # The stand-ins are talkbench classes; fairseq/omegaconf code is neither imported nor needed.
    assert "fairseq" not in sys.modules and "omegaconf" not in sys.modules
    dictionary = stub["task_state"]["target_dictionary"]
    assert type(dictionary).__module__ == "talkbench.safe_unpickle"
    assert not hasattr(dictionary, "encode_line")  # no behaviour of the original class came along
