"""Checkpoint loading can never change global state, build huge models, or accept garbage.

Hostile pickles are written by hand (raw opcodes) so that they do exactly one forbidden thing; every test
that could damage the test process on a vulnerable loader restores what it touches.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from talkbench.nets.checkpoint_keys import CheckpointError
from talkbench.safe_unpickle import UnsafeCheckpointError, load_checkpoint

DATA = Path(__file__).resolve().parents[1] / "talkbench" / "data" / "mini"
AVHUBERT = Path(__file__).resolve().parent / "fixtures" / "avhubert"


# ---------------------------------------------------------------------------------------------
# helpers: hand-written pickles in both torch file formats
# ---------------------------------------------------------------------------------------------

def _unicode(text: str) -> bytes:
    raw = text.encode()
    return pickle.BINUNICODE + len(raw).to_bytes(4, "little") + raw


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _slot_build(target: bytes, slots: bytes) -> bytes:
    """Protocol-2 pickle: push ``target``, BUILD it with state ``(None, {slots})``; the result is ``target``."""
    return (pickle.PROTO + b"\x02" + target + pickle.NONE + pickle.EMPTY_DICT + slots + pickle.TUPLE2 + pickle.BUILD
            + pickle.STOP)


def _defaults_payload() -> bytes:
    # _rebuild_tensor_v2.__defaults__ = ({},): every tensor loaded afterwards would get that metadata
    slots = _unicode("__defaults__") + pickle.EMPTY_DICT + pickle.TUPLE1 + pickle.SETITEM
    return _slot_build(_global("torch._utils", "_rebuild_tensor_v2"), slots)


def _namespace_payload() -> bytes:
    slots = _unicode("talkbench_evil") + pickle.BININT1 + b"\x01" + pickle.SETITEM
    return _slot_build(_global("argparse", "Namespace"), slots)


def _setitem_on_global_payload() -> bytes:
    return (pickle.PROTO + b"\x02" + _global("argparse", "Namespace") + _unicode("x") + pickle.BININT1 + b"\x01"
            + pickle.SETITEM + pickle.STOP)


def _write_zip(path: Path, data_pkl: bytes) -> Path:
    """A torch zip-format file whose data.pkl is ``data_pkl`` (other records as torch.save writes them)."""
    buffer = io.BytesIO()
    torch.save({}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            body = data_pkl if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, body, compress_type=zipfile.ZIP_STORED)
    return path


def _write_legacy(path: Path, main_pickle: bytes) -> Path:
    """A legacy (pre-1.6) torch file: magic, protocol, sys info, the main pickle, the storage key list."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    with open(path, "wb") as fh:
        for obj in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(obj, fh, protocol=2)
        fh.write(main_pickle)
        pickle.dump([], fh, protocol=2)
    return path


def _write(path: Path, main_pickle: bytes, legacy: bool) -> Path:
    return _write_legacy(path, main_pickle) if legacy else _write_zip(path, main_pickle)


