"""TalkLip's Conformer lip reader (the paper's "WER2" observer), run in teacher-forcing mode.

Architecture of ``models/conformer_lip_reading.E2E(512, 40, 'conformer_arg.txt', 1)`` in Sxjdwang/TalkLip
(commit 7ed53ee): a deep_avsr visual front end (3-D conv stem + 18-layer ResNet, 512-d per frame), an
ESPnet 0.10.6 conformer encoder (12 blocks, d=256, 4 heads, FFN 2048, kernel 31, relative positions),
an ESPnet transformer decoder (6 blocks) over a 40-symbol character vocabulary, and a CTC head that the
evaluation never uses but the checkpoint holds. Module names equal the official state-dict keys
(``visual_frontend.*``, ``encoder.*``, ``decoder.*``, ``ctc.*``).

The reference runs ``E2E.forward`` with batch size 1; :meth:`ConformerLipReader.teacher_force` does the same
for one clip.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from talkbench.nets.checkpoint_keys import CheckpointError, check_state_tensors, require_matching_keys
from talkbench.nets.espnet_layers import (
    ConformerEncoderLayer,
    DecoderLayer,
    LayerNorm,
    PositionalEncoding,
    RelPositionalEncoding,
    causal_mask,
)
from talkbench.nets.frame_pool import frame_max_pool
from talkbench.nets.onednn_linear import for_inference
from talkbench.safe_unpickle import load_checkpoint

logger = logging.getLogger(__name__)

#: Output size: CTC blank (0), 38 characters, and <sos>/<eos> (39).
VOCAB_SIZE = 40
#: Index of <sos> and <eos> (``odim - 1`` in ESPnet).
SOS_EOS = 39
#: Index of the space symbol.
SPACE = 1
#: CTC blank index (never a character).
BLANK = 0

# deep_avsr BatchNorm epsilon in the visual front end.
_FRONTEND_BN_EPS = 1e-3


class ResNetLayer(nn.Module):
    """deep_avsr ResNet stage: two residual units sharing the stage's first sum as the second skip.

    ``relu(bn1a(conv1a x)) -> conv2a + skip -> s``; ``relu(outbna s) -> relu(bn1b conv1b) -> conv2b + s
    -> relu(outbnb)``. ``skip`` is ``x`` at stride 1 and the 1×1 ``downsample`` conv (no BN) at stride 2;
    the 1×1 conv exists at stride 1 too (the checkpoint holds it) but is not used there.
    """

    def __init__(self, inplanes: int, outplanes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1a = nn.Conv2d(inplanes, outplanes, 3, stride=stride, padding=1, bias=False)
        self.bn1a = nn.BatchNorm2d(outplanes, eps=_FRONTEND_BN_EPS)
        self.conv2a = nn.Conv2d(outplanes, outplanes, 3, stride=1, padding=1, bias=False)
        self.downsample = nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False)
        self.outbna = nn.BatchNorm2d(outplanes, eps=_FRONTEND_BN_EPS)
        self.conv1b = nn.Conv2d(outplanes, outplanes, 3, stride=1, padding=1, bias=False)
        self.bn1b = nn.BatchNorm2d(outplanes, eps=_FRONTEND_BN_EPS)
        self.conv2b = nn.Conv2d(outplanes, outplanes, 3, stride=1, padding=1, bias=False)
        self.outbnb = nn.BatchNorm2d(outplanes, eps=_FRONTEND_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N×Cin×H×W`` -> ``N×Cout×H/s×W/s``."""
        y = self.conv2a(F.relu(self.bn1a(self.conv1a(x))))
        first_sum = y + (x if self.stride == 1 else self.downsample(x))
        y = F.relu(self.outbna(first_sum))
        y = self.conv2b(F.relu(self.bn1b(self.conv1b(y))))
        return F.relu(self.outbnb(y + first_sum))


