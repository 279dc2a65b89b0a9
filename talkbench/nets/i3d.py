"""FVD's I3D (Inception-v1 inflated to 3-D, 400 Kinetics classes) in plain PyTorch.

Written from cd-fvd's ``cdfvd/third_party/i3d/pytorch_i3d.py`` (songweig/content-debiased-fvd, PyPI cd-fvd 0.1.1;
itself piergiaj/pytorch-i3d's ``InceptionI3d``) with the module names of the weights file ``i3d_pretrained_400.pt``
that ``cdfvd.third_party.i3d.utils.load_i3d_model`` loads strictly (``Conv3d_1a_7x7.conv3d.weight``,
``Mixed_3b.b1b.bn.running_var``, ``logits.conv3d.bias``, ...).

Every convolution and max pool pads TensorFlow's ``SAME`` way, computed from the input size:
``pad = max(k − s, 0)`` when ``n % s == 0`` else ``max(k − n % s, 0)``, ``pad // 2`` before and the rest after,
with zeros (max pools too); the ``padding`` arguments of the reference constructors are ignored by its code.
Convolutions have no bias and are followed by BatchNorm (eps 1e-5) and ReLU, except ``logits`` (bias, no BN, no
activation). Head: average pool ``[2, 7, 7]`` stride 1, dropout (identity in eval), ``logits`` 1×1×1 conv,
spatial squeeze, mean over time → ``B×400``: what cd-fvd's ``get_i3d_logits`` feeds to FVD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkbench.nets.checkpoint_keys import (CheckpointError, check_state_tensors, require_matching_keys,
                                            with_batch_counters)
from talkbench.safe_unpickle import load_checkpoint, torchscript_archive

NUM_CLASSES = 400
CLIP_FRAMES = 16
INPUT_SIZE = 224
#: Parameters + buffers of the official file (what loading allocates), with slack.
MAX_ELEMENTS = 20_000_000
_FIX = "Pass cd-fvd's i3d_pretrained_400.pt with --weights fvd-i3d=PATH."


def _same_pad(sizes: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """``F.pad`` argument (w before, w after, h before, h after, t before, t after) of TF's SAME padding."""
    pads: list[int] = []
    for n, k, s in zip(reversed(sizes), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class SamePadMaxPool3d(nn.Module):
    """Max pool after zero SAME padding (the reference's ``MaxPool3dSamePadding``); no parameters."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, _same_pad(x.shape[2:], self.kernel, self.stride))
        return F.max_pool3d(x, self.kernel, self.stride)


class Unit3D(nn.Module):
    """SAME-padded Conv3d → BatchNorm3d (eps 1e-5) → ReLU; ``head=True``: conv with bias only (``logits``)."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int] = (1, 1, 1), stride: Sequence[int] = (1, 1, 1),
                 head: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.head = tuple(kernel), tuple(stride), head
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, stride=self.stride, padding=0, bias=head)
        if not head:
            self.bn = nn.BatchNorm3d(cout, eps=1e-5, momentum=0.001)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(F.pad(x, _same_pad(x.shape[2:], self.kernel, self.stride)))
        return x if self.head else F.relu(self.bn(x))


