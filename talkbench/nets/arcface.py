"""ArcFace IResNet (insightface ``recognition/arcface_torch``), inference only: 112×112 face → 512-d embedding.

Architecture of deepinsight/insightface ``recognition/arcface_torch/backbones/iresnet.py`` (commit
d9cb10e6bda109bc9b4a6ca8b92d7f3342b56492, unchanged at 7fadd420c2351d0ffa8cac403421c1a3ed733365), written here in
plain PyTorch with the official state-dict key names:

* stem: ``conv1`` (3×3, 3→64, stride 1, no bias), ``bn1``, ``prelu``;
* ``layer1..layer4``: "improved" basic blocks (:class:`IBasicBlock`: BN → conv3×3 → BN → PReLU → conv3×3(stride) →
  BN, plus the identity or a strided ``downsample`` = conv1×1 + BN), 64/128/256/512 channels, each stage starting
  with stride 2 (112 → 56 → 28 → 14 → 7); blocks per stage by depth in :data:`DEPTHS` (r50: 3, 4, 14, 3;
  r100: 3, 13, 30, 3);
* head: ``bn2`` (BatchNorm2d 512), flatten of the 512×7×7 map, (dropout p=0: a no-op, not built), ``fc``
  (25088 → 512), ``features`` (BatchNorm1d 512). All BatchNorm eps 1e-5.

The released ``backbone.pth`` files are the bare ``state_dict()`` of this module (``torch.save(backbone.module
.state_dict(), ...)``); the depth is read from the keys (how many blocks each ``layerN`` has), so r18 … r200 all
load. Input (arcface_torch ``inference.py``): RGB, ``(x / 255 − 0.5) / 0.5``, ``N×3×112×112`` float32
(:func:`arcface_input`).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from talkbench.nets.checkpoint_keys import CheckpointError, check_state_tensors, require_matching_keys
from talkbench.nets.onednn_linear import for_inference
from talkbench.safe_unpickle import load_checkpoint

logger = logging.getLogger(__name__)

#: Blocks per stage of each published depth (arcface_torch ``iresnet18`` … ``iresnet200``).
DEPTHS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}
INPUT_SIZE = 112
EMBEDDING_DIM = 512
BN_EPS = 1e-5
#: Bigger than any IResNet-200 state dict (r200 has ~1.3e8 values), to refuse crafted files before allocating.
MAX_ELEMENTS = 200_000_000
_FIX = "Pass an arcface_torch backbone.pth (e.g. glint360k_cosface_r100_fp16_0.1/backbone.pth) with " \
       "--weights arcface-r100-glint360k=PATH."


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """``bn1 → conv1 → bn2 → prelu → conv2(stride) → bn3`` plus the identity or ``downsample(x)``."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """ArcFace IResNet: ``N×3×112×112`` normalised RGB → ``N×512`` embedding (not L2-normalised).

    Args:
        layers: blocks per stage, e.g. ``DEPTHS[100]``.
        num_features: embedding size (512 in every released backbone).
    """

    def __init__(self, layers: tuple[int, int, int, int], num_features: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
            # every stage starts with stride 2, so every first block has a downsample (conv1x1 + BN)
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, kernel_size=1, stride=2, bias=False),
                                       nn.BatchNorm2d(planes, eps=BN_EPS))
            stage = [IBasicBlock(inplanes, planes, 2, downsample)]
            stage += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, eps=BN_EPS)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N×3×112×112`` → ``N×num_features``."""
        x = self.prelu(self.bn1(self.conv1(x)))                       # N×64×112×112
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))     # N×512×7×7
        x = torch.flatten(self.bn2(x), 1)                             # N×25088
        return self.features(self.fc(x))                             # N×512


def iresnet(depth: int) -> IResNet:
    """An untrained IResNet of a published depth (18, 34, 50, 100 or 200)."""
    if depth not in DEPTHS:
        raise ValueError(f"Argument `depth` must be one of {', '.join(map(str, DEPTHS))}, but got {depth!r}.")
    return IResNet(DEPTHS[depth])


