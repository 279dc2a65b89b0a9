"""FID's Inception-v3 (the TensorFlow 2015-12-05 graph ported by pytorch-fid) in plain PyTorch.

Written from mseitzer/pytorch-fid ``src/pytorch_fid/inception.py`` (commit b9c1811) and the torchvision
``Inception3`` blocks it builds on, with the module names of the weights file
``pt_inception-2015-12-05-6726825d.pth`` (a plain state dict of ``Inception3(num_classes=1008,
aux_logits=False)`` with the FID blocks). The FID network differs from torchvision's Inception-v3 in:

* ``Mixed_5b..5d`` (A), ``Mixed_6b..6e`` (C), ``Mixed_7b`` (E_1): the pool branch averages with
  ``count_include_pad=False`` (TensorFlow's average pool ignores the zero padding);
* ``Mixed_7c`` (E_2): the pool branch is a 3×3 **max** pool (stride 1, padding 1);
* 1008 classes in ``fc`` (unused for FID).

Input handling of ``InceptionV3(resize_input=True, normalize_input=True)``: RGB in [0, 1], ``B×3×H×W`` →
``F.interpolate(size=(299, 299), mode="bilinear", align_corners=False)`` → ``2x − 1`` → the network up to
``Mixed_7c`` → adaptive average pool to 1×1: the 2048-d "pool3" features (:meth:`FIDInception.pool3`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkbench.nets.checkpoint_keys import (CheckpointError, check_state_tensors, require_matching_keys,
                                            with_batch_counters)
from talkbench.safe_unpickle import load_checkpoint, torchscript_archive

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
#: Parameters + buffers of the official file (what loading allocates), with slack.
MAX_ELEMENTS = 30_000_000
_FIX = "Pass pytorch-fid's pt_inception-2015-12-05-6726825d.pth with --weights fid-inception=PATH."


class BasicConv2d(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3) → ReLU, as torchvision's ``BasicConv2d``."""

    def __init__(self, cin: int, cout: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: Tensor) -> Tensor:
    """3×3 average pool, stride 1, padding 1, padded zeros not counted (TensorFlow's)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """``Mixed_5b..5d``: 1×1, 5×5, double 3×3 and TF-average-pool branches; ``B×C×35×35`` → ``B×(224+pool)×35×35``."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """``Mixed_6a`` (grid reduction 35 → 17): strided 3×3, double 3×3 and max-pool branches."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    """``Mixed_6b..6e``: factorised 7×7 branches and a TF-average-pool branch; ``B×768×17×17`` → same."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """``Mixed_7a`` (grid reduction 17 → 8): 3×3 and 7×7+3×3 strided branches and a max-pool branch."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """``Mixed_7b`` (``max_pool=False``: TF average pool) and ``Mixed_7c`` (``max_pool=True``: the FID graph's
    3×3 max pool); ``B×C×8×8`` → ``B×2048×8×8``."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """The FID Inception-v3; attribute names are the weights file's keys (``Conv2d_1a_3x3.conv.weight``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def trunk(self, x: Tensor) -> Tensor:
        """Normalised ``B×3×299×299`` in [-1, 1] → ``B×2048×8×8`` (``Mixed_7c``'s output)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x

    def pool3(self, images: Tensor) -> Tensor:
        """RGB images in [0, 1], ``B×3×H×W`` float32 → pool3 features ``B×2048``: bilinear resize to 299×299
        (``align_corners=False``, no antialiasing), ``2x − 1``, the trunk, global average pool."""
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        return F.adaptive_avg_pool2d(self.trunk(x), (1, 1)).flatten(1)

    def forward(self, images: Tensor) -> Tensor:
        """Same as :meth:`pool3`."""
        return self.pool3(images)


def _unwrap(obj: object, path: Path) -> Mapping[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), as pytorch-fid's weights file is, "
                              f"got {type(obj).__name__}. {_FIX}")
    return obj


def remap_state_dict(state: Mapping[str, Tensor], model: FIDInception, path: Path | str = "<state>"
                     ) -> dict[str, Tensor]:
    """Official file -> this module's state dict.

    Rename table: none (the file's keys are this module's). Missing ``*.num_batches_tracked`` entries are
    filled with 0 (they take no part in eval-mode computation; whether the released file holds them is not
    known here). Any other missing, unexpected or mis-shaped key raises.

    Raises:
        CheckpointError: keys missing, unexpected or of the wrong shape (all listed).
    """
    expected = model.state_dict()
    out = with_batch_counters(state, expected)
    require_matching_keys(expected, out, path,
                          "the FID Inception weights (pt_inception-2015-12-05-6726825d.pth)", _FIX)
    return out


def load_fid_inception(path: str | Path, device: str | torch.device = "cpu") -> FIDInception:
    """Build :class:`FIDInception` and load ``pt_inception-2015-12-05-6726825d.pth`` through the restricted
    unpickler (strict key check), in eval mode on ``device``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not that state dict (keys listed), a TorchScript archive, or NaN/Inf weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights {path} do not exist. {_FIX}")
    if torchscript_archive(path):
        raise CheckpointError(f"{path}: a TorchScript archive (such as StyleGAN2-ADA's inception-2015-12-05.pt), not "
                              f"pytorch-fid's plain state dict; talkbench does not load TorchScript. {_FIX}")
    state = _unwrap(load_checkpoint(path, map_location="cpu", mmap=False), path)
    model = FIDInception()
    remapped = remap_state_dict(state, model, path)
    check_state_tensors(remapped, path, _FIX, max_elements=MAX_ELEMENTS)
    model.load_state_dict(remapped, strict=True)
    return model.eval().to(device)


__all__ = ["FEATURE_DIM", "FIDInception", "INPUT_SIZE", "load_fid_inception", "remap_state_dict"]
