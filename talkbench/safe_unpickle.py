"""Open official checkpoints (torch.save pickles, fairseq's included) without running foreign code.

``torch.load(weights_only=False)`` on a file from the internet can execute anything. Official
AV-HuBERT files also pickle fairseq, omegaconf and sentencepiece objects, which ``weights_only=True``
refuses. This module's unpickler resolves only an allow-list of globals (tensor/storage rebuilders,
``OrderedDict``, ``argparse.Namespace`` and a few inert builtins). Classes of fairseq, omegaconf and
sentencepiece become :class:`ForeignObject` stand-ins that keep the pickled state (a fairseq
``Dictionary``'s symbols, a SentencePiece model's serialized bytes) and run none of its code. Any
other global (``os.system``, ``builtins.eval``, ...) raises :class:`UnsafeCheckpointError`.

Beyond which globals resolve, three more rules keep a file from reaching outside itself:

* **Mutations only touch objects this load created.** The unpickler is a subclass of the pure-Python
  ``pickle._Unpickler`` (the C unpickler cannot intercept opcodes). ``BUILD`` (``__setstate__``,
  ``__dict__`` update, slot ``setattr``), ``SETITEM(S)``, ``APPEND(S)`` and ``ADDITEMS`` are refused unless
  their target was made by this very unpickling (``REDUCE``/``NEWOBJ``/``OBJ``/``INST``/``EMPTY_*``/``DICT``/
  ``LIST``/... results and storages from ``persistent_load``), so a file cannot, e.g., rewrite
  ``torch._utils._rebuild_tensor_v2.__defaults__`` or ``argparse.Namespace`` for the whole process. Dunder
  names are refused as attribute names in ``BUILD`` state. ``numpy.dtype`` always returns a fresh copy
  (builtin dtypes are shared singletons).
* **No zip bombs.** Before torch reads a zip-format file, its central directory is checked
  (:func:`check_zip_records`): ``torch.save`` stores records uncompressed, so a compressed record may inflate at
  most :data:`MAX_COMPRESSION_RATIO` × (beyond a small floor), and a stored record's sizes must agree.
* **Storage records hold what the pickle declares.** Each tensor storage record must be exactly as large as
  the storage the pickle asks for (checked before torch reads it).
"""

from __future__ import annotations

import argparse
import collections
import contextvars
import logging
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
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
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise UnsafeCheckpointError(f"refusing tensor rebuild as {new_type!r}")
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
    allowed: dict[tuple[str, str], Any] = {}
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(core, "scalar")] = _numpy_scalar
        allowed[(core, "_reconstruct")] = _numpy_reconstruct
    allowed[("numpy", "dtype")] = _numpy_dtype
    allowed[("numpy", "ndarray")] = np.ndarray
    return allowed


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> Any:
    """``numpy.dtype`` as pickles call it, but always a fresh copy: builtin dtypes are process-wide singletons
    that a following ``BUILD`` (``dtype.__setstate__``) would otherwise mutate."""
    del copy  # ignored on purpose: never hand out the shared instance
    if not isinstance(spec, str):
        raise UnsafeCheckpointError(f"refusing numpy dtype from {type(spec).__name__} (only type codes like 'f4')")
    try:
        dtype = np.dtype(spec, bool(align), True)
    except TypeError as err:
        raise UnsafeCheckpointError(f"refusing numpy dtype {spec!r} ({err})") from None
    if dtype.hasobject:
        raise UnsafeCheckpointError(f"refusing numpy dtype {spec!r}: it holds Python objects")
    return dtype


