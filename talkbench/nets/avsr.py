"""Auto-AVSR's visual speech recogniser (Ma et al., ICASSP 2023; mpc001/auto_avsr), in plain PyTorch.

Architecture of ``espnet/nets/pytorch_backend/e2e_asr_conformer.E2E(5049, "video")`` at mpc001/auto_avsr commit
182b62837773ab01052d4ac21ef1d2203ea7d267 (2025-01-08), module names = the official state-dict keys:

* ``frontend``: a 3-D convolution stem (5×7×7, stride 1×2×2, 64 channels, BatchNorm3d, Swish, 1×3×3 max-pool) and
  a ResNet-18 trunk (``trunk.layer1..4``, two BasicBlocks each, Swish, 1×1 conv + BN shortcuts, global average pool):
  ``B×1×T×88×88`` → ``B×T×512``;
* ``proj_encoder``: Linear 512 → 768;
* ``encoder``: 12 macaron conformer blocks (d 768, 12 heads, FFN 3072 with **ReLU** — Auto-AVSR's vendored ESPnet, not
  ESPnet 0.10.6's Swish —, kernel 31, new relative positions), ``after_norm``; no mask at inference;
* ``decoder``: 6 pre-norm transformer blocks (d 768, 12 heads, FFN 3072, ReLU), ``after_norm``, ``output_layer``
  over the 5049 outputs (0 = CTC blank, 1..5047 = SentencePiece unigram units, 5048 = <sos>/<eos>);
* ``ctc.ctc_lo``: Linear 768 → 5049 (CTC head, used by the joint beam search).

The layers are :mod:`talkbench.nets.espnet_layers` (shared with TalkLip's Conformer) and the decoder is
:class:`talkbench.nets.conformer.TransformerDecoder` (same keys and maths at another size).

Checkpoints (card ``auto-avsr-vsr``): the model zoo's files are plain state dicts, loaded by
``ModelModule.model.load_state_dict(torch.load(path))``. Two key layouts exist: the current one (2025-01,
``frontend.*``, ``proj_encoder.*``, ``encoder.*``, …) and the one of the 2023–2024 code and model zoo (also the one
KeySync's LipScore loads), where the front end and the projection lived inside the encoder
(``encoder.frontend.*``, ``encoder.embed.0.*``); :data:`LEGACY_RENAMES` maps the second onto the first.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence

import sentencepiece as spm
import torch
import torch.nn.functional as F
from torch import nn

from talkbench.nets.checkpoint_keys import CheckpointError, check_state_tensors, require_matching_keys
from talkbench.nets.conformer import TransformerDecoder
from talkbench.nets.espnet_layers import ConformerEncoderLayer, ConvolutionModuleCov, LayerNorm, RelPositionalEncoding
from talkbench.nets.frame_pool import FrameMaxPool
from talkbench.nets.onednn_linear import for_inference
from talkbench.safe_unpickle import load_checkpoint

logger = logging.getLogger(__name__)

#: Outputs: CTC blank, the 5047 units of ``unigram5000_units.txt``, <sos>/<eos>.
VOCAB_SIZE = 5049
#: <sos> = <eos> = ``odim - 1``.
SOS_EOS = VOCAB_SIZE - 1
#: CTC blank.
BLANK = 0
#: Model width, heads, FFN units, blocks.
D_MODEL, HEADS, FFN_UNITS, ENCODER_BLOCKS, DECODER_BLOCKS, KERNEL = 768, 12, 3072, 12, 6, 31
#: Input normalisation of ``datamodule/transforms.py`` (VideoTransform "test"): ``(x/255 - mean) / std``.
IMAGE_MEAN, IMAGE_STD = 0.421, 0.165
#: torchvision ``rgb_to_grayscale`` weights (VideoTransform's ``Grayscale()`` of the decoded 3-channel ROI video).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)

#: The vocabulary files (talkbench/data/auto_avsr, copied from auto_avsr's ``spm/unigram``).
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "auto_avsr"
SPM_MODEL = DATA_DIR / "unigram5000.model"
UNITS = DATA_DIR / "unigram5000_units.txt"

#: Old key prefix -> current key prefix (2023–2024 auto_avsr ``transformer/encoder.py`` held the front end and the
#: 512 -> 768 projection, ``embed = Sequential(Linear, RelPositionalEncoding)``, inside the encoder).
LEGACY_RENAMES: tuple[tuple[str, str], ...] = (("encoder.frontend.", "frontend."),
                                               ("encoder.embed.0.", "proj_encoder."))


class BasicBlock(nn.Module):
    """ResNet basic block with Swish (``frontend/resnet.py``): conv3×3-BN-Swish-conv3×3-BN + shortcut, Swish."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.silu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.silu(out + residual)


