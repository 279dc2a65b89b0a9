"""SyncNet v2 (joonson/syncnet_python ``SyncNetModel.S``) with the official state-dict key names.

Two towers map a 5-frame face window and a 20-column MFCC window (both 200 ms) to 1024-d embeddings:

* lip tower ``netcnnlip`` (Conv3d; only the first layer mixes the 5 frames) + ``netfclip``;
* audio tower ``netcnnaud`` (Conv2d on the 13×20 MFCC "image") + ``netfcaud``.

The module indices inside the ``nn.Sequential`` containers are part of the key names
(``netcnnlip.0.weight`` ... ``netfcaud.3.bias``) and therefore follow the official layer order.

:meth:`SyncNet.lip_embeddings` / :meth:`SyncNet.audio_embeddings` are the inference path: the same
function with BatchNorm folded into the convolutions and every layer run as a channels-last 2-d
convolution (the first Conv3d spans exactly the 5 frames of a window: a 15-channel Conv2d). The
reference-shaped :meth:`SyncNet.forward_lip` / :meth:`SyncNet.forward_aud` stay for checks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from talkbench.nets.checkpoint_keys import (CheckpointError, check_state_tensors, require_matching_keys,
                                            with_batch_counters)
from talkbench.safe_unpickle import load_checkpoint

logger = logging.getLogger(__name__)

EMBED_DIM = 1024
WINDOW_FRAMES = 5
WINDOW_MFCC = 20


def _conv_bn_relu_2d(cin: int, cout: int, kernel, stride=1, padding=0) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=padding), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


def _conv_bn_relu_3d(cin: int, cout: int, kernel, stride=1, padding=0) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel_size=kernel, stride=stride, padding=padding), nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True)]


def _fc_head(dim: int, hidden: int = 512) -> nn.Sequential:
    # keys: .0 Linear, .1 BatchNorm1d, .2 ReLU, .3 Linear
    return nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))


def _scaled(channels: int, width: float) -> int:
    """Channel count at a width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