class ResNet(nn.Module):
    """Four deep_avsr stages (64/128/256/512, strides 1/2/2/2) and a 4×4 average pool: ``N×64×28×28 -> N×512``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = ResNetLayer(64, 64, stride=1)
        self.layer2 = ResNetLayer(64, 128, stride=2)
        self.layer3 = ResNetLayer(128, 256, stride=2)
        self.layer4 = ResNetLayer(256, 512, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # AvgPool2d(kernel 4, stride 1) on the 4×4 map = the mean of its 16 cells.
        return F.avg_pool2d(x, kernel_size=4, stride=1).flatten(1)


class VisualFrontend(nn.Module):
    """deep_avsr visual front end: one clip ``1×1×T×112×112`` (normalised gray) -> ``T×512``.

    The Conv3d sees the whole clip (its temporal zero padding acts at the clip's ends); BatchNorm2d, ReLU
    and the 3×3/2 max-pool then run per frame, followed by the ResNet.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm2d(64, eps=_FRONTEND_BN_EPS),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.resnet = ResNet()

    def stem(self, video: torch.Tensor) -> torch.Tensor:
        """``B×1×T×H×W`` -> per-frame maps ``(B·T)×64×H/4×W/4`` (conv3d, then BN/ReLU/max-pool per frame).

        The reference folds time into the batch before BatchNorm2d/ReLU/MaxPool2d; all three act on each
        frame separately, so they run here on the 5-D conv output (BN per channel, a 1×3×3 pool) and only
        the 4× smaller pooled maps are transposed: same numbers, less memory traffic and peak RSS.
        """
        bn = self.frontend3D[1]
        y = self.frontend3D[0](video)  # B×64×T×H/2×W/2
        y = F.relu_(F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))
        y = frame_max_pool(y)          # the MaxPool2d(3, 2, 1) of frontend3D[3], on every frame
        return y.transpose(1, 2).flatten(0, 1)  # (B·T)×64×H/4×W/4

    def forward(self, video: torch.Tensor, frame_chunk: int = 0) -> torch.Tensor:
        """``B×1×T×112×112`` -> ``B×T×512``. ``frame_chunk`` > 0 runs the ResNet on that many frames at a time."""
        batch, _, time = video.shape[:3]
        maps = self.stem(video)
        if frame_chunk and maps.size(0) > frame_chunk:
            feats = torch.cat([self.resnet(part) for part in maps.split(frame_chunk)], dim=0)
        else:
            feats = self.resnet(maps)
        return feats.view(batch, time, -1)


def required_input_length(target: Sequence[int]) -> int:
    """Frames CTC needs for ``target``: its length plus one per adjacent repeat (``LRS2Main.req_input_length``)."""
    target = list(target)
    if not target:
        raise ValueError("the target transcript is empty")
    return len(target) + sum(1 for a, b in zip(target, target[1:]) if a == b)


