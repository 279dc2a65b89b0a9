"""The mini SyncNet: :class:`talkbench.nets.syncnet.SyncNet` at a reduced channel width, with its file format.

Same layers, strides, inputs (whole frames resized to 224×224, BGR 0..255; 13×20 MFCC windows) and
official key names as SyncNet v2; only the channel counts (× ``width``) and the embedding size differ, so
:mod:`talkbench.lse` scores with it unchanged. Checkpoint: ``{"format", "format_version", "width",
"embed_dim", "state_dict", "meta"}``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from talkbench.nets.checkpoint_keys import (CheckpointError, bounded_int, check_state_tensors, config_value,
                                            load_talkbench_checkpoint, require_matching_keys, require_shape)
from talkbench.nets.syncnet import EMBED_DIM, SyncNet, _scaled

logger = logging.getLogger(__name__)

FORMAT = "talkbench-mini-syncnet"
FORMAT_VERSION = 1
DEFAULT_WIDTH = 0.125
DEFAULT_EMBED_DIM = 128
#: Largest width multiplier a mini SyncNet file may declare: a "mini" network is at most the official
#: SyncNet v2 (width 1.0, ~13 M parameters); a bigger value only makes sense in a crafted or broken file.
MAX_WIDTH = 1.0
#: Largest embedding size (the official network's 1024).
MAX_EMBED_DIM = EMBED_DIM
_FIX = "Retrain it with `talkbench train-observer syncnet` or pass --weights mini-syncnet=PATH."


def build_mini_syncnet(width: float = DEFAULT_WIDTH, embed_dim: int = DEFAULT_EMBED_DIM) -> SyncNet:
    """A freshly initialised SyncNet at ``width`` × the official channel counts."""
    return SyncNet(embed_dim=embed_dim, width=width)


def save_mini_syncnet(model: SyncNet, path: str | Path, meta: Mapping[str, Any] | None = None) -> None:
    """Write a mini SyncNet checkpoint (float32, official key names)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    embed_dim = int(model.netfclip[3].out_features)
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "width": float(model.width),
                "embed_dim": embed_dim, "state_dict": state, "meta": _plain(meta)}, Path(path))


def load_mini_syncnet(path: str | Path, device: str | torch.device = "cpu") -> tuple[SyncNet, dict[str, Any]]:
    """Load a mini SyncNet (strict key check) in eval mode on ``device``.

    Returns:
        (model, meta).
    Raises:
        FileNotFoundError: no file.
        ValueError: not a mini SyncNet checkpoint, or keys/shapes that do not match its width.
        CheckpointError: (a ValueError) a missing entry, a width/embed_dim beyond the bounds or not matching the
            stored tensors (checked before the model is built), or non-finite weights.
    """
    path = Path(path)
    obj = load_talkbench_checkpoint(path, FORMAT, "train a mini SyncNet with `talkbench train-observer syncnet` or "
                                                  "pass --weights mini-syncnet=PATH.")
    width, embed_dim, state = _checked_config(obj, path)
    model = build_mini_syncnet(width, embed_dim)
    require_matching_keys(model.state_dict(), state, path, f"a width-{width} SyncNet state", _FIX)
    model.load_state_dict(state, strict=True)
    return model.eval().to(device), dict(obj.get("meta") or {})


def _implied_shapes(width: float, embed_dim: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors that pin every channel count of a SyncNet of ``width`` and ``embed_dim``."""
    c64, c96, c192, c256, c384, c512 = (_scaled(c, width) for c in (64, 96, 192, 256, 384, 512))
    return {"netcnnaud.0.weight": (c64, 1, 3, 3), "netcnnaud.4.weight": (c192, c64, 3, 3),
            "netcnnaud.8.weight": (c384, c192, 3, 3), "netcnnaud.11.weight": (c256, c384, 3, 3),
            "netcnnaud.18.weight": (c512, c256, 5, 4), "netcnnlip.0.weight": (c96, 3, 5, 7, 7),
            "netcnnlip.4.weight": (c256, c96, 1, 5, 5), "netfcaud.0.weight": (c512, c512),
            "netfcaud.3.weight": (embed_dim, c512), "netfclip.3.weight": (embed_dim, c512)}


def _checked_config(obj: Mapping[str, Any], path: Path) -> tuple[float, int, Mapping[str, torch.Tensor]]:
    """``(width, embed_dim, state_dict)`` of a mini SyncNet file, checked against its tensors BEFORE any model
    is built: present, within :data:`MAX_WIDTH` / :data:`MAX_EMBED_DIM`, equal to what the stored shapes say,
    dense and finite.

    Raises:
        CheckpointError: naming the file, the field and the fix.
    """
    raw_width = config_value(obj, "width", path, _FIX)
    embed_dim = bounded_int(config_value(obj, "embed_dim", path, _FIX), "embed_dim", 1, MAX_EMBED_DIM, path, _FIX)
    state = config_value(obj, "state_dict", path, _FIX)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: `state_dict` is a {type(state).__name__}, not a mapping. {_FIX}")
    if isinstance(raw_width, bool) or not isinstance(raw_width, (int, float)) or not 0 < raw_width <= MAX_WIDTH:
        raise CheckpointError(f"{path}: `width` = {raw_width!r} is not a number in (0, {MAX_WIDTH}] (a mini SyncNet "
                              f"is at most the official network). {_FIX}")
    width = float(raw_width)
    for key, shape in _implied_shapes(width, embed_dim).items():
        field = "embed_dim" if key.endswith(".3.weight") and key.startswith("netfc") else "width"
        require_shape(state, key, shape, f"{field} = {embed_dim if field == 'embed_dim' else width}", path, _FIX)
    check_state_tensors(state, path, _FIX)
    return width, embed_dim, state


def _plain(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    # JSON round trip: only plain types in the file (e.g. torch.__version__ is a str subclass that the
    # restricted unpickler of talkbench.safe_unpickle would refuse).
    return json.loads(json.dumps(dict(meta or {}), default=str))


__all__ = ["DEFAULT_EMBED_DIM", "DEFAULT_WIDTH", "FORMAT", "MAX_EMBED_DIM", "MAX_WIDTH", "build_mini_syncnet", "load_mini_syncnet",
           "save_mini_syncnet"]