class ResNetTrunk(nn.Module):
    """ResNet-18 trunk (64/128/256/512, strides 1/2/2/2) + global average pool: ``N×64×H×W`` → ``N×512``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class VisualFrontend(nn.Module):
    """``Conv3dResNet``: ``B×1×T×H×W`` (normalised gray) → ``B×T×512``."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = ResNetTrunk()  # registered first, as in the reference (the order of the file's keys)
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.SiLU(),
            FrameMaxPool(),  # = MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)), faster
        )

    def forward(self, video: torch.Tensor, frame_chunk: int = 0) -> torch.Tensor:
        """``frame_chunk`` > 0 runs the trunk on that many frames at a time (memory only; same numbers)."""
        batch = video.size(0)
        maps = self.frontend3D(video)  # B×64×T×H/4×W/4
        time = maps.size(2)
        maps = maps.transpose(1, 2).flatten(0, 1)  # (B·T)×64×h×w
        if frame_chunk and maps.size(0) > frame_chunk:
            feats = torch.cat([self.trunk(part) for part in maps.split(frame_chunk)], dim=0)
        else:
            feats = self.trunk(maps)
        return feats.view(batch, time, -1)


class ConformerEncoder(nn.Module):
    """Auto-AVSR ``ConformerEncoder``: relative positions, 12 blocks (ReLU FFNs), ``after_norm``. ``B×T×768``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(RelPositionalEncoding(D_MODEL))
        self.encoders = nn.ModuleList([ConformerEncoderLayer(D_MODEL, HEADS, FFN_UNITS, KERNEL, swish_ffn=False,
                                                             conv_module=ConvolutionModuleCov)
                                       for _ in range(ENCODER_BLOCKS)])
        self.after_norm = LayerNorm(D_MODEL)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, pos_emb = self.embed(x)
        for layer in self.encoders:
            x = layer(x, pos_emb, mask)
        return self.after_norm(x)


class CTCHead(nn.Module):
    """ESPnet ``CTC``'s projection ``ctc_lo``; :meth:`log_softmax` is ``CTC.log_softmax``."""

    def __init__(self) -> None:
        super().__init__()
        self.ctc_lo = nn.Linear(D_MODEL, VOCAB_SIZE)

    def log_softmax(self, hs: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.ctc_lo(hs), dim=-1)


class AutoAVSR(nn.Module):
    """Auto-AVSR ``E2E(5049, "video")``: front end, projection, conformer encoder, transformer decoder, CTC head."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = VisualFrontend()
        self.proj_encoder = nn.Linear(512, D_MODEL)
        self.encoder = ConformerEncoder()
        self.decoder = TransformerDecoder(odim=VOCAB_SIZE, size=D_MODEL, heads=HEADS, linear_units=FFN_UNITS,
                                          num_blocks=DECODER_BLOCKS)
        self.ctc = CTCHead()

    @torch.no_grad()
    def encode(self, video: torch.Tensor, frame_chunk: int = 0) -> torch.Tensor:
        """Encoder features of one or more clips, as ``lightning.ModelModule.forward`` computes them.

        Args:
            video: normalised gray crops ``B×1×T×88×88`` (see :func:`video_input`), on the model's device.
        Returns:
            ``B×T×768`` (the features KeySync's LipScore compares and the beam search decodes).
        """
        if video.dim() != 5 or video.size(1) != 1:
            raise ValueError(f"expected video B×1×T×H×W, got shape {tuple(video.shape)}")
        return self.encoder(self.proj_encoder(self.frontend(video, frame_chunk)), None)


def video_input(crops: torch.Tensor | object) -> torch.Tensor:
    """VideoTransform("test") of gray uint8 crops ``T×88×88`` → float32 ``1×1×T×88×88``.

    The reference reads the 96×96 ROI video back as RGB (three equal channels for a gray ROI), divides by 255,
    centre-crops 88, converts with torchvision's ``Grayscale`` (``0.2989 r + 0.587 g + 0.114 b``: 0.9999 × the gray
    value) and normalises with 0.421/0.165; the same float32 operations here.
    """
    frames = torch.as_tensor(crops)
    if frames.dim() != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 gray crops T×H×W, got {frames.dtype} {tuple(frames.shape)}")
    x = frames / 255.0  # uint8 / python float -> float32, as the reference's FunctionalModule
    gray = GRAY_WEIGHTS[0] * x + GRAY_WEIGHTS[1] * x + GRAY_WEIGHTS[2] * x
    # torchvision's Normalize subtracts and divides by 1×1×1 float32 tensors (an element-wise true division)
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32).view(1, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=torch.float32).view(1, 1, 1)
    return ((gray - mean) / std)[None, None]


class TextTransform:
    """Auto-AVSR's ``TextTransform``: SentencePiece unigram pieces ↔ model output ids (``datamodule/transforms.py``).

    The vocabulary ships in ``talkbench/data/auto_avsr`` (Apache-2.0; PROVENANCE.md there): ``token_list`` =
    ``["<blank>"] + units + ["<eos>"]``; a piece missing from the units maps to ``<unk>`` (id 1).
    """

    def __init__(self, spm_model: str | Path = SPM_MODEL, units: str | Path = UNITS) -> None:
        self.spm = spm.SentencePieceProcessor(model_file=str(spm_model))
        lines = Path(units).read_text(encoding="utf8").splitlines()
        self.hashmap = {line.split()[0]: int(line.split()[-1]) for line in lines}
        self.token_list = ["<blank>", *self.hashmap, "<eos>"]
        if len(self.token_list) != VOCAB_SIZE:
            raise ValueError(f"{units}: {len(lines)} units, expected {VOCAB_SIZE - 2} (Auto-AVSR's unigram5000).")

    def tokenize(self, text: str) -> list[int]:
        """``spm.EncodeAsPieces(text)`` → unit ids (unknown pieces → ``<unk>``)."""
        unk = self.hashmap["<unk>"]
        return [self.hashmap.get(piece, unk) for piece in self.spm.EncodeAsPieces(text)]

    def post_process(self, token_ids: Sequence[int]) -> str:
        """Ids → text: pieces joined, ``<space>`` → space, ``▁`` → space, stripped (ids of ``-1`` dropped)."""
        text = "".join(self.token_list[i] for i in token_ids if i != -1).replace("<space>", " ")
        return text.replace("\u2581", " ").strip()

    def hypothesis(self, tokens: Sequence[int]) -> str:
        """A beam hypothesis' text as ``ModelModule.forward`` prints it (``<eos>`` removed)."""
        return self.post_process(tokens).replace("<eos>", "")

    def reference(self, transcript: str) -> str:
        """A transcript as ``eval.py`` scores against it: the LRS2/LRS3 text with ``{``/``}`` removed (as
        ``preparation/preprocess_lrs2lrs3.py``), tokenised and detokenised (out-of-vocabulary pieces become
        ``<unk>``). Upper-cased first: the vocabulary is upper case, as the LRS transcripts."""
        content = " ".join(transcript.replace("}", "").replace("{", "").split()).upper()
        return self.post_process(self.tokenize(content))


