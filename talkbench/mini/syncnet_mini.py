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

from talkbench.nets.checkpoint_keys import require_matching_keys
from talkbench.nets.syncnet import SyncNet

logger = logging.getLogger(__name__)

FORMAT = "talkbench-mini-syncnet"
FORMAT_VERSION = 1
DEFAULT_WIDTH = 0.125
DEFAULT_EMBED_DIM = 128


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
    """
    from talkbench.safe_unpickle import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mini SyncNet checkpoint {path} does not exist; train one with "
                                "`talkbench train-observer syncnet` or pass --weights mini-syncnet=PATH.")
    obj = load_checkpoint(path, map_location="cpu", mmap=False)
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (written by talkbench.mini.syncnet_mini).")
    model = build_mini_syncnet(float(obj["width"]), int(obj["embed_dim"]))
    state = obj["state_dict"]
    expected = model.state_dict()
    require_matching_keys(expected, state, path, f"a width-{obj['width']} SyncNet state",
                          "Retrain it with `talkbench train-observer syncnet` or pass --weights mini-syncnet=PATH.")
    model.load_state_dict(state, strict=True)
    return model.eval().to(device), dict(obj.get("meta") or {})


def _plain(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    # JSON round trip: only plain types in the file (e.g. torch.__version__ is a str subclass that the
    # restricted unpickler of talkbench.safe_unpickle would refuse).
    return json.loads(json.dumps(dict(meta or {}), default=str))


__all__ = ["DEFAULT_EMBED_DIM", "DEFAULT_WIDTH", "FORMAT", "build_mini_syncnet", "load_mini_syncnet",
           "save_mini_syncnet"]