def pad_features(features: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad per-frame features ``B×T×C`` in time to ``length``: ``floor((length-T)/2)`` before, the rest after."""
    missing = length - features.size(1)
    if missing < 0:
        raise ValueError(f"cannot pad {features.size(1)} frames to a shorter length {length}")
    left = missing // 2
    return F.pad(features, (0, 0, left, missing - left))


class ConformerEncoder(nn.Module):
    """ESPnet conformer ``Encoder`` with input layer "linear": ``B×T×512 -> B×T×256``."""

    def __init__(self, idim: int = 512, size: int = 256, heads: int = 4, linear_units: int = 2048,
                 num_blocks: int = 12, kernel_size: int = 31) -> None:
        super().__init__()
        # Linear -> torch LayerNorm (eps 1e-5, not ESPnet's) -> Dropout -> relative positional encoding.
        self.embed = nn.Sequential(nn.Linear(idim, size), nn.LayerNorm(size), nn.Dropout(0.1),
                                   RelPositionalEncoding(size))
        self.encoders = nn.ModuleList(
            [ConformerEncoderLayer(size, heads, linear_units, kernel_size) for _ in range(num_blocks)])
        self.after_norm = LayerNorm(size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x ``B×T×idim``, mask ``B×1×T`` (None = all frames valid) -> ``B×T×size``."""
        x, pos_emb = self.embed(x)
        for layer in self.encoders:
            x = layer(x, pos_emb, mask)
        return self.after_norm(x)


class TransformerDecoder(nn.Module):
    """ESPnet transformer ``Decoder``: tokens ``B×L`` + encoder output -> pre-softmax logits ``B×L×odim``."""

    def __init__(self, odim: int = VOCAB_SIZE, size: int = 256, heads: int = 4, linear_units: int = 2048,
                 num_blocks: int = 6) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Embedding(odim, size), PositionalEncoding(size))
        self.decoders = nn.ModuleList([DecoderLayer(size, heads, linear_units) for _ in range(num_blocks)])
        self.after_norm = LayerNorm(size)
        self.output_layer = nn.Linear(size, odim)

    def forward(self, tokens: torch.Tensor, tokens_mask: torch.Tensor | None, memory: torch.Tensor,
                memory_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.decoders:
            x = layer(x, tokens_mask, memory, memory_mask)
        return self.output_layer(self.after_norm(x))


class CTCHead(nn.Module):
    """ESPnet ``CTC`` module's projection (``ctc_lo``); kept for strict loading, unused by teacher forcing."""

    def __init__(self, odim: int = VOCAB_SIZE, size: int = 256) -> None:
        super().__init__()
        self.ctc_lo = nn.Linear(size, odim)

    def forward(self, hs: torch.Tensor) -> torch.Tensor:
        return self.ctc_lo(hs)


class ConformerLipReader(nn.Module):
    """TalkLip ``E2E``: visual front end + conformer encoder + transformer decoder (+ CTC head)."""

    def __init__(self) -> None:
        super().__init__()
        self.visual_frontend = VisualFrontend()
        self.encoder = ConformerEncoder()
        self.decoder = TransformerDecoder()
        self.ctc = CTCHead()

    @torch.no_grad()
    def teacher_force(self, video: torch.Tensor, target: Sequence[int], frame_chunk: int = 0
                      ) -> dict[str, torch.Tensor]:
        """Teacher-forced decoder logits for one clip, as ``E2E.forward`` with batch size 1.

        Args:
            video: normalised gray crops ``T×112×112`` (float, already on the model's device).
            target: character indices of the transcript (no <eos>), length ``L >= 1``.
            frame_chunk: run the ResNet on this many frames at a time (0 = all at once); saves memory only.
        Returns:
            ``features`` ``T×512`` (front end, before padding), ``padded`` ``len_req×512``,
            ``encoder_out`` ``len_req×256``, ``logits`` ``(L+1)×40`` (pre-softmax; row ``i`` predicts
            ``target[i]``, the last row predicts <eos>), ``argmax`` ``(L+1,)``.
        """
        if video.dim() != 3:
            raise ValueError(f"expected one clip T×H×W, got shape {tuple(video.shape)}")
        features = self.visual_frontend(video[None, None], frame_chunk=frame_chunk)  # 1×T×512
        len_req = max(required_input_length(target), video.size(0))
        padded = pad_features(features, len_req)
        # The reference masks nothing: every one of the len_req frames (padding included) is attended.
        encoder_out = self.encoder(padded, None)
        tokens = torch.tensor([[SOS_EOS, *target]], dtype=torch.long, device=video.device)
        logits = self.decoder(tokens, causal_mask(tokens.size(1), video.device), encoder_out, None)
        return {"features": features[0], "padded": padded[0], "encoder_out": encoder_out[0],
                "logits": logits[0], "argmax": logits[0].argmax(dim=-1)}


def _unwrap(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    """The official file is a plain state dict; ``{"state_dict": ...}``, ``{"model": ...}``, ``module.`` also pass."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a Conformer lip-reader state dict (expected a mapping of tensors, "
                              f"got {type(obj).__name__}); pass TalkLip's conformer checkpoint with "
                              "--weights conformer-lrs2=PATH.")
    state = OrderedDict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = OrderedDict((k[len("module."):], v) for k, v in state.items())
    return state


def load_conformer(path: str | Path, device: str | torch.device = "cpu") -> ConformerLipReader:
    """Build the lip reader and load TalkLip's checkpoint strictly (a plain ``torch.save`` state dict).

    The model is built on the meta device and the checkpoint's tensors are assigned to it, so the weights
    are held once. The file is read into memory (not memory-mapped), so changing or truncating it later
    cannot affect a loaded model. Returns the model in eval mode on ``device``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) the file is not a state dict of this model (lists missing,
            unexpected and mis-shaped keys), or has NaN/Inf weights.
    """
    path = Path(path)
    state = _unwrap(load_checkpoint(path, map_location="cpu"), path)
    with torch.device("meta"):
        model = ConformerLipReader()
    require_matching_keys(model.state_dict(), state, path, "TalkLip's Conformer lip reader (conformer-lrs2)",
                          "Check that --weights conformer-lrs2=PATH points at TalkLip's conformer checkpoint.",
                          shown=8)
    check_state_tensors(state, path, "Check that --weights conformer-lrs2=PATH points at TalkLip's conformer "
                        "checkpoint, and download it again.")
    model.load_state_dict(state, strict=True, assign=True)
    return for_inference(model, device)