def _rewrite_zip(src: Path, dst: Path, compress: int = zipfile.ZIP_STORED, extra: dict[str, bytes] | None = None
                 ) -> Path:
    """Copy a torch zip file record by record (compressed with ``compress``; ``extra`` bytes appended)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            body = zin.read(info) + (extra or {}).get(info.filename.split("/", 1)[1], b"")
            zout.writestr(info.filename, body, compress_type=compress)
    return dst


@pytest.fixture
def restore_globals():
    """Put back what a vulnerable loader would change, so one failure cannot poison other tests."""
    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    yield defaults
    torch._utils._rebuild_tensor_v2.__defaults__ = defaults
    if "talkbench_evil" in vars(argparse.Namespace):
        delattr(argparse.Namespace, "talkbench_evil")


def _clean_load_is_right(tmp_path: Path) -> None:
    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    torch.save(weights, tmp_path / "clean.pt")
    torch.save(weights, tmp_path / "clean_legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("clean.pt", "clean_legacy.pt"):
        for loaded in (load_checkpoint(tmp_path / name), torch.load(tmp_path / name, weights_only=True)):
            assert torch.equal(loaded["w"], weights["w"]) and not loaded["w"].is_neg()


# ---------------------------------------------------------------------------------------------
# 1. a checkpoint cannot change global state
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_build_on_an_allowed_function_is_refused(tmp_path, restore_globals, legacy):
    path = _write(tmp_path / "evil.pt", _defaults_payload(), legacy)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt.*BUILD"):
        load_checkpoint(path)
    assert torch._utils._rebuild_tensor_v2.__defaults__ == restore_globals == (None,)
    _clean_load_is_right(tmp_path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_build_on_an_allowed_class_is_refused(tmp_path, restore_globals, legacy):
    path = _write(tmp_path / "evil.pt", _namespace_payload(), legacy)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt.*BUILD.*argparse.Namespace"):
        load_checkpoint(path)
    assert "talkbench_evil" not in vars(argparse.Namespace)
    assert vars(argparse.Namespace(a=1)) == {"a": 1}
    _clean_load_is_right(tmp_path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_setitem_on_a_global_is_refused(tmp_path, legacy):
    path = _write(tmp_path / "evil.pt", _setitem_on_global_payload(), legacy)
    with pytest.raises(UnsafeCheckpointError, match="SETITEM"):
        load_checkpoint(path)


def test_numpy_dtype_is_never_the_shared_singleton():
    from talkbench.safe_unpickle import RestrictedUnpickler

    dtype = RestrictedUnpickler(io.BytesIO(b"")).find_class("numpy", "dtype")("f8", False, False)
    assert dtype == np.dtype("f8") and dtype is not np.dtype("f8")
    with pytest.raises(UnsafeCheckpointError):
        RestrictedUnpickler(io.BytesIO(b"")).find_class("numpy", "dtype")("O", False, True)


def test_objects_created_by_the_file_can_still_be_built(tmp_path):
    """Genuine pickles BUILD their own Namespace / numpy objects: that still works."""
    obj = {"args": argparse.Namespace(lr=0.1, arch="x"), "best": np.float64(1.5), "arr": np.arange(3.0)}
    for legacy in (False, True):
        torch.save(obj, tmp_path / "ok.pt", _use_new_zipfile_serialization=not legacy)
        loaded = load_checkpoint(tmp_path / "ok.pt")
        assert vars(loaded["args"]) == {"lr": 0.1, "arch": "x"} and loaded["best"] == 1.5
        assert np.array_equal(loaded["arr"], obj["arr"])


# ---------------------------------------------------------------------------------------------
# 4. zip bombs and storage records that do not match the pickle
# ---------------------------------------------------------------------------------------------

def test_zip_bomb_is_refused_from_the_directory(tmp_path):
    torch.save({"w": torch.zeros(400_000)}, tmp_path / "plain.pt")            # 1.6 MB of zeros
    bomb = _rewrite_zip(tmp_path / "plain.pt", tmp_path / "bomb.pt", zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 20_000                                       # ~1000x
    with pytest.raises(UnsafeCheckpointError, match="bomb.pt.*data/0.*zip bomb"):
        load_checkpoint(bomb)


def test_storage_record_larger_than_declared_is_refused(tmp_path):
    torch.save({"w": torch.ones(10)}, tmp_path / "plain.pt")
    padded = _rewrite_zip(tmp_path / "plain.pt", tmp_path / "padded.pt", extra={"data/0": b"\0" * 4000})
    # torch checks record sizes only when it copies a record; memory-mapped loads took any size
    with pytest.raises(UnsafeCheckpointError, match="padded.pt.*data/0 holds 4040 bytes.*40 bytes"):
        load_checkpoint(padded, mmap=True)
    with pytest.raises(UnsafeCheckpointError, match="padded.pt.*data/0 holds 4040 bytes.*40 bytes"):
        load_checkpoint(padded)
    assert torch.equal(load_checkpoint(tmp_path / "plain.pt")["w"], torch.ones(10))


# ---------------------------------------------------------------------------------------------
# 2. a file's config cannot size the model before it is checked; 5. missing config keys
# ---------------------------------------------------------------------------------------------

def _forbid(monkeypatch, module, name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} was built before the config was checked")
    monkeypatch.setattr(module, name, refuse)


def _mini_syncnet_file(tmp_path: Path, name: str, **changes) -> Path:
    obj = torch.load(DATA / "mini-syncnet.pt", weights_only=True)
    for key, value in changes.items():
        if value is None:
            del obj[key]
        else:
            obj[key] = value
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def test_mini_syncnet_config_is_checked_before_building(tmp_path, monkeypatch):
    from talkbench.nets import mini_syncnet as S

    _forbid(monkeypatch, S, "build_mini_syncnet")
    for changes, field in (({"width": 64.0}, "width"), ({"width": 0.25}, "width"), ({"embed_dim": 10**6}, "embed_dim"),
                           ({"embed_dim": 64}, "embed_dim")):
        path = _mini_syncnet_file(tmp_path, "big.pt", **changes)
        start = time.perf_counter()
        with pytest.raises(CheckpointError, match=f"big.pt.*{field}.*train-observer syncnet"):
            S.load_mini_syncnet(path)
        assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("key", ["width", "embed_dim", "state_dict"])
def test_mini_syncnet_missing_key_names_it(tmp_path, key):
    from talkbench.nets import mini_syncnet as S

    path = _mini_syncnet_file(tmp_path, "nokey.pt", **{key: None})
    with pytest.raises(CheckpointError, match=f"nokey.pt: the checkpoint has no `{key}` entry"):
        S.load_mini_syncnet(path)


def _lipreader_file(tmp_path: Path, name: str, config_changes: dict | None = None, drop: str | None = None,
                    nan_key: str | None = None) -> Path:
    obj = torch.load(DATA / "lipreader-a.pt", weights_only=True)
    for key, value in (config_changes or {}).items():
        if value is None:
            del obj["config"][key]
        else:
            obj["config"][key] = value
    if drop:
        del obj[drop]
    if nan_key:
        obj["state_dict"][nan_key] = obj["state_dict"][nan_key].clone()
        obj["state_dict"][nan_key].view(-1)[3] = math.nan
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def test_mini_lipreader_config_is_checked_before_building(tmp_path, monkeypatch):
    from talkbench.nets import mini_lipreader as L

    _forbid(monkeypatch, L, "MiniLipReader")
    cases = [({"dim": 96 * 64}, "config.dim"), ({"ffn": 384}, "config.ffn"), ({"layers": 3}, "config.layers"),
             ({"layers": 10**6}, "config.layers"), ({"stem": 24}, "config.stem"), ({"heads": 7}, "config.heads"),
             ({"conv_pos": 31}, "config.conv_pos")]
    for changes, field in cases:
        path = _lipreader_file(tmp_path, "big.pt", changes)
        with pytest.raises(CheckpointError, match=f"big.pt.*{field}.*train-observer lipreader"):
            L.load_lipreader(path)


def test_mini_lipreader_missing_config_key_names_it(tmp_path):
    from talkbench.nets import mini_lipreader as L

    with pytest.raises(CheckpointError, match="nokey.pt: the checkpoint has no `config.layers` entry"):
        L.load_lipreader(_lipreader_file(tmp_path, "nokey.pt", {"layers": None}))
    with pytest.raises(CheckpointError, match="noconfig.pt: the checkpoint has no `config` entry"):
        L.load_lipreader(_lipreader_file(tmp_path, "noconfig.pt", drop="config"))


def test_talklip_layer_numbers_cannot_size_the_encoder(tmp_path, monkeypatch):
    from talkbench.nets import talklip as TL

    obj = torch.load(DATA / "talklip-mini.pth", weights_only=True)
    state = obj["state_dict"]
    prefix = TL.GENERATOR_PREFIX + "encoder.layers."
    if not any(k.startswith(prefix) for k in state):
        pytest.skip("the shipped generator has no AV-HuBERT audio encoder")
    state[prefix + "99999.fc1.bias"] = torch.zeros(4)
    torch.save(obj, tmp_path / "layers.pth")
    _forbid(monkeypatch, TL, "build_generator")
    with pytest.raises(CheckpointError, match="layers.pth.*numbered.*99999"):
        TL.load_talklip_generator(tmp_path / "layers.pth")


def _avhubert_args_file(tmp_path: Path, name: str, nan_key: str | None = None, **w2v_changes) -> Path:
    from test_avhubert_common import save_official_layout

    ckpt = load_checkpoint(AVHUBERT / "checkpoint_stub.pt")
    cfg = ckpt["cfg"]
    w2v = argparse.Namespace(**{**cfg["model"]["w2v_args"]["model"], **w2v_changes})
    flat = {**cfg["task"], **{k: v for k, v in cfg["model"].items() if k != "w2v_args"}}
    flat.pop("_name")
    args = argparse.Namespace(**flat, w2v_args=w2v, arch="av_hubert_seq2seq")
    state = dict(ckpt["model"])
    if nan_key:
        state[nan_key] = state[nan_key].clone()
        state[nan_key].view(-1)[0] = math.inf
    return save_official_layout(state, tmp_path / name, cfg=None, args=args, task_state=None)


TOKENIZER = (AVHUBERT / "spm_unigram200.model", AVHUBERT / "dict.wrd.txt")


def test_avhubert_cfg_is_checked_against_the_tensors_before_building(tmp_path, monkeypatch):
    from talkbench.nets import avhubert as A

    _forbid(monkeypatch, A, "AVHubertSeq2Seq")
    for changes, field in (({"encoder_layers": 100_000}, "encoder_layers"),
                           ({"encoder_ffn_embed_dim": 10**7}, "encoder_ffn_embed_dim"),
                           ({"conv_pos": 4096}, "conv_pos")):
        path = _avhubert_args_file(tmp_path, "cfg.pt", **changes)
        with pytest.raises(CheckpointError, match=f"cfg.pt.*{field}.*avhubert-large-lrs2"):
            A.load_avhubert_seq2seq(path, tokenizer_files=TOKENIZER)


# ---------------------------------------------------------------------------------------------
# 3. non-finite weights
# ---------------------------------------------------------------------------------------------

def test_nan_in_a_mini_lipreader_is_refused_naming_the_key(tmp_path):
    from talkbench.nets import mini_lipreader as L

    path = _lipreader_file(tmp_path, "nan.pt", nan_key="encoder.layers.1.fc2.weight")
    with pytest.raises(CheckpointError, match="nan.pt: tensor `encoder.layers.1.fc2.weight` contains NaN or Inf"):
        L.load_lipreader(path)


def test_inf_in_a_mini_syncnet_is_refused(tmp_path):
    from talkbench.nets import mini_syncnet as S

    obj = torch.load(DATA / "mini-syncnet.pt", weights_only=True)
    obj["state_dict"]["netfcaud.0.bias"][2] = -math.inf
    torch.save(obj, tmp_path / "inf.pt")
    with pytest.raises(CheckpointError, match="inf.pt: tensor `netfcaud.0.bias` contains NaN or Inf"):
        S.load_mini_syncnet(tmp_path / "inf.pt")


def test_nan_in_a_talklip_generator_is_refused(tmp_path):
    from talkbench.nets.talklip import load_talklip_generator

    obj = torch.load(DATA / "talklip-mini.pth", weights_only=True)
    key = "face_decoder_blocks.2.0.conv_block.0.weight"
    obj["state_dict"][key].view(-1)[7] = math.nan
    torch.save(obj, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=f"nan.pth: tensor `{key}` contains NaN or Inf"):
        load_talklip_generator(tmp_path / "nan.pth")


def test_inf_in_an_avhubert_file_is_refused(tmp_path):
    from talkbench.nets.avhubert import load_avhubert_seq2seq

    key = "encoder.w2v_model.encoder.layers.1.fc1.weight"
    path = _avhubert_args_file(tmp_path, "inf.pt", nan_key=key)
    with pytest.raises(CheckpointError, match=f"inf.pt: tensor `{key}` contains NaN or Inf"):
        load_avhubert_seq2seq(path, tokenizer_files=TOKENIZER)


def test_broadcast_tensors_are_checked_without_expanding_them():
    from talkbench.nets.checkpoint_keys import check_state_tensors

    huge = torch.zeros(1).expand(10**6, 10**6)              # 10^12 values in 4 bytes
    check_state_tensors({"w": huge}, "x.pt", "fix")        # finite, and no 4 TB copy
    with pytest.raises(CheckpointError, match="more than 1000 values"):
        check_state_tensors({"w": huge}, "x.pt", "fix", max_elements=1000)
    with pytest.raises(CheckpointError, match="`w` contains NaN"):
        check_state_tensors({"w": torch.full((1,), math.nan).expand(10**6, 10**6)}, "x.pt", "fix")


# ---------------------------------------------------------------------------------------------
# 6. the per-run head-count note is a debug message
# ---------------------------------------------------------------------------------------------

def test_unknown_width_head_note_is_debug_only(caplog):
    from talkbench.nets.talklip import encoder_heads

    with caplog.at_level(logging.INFO, logger="talkbench.nets.talklip"):
        assert encoder_heads(64) == 4
    assert not caplog.records
    with caplog.at_level(logging.DEBUG, logger="talkbench.nets.talklip"):
        encoder_heads(64)
    assert any("assuming 4 attention heads" in r.getMessage() for r in caplog.records)


def test_expert_probe_reports_a_hostile_file(tmp_path, restore_globals):
    from talkbench.train.mini_expert import is_mini_lipreader

    path = _write(tmp_path / "evil.pt", _namespace_payload(), legacy=False)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt"):
        is_mini_lipreader(str(path))
    assert is_mini_lipreader(str(DATA / "lipreader-a.pt"))


def test_a_torchscript_archive_is_refused_before_torch_jit_runs_it(tmp_path, monkeypatch):
    # torch.load hands a TorchScript zip to torch.jit.load, which runs the archive's code: refused before that
    import torch

    from talkbench.safe_unpickle import UnsafeCheckpointError, load_checkpoint, torchscript_archive

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    plain = tmp_path / "plain.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), plain)
    assert torchscript_archive(path) and not torchscript_archive(plain)

    def jit_load(*args, **kwargs):
        raise AssertionError("torch.jit.load was reached")

    monkeypatch.setattr(torch.jit, "load", jit_load)
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        load_checkpoint(path)
    assert set(load_checkpoint(plain)) == {"weight", "bias"}