class InceptionModule(nn.Module):
    """Four branches: 1×1; 1×1 → 3×3×3; 1×1 → 3×3×3; 3×3×3 max pool → 1×1; concatenated on channels."""

    def __init__(self, cin: int, out: Sequence[int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, out[0])
        self.b1a = Unit3D(cin, out[1])
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a = Unit3D(cin, out[3])
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a = SamePadMaxPool3d((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, out[5])

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3d(nn.Module):
    """I3D up to the 400 logits; attribute names are the weights file's keys."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = SamePadMaxPool3d((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = SamePadMaxPool3d((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionModule(256, (128, 128, 192, 32, 96, 64))
        self.MaxPool3d_4a_3x3 = SamePadMaxPool3d((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionModule(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionModule(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionModule(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionModule(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionModule(528, (256, 160, 320, 32, 128, 128))
        self.MaxPool3d_5a_2x2 = SamePadMaxPool3d((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionModule(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionModule(832, (384, 192, 384, 48, 128, 128))
        self.logits = Unit3D(1024, num_classes, head=True)

    def pre_pool(self, video: Tensor) -> Tensor:
        """Normalised video ``B×3×T×224×224`` in [-1, 1] → ``Mixed_5c`` output ``B×1024×T/8×7×7``."""
        x = video
        for layer in (self.Conv3d_1a_7x7, self.MaxPool3d_2a_3x3, self.Conv3d_2b_1x1, self.Conv3d_2c_3x3,
                      self.MaxPool3d_3a_3x3, self.Mixed_3b, self.Mixed_3c, self.MaxPool3d_4a_3x3, self.Mixed_4b,
                      self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f, self.MaxPool3d_5a_2x2,
                      self.Mixed_5b, self.Mixed_5c):
            x = layer(x)
        return x

    def forward(self, video: Tensor) -> Tensor:
        """Normalised video ``B×3×T×224×224`` (T ≥ 9; 16 for FVD) → logits ``B×400`` (mean over the pooled time
        steps, one for T = 16)."""
        x = F.avg_pool3d(self.pre_pool(video), kernel_size=(2, 7, 7), stride=1)
        return self.logits(x).squeeze(3).squeeze(3).mean(dim=2)


def preprocess_clips(clips_rgb: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """uint8-valued RGB clips ``B×T×H×W×3`` → ``B×3×T×size×size`` in [-1, 1], as cd-fvd's ``preprocess_i3d``:
    float, per-frame bilinear resize (``align_corners=False``, no antialiasing), ``2x/255 − 1``."""
    b, t, h, w, c = clips_rgb.shape
    frames = clips_rgb.float().flatten(end_dim=1).permute(0, 3, 1, 2)
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    video = frames.reshape(b, t, c, size, size).transpose(1, 2)
    return 2.0 * video / 255.0 - 1


def _unwrap(obj: object, path: Path) -> Mapping[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), as i3d_pretrained_400.pt is, got "
                              f"{type(obj).__name__}. {_FIX}")
    return obj


def remap_state_dict(state: Mapping[str, Tensor], model: InceptionI3d, path: Path | str = "<state>"
                     ) -> dict[str, Tensor]:
    """Official file -> this module's state dict.

    Rename table: ``module.<key>`` -> ``<key>`` (a ``DataParallel`` save); otherwise none. Missing
    ``*.num_batches_tracked`` entries are filled with 0 (no part in eval-mode computation). Any other missing,
    unexpected or mis-shaped key raises.

    Raises:
        CheckpointError: keys missing, unexpected or of the wrong shape (all listed).
    """
    expected = model.state_dict()
    out = with_batch_counters({(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()},
                              expected)
    require_matching_keys(expected, out, path, "the FVD I3D weights (i3d_pretrained_400.pt)", _FIX)
    return out


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> InceptionI3d:
    """Build :class:`InceptionI3d` and load ``i3d_pretrained_400.pt`` through the restricted unpickler (strict
    key check), in eval mode on ``device``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not that state dict (keys listed), a TorchScript archive (such as StyleGAN-V's
            ``i3d_torchscript.pt``; refused before anything is read), or NaN/Inf weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights {path} do not exist. {_FIX}")
    if torchscript_archive(path):
        raise CheckpointError(f"{path}: a TorchScript archive (such as StyleGAN-V's i3d_torchscript.pt), not a plain "
                              f"state dict; talkbench does not load TorchScript. {_FIX}")
    state = _unwrap(load_checkpoint(path, map_location="cpu", mmap=False), path)
    model = InceptionI3d()
    remapped = remap_state_dict(state, model, path)
    check_state_tensors(remapped, path, _FIX, max_elements=MAX_ELEMENTS)
    model.load_state_dict(remapped, strict=True)
    return model.eval().to(device)


__all__ = ["CLIP_FRAMES", "INPUT_SIZE", "InceptionI3d", "load_i3d", "preprocess_clips", "remap_state_dict"]