class SyncNet(nn.Module):
    """SyncNet v2. Eval mode is expected (BatchNorm with running statistics).

    Inputs follow the reference exactly: video windows are BGR float 0..255 without normalisation,
    audio windows are raw MFCC values (python_speech_features scale).
    """

    def __init__(self, embed_dim: int = EMBED_DIM, width: float = 1.0) -> None:
        """Args:
            embed_dim: embedding width (1024 in the official network).
            width: channel multiplier of every convolution and of the FC heads' hidden layer (1.0 = the
                official network and key shapes; talkbench's mini SyncNet uses a fraction).
        """
        super().__init__()
        if not width > 0:
            raise ValueError(f"SyncNet width multiplier must be positive, got {width}.")
        self.width = float(width)
        c64, c96, c192, c256, c384, c512 = (_scaled(c, width) for c in (64, 96, 192, 256, 384, 512))
        # Audio: (N, 1, 13, 20) -> (N, 512, 1, 1). Indices 0..19 as in the official Sequential.
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu_2d(1, c64, 3, 1, 1),                      # 0,1,2   -> 64×13×20
            nn.MaxPool2d(kernel_size=1, stride=1),                   # 3       (identity in the original)
            *_conv_bn_relu_2d(c64, c192, 3, 1, 1),                   # 4,5,6
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),              # 7       -> 192×11×9
            *_conv_bn_relu_2d(c192, c384, 3, 1, 1),                  # 8,9,10
            *_conv_bn_relu_2d(c384, c256, 3, 1, 1),                  # 11,12,13
            *_conv_bn_relu_2d(c256, c256, 3, 1, 1),                  # 14,15,16
            nn.MaxPool2d(kernel_size=3, stride=2),                   # 17      -> 256×5×4
            nn.Conv2d(c256, c512, kernel_size=(5, 4)), nn.BatchNorm2d(c512), nn.ReLU(),  # 18,19,20 -> 512×1×1
        )
        self.netfcaud = _fc_head(embed_dim, c512)
        self.netfclip = _fc_head(embed_dim, c512)
        # Lip: (N, 3, 5, 224, 224) -> (N, 512, 1, 1, 1).
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu_3d(3, c96, (5, 7, 7), (1, 2, 2), 0),                # 0,1,2   -> 96×1×109×109
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),             # 3       -> 54×54
            *_conv_bn_relu_3d(c96, c256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),    # 4,5,6   -> 26×26
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # 7 -> 13×13
            *_conv_bn_relu_3d(c256, c256, (1, 3, 3), 1, (0, 1, 1)),           # 8,9,10
            *_conv_bn_relu_3d(c256, c256, (1, 3, 3), 1, (0, 1, 1)),           # 11,12,13
            *_conv_bn_relu_3d(c256, c256, (1, 3, 3), 1, (0, 1, 1)),           # 14,15,16
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),             # 17      -> 6×6
            *_conv_bn_relu_3d(c256, c512, (1, 6, 6), 1, 0),                    # 18,19,20 -> 1×1
        )

    # ----------------------------------------------------------------------------- reference API
    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """Audio embeddings. ``x``: (N, 1, 13, 20) MFCC windows -> (N, embed_dim)."""
        mid = self.netcnnaud(x)
        return self.netfcaud(mid.flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """Lip embeddings. ``x``: (N, 3, 5, 224, 224) BGR 0..255 windows -> (N, 1024)."""
        mid = self.netcnnlip(x)
        return self.netfclip(mid.flatten(1))

    def forward_lipfeat(self, x: torch.Tensor) -> torch.Tensor:
        """Lip front-end features (N, 512) (``netcnnlip`` output flattened)."""
        return self.netcnnlip(x).flatten(1)

    # ----------------------------------------------------------------------------- clip-level API
    def lip_front_clip(self, frames: torch.Tensor, n_windows: int, chunk: int = 4) -> torch.Tensor:
        """``netcnnlip`` features of windows 0..n_windows-1 of one clip (inference path, eval mode).

        Same function as :meth:`forward_lipfeat` on the windows, computed differently:

        * BatchNorm is folded into the preceding convolution (eval-mode statistics);
        * the first Conv3d (kernel 5×7×7 over exactly 5 frames) is a Conv2d over the 15 channels
          (frame t, colour c) -> channel 3t + c, so a window is a 15-channel image;
        * the later Conv3d layers have temporal kernel 1 and run as Conv2d, channels-last.

        Args:
            frames: (T, 224, 224, 3) BGR 0..255, uint8 or float (T >= n_windows + 4); the natural
                layout of decoded frames, which is already channels-last.
            chunk: windows per step (bounds memory; results change only by float32 rounding).
        Returns:
            (n_windows, 512).
        """
        plan = self._cached_plan("lip")
        w15, b1 = plan[0][1], plan[0][2]
        outs = []
        for start in range(0, n_windows, chunk):
            stop = min(n_windows, start + chunk)
            count = stop - start
            # uint8 -> float per chunk: a float copy of a whole minute of 224² frames would take ~0.9 GB
            x = frames[start:stop + WINDOW_FRAMES - 1].float()                  # (w+4, H, W, 3)
            h, w = x.shape[1], x.shape[2]
            x = x.unfold(0, WINDOW_FRAMES, 1)                                   # (w, H, W, 3, 5)
            x = x.permute(0, 1, 2, 4, 3).reshape(count, h, w, 3 * WINDOW_FRAMES)  # channel 3t + c
            x = x.permute(0, 3, 1, 2)                                          # (w, 15, H, W), channels-last
            x = F.relu_(F.conv2d(x, w15, b1, stride=plan[0][3]))               # (w, 96, 109, 109)
            outs.append(_run_plan(plan[2:], x).flatten(1))                      # (w, 512)
        return torch.cat(outs, 0)

    def _cached_plan(self, tower: str) -> list[tuple]:
        """Folded plan of ``netcnnlip`` (``lip``) or ``netcnnaud`` (``aud``), rebuilt when a tensor changed.

        The key holds every parameter's and buffer's storage pointer, in-place version counter and
        device, so ``load_state_dict``, ``copy_`` and ``.to()`` all invalidate it (folding costs ~40 ms).
        """
        seq = self.netcnnlip if tower == "lip" else self.netcnnaud
        key = tuple((t.data_ptr(), t._version, t.device) for t in seq.state_dict(keep_vars=True).values())
        cache = self.__dict__.setdefault("_plans", {})
        if tower not in cache or cache[tower][0] != key:
            plan = _folded_plan(seq, first_frames=WINDOW_FRAMES if tower == "lip" else 0)
            cache[tower] = (key, plan)
        return cache[tower][1]

    def lip_embeddings(self, frames: torch.Tensor, n_windows: int, chunk: int = 4) -> torch.Tensor:
        """Lip embeddings (n_windows, 1024) of one clip; see :meth:`lip_front_clip`."""
        return self.netfclip(self.lip_front_clip(frames, n_windows, chunk))

    def audio_embeddings(self, windows: torch.Tensor) -> torch.Tensor:
        """Audio embeddings (N, 1024) of MFCC windows (N, 1, 13, 20), BatchNorm folded (eval mode)."""
        x = _run_plan(self._cached_plan("aud"), windows.contiguous(memory_format=torch.channels_last))
        return self.netfcaud(x.flatten(1))


def _fold(conv: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with the following eval-mode BatchNorm folded in (computed in float64)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    bias = (conv.bias.double() - bn.running_mean.double()) * scale + bn.bias.double()
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)


def _hw(v: int | tuple[int, ...]) -> tuple[int, int]:
    """Spatial part (H, W) of a 2-d/3-d conv or pooling parameter (an int means the same on every axis)."""
    if isinstance(v, int):
        return (v, v)
    return (v[-2], v[-1])


def _folded_plan(seq: nn.Sequential, first_frames: int = 0) -> list[tuple]:
    """The layers of ``seq`` as 2-d operations with BatchNorm folded.

    Entries: ``("conv", weight, bias, stride, padding)``, ``("relu",)``, ``("pool", kernel, stride, padding)``.
    With ``first_frames`` > 0 the first layer is a Conv3d whose temporal kernel spans all frames: its weight
    (O, C, T, kh, kw) becomes a 2-d weight (O, T·C, kh, kw), channel 3t + c.
    """
    plan: list[tuple] = []
    layers = list(seq)
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, (nn.Conv2d, nn.Conv3d)):
            weight, bias = _fold(layer, layers[i + 1])
            if isinstance(layer, nn.Conv3d):
                if i == 0 and first_frames:
                    o, c, t, kh, kw = weight.shape
                    weight = weight.permute(0, 2, 1, 3, 4).reshape(o, t * c, kh, kw)
                else:
                    weight = weight.squeeze(2)      # temporal kernel 1
            plan.append(("conv", weight.contiguous(memory_format=torch.channels_last), bias,
                         _hw(layer.stride), _hw(layer.padding)))
            i += 2
            continue
        if isinstance(layer, nn.ReLU):
            plan.append(("relu",))
        elif isinstance(layer, (nn.MaxPool2d, nn.MaxPool3d)):
            plan.append(("pool", _hw(layer.kernel_size), _hw(layer.stride), _hw(layer.padding)))
        else:
            raise TypeError(f"unexpected layer {layer!r} in SyncNet")
        i += 1
    return plan