def arcface_input(crops_bgr: np.ndarray) -> torch.Tensor:
    """Aligned BGR uint8 crops ``N×112×112×3`` → the network's float32 input ``N×3×112×112``.

    As arcface_torch ``inference.py``: BGR → RGB, HWC → CHW, ``x / 255``, ``− 0.5``, ``/ 0.5`` (in that order, in
    float32).
    """
    crops = np.asarray(crops_bgr)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"ArcFace input: expected uint8 N×{INPUT_SIZE}×{INPUT_SIZE}×3 aligned crops, got "
                         f"{crops.dtype} {crops.shape}.")
    x = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1].transpose(0, 3, 1, 2))).float()
    return x.div_(255).sub_(0.5).div_(0.5)


def embeddings(model: IResNet, crops_bgr: np.ndarray, device: torch.device | str = "cpu",
               batch: int = 32) -> np.ndarray:
    """L2-normalised embeddings of aligned crops: uint8 ``N×112×112×3`` BGR → float32 ``N×512`` (unit rows).

    Args:
        batch: crops per forward pass (changes memory, not the numbers beyond float rounding).
    """
    out = []
    with torch.no_grad():
        for start in range(0, len(crops_bgr), batch):
            x = arcface_input(crops_bgr[start:start + batch]).to(device)
            out.append(torch.nn.functional.normalize(model(x).float(), dim=1).cpu())
    if not out:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    return torch.cat(out).numpy()


def depth_of(state: Mapping[str, torch.Tensor], path: str | Path) -> int:
    """The depth whose blocks per stage match the keys ``layerN.<i>.…`` of a state dict.

    Raises:
        CheckpointError: no ``layerN`` keys, or a block count no published depth has.
    """
    counts = [0, 0, 0, 0]
    for key in state:
        match = re.match(r"layer([1-4])\.(\d+)\.", key)
        if match:
            stage, block = int(match.group(1)) - 1, int(match.group(2))
            counts[stage] = max(counts[stage], block + 1)
    for depth, layers in DEPTHS.items():
        if tuple(counts) == layers:
            return depth
    raise CheckpointError(f"{path}: not an arcface_torch IResNet backbone: its layer1..layer4 have {counts} blocks, "
                          f"which is none of the published depths ({', '.join(f'r{d} {l}' for d, l in DEPTHS.items())})."
                          f" {_FIX}")


def _plain_state(obj: object, path: Path) -> "OrderedDict[str, torch.Tensor]":
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (key -> tensor) as arcface_torch saves backbone.pth, "
                              f"got {type(obj).__name__}. {_FIX}")
    state = OrderedDict(obj)
    if all(k.startswith("module.") for k in state):  # saved from the DDP wrapper itself
        state = OrderedDict((k[len("module."):], v) for k, v in state.items())
    return state


def load_arcface(path: str | Path, device: str | torch.device = "cpu") -> IResNet:
    """Build the IResNet the file's keys describe and load ``backbone.pth`` strictly.

    The file is opened with the restricted unpickler; floating tensors are cast to float32 (files saved from
    half-precision training load too); the model is built on the meta device and the tensors assigned.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) not a state dict, a depth no published backbone has, keys or shapes
            that differ from the model (listed), NaN/Inf weights, or more values than any IResNet.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ArcFace backbone not found. {_FIX}")
    state = _plain_state(load_checkpoint(path, map_location="cpu"), path)
    check_state_tensors(state, path, _FIX, max_elements=MAX_ELEMENTS)
    depth = depth_of(state, path)
    with torch.device("meta"):
        model = iresnet(depth)
    require_matching_keys(model.state_dict(), state, path, f"an arcface_torch IResNet-{depth} backbone", _FIX)
    state = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in state.items())
    model.load_state_dict(state, strict=True, assign=True)
    logger.debug("%s: IResNet-%d backbone", path, depth)
    return for_inference(model, device)


__all__ = ["DEPTHS", "EMBEDDING_DIM", "INPUT_SIZE", "IBasicBlock", "IResNet", "arcface_input", "depth_of",
           "embeddings", "iresnet", "load_arcface"]
