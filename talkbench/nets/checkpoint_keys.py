"""Strict state-dict checks shared by the official-checkpoint loaders."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from torch import Tensor


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