def _run_plan(plan: list[tuple], x: torch.Tensor) -> torch.Tensor:
    for op in plan:
        if op[0] == "conv":
            x = F.conv2d(x, op[1], op[2], stride=op[3], padding=op[4])
        elif op[0] == "relu":
            x = F.relu_(x)
        else:
            x = F.max_pool2d(x, op[1], op[2], op[3])
    return x


# --------------------------------------------------------------------------------- checkpoint loading

def _unwrap(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor) as in syncnet_v2.model, "
                              f"got {type(obj).__name__}; pass the official syncnet_v2.model.")
    return obj


def remap_state_dict(state: Mapping[str, torch.Tensor], model: SyncNet, path: Path | str = "<state>"
                     ) -> dict[str, torch.Tensor]:
    """Official file -> this module's state dict.

    Rename table:
      ``__S__.<key>`` -> ``<key>``  (a ``SyncNetInstance`` state dict saved whole: same tensors)
    Missing ``*.num_batches_tracked`` entries (2017-era files predate them) are filled with 0: they do
    not take part in eval-mode computation. Any other missing, unexpected or mis-shaped key raises.

    Raises:
        CheckpointError: (a ``ValueError``) keys missing, unexpected or of the wrong shape (all listed).
    """
    expected = model.state_dict()
    out = with_batch_counters({(k[len("__S__."):] if k.startswith("__S__.") else k): v for k, v in state.items()},
                              expected)
    require_matching_keys(expected, out, path, "a SyncNet v2 checkpoint (syncnet_v2.model)",
                          "Pass the official syncnet_v2.model with --weights syncnet-v2=PATH.")
    return out


def load_syncnet(path: str | Path, device: str | torch.device = "cpu") -> SyncNet:
    """Build :class:`SyncNet` and load ``syncnet_v2.model`` (strict key check), in eval mode on ``device``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a SyncNet v2 state dict (keys listed), or NaN/Inf weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SyncNet checkpoint {path} does not exist; pass --weights syncnet-v2=PATH.")
    state = _unwrap(load_checkpoint(path, map_location="cpu", mmap=False), path)
    model = SyncNet()
    remapped = remap_state_dict(state, model, path)
    check_state_tensors(remapped, path, "Download syncnet_v2.model again and pass it with --weights syncnet-v2=PATH.")
    model.load_state_dict(remapped, strict=True)
    return model.eval().to(device)


__all__ = ["EMBED_DIM", "SyncNet", "WINDOW_FRAMES", "WINDOW_MFCC", "load_syncnet", "remap_state_dict"]