def _numpy_scalar(dtype: Any, data: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeCheckpointError(f"refusing numpy scalar of dtype {dtype!r}")
    return np.frombuffer(data or b"", dtype=dtype, count=1)[0]


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    if subtype is not np.ndarray:
        raise UnsafeCheckpointError(f"refusing numpy array subclass {subtype!r}")
    # numpy pickles pass a placeholder type code (b'b') here and the real dtype in the BUILD state that follows
    if not isinstance(dtype, (np.dtype, str, bytes)) or np.dtype(dtype).hasobject:
        raise UnsafeCheckpointError(f"refusing numpy array of dtype {dtype!r}")
    core = np._core if hasattr(np, "_core") else np.core  # numpy >= 2 renamed core to _core
    return core.multiarray._reconstruct(subtype, shape, dtype)


_ALLOWED.update(_numpy_globals())


#: Size rules of zip-format checkpoints (see :func:`check_zip_records`). torch.save writes every record
#: uncompressed (ZIP_STORED); a deflated record may inflate at most this many times its compressed size ...
MAX_COMPRESSION_RATIO = 20
#: ... unless it inflates to at most this many bytes (tiny records compress well: a 4 KB zero buffer is 200x).
SMALL_RECORD_BYTES = 64 * 1024
#: All deflated records of a file together may not inflate beyond this (bounds many small bombs at once).
MAX_INFLATED_TOTAL_BYTES = 256 * 1024 * 1024

# Record sizes of the zip file being loaded ("data/<key>" -> bytes), set by load_checkpoint for persistent_load.
_ZIP_RECORDS: contextvars.ContextVar[Mapping[str, int] | None] = contextvars.ContextVar("_ZIP_RECORDS", default=None)


def _mark_created(method: Callable[["RestrictedUnpickler"], None]) -> Callable[["RestrictedUnpickler"], None]:
    """Dispatch entry: run the original opcode, then record the object it pushed as created by this load."""
    def run(self: "RestrictedUnpickler") -> None:
        method(self)
        self._created_here(self.stack[-1])
    return run


def _guard(target: Callable[["RestrictedUnpickler"], Any], opcode: str,
           method: Callable[["RestrictedUnpickler"], None]) -> Callable[["RestrictedUnpickler"], None]:
    """Dispatch entry: refuse the opcode unless the object it mutates (``target(self)``) was created here."""
    def run(self: "RestrictedUnpickler") -> None:
        self._require_created(target(self), opcode)
        method(self)
    return run


def _below_mark(self: "RestrictedUnpickler") -> Any:
    """The object SETITEMS / APPENDS / ADDITEMS act on: top of the stack saved by the last MARK."""
    if not self.metastack or not self.metastack[-1]:
        raise pickle.UnpicklingError("malformed pickle: no object under MARK")
    return self.metastack[-1][-1]


def _stack_item(depth: int) -> Callable[["RestrictedUnpickler"], Any]:
    def item(self: "RestrictedUnpickler") -> Any:
        if len(self.stack) < depth:
            raise pickle.UnpicklingError("malformed pickle: stack underflow")
        return self.stack[-depth]
    return item


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler that resolves only allow-listed globals and inert foreign stand-ins, and lets
    ``BUILD``/``SETITEM(S)``/``APPEND(S)``/``ADDITEMS`` act only on objects this unpickling created.

    ``torch.load(pickle_module=...)`` subclasses ``Unpickler`` (``find_class``) and assigns ``persistent_load``
    on the instance (both the zip and the legacy format); both go through the checks here.
    """

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        # id -> object; holding the object keeps its id from being reused by another object during the load
        self._created: dict[int, Any] = {}
        self._torch_persistent_load: Callable[[Any], Any] | None = None

    def _created_here(self, obj: Any) -> None:
        self._created[id(obj)] = obj

    def _require_created(self, obj: Any, opcode: str) -> None:
        if self._created.get(id(obj)) is not obj:
            raise UnsafeCheckpointError(
                f"checkpoint applies {opcode} to {_describe(obj)}, which this file did not create (a global "
                "or shared object); refused before it ran. A genuine checkpoint never does this.")

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

    # torch.load assigns its storage loader as ``unpickler.persistent_load = fn``; keep it and wrap it.
    @property  # type: ignore[override]
    def persistent_load(self) -> Callable[[Any], Any]:
        return self._checked_persistent_load

    @persistent_load.setter
    def persistent_load(self, func: Callable[[Any], Any]) -> None:
        self._torch_persistent_load = func

    def _checked_persistent_load(self, pid: Any) -> Any:
        if self._torch_persistent_load is None:
            raise pickle.UnpicklingError("unsupported persistent id encountered")
        _check_storage_record(pid)
        obj = self._torch_persistent_load(pid)
        # Only storages count as created here: torch's legacy loader returns other ids' payload unchanged.
        if isinstance(obj, (torch.storage.TypedStorage, torch.UntypedStorage)):
            self._created_here(obj)
        return obj

    def load_build(self) -> None:
        """BUILD: only on objects created here, and never with dunder attribute names."""
        if len(self.stack) < 2:
            raise pickle.UnpicklingError("malformed pickle: stack underflow")
        state, inst = self.stack[-1], self.stack[-2]
        self._require_created(inst, "BUILD")
        if getattr(inst, "__setstate__", None) is None:
            parts = state if isinstance(state, tuple) and len(state) == 2 else (state, None)
            for part in parts:
                if part and not isinstance(part, dict):
                    raise UnsafeCheckpointError(f"BUILD state of {_describe(inst)} is a {type(part).__name__}, "
                                                "not a dict; refused.")
                for key in part or ():
                    if not isinstance(key, str) or key.startswith("__"):
                        raise UnsafeCheckpointError(f"BUILD would set attribute {key!r} on {_describe(inst)}; "
                                                    "refused before it ran.")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEM[0]] = _guard(_stack_item(3), "SETITEM", pickle._Unpickler.load_setitem)  # type: ignore
    dispatch[pickle.SETITEMS[0]] = _guard(_below_mark, "SETITEMS", pickle._Unpickler.load_setitems)  # type: ignore
    dispatch[pickle.APPEND[0]] = _guard(_stack_item(2), "APPEND", pickle._Unpickler.load_append)  # type: ignore
    dispatch[pickle.APPENDS[0]] = _guard(_below_mark, "APPENDS", pickle._Unpickler.load_appends)  # type: ignore
    dispatch[pickle.ADDITEMS[0]] = _guard(_below_mark, "ADDITEMS", pickle._Unpickler.load_additems)  # type: ignore
    for _op in (pickle.REDUCE, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST, pickle.EMPTY_DICT,
                pickle.EMPTY_LIST, pickle.EMPTY_SET, pickle.DICT, pickle.LIST, pickle.FROZENSET, pickle.BYTEARRAY8):
        dispatch[_op[0]] = _mark_created(pickle._Unpickler.dispatch[_op[0]])  # type: ignore[attr-defined]
    del _op


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    module = getattr(obj, "__module__", None) or type(obj).__module__
    return f"`{module}.{name}`" if isinstance(obj, type) or callable(obj) else f"a {type(obj).__qualname__} object"


def _check_storage_record(pid: Any) -> None:
    """Zip format: the record of a storage must be exactly as large as the storage the pickle declares."""
    records = _ZIP_RECORDS.get()
    if records is None or not isinstance(pid, tuple) or len(pid) != 5:
        return
    typename, storage_type, key, _location, numel = pid
    if typename not in ("storage", b"storage"):
        return
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    dtype = torch.uint8 if storage_type is torch.UntypedStorage else getattr(storage_type, "dtype", None)
    if dtype is None or not isinstance(numel, int) or numel < 0:
        raise UnsafeCheckpointError(f"malformed storage reference {pid!r}")
    nbytes = numel * torch._utils._element_size(dtype)
    size = records.get(f"data/{key}")
    if size is None:
        raise UnsafeCheckpointError(f"storage record data/{key} is missing from the archive")
    if size != nbytes:
        raise UnsafeCheckpointError(f"storage record data/{key} holds {size} bytes but the checkpoint declares a "
                                    f"storage of {nbytes} bytes; the file is corrupt or crafted")


def check_zip_records(path: str | Path) -> dict[str, int] | None:
    """Check a zip-format checkpoint's central directory before anything of it is read.

    Rules (torch.save stores every record uncompressed):

    * a stored record's compressed and uncompressed sizes must be equal;
    * a compressed record may inflate at most :data:`MAX_COMPRESSION_RATIO` × its compressed size, unless it
      inflates to at most :data:`SMALL_RECORD_BYTES`;
    * all compressed records together may inflate to at most :data:`MAX_INFLATED_TOTAL_BYTES`;
    * the records' compressed sizes must fit in the file.

    Returns:
        ``{"data/<key>": uncompressed size}`` of the archive's records (the archive folder stripped), or None
        when the file is not zip-format (legacy torch.save).
    Raises:
        UnsafeCheckpointError: a rule is broken (the message names the file and the record).
        ValueError: the file starts like a zip archive but its directory cannot be read.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            return None
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable torch checkpoint (broken zip directory: {err}); "
                         "download the file again.") from err
    file_size = path.stat().st_size
    inflated_total = 0
    stored_total = 0
    records: dict[str, int] = {}
    for info in infos:
        stored_total += info.compress_size
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise UnsafeCheckpointError(
                    f"{path}: zip record {info.filename} claims {info.file_size} bytes but stores "
                    f"{info.compress_size}; the file is corrupt or crafted. Download it again.")
        else:
            inflated_total += info.file_size
            if info.file_size > SMALL_RECORD_BYTES and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size:
                raise UnsafeCheckpointError(
                    f"{path}: zip record {info.filename} inflates {info.compress_size} bytes to {info.file_size} "
                    f"(more than {MAX_COMPRESSION_RATIO}x; torch.save never compresses); refused as a zip bomb. "
                    "Use the file as torch.save wrote it.")
            if inflated_total > MAX_INFLATED_TOTAL_BYTES:
                raise UnsafeCheckpointError(
                    f"{path}: compressed zip records inflate to more than {MAX_INFLATED_TOTAL_BYTES} bytes "
                    "(torch.save never compresses); refused as a zip bomb. Use the file as torch.save wrote it.")
        name = info.filename.split("/", 1)[1] if "/" in info.filename else info.filename
        records[name] = info.file_size
    if stored_total > file_size:
        raise UnsafeCheckpointError(f"{path}: the zip directory lists {stored_total} bytes of records but the file "
                                    f"has {file_size}; the file is corrupt or crafted. Download it again.")
    return records


def torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding ``code/`` or ``constants.pkl`` records).

    ``torch.load`` hands such a file to ``torch.jit.load``, which runs its code; :func:`load_checkpoint` refuses
    it before that. Loaders call this first to say which plain state dict to use instead.
    """
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return _has_torchscript_records(n.split("/", 1)[1] if "/" in n else n for n in archive.namelist())


def _has_torchscript_records(names: Any) -> bool:
    return any(name.startswith("code/") or name == "constants.pkl" for name in names)


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
        UnsafeCheckpointError: the file refers to a global outside the allow-list, mutates an object it did not
            create, or is a zip bomb (see :func:`check_zip_records`); nothing of it was executed.
        ValueError: the file is not a torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found; pass an existing file with --weights NAME=PATH.")
    records = check_zip_records(path)
    if records is not None and _has_torchscript_records(records):
        raise UnsafeCheckpointError(f"{path}: a TorchScript archive (code/ or constants.pkl records), not a torch.save "
                                    "checkpoint; loading it would run its code, so talkbench never does. Pass the "
                                    "plain state-dict file the card names.")
    token = _ZIP_RECORDS.set(records)
    try:
        return torch.load(path, map_location=map_location, pickle_module=_RestrictedPickleModule,
                          weights_only=False, mmap=mmap)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except RuntimeError as err:
        if mmap and "mmap" in str(err):
            return load_checkpoint(path, map_location=map_location, mmap=False)
        raise ValueError(f"{path}: not a readable torch checkpoint ({err}).") from err
    except (pickle.UnpicklingError, EOFError, IndexError, KeyError, TypeError, AttributeError, ValueError,
            struct.error) as err:
        # the pure-Python unpickler reports junk input with these (e.g. IndexError on an empty stack)
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err}).") from err
    finally:
        _ZIP_RECORDS.reset(token)
