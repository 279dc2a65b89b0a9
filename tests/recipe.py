"""The parity fixtures' stand-in weights rule (shared/parity/weights_recipe.py), written from its docstring.

One legacy ``RandomState(seed)`` stream for the whole state dict, keys visited in the fixture's order:
``num_batches_tracked`` -> zeros (no draw); ``running_var`` -> U(0.5, 1.5); ``running_mean`` -> 0.1·N(0,1);
1-d ``...weight`` -> 1 + 0.1·N(0,1); other tensors of rank <= 1 -> 0.1·N(0,1);
otherwise N(0,1) / sqrt(prod(shape[1:])). Floats are float32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch


def fill(keys_and_shapes: Iterable[tuple[str, Sequence[int]]], seed: int = 0) -> dict[str, np.ndarray]:
    """Stand-in values for each (key, shape), in the given order."""
    rs = np.random.RandomState(seed)
    out: dict[str, np.ndarray] = {}
    for key, shape in keys_and_shapes:
        shape = tuple(shape)
        if key.endswith("num_batches_tracked"):
            out[key] = np.zeros(shape, dtype=np.int64)
            continue
        if key.endswith("running_var"):
            values = rs.uniform(0.5, 1.5, shape)
        elif key.endswith("running_mean"):
            values = 0.1 * rs.standard_normal(shape)
        elif len(shape) == 1 and key.endswith("weight"):
            values = 1 + 0.1 * rs.standard_normal(shape)
        elif len(shape) <= 1:
            values = 0.1 * rs.standard_normal(shape)
        else:
            values = rs.standard_normal(shape) / math.sqrt(max(1, int(np.prod(shape[1:]))))
        out[key] = np.asarray(values, dtype=np.float32)
    return out


def filled_state_dict(keys_json: str | Path) -> dict[str, torch.Tensor]:
    """Read a fixture's keys.json and return the filled state dict as tensors (file key order)."""
    spec = json.loads(Path(keys_json).read_text())
    filled = fill([(k, s) for k, s, *_ in spec["keys"]], spec.get("seed", 0))
    return {k: torch.from_numpy(v) for k, v in filled.items()}
