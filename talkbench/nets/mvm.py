"""MVM: the multi-head visual-audio memory LRW word classifier (Kim, Yeo, Ro, AAAI 2022), inference only.

Architecture of ms-dot-k/Multi-head-Visual-Audio-Memory (commit a902f49), built with test.py's settings
(radius 16, 112 slots, 8 heads, 29 frames, 500 classes): a visual front end (Conv3d stem + ResNet-18 of
"improved residual" blocks -> 512-d per frame), a multi-head memory that adds a recalled "virtual audio"
feature to each frame, and a multi-scale multi-branch TCN (4 blocks of 3/5/7 kernels, 768 channels, with a
memory after blocks 1-3) averaged over all 29 steps, then ``Linear(768, 500)``.

The official ``Pretrained_Ckpt.ckpt`` is a dict of state dicts ``{v_front_state_dict, a_front_state_dict,
mem_state_dict, tcn_state_dict}``. At test time the memories ignore the audio branch, so the audio front end
is not built; its keys are still checked when present (see :func:`load_mvm`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from talkbench.nets.checkpoint_keys import CheckpointError, check_state_tensors, require_matching_keys
from talkbench.nets.frame_pool import FrameMaxPool
from talkbench.nets.onednn_linear import for_inference
from talkbench.safe_unpickle import load_checkpoint

logger = logging.getLogger(__name__)

NUM_CLASSES = 500
#: LRW clips have 29 frames; the test loader zero-fills shorter clips to this length.
MAX_FRAMES = 29
TCN_KERNELS = (3, 5, 7)
TCN_CHANNELS = 768


class IRBlock(nn.Module):
    """"Improved residual" bottleneck (``BottleNeck_IR``): BN-conv-BN-PReLU-conv(stride)-BN plus a shortcut.

    The shortcut is the identity when shapes match, else a strided 1×1 conv + BN (``shortcut_layer``).
    """

    def __init__(self, in_channel: int, out_channel: int, stride: int, dim_match: bool) -> None:
        super().__init__()
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, out_channel, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channel),
            nn.PReLU(out_channel),
            nn.Conv2d(out_channel, out_channel, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channel),
        )
        self.shortcut_layer = None if dim_match else nn.Sequential(
            nn.Conv2d(in_channel, out_channel, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut_layer is None else self.shortcut_layer(x)
        return shortcut + self.res_layer(x)


class IRResNet(nn.Module):
    """ResNet-18 of :class:`IRBlock` s, then BN, flatten of the 512×4×4 map, ``Linear(8192,512)``, LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        stages = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for index, (cin, cout, stride) in enumerate(stages, start=1):
            setattr(self, f"layer{index}", nn.Sequential(IRBlock(cin, cout, stride, False),
                                                         IRBlock(cout, cout, 1, True)))
        self.out_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
                                       nn.Linear(512 * 4 * 4, 512), nn.LayerNorm(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N×64×28×28`` -> ``N×512``."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.out_layer(x)


class VisualFront(nn.Module):
    """``Visual_front``: ``B×1×T×112×112`` -> ``B×T×512`` (Conv3d, BN3d, PReLU, 1×3×3 max-pool, per-frame ResNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Sequential(
            nn.Conv3d(1, 64, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.PReLU(64),
            FrameMaxPool(),  # = MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)), faster
        )
        self.resnet = IRResNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.frontend(x)  # B×64×T×28×28
        batch, channels, time, height, width = y.shape
        y = y.transpose(1, 2).reshape(batch * time, channels, height, width)
        return self.resnet(y).view(batch, time, -1)


class Memory(nn.Module):
    """Multi-head key-value memory, inference path (``Memory(..., inference=True)``).

    Each head compares its 64-d slice of ``q_embd(x)`` with its 112 keys by cosine similarity, takes a
    softmax of ``radius * cos`` over the slots, and reads the 512-d values; the 8 reads are concatenated,
    projected to ``dim`` and normalised (``norm2``); the output is ``norm1(x + read)``. ``v_embd``, ``norm3``
    and ``v_up`` only serve training (the audio-to-memory path) but are part of the checkpoint.
    """

    def __init__(self, radius: float = 16.0, n_slot: int = 112, n_head: int = 8, dim: int = 512,
                 diff_aud_vid: bool = False) -> None:
        super().__init__()
        self.head, self.slot, self.radius = n_head, n_slot, radius
        self.key = nn.Parameter(torch.zeros(n_head * n_slot, 512 // n_head))
        self.value = nn.Parameter(torch.zeros(n_slot, 512))
        out_dim = dim if diff_aud_vid else 512
        self.linear = nn.Linear(512 * n_head, out_dim)
        self.norm1 = nn.LayerNorm(out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.norm3 = nn.LayerNorm(out_dim)
        if diff_aud_vid:
            self.v_up = nn.Linear(512, dim)
        self.q_embd = nn.Linear(dim, 512)
        self.v_embd = nn.Linear(512, 512)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        """``B×S×dim`` -> ``B×S×dim``."""
        batch, steps, dim = query.shape
        keys = F.normalize(self.key.view(self.head, self.slot, -1), dim=2)  # H×slot×64
        q = F.normalize(self.q_embd(query.reshape(batch * steps, dim)).view(batch * steps, self.head, -1), dim=2)
        weights = torch.softmax(self.radius * torch.einsum("bhd,hsd->bhs", q, keys), dim=2)  # BS×H×slot
        read = torch.matmul(weights, self.value).view(batch * steps, -1)  # BS×(H·512)
        recalled = self.norm2(self.linear(read))
        return self.norm1(query + recalled.view(batch, steps, -1))


class BranchConv(nn.Module):
    """One TCN branch (``ConvBatchChompRelu``): dilated conv, BN, symmetric chomp, PReLU.

    The reference pads ``(k-1)·d`` on both sides and then chomps ``(k-1)·d/2`` from each end: the same
    outputs as padding ``(k-1)·d/2`` ("same" convolution), which is what runs here. BN (eval) is per
    channel, so chomping after it changes nothing.
    """

    def __init__(self, n_inputs: int, n_outputs: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(n_inputs, n_outputs, kernel_size, padding=(kernel_size - 1) * dilation // 2,
                              dilation=dilation)
        self.batchnorm = nn.BatchNorm1d(n_outputs)
        self.non_lin = nn.PReLU(n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.non_lin(self.batchnorm(self.conv(x)))


class TemporalBlock(nn.Module):
    """``MultibranchTemporalBlock``: two rounds of 3 branches (3/5/7) -> concat, + 1×1 ``downsample`` skip, PReLU."""

    def __init__(self, n_inputs: int, n_outputs: int, dilation: int) -> None:
        super().__init__()
        branch = n_outputs // len(TCN_KERNELS)
        for index, kernel in enumerate(TCN_KERNELS):
            setattr(self, f"cbcr0_{index}", BranchConv(n_inputs, branch, kernel, dilation))
        for index, kernel in enumerate(TCN_KERNELS):
            setattr(self, f"cbcr1_{index}", BranchConv(n_outputs, branch, kernel, dilation))
        # The reference tests ``n_inputs // 3 != n_outputs``, true for 512 and 768 inputs alike.
        self.downsample = nn.Conv1d(n_inputs, n_outputs, 1)
        self.relu_final = nn.PReLU(n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×Cin×T`` -> ``B×768×T``."""
        count = len(TCN_KERNELS)
        out0 = torch.cat([getattr(self, f"cbcr0_{i}")(x) for i in range(count)], dim=1)
        out1 = torch.cat([getattr(self, f"cbcr1_{i}")(out0) for i in range(count)], dim=1)
        return self.relu_final(out1 + self.downsample(x))


class MultibranchTCN(nn.Module):
    """Four temporal blocks (dilations 1/2/4/8) with memories ``mem1..3`` (channels-first) after blocks 1-3."""

    def __init__(self, radius: float, n_slot: int, head: int) -> None:
        super().__init__()
        inputs = 512
        for index, dilation in enumerate((1, 2, 4, 8), start=1):
            setattr(self, f"layer{index}", TemporalBlock(inputs, TCN_CHANNELS, dilation))
            if index < 4:
                setattr(self, f"mem{index}", Memory(radius, n_slot, head, dim=TCN_CHANNELS, diff_aud_vid=True))
            inputs = TCN_CHANNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×512×T`` -> ``B×768×T``."""
        for index in (1, 2, 3):
            x = getattr(self, f"layer{index}")(x)
            x = getattr(self, f"mem{index}")(x.transpose(1, 2)).transpose(1, 2)
        return self.layer4(x)


class MultiscaleTCN(nn.Module):
    """``MultiscaleMultibranchTCN``: TCN, mean over all time steps (padding frames included), ``tcn_output``."""

    def __init__(self, radius: float, n_slot: int, head: int) -> None:
        super().__init__()
        self.mb_ms_tcn = MultibranchTCN(radius, n_slot, head)
        self.tcn_output = nn.Linear(TCN_CHANNELS, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×T×512`` -> logits ``B×500``."""
        return self.tcn_output(self.mb_ms_tcn(x.transpose(1, 2)).mean(dim=2))


class TemporalClassifier(nn.Module):
    """``Temp_classifier``: holds :class:`MultiscaleTCN` as ``tcn`` (so keys read ``tcn.mb_ms_tcn...``)."""

    def __init__(self, radius: float = 16.0, n_slot: int = 112, head: int = 8) -> None:
        super().__init__()
        self.tcn = MultiscaleTCN(radius, n_slot, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tcn(x)


class AudioFront(nn.Module):
    """``Audio_front``'s layout, built only on the meta device to check a checkpoint's audio keys. Never run."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = nn.Sequential(
            nn.Conv2d(1, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.PReLU(128),
            nn.Conv2d(128, 256, 3, 2, 1), nn.BatchNorm2d(256), nn.PReLU(256))
        self.Res_block = nn.Sequential(IRBlock(256, 256, 1, True), nn.BatchNorm2d(256), nn.Dropout(0.4))
        self.Linear = nn.Sequential(nn.Linear(256 * 20, 512), nn.LayerNorm(512))


class MVMClassifier(nn.Module):
    """Visual front end + memory + TCN; ``forward(video)`` gives the 500 word logits."""

    def __init__(self, radius: float = 16.0, n_slot: int = 112, head: int = 8) -> None:
        super().__init__()
        self.v_front = VisualFront()
        self.mem = Memory(radius, n_slot, head)
        self.tcn = TemporalClassifier(radius, n_slot, head)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``B×1×T×112×112`` normalised gray (T = 29 for LRW) -> logits ``B×500``."""
        return self.tcn(self.mem(self.v_front(video)))

    @torch.no_grad()
    def logits_with_flip(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """test.py's test-time augmentation: logits of the clip and of its horizontal mirror (one batched pass).

        ``video``: ``B×1×T×H×W``. Returns ``(noflip, flip)``, each ``B×500``; the prediction is
        ``argmax(noflip + flip)``.
        """
        both = self(torch.cat([video, video.flip(4)], dim=0))
        return both[: video.size(0)], both[video.size(0):]


# Checkpoint entry -> the submodule that loads it (test.py's strict load_state_dict calls).
_PARTS: dict[str, str] = {
    "v_front_state_dict": "v_front",
    "mem_state_dict": "mem",
    "tcn_state_dict": "tcn",
}
_AUDIO_PART = "a_front_state_dict"
_SETTINGS = "radius 16, 112 slots, 8 heads"


def _plain(state: object, path: Path, entry: str) -> "OrderedDict[str, torch.Tensor]":
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: entry `{entry}` is not a state dict (got {type(state).__name__}); "
                              "pass MVM's Pretrained_Ckpt.ckpt with --weights mvm-lrw=PATH.")
    out = OrderedDict(state)
    if out and all(k.startswith("module.") for k in out):  # saved from a DataParallel/DDP wrapper
        out = OrderedDict((k[len("module."):], v) for k, v in out.items())
    return out


def _check_entry(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, entry: str, what: str) -> None:
    """CheckpointError naming ``entry`` when its keys or shapes do not fit ``module`` (all kinds listed)."""
    require_matching_keys(module.state_dict(), state, path, f"{what} (`{entry}`)",
                          f"Pass MVM's Pretrained_Ckpt.ckpt ({_SETTINGS}) with --weights mvm-lrw=PATH.", shown=8)


def load_mvm(path: str | Path, device: str | torch.device = "cpu") -> MVMClassifier:
    """Build MVM (radius 16, 112 slots, 8 heads) and load ``Pretrained_Ckpt.ckpt`` strictly.

    Tensors are assigned to a model built on the meta device (weights held once, no memory map).
    Needs ``v_front_state_dict``, ``mem_state_dict`` and ``tcn_state_dict``; each is loaded into its module
    with ``strict=True``. ``a_front_state_dict`` is optional: when present its keys and shapes are checked
    against ``Audio_front`` and it is then dropped. Other top-level entries (e.g. optimiser state) are ignored.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) an entry is missing, or its keys/shapes differ from the model
            (the message lists them), or has NaN/Inf weights.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path, map_location="cpu")
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: expected a dict of state dicts ({', '.join(_PARTS)}), got "
                              f"{type(checkpoint).__name__}; pass MVM's Pretrained_Ckpt.ckpt with "
                              "--weights mvm-lrw=PATH.")
    absent = [entry for entry in _PARTS if entry not in checkpoint]
    if absent:
        raise CheckpointError(f"{path}: not an MVM checkpoint: missing {', '.join(absent)} (found "
                              f"{', '.join(map(str, checkpoint)) or 'nothing'}); pass MVM's Pretrained_Ckpt.ckpt.")
    with torch.device("meta"):
        model = MVMClassifier()
        audio = AudioFront()
    if _AUDIO_PART in checkpoint:
        state = _plain(checkpoint[_AUDIO_PART], path, _AUDIO_PART)
        _check_entry(audio, state, path, _AUDIO_PART, "MVM's audio front end")
    ignored = [str(k) for k in checkpoint if k not in _PARTS and k != _AUDIO_PART]
    if ignored:
        logger.debug("%s: ignoring checkpoint entries %s", path, ", ".join(ignored))
    for entry, attribute in _PARTS.items():
        module = getattr(model, attribute)
        state = _plain(checkpoint[entry], path, entry)
        _check_entry(module, state, path, entry, f"MVM's {attribute} module")
        check_state_tensors(state, path, f"Download MVM's Pretrained_Ckpt.ckpt again (entry `{entry}`).")
        module.load_state_dict(state, strict=True, assign=True)
    return for_inference(model, device)