@functools.lru_cache(maxsize=1)
def text_transform() -> TextTransform:
    """The shipped vocabulary's :class:`TextTransform` (loaded once)."""
    return TextTransform()


def rename_legacy_keys(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Keys of the 2023–2024 layout mapped onto the current one (:data:`LEGACY_RENAMES`); other keys unchanged."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        for old, new in LEGACY_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def _unwrap(obj: object, path: Path) -> OrderedDict[str, torch.Tensor]:
    """The model zoo's files are plain state dicts; ``{"state_dict": ...}`` (with ``model.`` prefixes, as a Lightning
    checkpoint of ``ModelModule`` stores them) and ``module.`` prefixes also pass."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not an Auto-AVSR state dict (expected a mapping of tensors, got "
                              f"{type(obj).__name__}); pass a VSR file of the Auto-AVSR model zoo, e.g. "
                              "--weights auto-avsr-vsr=vsr_trlrs2lrs3vox2avsp_base.pth.")
    state = OrderedDict(obj)
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = OrderedDict((k[len(prefix):], v) for k, v in state.items())
    return rename_legacy_keys(state)


def load_auto_avsr(path: str | Path, device: str | torch.device = "cpu") -> AutoAVSR:
    """Build the VSR model and load an Auto-AVSR model-zoo file strictly, through the restricted unpickler.

    Both key layouts load (module docstring). The model is built on the meta device and the file's tensors are
    assigned to it. Returns the model in eval mode on ``device``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) not a state dict of this model (an ASR or AV-ASR file, another
            vocabulary: missing, unexpected and mis-shaped keys are listed), or NaN/Inf weights.
    """
    path = Path(path)
    state = _unwrap(load_checkpoint(path, map_location="cpu"), path)
    with torch.device("meta"):
        model = AutoAVSR()
    fix = ("Check that --weights auto-avsr-vsr=PATH points at a VSR file (vsr_*.pth) of the Auto-AVSR model zoo; "
           "the ASR and AV-ASR files hold other front ends.")
    require_matching_keys(model.state_dict(), state, path, "Auto-AVSR's VSR model (auto-avsr-vsr)", fix, shown=8)
    check_state_tensors(state, path, fix)
    model.load_state_dict(state, strict=True, assign=True)
    return for_inference(model, device, packed=[model.decoder])


__all__ = ["AutoAVSR", "BLANK", "GRAY_WEIGHTS", "IMAGE_MEAN", "IMAGE_STD", "LEGACY_RENAMES", "SOS_EOS", "TextTransform",
           "VOCAB_SIZE", "load_auto_avsr", "rename_legacy_keys", "text_transform", "video_input"]
