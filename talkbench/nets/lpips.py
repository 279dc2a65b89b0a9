"""LPIPS v0.1 (Zhang et al., CVPR 2018; ``lpips`` 0.1.4, richzhang/PerceptualSimilarity) with AlexNet or VGG16.

``d(x0, x1) = Σ_l mean_{h,w} Σ_c w_lc · (x̂0_lchw − x̂1_lchw)²``, where ``x̂_l`` is the backbone's activation
after the ReLU that ends stage ``l``, unit-normalised over channels at each position (``x / (‖x‖₂ + 1e-10)``), and
``w_l`` are the learnt non-negative channel weights of ``lin{l}`` (a bias-free 1×1 convolution). Before the
backbone, the ScalingLayer maps the ``[-1, 1]`` RGB input to ImageNet statistics: ``(x − shift) / scale`` with
``shift = (−0.030, −0.088, −0.188)`` and ``scale = (0.458, 0.448, 0.450)``.

Key names are the official ones of two files:

* the backbone: ``features.N.weight`` / ``features.N.bias`` as in torchvision's ImageNet checkpoints
  ``alexnet-owt-7be5be79.pth`` and ``vgg16-397923af.pth`` (``features`` is torchvision's ``nn.Sequential`` with
  its indices; their ``classifier.*`` entries are the ImageNet head, which LPIPS never runs: the loader drops
  them);
* the linear layers: ``lin{l}.model.1.weight`` as in lpips' ``weights/v0.1/alex.pth`` / ``vgg.pth`` (index 0 of
  ``model`` is lpips' Dropout, identity in eval mode; the weights ship with talkbench, BSD-2, in
  ``talkbench/data/lpips/``).

Stages (torchvision indices of the ReLUs whose outputs are compared, lpips' ``slice1..5``):

* AlexNet: ReLU 1, 4, 7, 9, 11 (64, 192, 384, 256, 256 channels);
* VGG16: ReLU 3, 8, 15, 22, 29 (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: 64, 128, 256, 512, 512 channels).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from talkbench.nets.checkpoint_keys import CheckpointError, check_state_tensors, require_matching_keys
from talkbench.safe_unpickle import load_checkpoint

logger = logging.getLogger(__name__)

#: The backbones: lpips' ``net`` name -> (torchvision ``features`` layers, max-pool (kernel, stride), indices of
#: the compared ReLUs). A layer is ``(out_channels, kernel, stride, padding)`` for a convolution
#: (followed by a ReLU) or ``"M"`` for max pooling (AlexNet: 3×3 stride 2; VGG: 2×2 stride 2).
_ALEX_LAYERS: tuple = ((64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
_VGG16_LAYERS: tuple = ((64, 3, 1, 1), (64, 3, 1, 1), "M", (128, 3, 1, 1), (128, 3, 1, 1), "M", (256, 3, 1, 1),
                        (256, 3, 1, 1), (256, 3, 1, 1), "M", (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1), "M",
                        (512, 3, 1, 1), (512, 3, 1, 1), (512, 3, 1, 1))
BACKBONES: dict[str, tuple[tuple, tuple[int, int], tuple[int, ...]]] = {
    "alex": (_ALEX_LAYERS, (3, 2), (1, 4, 7, 9, 11)),
    "vgg": (_VGG16_LAYERS, (2, 2), (3, 8, 15, 22, 29)),
}
#: Card of each backbone, and the torchvision file it describes.
CARDS: dict[str, str] = {"alex": "lpips-alexnet", "vgg": "lpips-vgg16"}
BACKBONE_FILES: dict[str, str] = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
#: lpips' ScalingLayer constants (``lpips/lpips.py``), per RGB channel.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
#: lpips' ``normalize_tensor`` epsilon, added to the channel norm.
NORM_EPS = 1e-10
#: The lin-layer weights shipped as package data (lpips 0.1.4 ``weights/v0.1/<net>.pth``).
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "lpips"
LIN_FILES: dict[str, Path] = {"alex": DATA_DIR / "alex.pth", "vgg": DATA_DIR / "vgg.pth"}
#: sha256 of the shipped lin-layer files (as in the lpips 0.1.4 wheel; PROVENANCE.md there).
LIN_SHA256: dict[str, str] = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
}
#: Elements of the backbone's ``features`` (AlexNet 2.5 M, VGG16 14.7 M), bound for the loader's check.
_MAX_FEATURE_ELEMENTS = 15_000_000


def _features(layers: tuple, pool: tuple[int, int], last: int) -> nn.Sequential:
    """torchvision's ``features`` Sequential (same indices), cut after index ``last`` (the last compared ReLU)."""
    modules: list[nn.Module] = []
    channels = 3
    for layer in layers:
        if layer == "M":
            modules.append(nn.MaxPool2d(*pool))
        else:
            out, kernel, stride, padding = layer
            modules += [nn.Conv2d(channels, out, kernel, stride, padding), nn.ReLU(inplace=True)]
            channels = out
    return nn.Sequential(*modules[:last + 1])


