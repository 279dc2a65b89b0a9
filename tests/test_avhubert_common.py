"""Shared helpers of the AV-HuBERT tests (and a few checks of the helpers themselves).

The parity checkpoint is rebuilt here: the fixture's ``checkpoint_stub.pt`` (official layout, zero tensors)
with its ``model`` entry replaced by the stand-in recipe's values (seed 0, keys.json order) and saved again
in the same layout, with fairseq's classes pickled under their fairseq names, so that the loader under test
reads it exactly as it would read an official file.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from recipe import filled_state_dict

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "avhubert"


@functools.lru_cache(maxsize=None)
def expected_json() -> dict[str, Any]:
    return json.loads((FIXTURE / "expected.json").read_text())


@functools.lru_cache(maxsize=None)
def arrays(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURE / name) as data:
        return {k: data[k] for k in data.files}


@contextlib.contextmanager
def _fake_fairseq_modules() -> Iterator[dict[str, type]]:
    """Temporarily register empty ``fairseq.*`` modules with stand-in classes so that pickle writes the
    official global names (fairseq itself is never installed)."""
    names = ["fairseq", "fairseq.data", "fairseq.data.dictionary", "fairseq.data.encoders",
             "fairseq.data.encoders.sentencepiece_bpe"]
    added = [n for n in names if n not in sys.modules]
    for n in added:
        sys.modules[n] = types.ModuleType(n)
    classes: dict[str, type] = {}
    for qualified in ("fairseq.data.dictionary.Dictionary", "fairseq.data.encoders.sentencepiece_bpe.SentencepieceBPE"):
        module, name = qualified.rsplit(".", 1)
        cls = type(name, (), {"__module__": module, "__qualname__": name})
        setattr(sys.modules[module], name, cls)
        classes[qualified] = cls
    try:
        yield classes
    finally:
        for n in added:
            sys.modules.pop(n, None)


def _repickleable(obj: Any, classes: dict[str, type]) -> Any:
    """Turn safe_unpickle stand-ins back into objects that pickle under their original class names."""
    import sentencepiece as spm

    from talkbench.safe_unpickle import ForeignObject

    if isinstance(obj, ForeignObject):
        if obj.foreign_class == "sentencepiece.SentencePieceProcessor":
            state = obj.state["model_proto"] if isinstance(obj.state, dict) else obj.state
            return spm.SentencePieceProcessor(model_proto=state)
        instance = classes[obj.foreign_class].__new__(classes[obj.foreign_class])
        instance.__dict__.update(_repickleable(obj.state, classes))
        return instance
    if isinstance(obj, dict):
        return type(obj)((k, _repickleable(v, classes)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_repickleable(v, classes) for v in obj]
    return obj


def save_official_layout(state_dict: dict[str, torch.Tensor], out_path: Path,
                         stub: Path = FIXTURE / "checkpoint_stub.pt", **replace: Any) -> Path:
    """Write ``state_dict`` in the stub's fairseq checkpoint layout (cfg, task_state, ... unchanged unless
    given in ``replace``)."""
    from talkbench.safe_unpickle import load_checkpoint

    ckpt = load_checkpoint(stub)
    with _fake_fairseq_modules() as classes:
        ckpt = _repickleable(ckpt, classes)
        ckpt["model"] = collections.OrderedDict(state_dict)
        ckpt.update(replace)
        torch.save(ckpt, out_path)
    return out_path


@functools.lru_cache(maxsize=1)
def _filled_checkpoint_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    with _fake_fairseq_modules() as classes:
        from talkbench.safe_unpickle import load_checkpoint

        ckpt = _repickleable(load_checkpoint(FIXTURE / "checkpoint_stub.pt"), classes)
        ckpt["model"] = collections.OrderedDict(filled_state_dict(FIXTURE / "keys.json"))
        torch.save(ckpt, buffer)
    return buffer.getvalue()


def filled_checkpoint(directory: Path) -> Path:
    """The parity checkpoint (recipe weights, official layout) written into ``directory``."""
    path = directory / "avhubert_tiny_filled.pt"
    if not path.exists():
        path.write_bytes(_filled_checkpoint_bytes())
    return path


@functools.lru_cache(maxsize=1)
def loaded_parity_model():
    """(model, tokenizer) loaded through the official-file loader from the filled checkpoint (cached per session)."""
    import tempfile

    from talkbench.nets.avhubert import load_avhubert_seq2seq

    with tempfile.TemporaryDirectory() as tmp:
        path = filled_checkpoint(Path(tmp))
        model, tokenizer = load_avhubert_seq2seq(path)
        # assign=True keeps memory-mapped tensors; detach them from the temporary file before it goes
        for p in list(model.parameters()) + list(model.buffers()):
            p.data = p.data.clone()
    return model, tokenizer


def video_of(clip: str) -> torch.Tensor:
    from talkbench.nets.avhubert import video_input

    return video_input(arrays("inputs.npz")[f"{clip}.input_gray_uint8_crop88"])


# --------------------------------------------------------------------------------------------------------
# checks of the helpers
# --------------------------------------------------------------------------------------------------------

def test_filled_checkpoint_reloads_with_recipe_values_and_official_globals(tmp_path: Path) -> None:
    from talkbench.safe_unpickle import load_checkpoint

    path = filled_checkpoint(tmp_path)
    ckpt = load_checkpoint(path)
    assert set(ckpt) == {"args", "cfg", "model", "criterion", "optimizer_history", "task_state", "extra_state"}
    assert ckpt["task_state"]["target_dictionary"].foreign_class == "fairseq.data.dictionary.Dictionary"
    sp = ckpt["task_state"]["s2s_tokenizer"].state["sp"]
    assert sp.foreign_class == "sentencepiece.SentencePieceProcessor"
    spec = json.loads((FIXTURE / "keys.json").read_text())
    assert list(ckpt["model"]) == [k for k, *_ in spec["keys"]]
    ref = filled_state_dict(FIXTURE / "keys.json")
    key = "encoder.w2v_model.encoder.pos_conv.0.weight_v"
    assert torch.equal(ckpt["model"][key], ref[key])
    assert "fairseq" not in sys.modules
