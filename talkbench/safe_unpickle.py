"""Open official checkpoints (torch.save pickles, fairseq's included) without running foreign code.

``torch.load(weights_only=False)`` on a file from the internet can execute anything. Official
AV-HuBERT files also pickle fairseq, omegaconf and sentencepiece objects, which ``weights_only=True``
refuses. This module's unpickler resolves only an allow-list of globals (tensor/storage rebuilders,
``OrderedDict``, ``argparse.Namespace`` and a few inert builtins). Classes of fairseq, omegaconf and
sentencepiece become :class:`ForeignObject` stand-ins that keep the pickled state (a fairseq
``Dictionary``'s symbols, a SentencePiece model's serialized bytes) and run none of its code. Any
other global (``os.system``, ``builtins.eval``, ...) raises :class:`UnsafeCheckpointError`.
"""

from __future__ import annotations

import argparse
import collections
import logging
import pickle
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint refers to a global outside the allow-list; nothing of it was executed."""


#: Module prefixes whose classes are replaced by inert stand-ins (their state is kept, no code runs).
FOREIGN_PREFIXES: tuple[str, ...] = ("fairseq.", "omegaconf.", "sentencepiece", "hydra.")


class ForeignObject:
    """Inert stand-in for a pickled object of a foreign library (fairseq, omegaconf, sentencepiece).

    Attributes:
        foreign_class: ``"module.Class"`` of the original object.
        args: positional arguments the pickle passed to the constructor (NEWOBJ / REDUCE).
        state: what the pickle restored with ``__setstate__`` (usually the instance ``__dict__``).
    """

    foreign_class = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "ForeignObject":
        # NEWOBJ calls cls.__new__(cls, *args) without __init__: keep the arguments here.
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __getitem__(self, key: Any) -> Any:  # omegaconf DictConfig-like access to the kept state
        content = self.content()
        return content[key]

    def content(self) -> Any:
        """The payload: for dict-like states, ``state`` itself or its ``_content`` (omegaconf)."""
        state = self.state
        if isinstance(state, dict) and "_content" in state:
            return state["_content"]
        return state

    def __repr__(self) -> str:
        return f"<ForeignObject {self.foreign_class}>"


_foreign_classes: dict[str, type] = {}


def _foreign_class(module: str, name: str) -> type:
    qualified = f"{module}.{name}"
    if qualified not in _foreign_classes:
        _foreign_classes[qualified] = type(name, (ForeignObject,), {"foreign_class": qualified})
    return _foreign_classes[qualified]


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """Protocol 0/1 object reconstruction (``copy_reg._reconstructor``) restricted to stand-ins."""
    if not (isinstance(cls, type) and issubclass(cls, ForeignObject)) or base is not object:
        raise UnsafeCheckpointError(f"refusing to reconstruct {cls!r} from base {base!r}")
    return cls()


def _rebuild_from_type_v2(func: Any, new_type: type, args: tuple, state: Any) -> Any:
    if func not in (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter):
        raise UnsafeCheckpointError(f"refusing tensor rebuild through {func!r}")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): torch.Size,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "float32"): torch.float32,
    ("torch", "float16"): torch.float16,
    ("_codecs", "encode"): lambda text, encoding="latin1": text.encode(encoding),
    ("__builtin__", "long"): int,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
}
for _storage in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool"):
    _ALLOWED[("torch", f"{_storage}Storage")] = getattr(torch, f"{_storage}Storage")


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy scalars/arrays sometimes appear in training state (e.g. a best loss as numpy.float64)."""
    import numpy as np

    allowed: dict[tuple[str, str], Any] = {}
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(core, "scalar")] = _numpy_scalar
        allowed[(core, "_reconstruct")] = _numpy_reconstruct
    allowed[("numpy", "dtype")] = np.dtype
    allowed[("numpy", "ndarray")] = np.ndarray
    return allowed


def _numpy_scalar(dtype: Any, data: bytes | None = None) -> Any:
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeCheckpointError(f"refusing numpy scalar of dtype {dtype!r}")
    return np.frombuffer(data or b"", dtype=dtype, count=1)[0]


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    import numpy as np

    if subtype is not np.ndarray:
        raise UnsafeCheckpointError(f"refusing numpy array subclass {subtype!r}")
    core = np._core if hasattr(np, "_core") else np.core  # numpy >= 2 renamed core to _core
    return core.multiarray._reconstruct(subtype, shape, dtype)


_ALLOWED.update(_numpy_globals())


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only allow-listed globals and inert foreign stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        # Protocol-2 pickles (torch.save's default) name Python 3 builtins with Python 2's module name.
        if module == "__builtin__" and ("builtins", name) in _ALLOWED:
            return _ALLOWED[("builtins", name)]
        if any(module == p.rstrip(".") or module.startswith(p) for p in FOREIGN_PREFIXES):
            return _foreign_class(module, name)
        raise UnsafeCheckpointError(
            f"checkpoint refers to `{module}.{name}`, which is not on talkbench's allow-list; "
            "it was not executed. If this file is a genuine checkpoint, report the name."
        )


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""

    __name__ = "talkbench_restricted_pickle"
    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """Load a ``torch.save`` file (zip or legacy format) with the restricted unpickler.

    Args:
        path: checkpoint file.
        map_location: where tensors go (``"cpu"`` by default).
        mmap: memory-map the tensor data (zip format only) so a large checkpoint is not held twice.
    Returns:
        The unpickled object (dicts, tensors, :class:`ForeignObject` stand-ins).
    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file refers to a global outside the allow-list (nothing was executed).
        ValueError: the file is not a torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found; pass an existing file with --weights NAME=PATH.")
    try:
        return torch.load(path, map_location=map_location, pickle_module=_RestrictedPickleModule,
                          weights_only=False, mmap=mmap)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except RuntimeError as err:
        if mmap and "mmap" in str(err):
            return load_checkpoint(path, map_location=map_location, mmap=False)
        raise ValueError(f"{path}: not a readable torch checkpoint ({err}).") from err
    except (pickle.UnpicklingError, EOFError) as err:
        raise ValueError(f"{path}: not a readable torch checkpoint ({err}).") from err