class _NetLinLayer(nn.Module):
    """lpips' ``NetLinLayer``: ``model.0`` Dropout (identity in eval), ``model.1`` bias-free 1×1 conv to 1 channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with an AlexNet (``alex``) or VGG16 (``vgg``) backbone; eval mode expected.

    State dict: ``features.N.{weight,bias}`` (torchvision's names) and ``lin{l}.model.1.weight`` (lpips' names).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in BACKBONES:
            raise ValueError(f"LPIPS backbone must be one of {', '.join(BACKBONES)}, got {net!r}.")
        layers, pool, taps = BACKBONES[net]
        self.net = net
        self.taps = taps
        self.features = _features(layers, pool, taps[-1])
        self.channels = tuple(self.features[i - 1].out_channels for i in taps)
        for index, channels in enumerate(self.channels):
            self.add_module(f"lin{index}", _NetLinLayer(channels))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The compared activations: ``x`` ``(N, 3, H, W)`` RGB in ``[-1, 1]`` -> per stage ``(N, C_l, H_l, W_l)``."""
        x = (x - self.shift) / self.scale
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                out.append(x)
        return out

    def per_layer(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """Each stage's term of the distance, ``(N, L)`` (lpips' ``retPerLayer`` values).

        Args:
            in0, in1: ``(N, 3, H, W)`` RGB in ``[-1, 1]`` (lpips' convention), same shape; both go through the
                backbone as one batch.
        """
        if in0.shape != in1.shape or in0.dim() != 4 or in0.shape[1] != 3:
            raise ValueError(f"LPIPS needs two (N, 3, H, W) batches of one shape, got {tuple(in0.shape)} and "
                             f"{tuple(in1.shape)}.")
        n = in0.shape[0]
        terms = []
        for index, feats in enumerate(self.stages(torch.cat([in0, in1]))):
            feats = feats / (torch.sqrt(torch.sum(feats ** 2, dim=1, keepdim=True)) + NORM_EPS)
            diff = (feats[:n] - feats[n:]) ** 2
            terms.append(getattr(self, f"lin{index}")(diff).mean(dim=(2, 3)))   # (N, 1)
        return torch.cat(terms, dim=1)

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per pair, ``(N,)``: the stages' terms summed in order (as lpips adds them)."""
        terms = self.per_layer(in0, in1)
        total = terms[:, 0]
        for index in range(1, terms.shape[1]):
            total = total + terms[:, index]
        return total


def to_input(crops_bgr: torch.Tensor) -> torch.Tensor:
    """uint8 BGR crops ``(N, H, W, 3)`` -> LPIPS input ``(N, 3, H, W)`` float32 RGB in ``[-1, 1]``.

    ``x / 127.5 − 1`` in float64, then float32: what ``lpips.im2tensor`` computes (numpy float64 division, then
    ``torch.Tensor``), so the inputs are bit-identical to the reference's.
    """
    if crops_bgr.dtype != torch.uint8 or crops_bgr.dim() != 4 or crops_bgr.shape[-1] != 3:
        raise ValueError(f"LPIPS input must be uint8 (N, H, W, 3), got {crops_bgr.dtype} {tuple(crops_bgr.shape)}.")
    rgb = crops_bgr.flip(-1).permute(0, 3, 1, 2)
    return (rgb.double() / 127.5 - 1.0).float().contiguous()


# --------------------------------------------------------------------------------- checkpoint loading

def _state_dict(obj: object, path: Path, fix: str) -> Mapping[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}. {fix}")
    return obj


def backbone_state(path: str | Path, net: str) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a torchvision ImageNet checkpoint, read with the restricted unpickler.

    Rename table: none (the names are torchvision's); ``classifier.*`` (the ImageNet head) is dropped. Any other
    key outside ``features.*`` raises, as do missing or mis-shaped ``features`` keys (checked by the caller).

    Raises:
        FileNotFoundError: no such file. CheckpointError: not a state dict, or keys of another network.
    """
    path = Path(path)
    card = CARDS[net]
    fix = f"Pass torchvision's {BACKBONE_FILES[net]} with --weights {card}=PATH."
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS backbone checkpoint {path} does not exist. {fix}")
    # memory-mapped when the file allows it: VGG16's classifier (0.5 GB) is never read into memory
    state = _state_dict(load_checkpoint(path, map_location="cpu", mmap=True), path, fix)
    unexpected = [k for k in state if not str(k).startswith(("features.", "classifier."))]
    if unexpected:
        raise CheckpointError(f"{path}: not torchvision's {BACKBONE_FILES[net]}: unexpected keys: "
                              f"{', '.join(map(str, unexpected[:10]))}. {fix}")
    return {k: v for k, v in state.items() if k.startswith("features.")}


def file_sha256(path: str | Path) -> str:
    """sha256 of a (small) file, hex."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def lin_state(net: str, path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """lpips' v0.1 linear-layer weights for ``net`` (default: the file shipped in ``talkbench/data/lpips``, checked
    against :data:`LIN_SHA256`), read with the restricted unpickler.

    Raises:
        FileNotFoundError: the file is missing (a broken installation). CheckpointError: not a state dict, or the
            shipped file's sha256 differs from lpips 0.1.4's.
    """
    shipped = path is None
    path = Path(path) if path is not None else LIN_FILES[net]
    fix = f"Reinstall talkbench (the file ships with it as talkbench/data/lpips/{LIN_FILES[net].name})."
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS linear-layer weights {path} are missing. {fix}")
    if shipped and file_sha256(path) != LIN_SHA256[net]:
        raise CheckpointError(f"{path}: sha256 {file_sha256(path)} is not that of lpips 0.1.4's weights/v0.1/"
                              f"{path.name} ({LIN_SHA256[net]}); the installed file was changed. {fix}")
    return dict(_state_dict(load_checkpoint(path, map_location="cpu", mmap=False), path, fix))


def load_lpips(backbone_path: str | Path, net: str = "alex", device: str | torch.device = "cpu",
               lin_path: str | Path | None = None) -> LPIPS:
    """Build :class:`LPIPS` for ``net`` and load the backbone file and the lin weights (strict), eval mode.

    Args:
        backbone_path: torchvision's ImageNet checkpoint of the backbone (``features.*`` [+ ``classifier.*``]).
        net: ``alex`` or ``vgg``.
        lin_path: lpips' ``<net>.pth``; default the copy shipped with talkbench.
    Raises:
        ValueError: unknown ``net``. FileNotFoundError: a missing file.
        CheckpointError: keys missing, unexpected or mis-shaped (all listed), or NaN/Inf weights.
    """
    model = LPIPS(net)
    backbone_path = Path(backbone_path)
    features = backbone_state(backbone_path, net)
    fix = f"Pass torchvision's {BACKBONE_FILES[net]} with --weights {CARDS[net]}=PATH."
    expected = model.state_dict()
    require_matching_keys({k: v for k, v in expected.items() if k.startswith("features.")}, features, backbone_path,
                          f"torchvision's {BACKBONE_FILES[net]}", fix)
    check_state_tensors(features, backbone_path, fix, max_elements=_MAX_FEATURE_ELEMENTS)
    lin_file = Path(lin_path) if lin_path is not None else LIN_FILES[net]
    lins = lin_state(net, lin_path)
    lin_fix = f"Use lpips 0.1.4's weights/v0.1/{LIN_FILES[net].name}."
    require_matching_keys({k: v for k, v in expected.items() if k.startswith("lin")}, lins, lin_file,
                          f"lpips' v0.1 {net} linear layers", lin_fix)
    check_state_tensors(lins, lin_file, lin_fix, max_elements=10_000)
    model.load_state_dict({**features, **lins}, strict=True)
    return model.eval().to(device)


__all__ = ["BACKBONES", "BACKBONE_FILES", "CARDS", "LIN_FILES", "LIN_SHA256", "LPIPS", "NORM_EPS", "SCALE", "SHIFT",
           "backbone_state", "file_sha256", "lin_state", "load_lpips", "to_input"]
