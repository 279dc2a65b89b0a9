"""TalkLip networks (Wang et al., CVPR 2023) with the official state-dict key names.

* :class:`TalkLipGenerator` — a Wav2Lip-style U-Net (``face_encoder_blocks`` 6×96×96 → 512×1×1,
  ``face_decoder_blocks`` with skip connections, ``output_block`` with a sigmoid) driven by an
  AV-HuBERT transformer fed audio only (``audio_encoder.w2v_model.*``), whose per-frame output
  goes through ``audio_map`` (D → 512). It also owns the contrastive sync head ``sync_net``.
* :class:`TalkLipDiscriminator` — the visual-quality discriminator (``TalkLip_disc_qual``): it looks
  at the lower half of a face only.
* :class:`AVSyncHead` — the contrastive audio/visual sync head (``av_sync``): one ``Linearaudio``
  projection and an InfoNCE loss with negatives drawn from the other audio rows.

Official TalkLip checkpoints carry no config, so :func:`load_talklip_generator` infers every size from
the tensors themselves (audio width, number of transformer layers, FFN width, positional-conv kernel and
groups, label-embedding table, skip connections, U-Net widths — so talkbench's smaller generators, e.g.
TalkLip-mini with :class:`LocalAudioEncoder` or a narrow AV-HuBERT, load the same way). The only size a
shape cannot tell is the number of attention heads: AV-HuBERT Base (768-d) uses 12 and Large (1024-d) 16;
other widths fall back to 16-d heads (the parity fixture's tiny 64-d encoder has 4), or pass
``attention_heads``.

All modules are plain ``nn.Module`` s; channel order is BGR everywhere (the reference never swaps).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkbench.nets import avhubert
from talkbench.nets.checkpoint_keys import CheckpointError, check_state_tensors, key_mismatch
from talkbench.nets.onednn_linear import for_inference
from talkbench.safe_unpickle import load_checkpoint

logger = logging.getLogger(__name__)

FACE_SIZE = 96
#: channel widths of the face encoder (input 6 = masked target BGR + reference BGR)
ENC_CHANNELS = (6, 16, 32, 64, 128, 256, 512, 512)
#: output widths of the face decoder blocks
DEC_CHANNELS = (512, 512, 512, 384, 256, 128, 64)
#: widths of the discriminator's blocks (before its 1-channel head)
DISC_CHANNELS = (32, 64, 128, 256, 512, 512, 512)
#: width of the output block's hidden convolution
OUT_CHANNELS = 32
#: AV-HuBERT attention heads by encoder width (Base, Large); shapes cannot tell the head count.
KNOWN_HEADS = {768: 12, 1024: 16}
GENERATOR_PREFIX = "audio_encoder.w2v_model."
#: Most transformer layers a TalkLip generator's audio encoder may have: AV-HuBERT Large has 24; twice that
#: bounds the family (the layer count is read from key names, so a crafted file could otherwise ask for millions).
MAX_ENCODER_LAYERS = 48
#: Most values a TalkLip generator file may hold: about twice a generator with an AV-HuBERT Large audio
#: encoder (~350 M). Sizes are read from the tensors, and broadcast tensors could make a tiny file describe a
#: huge model that loading would allocate; beyond this bound the file is refused before a model is built.
MAX_GENERATOR_ELEMENTS = 1_000_000_000
_FIX = "Pass a TalkLip generator file (talklip-g / talklip-gc, or one written by `talkbench train`)."


class ConvBlock(nn.Module):
    """Conv2d + BatchNorm2d (+ identity residual) + ReLU; keys ``conv_block.0`` / ``conv_block.1``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int | tuple[int, int], padding: int,
                 residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return F.relu(out)


class ConvTransposeBlock(nn.Module):
    """ConvTranspose2d + BatchNorm2d + ReLU (decoder up-sampling); keys ``conv_block.0`` / ``.1``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int,
                 output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv_block(x))


class LeakyConvBlock(nn.Module):
    """Conv2d + LeakyReLU(0.01), no normalisation (discriminator); key ``conv_block.0``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int | tuple[int, int], padding: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding))

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(self.conv_block(x), 0.01)


