"""The mini lip reader: a small video front-end + AV-HuBERT's transformer encoder + CTC over characters.

Built for the synthetic corpus (:mod:`talkbench.synthetic.corpus`) and trainable on 2 CPU cores in minutes.
It is NOT the AV-HuBERT lip reader: AV-HuBERT's ResNet-18 video trunk (11 M parameters) is replaced by a
narrow front-end of our own, and its seq2seq decoder by a CTC head; what is kept is the transformer
encoder (:class:`talkbench.nets.avhubert.TransformerEncoder`, convolutional positions + pre-LN layers)
at a small size, and AV-HuBERT's input: gray 88×88 centre crops normalised as ``(x/255 - 0.421)/0.165``.

Network (per clip, ``T`` frames)::

    crops uint8 [B,T,88,88] -> normalise -> avg-pool 2 -> [B,1,T,44,44]
    Conv3d(1, c1, k×5×5, stride 1×2×2) + BN + ReLU                  -> [B,c1,T,22,22]
    per frame: Conv2d(c1, c2, 3, s2) BN ReLU, Conv2d(c2, c3, 3, s2) BN ReLU, global avg pool  -> [B,T,c3]
    Linear(c3, D) -> TransformerEncoder(D)                          -> [B,T,D]
    heads: ``ctc`` Linear(D, 28) (blank, space, a..z), ``viseme`` Linear(D, 16) and ``mouth`` Linear(D, 6)

The viseme/mouth heads are training aids only (a per-frame loss on the renderer's known mouth state).
Decoding is greedy CTC; optionally each decoded word is snapped to the nearest word of the corpus'
51-word vocabulary (edit distance), see :func:`snap_to_lexicon`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import editdistance
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from talkbench.nets.avhubert import IMAGE_MEAN, IMAGE_STD, AVHubertConfig, TransformerEncoder
from talkbench.nets.checkpoint_keys import (CheckpointError, bounded_int, check_state_tensors, config_value,
                                            load_talkbench_checkpoint, require_matching_keys, require_shape)

logger = logging.getLogger(__name__)

FORMAT = "talkbench-mini-lipreader"
FORMAT_VERSION = 1
#: CTC output alphabet: index 0 = blank, 1 = space, 2.. = letters.
ALPHABET: str = " abcdefghijklmnopqrstuvwxyz"
BLANK = 0
N_VISEMES = 16                  # len(talkbench.synthetic.visemes.VISEMES)
N_MOUTH_PARAMS = 6
#: Upper bounds of a mini lip reader's config fields. The shipped readers are 96-128 wide with 2-3 layers
#: (0.2-0.5 M parameters); these bounds (AV-HuBERT Base's encoder at most: 12 layers × 512, FFN 2048, a
#: front-end of at most 256 channels, ~40 M parameters, ~150 MB) leave room for bigger experiments while a
#: crafted or broken file is refused before a model is built.
MINI_LIPREADER_BOUNDS: dict[str, int] = {"stem": 256, "mid": 256, "top": 256, "stem_frames": 15, "dim": 512,
                                         "layers": 12, "ffn": 2048, "heads": 64, "conv_pos": 128,
                                         "conv_pos_groups": 512}
_FIX = "Retrain it with `talkbench train-observer lipreader` or pass --weights NAME=PATH."


@dataclass(frozen=True)
class LipReaderConfig:
    """Sizes of a mini lip reader.

    Attributes:
        stem, mid, top: channels of the Conv3d stem and the two per-frame 2-D convolutions.
        stem_frames: temporal kernel of the Conv3d stem (odd).
        dim, layers, ffn, heads: transformer encoder sizes (AV-HuBERT's encoder classes).
        conv_pos, conv_pos_groups: its convolutional positional embedding (kernel, groups).
        dropout: dropout on the front-end features (training only).
    """

    stem: int = 16
    mid: int = 32
    top: int = 64
    stem_frames: int = 3
    dim: int = 128
    layers: int = 3
    ffn: int = 256
    heads: int = 4
    conv_pos: int = 15
    conv_pos_groups: int = 16
    dropout: float = 0.1

    def encoder_config(self) -> AVHubertConfig:
        return AVHubertConfig(encoder_layers=self.layers, encoder_embed_dim=self.dim, encoder_ffn_embed_dim=self.ffn,
                              encoder_attention_heads=self.heads, conv_pos=self.conv_pos,
                              conv_pos_groups=self.conv_pos_groups, video_frontend=False, decoder_layers=0)


def _bn_relu(channels: int, three_d: bool = False) -> list[nn.Module]:
    return [nn.BatchNorm3d(channels) if three_d else nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class MiniLipReader(nn.Module):
    """See the module docstring. ``forward(crops, lengths)`` -> dict of per-frame logits."""

    def __init__(self, cfg: LipReaderConfig = LipReaderConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(nn.Conv3d(1, cfg.stem, (cfg.stem_frames, 5, 5), (1, 2, 2),
                                            (cfg.stem_frames // 2, 2, 2), bias=False),
                                  *_bn_relu(cfg.stem, three_d=True))
        self.trunk = nn.Sequential(nn.Conv2d(cfg.stem, cfg.mid, 3, 2, 1, bias=False), *_bn_relu(cfg.mid),
                                   nn.Conv2d(cfg.mid, cfg.top, 3, 2, 1, bias=False), *_bn_relu(cfg.top))
        self.proj = nn.Linear(cfg.top, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = TransformerEncoder(cfg.encoder_config())
        nn.init.normal_(self.encoder.pos_conv[0].weight_v, 0.0, (4.0 / (cfg.conv_pos * cfg.dim)) ** 0.5)
        nn.init.ones_(self.encoder.pos_conv[0].weight_g)   # the recipe the shipped weights were trained with
        self.ctc = nn.Linear(cfg.dim, len(ALPHABET) + 1)
        self.viseme = nn.Linear(cfg.dim, N_VISEMES)
        self.mouth = nn.Linear(cfg.dim, N_MOUTH_PARAMS)

    @staticmethod
    def normalise(crops: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B,T,88,88]`` -> float ``[B,1,T,44,44]`` (AV-HuBERT normalisation, then 2×2 average)."""
        return MiniLipReader.pool((crops.float() / 255.0 - IMAGE_MEAN) / IMAGE_STD)

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B,T,88,88]`` -> ``[B,1,T,44,44]`` (2×2 average)."""
        b, t, h, w = x.shape
        x = F.avg_pool2d(x.reshape(b * t, 1, h, w), 2)
        return x.reshape(b, t, 1, h // 2, w // 2).transpose(1, 2)

    def forward(self, crops: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Args:
            crops: uint8 (or float 0..255) ``[B, T, 88, 88]`` gray mouth crops.
            lengths: ``[B]`` valid frames per clip (None = all ``T``).
        Returns:
            ``ctc`` ``[B,T,28]``, ``viseme`` ``[B,T,16]``, ``mouth`` ``[B,T,6]`` (logits / values) and
            ``features`` ``[B,T,D]`` (the transformer encoder's output).
        """
        return self.forward_pooled(self.normalise(crops), lengths)

    def forward_pooled(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """:meth:`forward` from normalised, pooled input ``[B,1,T,44,44]`` (differentiable w.r.t. ``x``)."""
        x = self.stem(x)                                            # [B,c1,T,22,22]
        b, c, t, h, w = x.shape
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        x = self.trunk(x).mean((2, 3)).reshape(b, t, -1)             # [B,T,c3]
        x = self.dropout(self.proj(x))
        mask = None
        if lengths is not None:
            mask = torch.arange(t, device=x.device)[None, :] >= lengths.to(x.device)[:, None]
        x = self.encoder(x, mask)
        return {"ctc": self.ctc(x), "viseme": self.viseme(x), "mouth": self.mouth(x), "features": x}


# ------------------------------------------------------------------------------------------ text

def encode_text(text: str) -> list[int]:
    """Lowercase words -> CTC target ids (1 = space, 2.. letters); other characters are dropped."""
    text = " ".join(text.lower().split())
    return [ALPHABET.index(ch) + 1 for ch in text if ch in ALPHABET]


def greedy_decode(log_probs: torch.Tensor) -> tuple[str, float]:
    """Best-path CTC decoding of one clip's ``[T, 28]`` log-probabilities.

    Returns:
        (text, score): the collapsed string and the mean per-frame log-probability of the best path.
    """
    best, ids = log_probs.max(-1)
    out: list[str] = []
    prev = BLANK
    for i in ids.tolist():
        if i != prev and i != BLANK:
            out.append(ALPHABET[i - 1])
        prev = i
    return " ".join("".join(out).split()), float(best.mean()) if len(best) else float("nan")


def snap_to_lexicon(text: str, lexicon: Sequence[str]) -> str:
    """Replace each word by the nearest lexicon word (character edit distance; ties: lexicon order)."""
    words = []
    for word in text.split():
        words.append(min(lexicon, key=lambda w: editdistance.eval(w, word)))
    return " ".join(words)


# ------------------------------------------------------------------------------------------ files

def save_lipreader(model: MiniLipReader, path: str | Path, meta: Mapping[str, Any] | None = None) -> None:
    """Save a checkpoint: ``{"format", "format_version", "config", "state_dict", "meta"}`` (float32)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": dataclasses.asdict(model.cfg),
                "state_dict": state, "meta": _plain(meta)}, Path(path))


def load_lipreader(path: str | Path, device: str | torch.device = "cpu") -> tuple[MiniLipReader, dict[str, Any]]:
    """Load a mini lip-reader checkpoint (strict key check) in eval mode on ``device``.

    Returns:
        (model, meta) where meta holds how it was trained.
    Raises:
        FileNotFoundError: no file.
        ValueError: the file is not a mini lip-reader checkpoint, or its keys do not match.
        CheckpointError: (a ValueError) a missing config entry, a size beyond :data:`MINI_LIPREADER_BOUNDS` or not
            matching the stored tensors (checked before the model is built), or non-finite weights.
    """
    path = Path(path)
    obj = load_talkbench_checkpoint(path, FORMAT, "train a mini lip reader with `talkbench train-observer lipreader` "
                                                  "or pass --weights NAME=PATH.")
    cfg, state = _checked_config(obj, path)
    model = MiniLipReader(cfg)
    require_matching_keys(model.state_dict(), state, path, "a state dict that matches its config", _FIX)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model.eval().to(device), dict(obj.get("meta") or {})


def _checked_config(obj: Mapping[str, Any], path: Path) -> tuple[LipReaderConfig, Mapping[str, torch.Tensor]]:
    """The config and state dict of a mini lip-reader file, checked BEFORE any model is built: every field
    present and within :data:`MINI_LIPREADER_BOUNDS`, equal to what the stored tensor shapes say (layer count
    included), tensors dense and finite.

    Raises:
        CheckpointError: naming the file, the field and the fix.
    """
    raw = config_value(obj, "config", path, _FIX)
    state = config_value(obj, "state_dict", path, _FIX)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: `config` is a {type(raw).__name__}, not a mapping. {_FIX}")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: `state_dict` is a {type(state).__name__}, not a mapping. {_FIX}")
    names = {f.name for f in dataclasses.fields(LipReaderConfig)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f"{path}: unknown config fields {sorted(unknown)}; upgrade talkbench.")
    values: dict[str, Any] = {}
    for name, high in MINI_LIPREADER_BOUNDS.items():
        values[name] = bounded_int(config_value(raw, name, path, _FIX, "config"), f"config.{name}", 1, high, path, _FIX)
    dropout = config_value(raw, "dropout", path, _FIX, "config")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise CheckpointError(f"{path}: `config.dropout` = {dropout!r} is not a number in [0, 1). {_FIX}")
    v = values
    for name, divisor in (("heads", v["heads"]), ("conv_pos_groups", v["conv_pos_groups"])):
        if v["dim"] % divisor:
            raise CheckpointError(f"{path}: `config.dim` = {v['dim']} is not divisible by `config.{name}` = {divisor}. "
                                  f"{_FIX}")
    implied = {"stem.0.weight": ((v["stem"], 1, v["stem_frames"], 5, 5), "stem, stem_frames"),
               "trunk.0.weight": ((v["mid"], v["stem"], 3, 3), "mid"),
               "trunk.3.weight": ((v["top"], v["mid"], 3, 3), "top"),
               "proj.weight": ((v["dim"], v["top"]), "dim"),
               "encoder.pos_conv.0.weight_v": ((v["dim"], v["dim"] // v["conv_pos_groups"], v["conv_pos"]),
                                               "conv_pos, conv_pos_groups"),
               "encoder.layers.0.fc1.weight": ((v["ffn"], v["dim"]), "ffn"),
               "ctc.weight": ((len(ALPHABET) + 1, v["dim"]), "dim")}
    for key, (shape, fields) in implied.items():
        field = ", ".join(f"config.{f} = {v[f]}" for f in fields.split(", "))
        require_shape(state, key, shape, field, path, _FIX)
    stored_layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", str(k)))}
    if stored_layers != set(range(v["layers"])):
        raise CheckpointError(f"{path}: `config.layers` = {v['layers']} but the file stores encoder layers "
                              f"{sorted(stored_layers)[:8]}{' ...' if len(stored_layers) > 8 else ''}; its config "
                              f"does not match its weights. {_FIX}")
    check_state_tensors(state, path, _FIX)
    return LipReaderConfig(**values, dropout=float(dropout)), state


@torch.inference_mode()
def transcribe(model: MiniLipReader, crops: np.ndarray, device: str | torch.device = "cpu",
               lexicon: Sequence[str] | None = None) -> tuple[str, float]:
    """Read one clip: gray uint8 crops ``T×88×88`` -> (text, mean best-path log-probability)."""
    x = torch.from_numpy(np.ascontiguousarray(crops))[None].to(device)
    log_probs = model(x)["ctc"].float().log_softmax(-1)[0].cpu()
    text, score = greedy_decode(log_probs)
    if lexicon:
        text = snap_to_lexicon(text, lexicon)
    return text, score


def _plain(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    # JSON round trip: only plain types in the file (e.g. torch.__version__ is a str subclass that the
    # restricted unpickler of talkbench.safe_unpickle would refuse).
    return json.loads(json.dumps(dict(meta or {}), default=str))


__all__ = ["ALPHABET", "FORMAT", "LipReaderConfig", "MINI_LIPREADER_BOUNDS", "MiniLipReader", "encode_text", "greedy_decode", "load_lipreader",
           "save_lipreader", "snap_to_lexicon", "transcribe"]
