"""Strict checks shared by the checkpoint loaders: state-dict keys and shapes, config entries and bounds,
dense and finite tensors. Every error is a :class:`CheckpointError` naming the file and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from talkbench.safe_unpickle import load_checkpoint


class CheckpointError(ValueError):
    """A file is not a checkpoint of the expected kind; the message names the file and the fix."""


def key_mismatch(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], shown: int = 10) -> str | None:
    """Describe how ``state`` differs from the model's ``expected`` state dict, or None when it fits.

    Returns:
        e.g. ``"missing keys: a, b; unexpected keys: c; shape mismatches: d (3, 4) (model expects (4, 4))"``,
        each list cut after ``shown`` names with the total given.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (model expects {tuple(expected[k].shape)})"
             for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:shown]) + (f" ... ({len(keys)} in all)" if len(keys) > shown else "")

    parts = [f"{label}: {show(keys)}" for label, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)) if keys]
    return "; ".join(parts) or None


def require_matching_keys(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], path: str | Path, what: str,
                          fix: str, shown: int = 10) -> None:
    """Raise :class:`CheckpointError` when ``state`` does not fit the model's ``expected`` state dict.

    The message reads ``"<path>: not <what>: <key_mismatch report>. <fix>"``, e.g.
    ``"w.pth: not a SyncNet v2 checkpoint: missing keys: a; unexpected keys: b. Pass ... --weights ..."``.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped keys (each list cut after ``shown`` names).
    """
    problem = key_mismatch(expected, state, shown)
    if problem:
        raise CheckpointError(f"{path}: not {what}: {problem}. {fix}")


def with_batch_counters(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the ``*.num_batches_tracked`` entries of ``expected`` it lacks, as zeros (files saved before
    torch 0.4.1, or by converters, have none; they take no part in eval-mode computation)."""
    out = dict(state)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(value)
    return out


def config_value(config: Mapping[str, Any], key: str, path: str | Path, fix: str, where: str = "") -> Any:
    """``config[key]``, or :class:`CheckpointError` naming the file and the missing key (never a bare KeyError).

    Args:
        where: what ``config`` is in the file, e.g. ``"config"`` (shown as ``config.<key>``).
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{path}: `{where or 'the checkpoint'}` is a {type(config).__name__}, not a mapping; "
                              f"the file is corrupt or not of this kind. {fix}")
    if key not in config:
        name = f"{where}.{key}" if where else key
        raise CheckpointError(f"{path}: the checkpoint has no `{name}` entry. {fix}")
    return config[key]


def bounded_int(value: Any, name: str, low: int, high: int, path: str | Path, fix: str) -> int:
    """``value`` as an int in ``[low, high]``, else :class:`CheckpointError` naming the file and the field."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CheckpointError(f"{path}: `{name}` = {value!r} is not an integer in [{low}, {high}] (the bound of this "
                              f"network family); the file is corrupt or not of this kind. {fix}")
    return int(value)


def require_shape(state: Mapping[str, Any], key: str, shape: tuple[int, ...], field: str, path: str | Path,
                  fix: str) -> None:
    """Raise :class:`CheckpointError` unless ``state[key]`` is a tensor of ``shape`` (what the config ``field`` implies)."""
    value = state.get(key)
    if not isinstance(value, Tensor):
        raise CheckpointError(f"{path}: not a state dict that matches its config: missing keys: {key} (a tensor "
                              f"`{field}` requires). {fix}")
    if tuple(value.shape) != tuple(shape):
        raise CheckpointError(f"{path}: its config does not match its weights (checked before building the model): "
                              f"shape mismatches: {key} {tuple(value.shape)} (`{field}` implies {tuple(shape)}). {fix}")


def _distinct_elements(value: Tensor) -> Tensor:
    """A tensor holding every element ``value`` refers to, at most as large as the data it is stored in.

    Broadcast (zero-stride) dimensions are narrowed to one entry; if the rest still refers to more elements
    than its storage span (overlapping strides), the storage span itself is returned (a superset).
    """
    view = value
    for dim in range(value.dim()):
        if value.stride(dim) == 0 and value.shape[dim] > 1:
            view = view.narrow(dim, 0, 1)
    span = 1 + sum((size - 1) * abs(stride) for size, stride in zip(view.shape, view.stride()) if size > 0)
    if view.numel() <= span:
        return view
    lowest = view.storage_offset() + sum((size - 1) * stride for size, stride in zip(view.shape, view.stride())
                                         if stride < 0)
    return value.new_empty(0).set_(value.untyped_storage(), lowest, (span,), (1,))


def check_state_tensors(state: Mapping[str, Any], path: str | Path, fix: str, max_elements: int | None = None
                        ) -> None:
    """Refuse a state dict with non-tensor entries, non-finite floating values, or more elements than its family.

    Run on the tensors that go into a model, before the model is built or loaded. Broadcast tensors
    (zero strides, as some stand-in files use) are checked on their distinct elements, so the check costs at
    most one pass over the file's data.

    Args:
        max_elements: bound on the summed element count (what loading the model will allocate), stated by the
            caller for its network family; None = no bound.
    Raises:
        CheckpointError: naming the file, the first bad key (in file order) or the bound, and ``fix``.
    """
    total = 0
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: entry `{key}` of the state dict is a {type(value).__name__}, not a tensor. "
                                  f"{fix}")
        total += value.numel()
        if max_elements is not None and total > max_elements:
            raise CheckpointError(f"{path}: the weights add up to more than {max_elements} values (at `{key}`), beyond "
                                  f"any network of this family; the file is corrupt or crafted. {fix}")
        if (value.is_floating_point() or value.is_complex()) and value.numel() and value.device.type != "meta":
            if not bool(torch.isfinite(_distinct_elements(value)).all()):
                raise CheckpointError(f"{path}: tensor `{key}` contains NaN or Inf values (the first such key in the "
                                      f"file); the weights are corrupt or diverged in training. {fix}")


def load_talkbench_checkpoint(path: str | Path, file_format: str, missing_hint: str) -> Mapping[str, Any]:
    """A checkpoint talkbench wrote itself (``{"format": file_format, ...}``), opened with the restricted unpickler.

    Args:
        path: the file.
        file_format: the ``format`` entry it must hold (e.g. ``talkbench-mini-syncnet``).
        missing_hint: what to do when the file does not exist (e.g. how to train one).
    Raises:
        FileNotFoundError: no file; ValueError: not a checkpoint of that format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; {missing_hint}")
    obj = load_checkpoint(path, map_location="cpu", mmap=False)
    if not isinstance(obj, Mapping) or obj.get("format") != file_format:
        raise ValueError(f"{path} is not a {file_format} checkpoint (talkbench writes them itself).")
    return obj