@dataclass(frozen=True)
class UNetChannels:
    """Channel widths of the generator's U-Net (the released models: :data:`ENC_CHANNELS`, :data:`DEC_CHANNELS`,
    :data:`OUT_CHANNELS`); :meth:`scaled` divides every width, e.g. for the mini generator.
    """

    encoder: tuple[int, ...] = ENC_CHANNELS
    decoder: tuple[int, ...] = DEC_CHANNELS
    output: int = OUT_CHANNELS

    @classmethod
    def scaled(cls, divisor: int) -> "UNetChannels":
        """Every width divided by ``divisor`` (at least 2 channels; the 6 input channels stay)."""
        if divisor < 1:
            raise ValueError(f"channel divisor must be >= 1, got {divisor}")
        enc = (ENC_CHANNELS[0],) + tuple(max(2, c // divisor) for c in ENC_CHANNELS[1:])
        return cls(enc, tuple(max(2, c // divisor) for c in DEC_CHANNELS), max(2, OUT_CHANNELS // divisor))

    def decoder_in(self, res_layers: int) -> list[int]:
        """Input width of decoder block i+1 (and of the output block for i = 6): skip concat or not."""
        enc, dec = self.encoder, self.decoder
        return [enc[-i - 1] + dec[i] if i < res_layers else dec[i] for i in range(len(dec))]


def _face_encoder(channels: UNetChannels) -> nn.ModuleList:
    c = channels.encoder

    def stage(cin: int, cout: int, stride: int, n_res: int) -> nn.Sequential:
        blocks = [ConvBlock(cin, cout, 3, stride, 1)]
        blocks += [ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)]
        return nn.Sequential(*blocks)

    return nn.ModuleList([
        nn.Sequential(ConvBlock(c[0], c[1], 7, 1, 3)),             # 16×96×96
        stage(c[1], c[2], 2, 2),                                  # 32×48×48
        stage(c[2], c[3], 2, 3),                                  # 64×24×24
        stage(c[3], c[4], 2, 2),                                  # 128×12×12
        stage(c[4], c[5], 2, 2),                                  # 256×6×6
        stage(c[5], c[6], 2, 1),                                  # 512×3×3
        nn.Sequential(ConvBlock(c[6], c[7], 3, 1, 0), ConvBlock(c[7], c[7], 1, 1, 0)),  # 512×1×1
    ])


def _face_decoder(channels: UNetChannels, res_layers: int) -> nn.ModuleList:
    d, up = channels.decoder, channels.decoder_in(res_layers)

    def stage(cin: int, cout: int, n_res: int) -> nn.Sequential:
        blocks: list[nn.Module] = [ConvTransposeBlock(cin, cout, 3, 2, 1, output_padding=1)]
        blocks += [ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)]
        return nn.Sequential(*blocks)

    return nn.ModuleList([
        nn.Sequential(ConvBlock(channels.encoder[-1], d[0], 1, 1, 0)),                                    # 1×1
        nn.Sequential(ConvTransposeBlock(up[0], d[1], 3, 1, 0), ConvBlock(d[1], d[1], 3, 1, 1, residual=True)),  # 3×3
        stage(up[1], d[2], 2),   # 6×6
        stage(up[2], d[3], 2),   # 12×12
        stage(up[3], d[4], 2),   # 24×24
        stage(up[4], d[5], 2),   # 48×48
        stage(up[5], d[6], 2),   # 96×96
    ])


class AVSyncHead(nn.Module):
    """Contrastive audio-visual sync head (TalkLip ``models/learn_sync.av_sync``).

    The loss is InfoNCE with the visual feature as the positive and ``min(max_negatives, N // 2)``
    other **audio** rows of the same batch as negatives (drawn without replacement, never the row
    itself); cosine similarities / ``temperature``, cross-entropy with the positive at index 0,
    averaged over rows (SupConLoss with temperature = base temperature = 0.07).

    Args:
        audio_dim: width of the audio features.
        video_dim: width of the visual features (the reference uses ``audio_dim`` for both).
    """

    def __init__(self, audio_dim: int, video_dim: int | None = None, temperature: float = 0.07,
                 max_negatives: int = 100) -> None:
        super().__init__()
        self.Linearaudio = nn.Linear(audio_dim, video_dim or audio_dim)
        self.temperature = temperature
        self.max_negatives = max_negatives

    def num_negatives(self, n_rows: int) -> int:
        return min(self.max_negatives, n_rows // 2)

    def sample_negatives(self, n_rows: int, generator: torch.Generator | None = None) -> Tensor:
        """Indices ``N×K`` of negatives per row: K distinct rows other than the row itself.

        Same draw as the reference: ``torch.multinomial`` over the N-1 other rows, then indices
        ``>= row`` shifted by one.
        """
        k = self.num_negatives(n_rows)
        raw = torch.multinomial(torch.ones((n_rows, n_rows - 1), dtype=torch.float), k, generator=generator)
        return shift_negative_indices(raw)

    def logits(self, video: Tensor, audio: Tensor, neg_idxs: Tensor) -> Tensor:
        """Similarity logits ``N×(1+K)``: column 0 = positive (the video row), then the negatives.

        Args:
            video: visual features ``N×Dv`` (e.g. the lip-reading expert's encoder output).
            audio: audio features ``N×Da`` (the generator's audio-encoder output), same rows.
            neg_idxs: ``N×K`` negative row indices (see :meth:`sample_negatives`).
        """
        video_n = F.normalize(video, dim=1)
        audio_n = F.normalize(self.Linearaudio(F.normalize(audio, dim=1)), dim=1)
        negatives = audio_n[neg_idxs.reshape(-1)].view(neg_idxs.shape[0], neg_idxs.shape[1], -1)   # N×K×D
        positive = (audio_n * video_n).sum(-1, keepdim=True)                                       # N×1
        negative = (audio_n.unsqueeze(1) * negatives).sum(-1)                                      # N×K
        return torch.cat([positive, negative], dim=1) / self.temperature

    def forward(self, video: Tensor, audio: Tensor, neg_idxs: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """InfoNCE loss (scalar) between ``audio`` anchors and ``video`` positives, ``N×D`` each."""
        if video.shape[0] != audio.shape[0]:
            raise ValueError(f"video and audio rows differ: {video.shape[0]} vs {audio.shape[0]}")
        if neg_idxs is None:
            neg_idxs = self.sample_negatives(audio.shape[0], generator).to(audio.device)
        logits = self.logits(video, audio, neg_idxs)
        # the reference subtracts the row max before log-softmax; cross_entropy is the same math
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def shift_negative_indices(raw: Tensor) -> Tensor:
    """Map draws from ``range(N-1)`` to rows ``!= i``: values ``>= i`` in row i move up by one."""
    rows = torch.arange(raw.shape[0], device=raw.device).view(-1, 1)
    return raw + (raw >= rows).long()


class TalkLipAudioEncoder(nn.Module):
    """fairseq's ``HubertEncoderWrapper``: holds the AV-HuBERT model as ``w2v_model``, audio only."""

    def __init__(self, w2v_model: nn.Module) -> None:
        super().__init__()
        self.w2v_model = w2v_model

    def forward(self, audio: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Audio features ``B×104×T`` (+ padding mask ``B×T``, True = padded) → ``B×T×D``."""
        return self.w2v_model.extract_features(audio, None, padding_mask)


class LocalAudioEncoder(nn.Module):
    """A *local* audio encoder: each frame's embedding sees only a short window of audio (no attention).

    Not part of the released models: talkbench's stand-in for the paper's local-vs-global comparison (a
    Wav2Lip-style generator encodes a 0.2 s mel window per frame; TalkLip's transformer sees the whole
    utterance). Input as :class:`TalkLipAudioEncoder`: ``B×104×T`` stacked log-fbank features at 25 fps.

    Network: ``Conv1d(104, D, 5, pad 2)`` → GELU → ``Conv1d(D, D, 3, pad 1)`` → GELU → ``Conv1d(D, D, 1)``;
    receptive field 7 frames (0.28 s). Key names ``audio_encoder.local.*``.
    """

    def __init__(self, dim: int, feat_dim: int = 104) -> None:
        super().__init__()
        self.dim = dim
        self.local = nn.Sequential(nn.Conv1d(feat_dim, dim, 5, padding=2), nn.GELU(),
                                   nn.Conv1d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv1d(dim, dim, 1))

    def forward(self, audio: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Audio features ``B×104×T`` → embeddings ``B×T×D`` (padded steps are zeroed on input)."""
        if padding_mask is not None:
            audio = audio.masked_fill(padding_mask[:, None, :], 0.0)
        return self.local(audio).transpose(1, 2)


class TalkLipGenerator(nn.Module):
    """The TalkLip generator (reference class ``models.talklip.TalkLip``).

    Args:
        audio_encoder: a :class:`TalkLipAudioEncoder` (any module mapping ``B×104×T`` audio features
            and a padding mask to ``B×T×D`` works).
        audio_dim: D, the audio-encoder width (768 for the released models).
        res_layers: how many decoder blocks get a U-Net skip (7 = all, the released models).
        channels: U-Net widths (default: the released models'; :meth:`UNetChannels.scaled` for smaller ones).
        sync_dim: width of the lip-reading expert's features the contrastive head projects the audio to
            (default ``audio_dim``, as the released models whose expert and audio encoder are the same model).
    """

    def __init__(self, audio_encoder: nn.Module, audio_dim: int, res_layers: int = 7,
                 channels: UNetChannels = UNetChannels(), sync_dim: int | None = None) -> None:
        super().__init__()
        self.res_layers = res_layers
        self.channels = channels
        self.face_encoder_blocks = _face_encoder(channels)
        self.audio_encoder = audio_encoder
        self.audio_map = nn.Linear(audio_dim, channels.encoder[-1])
        self.face_decoder_blocks = _face_decoder(channels, res_layers)
        self.output_block = nn.Sequential(ConvBlock(channels.decoder_in(res_layers)[6], channels.output, 3, 1, 1),
                                          nn.Conv2d(channels.output, 3, kernel_size=1, stride=1, padding=0),
                                          nn.Sigmoid())
        self.sync_net = AVSyncHead(audio_dim, sync_dim or audio_dim)
        #: train the audio encoder too (the reference's ``gen.ft``); otherwise it runs under no_grad
        self.ft = False
        #: feed the U-Net channels-last tensors (set by :func:`fuse_for_inference`)
        self.channels_last = False

    def encode_audio(self, audio: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Audio features ``B×104×T`` (layer-normed stacked log-fbank) → embeddings ``B×T×D``.

        Runs without autograd unless :attr:`ft` is set (stage 0 of training and inference).
        """
        if padding_mask is None:
            padding_mask = torch.zeros(audio.shape[0], audio.shape[2], dtype=torch.bool, device=audio.device)
        with contextlib.nullcontext() if self.ft else torch.no_grad():
            return self.audio_encoder(audio, padding_mask)

    def decode_faces(self, faces: Tensor, audio_rows: Tensor) -> Tensor:
        """The U-Net: faces ``N×6×96×96`` in [0, 1] and audio rows ``N×D`` → faces ``N×3×96×96`` in [0, 1].

        Channels 0-2 of ``faces``: the target frame's crop with its lower half (rows 48-95) zeroed;
        channels 3-5: the reference (identity) crop. BGR.
        """
        feats = []
        x = faces.contiguous(memory_format=torch.channels_last) if self.channels_last else faces
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        x = self.audio_map(audio_rows).reshape(audio_rows.shape[0], self.channels.encoder[-1], 1, 1)
        for i, block in enumerate(self.face_decoder_blocks):
            x = block(x)
            skip = feats.pop()
            if i < self.res_layers:
                x = torch.cat((x, skip), dim=1)      # decoder features first, then the encoder's
        return self.output_block(x)

    def forward(self, faces: Tensor, audio: Tensor, audio_index: Tensor,
                padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Generate faces for the frames picked by ``audio_index``.

        Args:
            faces: ``N×6×96×96`` generator inputs (see :meth:`decode_faces`).
            audio: ``B×104×T`` audio features of B whole utterances (zero-padded to T).
            audio_index: ``N`` rows of the batch-major flattened embeddings (row = b·T + t).
            padding_mask: ``B×T`` bool, True on padded steps.
        Returns:
            (faces ``N×3×96×96``, audio embeddings ``B×T×D``).
        """
        embedding = self.encode_audio(audio, padding_mask)
        rows = embedding.reshape(-1, embedding.shape[2])[audio_index]
        return self.decode_faces(faces, rows), embedding


def _fold_bn(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """A copy of ``conv`` (Conv2d or ConvTranspose2d) with an eval-mode BatchNorm folded into it."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    fused = copy.deepcopy(conv)
    weight = fused.weight.detach()
    if isinstance(conv, nn.ConvTranspose2d):      # weight in×out×k×k: scale the output channels (dim 1)
        weight = weight * scale.view(1, -1, 1, 1)
    else:
        weight = weight * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach(), requires_grad=False)
    return fused


def fuse_for_inference(generator: "TalkLipGenerator", channels_last: bool = True,
                       inplace: bool = False) -> "TalkLipGenerator":
    """An inference version of the generator: every BatchNorm folded into its convolution, channels-last memory.

    Same function up to float rounding (max |Δ| ≈ 1e-6 on the parity fixture), fewer memory passes per
    block. The result's state dict has no BatchNorm entries: use it for inference only. ``inplace`` changes
    ``generator`` itself instead of a copy (no second copy of the weights in memory).
    """
    fused = (generator if inplace else copy.deepcopy(generator)).eval()
    for module in list(fused.modules()):
        if isinstance(module, (ConvBlock, ConvTransposeBlock)):
            conv, bn = module.conv_block[0], module.conv_block[1]
            module.conv_block = nn.Sequential(_fold_bn(conv, bn), nn.Identity())
    for p in fused.parameters():
        p.requires_grad_(False)
    if channels_last:
        for block in (fused.face_encoder_blocks, fused.face_decoder_blocks, fused.output_block):
            block.to(memory_format=torch.channels_last)
        fused.channels_last = True
    return fused


class TalkLipDiscriminator(nn.Module):
    """Visual-quality discriminator (reference ``TalkLip_disc_qual``): P(real) of a face's lower half.

    Args:
        width_divisor: every block's width divided by this (1 = the released discriminator).
    """

    def __init__(self, width_divisor: int = 1) -> None:
        super().__init__()
        if width_divisor < 1:
            raise ValueError(f"width_divisor must be >= 1, got {width_divisor}")
        c = [max(2, w // width_divisor) for w in DISC_CHANNELS]
        self.width_divisor = width_divisor
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(LeakyConvBlock(3, c[0], 7, 1, 3)),                                             # 48×96
            nn.Sequential(LeakyConvBlock(c[0], c[1], 5, (1, 2), 2), LeakyConvBlock(c[1], c[1], 5, 1, 2)),  # 48×48
            nn.Sequential(LeakyConvBlock(c[1], c[2], 5, 2, 2), LeakyConvBlock(c[2], c[2], 5, 1, 2)),       # 24×24
            nn.Sequential(LeakyConvBlock(c[2], c[3], 5, 2, 2), LeakyConvBlock(c[3], c[3], 5, 1, 2)),       # 12×12
            nn.Sequential(LeakyConvBlock(c[3], c[4], 3, 2, 1), LeakyConvBlock(c[4], c[4], 3, 1, 1)),       # 6×6
            nn.Sequential(LeakyConvBlock(c[4], c[5], 3, 2, 1), LeakyConvBlock(c[5], c[5], 3, 1, 1)),       # 3×3
            nn.Sequential(LeakyConvBlock(c[5], c[6], 3, 1, 0), LeakyConvBlock(c[6], c[6], 1, 1, 0)),       # 1×1
        ])
        self.binary_pred = nn.Sequential(nn.Conv2d(c[6], 1, kernel_size=1, stride=1, padding=0), nn.Sigmoid())

    @staticmethod
    def lower_half(faces: Tensor) -> Tensor:
        """Rows H//2.. of ``N×3×H×W`` faces (what the discriminator looks at)."""
        return faces[:, :, faces.shape[2] // 2:]

    def block_outputs(self, faces: Tensor) -> list[Tensor]:
        """Output of each of the 7 blocks for faces ``N×3×96×96`` (lower half taken here)."""
        x = self.lower_half(faces)
        outs = []
        for block in self.face_encoder_blocks:
            x = block(x)
            outs.append(x)
        return outs

    def logits(self, faces: Tensor) -> Tensor:
        """Pre-sigmoid scores ``N×1`` for faces ``N×3×96×96`` in [0, 1] (BGR)."""
        x = self.block_outputs(faces)[-1]
        return self.binary_pred[0](x).view(len(x), -1)

    def forward(self, faces: Tensor) -> Tensor:
        """P(real) ``N×1`` for faces ``N×3×96×96`` in [0, 1] (BGR)."""
        return torch.sigmoid(self.logits(faces))


# ----------------------------------------------------------------------------------------------------
# Loading official checkpoints
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GeneratorSpec:
    """Sizes of a TalkLip generator read from its state dict.

    Attributes:
        audio_dim: audio-encoder width D (``audio_map`` input).
        res_layers: decoder blocks with a U-Net skip.
        encoder: keyword arguments for :class:`talkbench.nets.avhubert.AVHubertConfig`; empty for a
            :class:`LocalAudioEncoder` (``audio_kind == "local"``).
        channels: U-Net widths.
        sync_dim: width the contrastive head projects the audio to.
        audio_kind: ``"avhubert"`` (the released models) or ``"local"``.
    """

    audio_dim: int
    res_layers: int
    encoder: Mapping[str, Any]
    channels: UNetChannels = UNetChannels()
    sync_dim: int | None = None
    audio_kind: str = "avhubert"


def unwrap_state_dict(obj: Any, path: str | Path = "<checkpoint>") -> dict[str, Tensor]:
    """The state dict of a TalkLip file: ``obj["state_dict"]`` (train.py layout) or a bare state dict.

    The ``optimizer``, ``global_step`` and ``global_epoch`` entries are ignored here.
    """
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a TalkLip checkpoint (expected a dict with a 'state_dict' of tensors, "
                              "as TalkLip's train.py saves it).")
    # DataParallel-trained files prefix every key with "module."
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def encoder_heads(width: int, override: int | None = None) -> int:
    """Attention heads for an AV-HuBERT encoder of ``width``: override, Base/Large table, else 16-d heads."""
    if override is not None:
        return override
    if width in KNOWN_HEADS:
        return KNOWN_HEADS[width]
    heads = max(1, width // 16)
    logger.debug("audio encoder width %d is not AV-HuBERT Base/Large: assuming %d attention heads of 16 "
                "dimensions (pass attention_heads= to override)", width, heads)
    return heads


def _infer_channels(state_dict: Mapping[str, Tensor], path: str | Path = "<state dict>") -> UNetChannels:
    """U-Net widths from the first convolution of each encoder/decoder block and of the output block."""
    def out_width(key: str, transposed: bool = False) -> int:
        if key not in state_dict or state_dict[key].dim() != 4:
            raise CheckpointError(f"{path}: not a TalkLip generator state dict: missing 4-d {key}. {_FIX}")
        return int(state_dict[key].shape[1 if transposed else 0])

    enc = [6] + [out_width(f"face_encoder_blocks.{i}.0.conv_block.0.weight") for i in range(len(ENC_CHANNELS) - 1)]
    dec = [out_width("face_decoder_blocks.0.0.conv_block.0.weight")]
    dec += [out_width(f"face_decoder_blocks.{i}.0.conv_block.0.weight", transposed=True)
            for i in range(1, len(DEC_CHANNELS))]
    return UNetChannels(tuple(enc), tuple(dec), out_width("output_block.0.conv_block.0.weight"))


def _infer_avhubert_encoder(state_dict: Mapping[str, Tensor], attention_heads: int | None,
                            path: str | Path = "<state dict>") -> dict[str, Any]:
    p = GENERATOR_PREFIX
    need = [p + "feature_extractor_audio.proj.weight", p + "encoder.pos_conv.0.weight_v"]
    missing = [k for k in need if k not in state_dict]
    if missing:
        raise CheckpointError(f"{path}: not a TalkLip generator state dict: missing {', '.join(missing)}. {_FIX}")
    proj = state_dict[p + "feature_extractor_audio.proj.weight"]
    if proj.dim() != 2 or state_dict[p + "encoder.pos_conv.0.weight_v"].dim() != 3:
        raise CheckpointError(f"{path}: {p}feature_extractor_audio.proj.weight / encoder.pos_conv.0.weight_v have "
                              f"the wrong number of dimensions; not a TalkLip generator. {_FIX}")
    width, audio_feat_dim = int(proj.shape[0]), int(proj.shape[1])
    layer_ids = {int(m.group(1)) for k in state_dict if (m := re.match(re.escape(p) + r"encoder\.layers\.(\d+)\.", k))}
    n_layers = len(layer_ids)
    if layer_ids != set(range(n_layers)) or n_layers > MAX_ENCODER_LAYERS:
        shown = sorted(layer_ids)
        raise CheckpointError(f"{path}: the audio encoder's layers are numbered {shown[:5]}{' ...' if n_layers > 5 else ''}"
                              f"{f' to {shown[-1]}' if n_layers > 5 else ''}; expected 0..N-1 with N at most "
                              f"{MAX_ENCODER_LAYERS}. {_FIX}")
    fc1 = state_dict.get(p + "encoder.layers.0.fc1.weight")
    if n_layers and (fc1 is None or fc1.dim() != 2):
        raise CheckpointError(f"{path}: not a TalkLip generator state dict: missing 2-d "
                              f"{p}encoder.layers.0.fc1.weight. {_FIX}")
    ffn = int(fc1.shape[0]) if n_layers else 4 * width
    weight_v = state_dict[p + "encoder.pos_conv.0.weight_v"]
    if int(weight_v.shape[1]) < 1 or width % int(weight_v.shape[1]) or int(weight_v.shape[0]) != width:
        raise CheckpointError(f"{path}: {p}encoder.pos_conv.0.weight_v has shape {tuple(weight_v.shape)}, which does "
                              f"not fit an encoder of width {width}; not a TalkLip generator. {_FIX}")
    encoder: dict[str, Any] = dict(
        encoder_layers=n_layers, encoder_embed_dim=width, encoder_ffn_embed_dim=ffn,
        encoder_attention_heads=encoder_heads(width, attention_heads), conv_pos=int(weight_v.shape[2]),
        conv_pos_groups=width // int(weight_v.shape[1]), audio_feat_dim=audio_feat_dim)
    if p + "label_embs_concat" in state_dict:
        encoder["label_embs_shape"] = tuple(int(s) for s in state_dict[p + "label_embs_concat"].shape)
    encoder["video_frontend"] = any(k.startswith(p + "feature_extractor_video.resnet.") for k in state_dict)
    return encoder


def infer_generator_spec(state_dict: Mapping[str, Tensor], attention_heads: int | None = None,
                         path: str | Path = "<state dict>") -> GeneratorSpec:
    """Read a TalkLip generator's sizes from its tensors (official files carry no config).

    Also reads talkbench's smaller generators (scaled U-Net widths, :class:`LocalAudioEncoder`).

    Raises:
        CheckpointError: a key the inference needs is missing (not a TalkLip generator).
    """
    for key in ("audio_map.weight", "sync_net.Linearaudio.weight"):
        if key not in state_dict or state_dict[key].dim() != 2:
            raise CheckpointError(f"{path}: not a TalkLip generator state dict: missing 2-d {key}. {_FIX}")
    if "audio_encoder.local.0.weight" in state_dict:
        audio_kind, encoder = "local", {}
    else:
        audio_kind, encoder = "avhubert", _infer_avhubert_encoder(state_dict, attention_heads, path)
    channels = _infer_channels(state_dict, path)
    # decoder block i+1 input width tells whether block i gets a skip connection
    res_layers = 0
    for i in range(len(DEC_CHANNELS)):
        key = f"face_decoder_blocks.{i + 1}.0.conv_block.0.weight" if i < 6 else "output_block.0.conv_block.0.weight"
        cin = int(state_dict[key].shape[0] if i < 6 else state_dict[key].shape[1])  # ConvTranspose: in×out×k×k
        if cin == channels.encoder[-i - 1] + channels.decoder[i]:
            res_layers = i + 1
        else:
            break
    return GeneratorSpec(audio_dim=int(state_dict["audio_map.weight"].shape[1]), res_layers=res_layers,
                         encoder=encoder, channels=channels,
                         sync_dim=int(state_dict["sync_net.Linearaudio.weight"].shape[0]), audio_kind=audio_kind)


def build_generator(spec: GeneratorSpec) -> TalkLipGenerator:
    """An (untrained) generator of the given sizes, audio encoder included."""
    if spec.audio_kind == "local":
        audio_encoder: nn.Module = LocalAudioEncoder(spec.audio_dim)
    else:
        audio_encoder = TalkLipAudioEncoder(avhubert.AVHubertModel(avhubert_config(spec.encoder)))
    return TalkLipGenerator(audio_encoder, spec.audio_dim, spec.res_layers, spec.channels, spec.sync_dim)


def avhubert_config(encoder: Mapping[str, Any]) -> Any:
    """:class:`talkbench.nets.avhubert.AVHubertConfig` from :class:`GeneratorSpec` ``encoder`` sizes."""
    return avhubert.AVHubertConfig.for_talklip(**encoder)


def _strict_load(model: nn.Module, state_dict: Mapping[str, Tensor], path: str | Path, what: str,
                 assign: bool = False) -> None:
    problem = key_mismatch(model.state_dict(), state_dict, shown=8)
    if problem:
        raise CheckpointError(f"{path}: not a {what} checkpoint ({problem}). Pass a TalkLip {what} file "
                              "(the generator: talklip-g / talklip-gc; the discriminator: talklip-disc).")
    if assign:   # meta-device model: take the tensors as they are (float32, contiguous)
        state_dict = {k: (v.float() if v.is_floating_point() and v.dtype != torch.float32 else v).contiguous()
                      for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=assign)


def generator_from_state_dict(state_dict: Mapping[str, Tensor], attention_heads: int | None = None,
                              path: str | Path = "<state dict>") -> TalkLipGenerator:
    """Build a generator sized from ``state_dict`` and load it strictly.

    The tensors are checked first (finite, at most :data:`MAX_GENERATOR_ELEMENTS` values), and every size is read from them, so nothing is built
    that the file's own tensors do not describe; the model is built on the meta device and takes the
    tensors by assignment.

    Raises:
        CheckpointError: not a TalkLip generator (missing/unexpected keys listed), or non-finite weights.
    """
    check_state_tensors(state_dict, path, _FIX, max_elements=MAX_GENERATOR_ELEMENTS)
    spec = infer_generator_spec(state_dict, attention_heads, path)
    try:
        if spec.audio_kind == "avhubert":
            avhubert_config(spec.encoder)
    except ValueError as err:   # e.g. a width not divisible by the head count
        raise CheckpointError(f"{path}: the audio encoder's sizes are inconsistent ({err}). {_FIX}") from err
    with torch.device("meta"):
        model = build_generator(spec)
    _strict_load(model, state_dict, path, "generator", assign=True)
    return model


def load_talklip_generator(path: str | Path, device: str | torch.device = "cpu",
                           attention_heads: int | None = None) -> TalkLipGenerator:
    """Load an official TalkLip generator file (``{"state_dict", "optimizer", "global_step", "global_epoch"}``).

    Sizes come from the tensors; the file is read with the restricted unpickler. Returns the model in
    ``eval()`` mode on ``device``.

    Raises:
        CheckpointError: the file is not a TalkLip generator (missing/unexpected keys are listed).
    """
    # memory-mapped and assigned: the weights are not held twice while loading
    state_dict = unwrap_state_dict(load_checkpoint(path, map_location="cpu", mmap=True), path)
    return for_inference(generator_from_state_dict(state_dict, attention_heads, path), device)


def load_talklip_discriminator(path: str | Path, device: str | torch.device = "cpu") -> TalkLipDiscriminator:
    """Load the official TalkLip discriminator file (same layout as the generator's); ``eval()`` mode."""
    state_dict = unwrap_state_dict(load_checkpoint(path, map_location="cpu"), path)
    check_state_tensors(state_dict, path, "Pass the TalkLip discriminator file (talklip-disc).")
    first = state_dict.get("face_encoder_blocks.0.0.conv_block.0.weight")
    divisor = DISC_CHANNELS[0] // int(first.shape[0]) if first is not None and int(first.shape[0]) else 1
    model = TalkLipDiscriminator(max(1, divisor))
    _strict_load(model, state_dict, path, "discriminator")
    return model.to(device).eval()


def save_talklip_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                            global_step: int = 0, global_epoch: int = 0, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``{"state_dict", "optimizer", "global_step", "global_epoch"}`` as TalkLip's train.py does.

    Written to a temporary name and renamed, so an interrupted save never leaves a truncated file.
    ``extra`` entries (e.g. talkbench's training state) are added as further top-level keys.
    """
    path = Path(path)
    payload: dict[str, Any] = {"state_dict": model.state_dict(),
                               "optimizer": optimizer.state_dict() if optimizer is not None else None,
                               "global_step": int(global_step), "global_epoch": int(global_epoch)}
    if extra:
        payload.update(extra)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
