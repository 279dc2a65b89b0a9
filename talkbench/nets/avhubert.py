"""AV-HuBERT (facebookresearch/av_hubert) in plain PyTorch, with fairseq's state-dict key names.

Three networks share this file because they share their parts:

* :class:`AVHubertModel` — the audio-visual encoder of the pre-training checkpoints
  (``feature_extractor_audio.*``, ``feature_extractor_video.*``, ``layer_norm.*``, ``post_extract_proj.*``,
  ``encoder.*``, ``mask_emb``, ``label_embs_concat``, ``final_proj.*``). TalkLip's generator uses it audio-only.
* :class:`TransformerDecoder` — av_hubert's ``decoder.py`` seq2seq decoder (``decoder.*``), with an
  incremental one-token step whose cross-attention keys/values are projected once per clip and shared by
  every beam of that clip (:mod:`talkbench.nets.avhubert_decoding` drives it).
* :class:`AVHubertSeq2Seq` — ``encoder.w2v_model`` + ``decoder``: the fine-tuned lip reader of WER1.

Sizes come from :class:`AVHubertConfig` (read from a checkpoint's ``cfg`` with
:meth:`AVHubertConfig.from_fairseq_cfg`, or given directly). Official fairseq checkpoint files are read
with :func:`load_avhubert_seq2seq` / :func:`load_avhubert_encoder` (restricted unpickler, strict loading,
weights assigned straight into a model built on the meta device so that a Large file is not held twice).

Reference: av_hubert commit 258fb50 (hubert.py, hubert_asr.py, decoder.py, resnet.py) on fairseq afc77bd
(wav2vec2 ``TransformerEncoder``, ``TransformerDecoderLayer``, ``MultiheadAttention``,
``SinusoidalPositionalEmbedding``). Read, not copied.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from talkbench.audio_features import avhubert_audio_features
from talkbench.nets.avhubert_tokenizer import Tokenizer, TokenizerError
from talkbench.nets.checkpoint_keys import CheckpointError, check_state_tensors, key_mismatch, require_shape
from talkbench.nets.frame_pool import FrameMaxPool
from talkbench.nets.onednn_linear import for_inference
from talkbench.safe_unpickle import ForeignObject, load_checkpoint

logger = logging.getLogger(__name__)

#: Video input normalisation of every released AV-HuBERT model (task cfg image_mean / image_std).
IMAGE_MEAN = 0.421
IMAGE_STD = 0.165
IMAGE_CROP = 88

ACTIVATIONS = ("relu", "gelu", "gelu_accurate", "tanh", "linear")


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------

#: Defaults of the reference dataclasses (hubert.py AVHubertConfig, hubert_asr.py AVHubertSeq2SeqConfig),
#: used for fields a checkpoint's cfg omits. They differ from this module's constructor defaults, which
#: are the released Base fine-tuned model's values (handier when building a model by hand).
REFERENCE_ENCODER_DEFAULTS: dict[str, Any] = dict(
    encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12,
    activation_fn="gelu", layer_norm_first=False, conv_pos=128, conv_pos_groups=16, audio_feat_dim=-1,
    modality_fuse="concat", resnet_relu_type="prelu", sub_encoder_layers=0, final_dim=0,
    untie_final_proj=False, masking_type="input",
)
REFERENCE_DECODER_DEFAULTS: dict[str, Any] = dict(
    decoder_layers=6, decoder_embed_dim=768, decoder_ffn_embed_dim=3072, decoder_attention_heads=4,
    decoder_normalize_before=False, decoder_learned_pos=False, no_token_positional_embeddings=False,
    share_decoder_input_output_embed=False, no_scale_embedding=True, max_target_positions=2048,
)


@dataclass(frozen=True)
class AVHubertConfig:
    """Sizes and switches of an AV-HuBERT encoder (+ optional seq2seq decoder).

    Field names are fairseq's. Constructor defaults are the released **Base** fine-tuned lip reader
    (Large: 24 × 1024, FFN 4096, 16 heads; decoder 9 × 1024, 8 heads).

    Attributes:
        encoder_layers, encoder_embed_dim, encoder_ffn_embed_dim, encoder_attention_heads: transformer sizes.
        activation_fn: encoder FFN activation (``gelu`` = erf GELU).
        layer_norm_first: pre-LN encoder layers + final ``encoder.layer_norm`` (all released models: True).
        conv_pos, conv_pos_groups: convolutional positional embedding kernel and groups.
        audio_feat_dim: audio input width (26 log-fbank × 4 stacked frames = 104).
        modality_fuse: ``concat`` (audio first, then video) or ``add``.
        resnet_relu_type: ``prelu`` or ``relu`` in the ResNet-18 video front-end.
        video_frontend: build ``feature_extractor_video`` (ResNet + proj). TalkLip's audio-only use may
            drop it when a file has no video weights.
        sub_encoder_layers: per-modality transformer layers (0 in every release; other values unsupported).
        final_dim: pre-training projection width (0 → encoder_embed_dim).
        untie_final_proj: one projection block per label set (pre-training only).
        masking_type: ``input`` → ``mask_emb`` has ``audio_feat_dim`` entries, else ``encoder_embed_dim``.
        label_embs_shape: shape of ``label_embs_concat`` (pre-training label embeddings), None if absent.
        final_proj_out: output width of ``final_proj`` (pre-training checkpoints), None if absent (seq2seq).
        decoder_layers, decoder_embed_dim, decoder_ffn_embed_dim, decoder_attention_heads: decoder sizes
            (``decoder_layers=0`` → no decoder).
        decoder_normalize_before: pre-LN decoder layers + final ``decoder.layer_norm``.
        decoder_learned_pos: learned instead of sinusoidal positions.
        no_token_positional_embeddings: no positions at all.
        share_decoder_input_output_embed: output projection = ``embed_tokens`` (else ``decoder.embed_out``).
        no_scale_embedding: token embeddings × 1 (else × sqrt(dim)).
        max_target_positions: decoder positions (max output length + 1).
        decoder_activation_fn: decoder FFN activation; the reference cfg has none → fairseq uses ReLU.
        vocab_size: output dictionary size (fairseq Dictionary length).
        pad, eos, unk: dictionary indices of ``<pad>``, ``</s>`` and ``<unk>``.
    """

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = True
    conv_pos: int = 128
    conv_pos_groups: int = 16
    audio_feat_dim: int = 104
    modality_fuse: str = "concat"
    resnet_relu_type: str = "prelu"
    video_frontend: bool = True
    sub_encoder_layers: int = 0
    final_dim: int = 256
    untie_final_proj: bool = True
    masking_type: str = "input"
    label_embs_shape: tuple[int, int] | None = None
    final_proj_out: int | None = None
    decoder_layers: int = 6
    decoder_embed_dim: int = 768
    decoder_ffn_embed_dim: int = 3072
    decoder_attention_heads: int = 4
    decoder_normalize_before: bool = True
    decoder_learned_pos: bool = False
    no_token_positional_embeddings: bool = False
    share_decoder_input_output_embed: bool = True
    no_scale_embedding: bool = True
    max_target_positions: int = 2048
    decoder_activation_fn: str = "relu"
    vocab_size: int = 1000
    pad: int = 1
    eos: int = 2
    unk: int = 3

    def __post_init__(self) -> None:
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                             f"encoder_attention_heads {self.encoder_attention_heads}.")
        if self.decoder_layers and self.decoder_embed_dim % self.decoder_attention_heads:
            raise ValueError(f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                             f"decoder_attention_heads {self.decoder_attention_heads}.")
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise ValueError(f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                             f"conv_pos_groups {self.conv_pos_groups}.")
        if self.modality_fuse not in ("concat", "add"):
            raise ValueError(f"modality_fuse must be 'concat' or 'add', got {self.modality_fuse!r}.")
        if self.resnet_relu_type not in ("prelu", "relu"):
            raise ValueError(f"resnet_relu_type must be 'prelu' or 'relu', got {self.resnet_relu_type!r}.")
        if self.sub_encoder_layers:
            raise ValueError("sub_encoder_layers > 0 (per-modality transformers) is not supported: no released "
                             "AV-HuBERT model uses it.")
        for name in ("activation_fn", "decoder_activation_fn"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {getattr(self, name)!r}.")
        if self.audio_feat_dim <= 0:
            raise ValueError(f"audio_feat_dim must be positive (104 for AV-HuBERT), got {self.audio_feat_dim}.")

    # -- derived sizes ---------------------------------------------------------------------------------
    @property
    def fused_dim(self) -> int:
        """Width after modality fusion (2·D for concat)."""
        return 2 * self.encoder_embed_dim if self.modality_fuse == "concat" else self.encoder_embed_dim

    @property
    def mask_emb_dim(self) -> int:
        return self.audio_feat_dim if self.masking_type == "input" else self.encoder_embed_dim

    # -- constructors ----------------------------------------------------------------------------------
    @classmethod
    def from_fairseq_cfg(cls, cfg_model: Mapping[str, Any] | argparse.Namespace, **overrides: Any) -> "AVHubertConfig":
        """Config from a checkpoint's ``cfg['model']`` (or an old-style ``args`` Namespace).

        Accepts the seq2seq model cfg (``_name: av_hubert_seq2seq``, encoder sizes under
        ``w2v_args.model``) or a pre-training model cfg (``_name: av_hubert``). Fields the cfg omits take the
        reference dataclass defaults. Sizes that only the weights know (``vocab_size``, ``label_embs_shape``,
        ``final_proj_out``) come through ``overrides``.

        Raises:
            ValueError: the cfg is not an AV-HuBERT model cfg.
        """
        model = _as_plain_dict(cfg_model)
        name = model.get("_name", model.get("arch"))
        if "w2v_args" in model and model["w2v_args"] is not None:
            w2v = _as_plain_dict(model["w2v_args"])
            enc = _as_plain_dict(w2v["model"]) if "model" in w2v else w2v  # Namespace: fields are flat
            dec = model
        elif name in ("av_hubert", None) and "encoder_layers" in model:
            enc, dec = model, {}
        else:
            raise ValueError(f"cfg model `{name}` is not an AV-HuBERT model (expected av_hubert_seq2seq or av_hubert "
                             "with w2v_args or encoder sizes).")
        values: dict[str, Any] = {}
        for key, default in REFERENCE_ENCODER_DEFAULTS.items():
            values[key] = enc.get(key, default) if enc.get(key) is not None else default
        for key, default in REFERENCE_DECODER_DEFAULTS.items():
            values[key] = dec.get(key, default) if dec.get(key) is not None else default
        if not dec:
            values["decoder_layers"] = 0
        values["decoder_activation_fn"] = str(dec.get("activation_fn") or "relu") if dec else "relu"
        if values["audio_feat_dim"] <= 0:
            values["audio_feat_dim"] = 104
        values = {k: (str(v) if isinstance(v, str) else v) for k, v in values.items()}
        values.update(overrides)
        return cls(**values)

    @classmethod
    def for_talklip(cls, encoder_layers: int, encoder_embed_dim: int, encoder_ffn_embed_dim: int,
                    encoder_attention_heads: int, conv_pos: int = 128, conv_pos_groups: int = 16,
                    audio_feat_dim: int = 104, label_embs_shape: tuple[int, int] | None = None,
                    video_frontend: bool = True, **extra: Any) -> "AVHubertConfig":
        """Encoder-only config as TalkLip's generator holds it (``audio_encoder.w2v_model.*``).

        The generator's AV-HuBERT was built from a pre-training config and then stripped of its
        pre-training projection (``final_proj``); ``mask_emb`` stays, ``label_embs_concat`` stays when the
        pre-training dictionaries were loaded (``label_embs_shape``). No decoder.
        """
        return cls(encoder_layers=encoder_layers, encoder_embed_dim=encoder_embed_dim,
                   encoder_ffn_embed_dim=encoder_ffn_embed_dim, encoder_attention_heads=encoder_attention_heads,
                   conv_pos=conv_pos, conv_pos_groups=conv_pos_groups, audio_feat_dim=audio_feat_dim,
                   label_embs_shape=tuple(label_embs_shape) if label_embs_shape is not None else None,
                   video_frontend=video_frontend, final_proj_out=None, decoder_layers=0, **extra)

    def replace(self, **changes: Any) -> "AVHubertConfig":
        return dataclasses.replace(self, **changes)


def _as_plain_dict(obj: Any) -> dict[str, Any]:
    """A cfg node as a dict: plain dicts pass, argparse Namespaces give their vars, omegaconf stand-ins their content."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, argparse.Namespace):
        return dict(vars(obj))
    if isinstance(obj, ForeignObject):  # e.g. a pickled omegaconf DictConfig: its content, node values unwrapped
        value = obj.content()
        if isinstance(value, Mapping):
            return {k: (v.content() if isinstance(v, ForeignObject) else v) for k, v in value.items()}
    raise ValueError(f"expected a config mapping, got {type(obj).__name__}")


# ----------------------------------------------------------------------------------------------------
# Small building blocks
# ----------------------------------------------------------------------------------------------------

def _activation(name: str):
    if name == "relu":
        return F.relu
    if name == "gelu":
        # fairseq computes GELU in float32 with erf
        return lambda x: F.gelu(x.float()).type_as(x)
    if name == "gelu_accurate":
        return lambda x: F.gelu(x.float(), approximate="tanh").type_as(x)
    if name == "tanh":
        return torch.tanh
    return lambda x: x


class MultiheadAttention(nn.Module):
    """fairseq ``MultiheadAttention`` parameters (``k_proj``, ``v_proj``, ``q_proj``, ``out_proj``, with bias).

    q is scaled by ``head_dim**-0.5`` after its projection (as fairseq does); softmax runs in float32.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim ** -0.5
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def split_heads(self, x: Tensor) -> Tensor:
        """``[..., L, D]`` → ``[..., H, L, hd]``."""
        *lead, length, _ = x.shape
        return x.view(*lead, length, self.num_heads, self.head_dim).transpose(-3, -2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """``[..., H, L, hd]`` → ``[..., L, D]``."""
        *lead, heads, length, hd = x.shape
        return x.transpose(-3, -2).reshape(*lead, length, heads * hd)

    def project_q(self, x: Tensor) -> Tensor:
        """Queries ``[..., L, D]`` → scaled ``[..., H, L, hd]``."""
        return self.split_heads(self.q_proj(x) * self.scaling)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys/values of ``[..., S, D]`` → two ``[..., H, S, hd]``."""
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))

    @staticmethod
    def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """softmax(q·kᵀ + mask)·v. ``q [..., H, L, hd]``, ``k, v [..., H, S, hd]``; ``mask`` additive
        (float, broadcastable to ``[..., H, L, S]``) or boolean (True = excluded)."""
        weights = torch.matmul(q, k.transpose(-1, -2))
        if mask is not None:
            if mask.dtype == torch.bool:
                weights = weights.masked_fill(mask, float("-inf"))
            else:
                weights = weights + mask
        probs = torch.softmax(weights.float(), dim=-1).type_as(weights)
        return torch.matmul(probs, v)

    def forward(self, query: Tensor, key_value: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        """Full (non-incremental) attention, batch-first.

        Args:
            query: ``[B, L, D]``; key_value: ``[B, S, D]``.
            key_padding_mask: ``[B, S]`` bool, True = padded key.
            attn_mask: ``[L, S]`` additive float mask (e.g. causal ``-inf`` above the diagonal).
        Returns:
            ``[B, L, D]``.
        """
        q = self.project_q(query)
        k, v = self.project_kv(key_value)
        mask = None
        if attn_mask is not None:
            mask = attn_mask
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :]
            mask = pad if mask is None else mask.masked_fill(pad, float("-inf"))
        return self.out_proj(self.merge_heads(self.attend(q, k, v, mask)))


# ----------------------------------------------------------------------------------------------------
# Video front-end (resnet.py)
# ----------------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """ResNet basic block with two separate activations (``relu1`` after bn1, ``relu2`` after the sum)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, relu_type: str = "prelu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.PReLU(planes) if relu_type == "prelu" else nn.ReLU()
        self.relu2 = nn.PReLU(planes) if relu_type == "prelu" else nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + residual)


class ResNetTrunk(nn.Module):
    """ResNet-18 trunk (64→128→256→512, two blocks each) + global average pool: ``[N,64,h,w]`` → ``[N,512]``."""

    def __init__(self, relu_type: str = "prelu") -> None:
        super().__init__()
        widths = (64, 128, 256, 512)
        inplanes = 64
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(inplanes, planes, stride, relu_type),
                                  BasicBlock(planes, planes, 1, relu_type))
            self.add_module(f"layer{i + 1}", layer)
            inplanes = planes

    def forward(self, x: Tensor) -> Tensor:
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(2, 3))


class ResEncoder(nn.Module):
    """3D-conv stem + per-frame ResNet-18: video ``[B,1,T,H,W]`` → ``[B,512,T]``.

    Stem: Conv3d(1→64, k=(5,7,7), s=(1,2,2), p=(2,3,3), no bias) → BN3d → PReLU → MaxPool3d((1,3,3),(1,2,2),(0,1,1)).
    """

    backend_out = 512

    def __init__(self, relu_type: str = "prelu") -> None:
        super().__init__()
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.PReLU(64) if relu_type == "prelu" else nn.ReLU(),
            FrameMaxPool(),  # = MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)), faster
        )
        self.trunk = ResNetTrunk(relu_type)

    #: frames per step of :meth:`forward` (bounds memory on long clips: one 60-s clip at once held 0.74 GB of
    #: activations); exact, since only the stem's Conv3d looks across time (±2 frames, fed from the neighbours)
    chunk_frames = 128

    def forward(self, x: Tensor) -> Tensor:
        frames = x.shape[2]
        if frames <= self.chunk_frames:
            return self._forward(x)
        halo = self.frontend3D[0].padding[0]
        parts = []
        for start in range(0, frames, self.chunk_frames):
            stop = min(start + self.chunk_frames, frames)
            lo, hi = max(0, start - halo), min(frames, stop + halo)
            out = self._forward(x[:, :, lo:hi])                  # [B, 512, hi - lo]
            parts.append(out[:, :, start - lo:stop - lo])
        return torch.cat(parts, dim=2)

    def _forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        x = self.frontend3D(x)                                   # [B, 64, T, H/4, W/4]
        frames = x.shape[2]
        x = x.transpose(1, 2).reshape(batch * frames, *x.shape[1:2], *x.shape[3:])  # fold time into batch
        # NHWC activations: oneDNN's convolutions run ~15 % faster on CPU than with NCHW (measured)
        x = self.trunk(x.contiguous(memory_format=torch.channels_last))  # [B·T, 512]
        return x.view(batch, frames, -1).transpose(1, 2).contiguous()  # [B, 512, T]


class SubModel(nn.Module):
    """One modality's feature extractor: optional ResNet, then ``proj`` to D: ``[B,C,T]``/video → ``[B,D,T]``."""

    def __init__(self, input_dim: int, embed_dim: int, resnet: ResEncoder | None = None) -> None:
        super().__init__()
        self.resnet = resnet
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.resnet is not None:
            x = self.resnet(x)
        return self.proj(x.transpose(1, 2)).transpose(1, 2)


# ----------------------------------------------------------------------------------------------------
# Transformer encoder (fairseq wav2vec2 TransformerEncoder)
# ----------------------------------------------------------------------------------------------------

class WeightNormConv1d(nn.Module):
    """Grouped Conv1d under ``weight_norm(dim=2)``: parameters ``weight_g [1,1,K]``, ``weight_v [D,D/G,K]``, ``bias``.

    weight = g · v / ‖v‖, the norm taken over dims (0, 1) separately for each kernel tap.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fairseq's initialisation: v ~ N(0, sqrt(4 / (K·D))), g = ‖v‖ per tap (weight = v at the start).

        Drawn from a fork of torch's CPU generator, so that building a model does not shift the caller's
        random stream (the mini lip readers' recipes, which set ``weight_v`` themselves, depend on it).
        """
        if self.weight_v.device.type == "meta":   # shapes only (weights are assigned from a file)
            return
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            nn.init.normal_(self.weight_v, 0.0, (4.0 / (self.weight_v.shape[2] * self.weight_v.shape[0])) ** 0.5)
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))
            self.bias.zero_()

    def weight(self) -> Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the last output frame when the kernel is even (the conv adds one)."""

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : x.shape[2] - self.remove] if self.remove else x


class EncoderLayer(nn.Module):
    """wav2vec2 ``TransformerSentenceEncoderLayer`` (pre-LN when ``layer_norm_first``)."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, activation: str, layer_norm_first: bool) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = _activation(activation)
        self.layer_norm_first = layer_norm_first

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """``x [B, T, D]``, ``padding_mask [B, T]`` (True = padded) → ``[B, T, D]``."""
        if self.layer_norm_first:
            h = self.self_attn_layer_norm(x)
            x = x + self.self_attn(h, h, padding_mask)
            x = x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))
        else:
            x = self.self_attn_layer_norm(x + self.self_attn(x, x, padding_mask))
            x = self.final_layer_norm(x + self.fc2(self.activation(self.fc1(x))))
        return x


class TransformerEncoder(nn.Module):
    """Convolutional positions + transformer layers (+ final LayerNorm when pre-LN): ``[B,T,D]`` → ``[B,T,D]``."""

    def __init__(self, cfg: AVHubertConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups),
                                      SamePad(cfg.conv_pos), nn.GELU())
        self.layers = nn.ModuleList(
            EncoderLayer(dim, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads, cfg.activation_fn,
                         cfg.layer_norm_first)
            for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = cfg.layer_norm_first

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, output_layer: int | None = None) -> Tensor:
        """Args:
            x: ``[B, T, D]`` projected features.
            padding_mask: ``[B, T]`` bool, True = padded frame (zeroed before the positional conv).
            output_layer: 1-based layer whose output to return; as in fairseq, that output is **not**
                passed through the final LayerNorm. None = all layers + final LayerNorm.
        Returns:
            ``[B, T, D]``.
        """
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, padding_mask)
            if output_layer is not None and i == output_layer - 1:
                return x
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


# ----------------------------------------------------------------------------------------------------
# AV-HuBERT encoder
# ----------------------------------------------------------------------------------------------------

class AVHubertModel(nn.Module):
    """The AV-HuBERT encoder with the pre-training checkpoint's key names.

    ``extract_features`` is av_hubert's ``extract_finetune`` at inference: per-modality features
    ``[B,D,T]``, a missing modality replaced by zeros, concatenated audio-first, LayerNorm(2D),
    ``post_extract_proj`` (2D→D), then the transformer encoder.
    """

    def __init__(self, cfg: AVHubertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.encoder_embed_dim
        self.feature_extractor_audio = SubModel(cfg.audio_feat_dim, dim)
        self.feature_extractor_video: SubModel | None = None
        if cfg.video_frontend:
            self.feature_extractor_video = SubModel(ResEncoder.backend_out, dim, ResEncoder(cfg.resnet_relu_type))
        self.post_extract_proj = nn.Linear(cfg.fused_dim, dim) if cfg.fused_dim != dim else None
        self.mask_emb = nn.Parameter(torch.zeros(cfg.mask_emb_dim))  # pre-training only; kept for key parity
        self.encoder = TransformerEncoder(cfg)
        self.layer_norm = nn.LayerNorm(cfg.fused_dim)
        if cfg.final_proj_out is not None:
            self.final_proj = nn.Linear(dim, cfg.final_proj_out)  # pre-training only
        if cfg.label_embs_shape is not None:
            self.label_embs_concat = nn.Parameter(torch.zeros(*cfg.label_embs_shape))  # pre-training only

    @property
    def embed_dim(self) -> int:
        return self.cfg.encoder_embed_dim

    def modality_features(self, audio: Tensor | None, video: Tensor | None) -> Tensor:
        """Fused, layer-normed features ``[B, T, fused_dim]`` (before ``post_extract_proj``).

        Args:
            audio: ``[B, audio_feat_dim, T]`` or None.
            video: ``[B, 1, T, H, W]`` (normalised gray mouth crops) or None.
        """
        if audio is None and video is None:
            raise ValueError("AV-HuBERT needs audio or video input; both are None.")
        if video is not None and self.feature_extractor_video is None:
            raise ValueError("this AV-HuBERT model was built without its video front-end (video_frontend=False); "
                             "pass audio only, or load a checkpoint that has feature_extractor_video.* weights.")
        if audio is not None and (audio.dim() != 3 or audio.shape[1] != self.cfg.audio_feat_dim):
            raise ValueError(f"audio features must be [B, {self.cfg.audio_feat_dim}, T], got {tuple(audio.shape)}.")
        if video is not None and (video.dim() != 5 or video.shape[1] != 1):
            raise ValueError(f"video must be [B, 1, T, H, W] gray frames, got {tuple(video.shape)}.")
        feats_audio = self.feature_extractor_audio(audio) if audio is not None else None
        feats_video = self.feature_extractor_video(video) if video is not None else None
        if feats_audio is None:
            feats_audio = feats_video.new_zeros(feats_video.shape[0], self.embed_dim, feats_video.shape[2])
        if feats_video is None:
            feats_video = feats_audio.new_zeros(feats_audio.shape[0], self.embed_dim, feats_audio.shape[2])
        if feats_audio.shape[2] != feats_video.shape[2]:
            raise ValueError(f"audio has {feats_audio.shape[2]} frames and video {feats_video.shape[2]}; align them "
                             "first (see align_audio_to_video).")
        if self.cfg.modality_fuse == "concat":
            feats = torch.cat([feats_audio, feats_video], dim=1)
        else:
            feats = feats_audio + feats_video
        return self.layer_norm(feats.transpose(1, 2))

    def extract_features(self, audio: Tensor | None, video: Tensor | None, padding_mask: Tensor | None = None,
                         output_layer: int | None = None) -> Tensor:
        """Encoder output.

        Args:
            audio: ``[B, 104, T]`` stacked log-fbank features (see :func:`audio_input`) or None.
            video: ``[B, 1, T, 88, 88]`` normalised gray mouth crops or None.
            padding_mask: ``[B, T]`` bool, True = padded frame; None = no padding.
            output_layer: 1-based transformer layer to return (without the final LayerNorm, as in fairseq);
                None = the full encoder after its final LayerNorm.
        Returns:
            ``[B, T, D]``.
        """
        feats = self.modality_features(audio, video)
        if padding_mask is not None and padding_mask.shape != feats.shape[:2]:
            raise ValueError(f"padding_mask must be [B, T] = {tuple(feats.shape[:2])}, got {tuple(padding_mask.shape)}.")
        if self.post_extract_proj is not None:
            feats = self.post_extract_proj(feats)
        return self.encoder(feats, padding_mask, output_layer)

    def forward(self, audio: Tensor | None, video: Tensor | None, padding_mask: Tensor | None = None) -> Tensor:
        return self.extract_features(audio, video, padding_mask)


# ----------------------------------------------------------------------------------------------------
# Seq2seq decoder (av_hubert decoder.py + fairseq TransformerDecoderLayer)
# ----------------------------------------------------------------------------------------------------

def sinusoidal_table(num_positions: int, dim: int, padding_idx: int) -> Tensor:
    """fairseq's sinusoidal table ``[num_positions, dim]``: row p = [sin(p·f) | cos(p·f)], row padding_idx = 0.

    Computed in float32 with the same operations as fairseq so that large positions round identically.
    """
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float) * -step)
    angles = torch.arange(num_positions, dtype=torch.float).unsqueeze(1) * freqs.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).view(num_positions, -1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(num_positions, 1)], dim=1)
    table[padding_idx, :] = 0
    return table


class SinusoidalPositions(nn.Module):
    """Sinusoidal positions; positions start at ``padding_idx + 1``. Holds no weights (the legacy
    ``_float_tensor`` buffer of official files is dropped by the loader)."""

    def __init__(self, dim: int, padding_idx: int, init_size: int) -> None:
        super().__init__()
        self.dim = dim
        self.padding_idx = padding_idx
        self.init_size = init_size
        self._tables: dict[tuple[str, torch.dtype], Tensor] = {}

    def table(self, size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (str(device), dtype)
        cached = self._tables.get(key)
        if cached is None or cached.shape[0] < size:
            cached = sinusoidal_table(max(size, self.init_size), self.dim, self.padding_idx).to(device, dtype)
            self._tables[key] = cached
        return cached

    def forward(self, positions: Tensor, dtype: torch.dtype) -> Tensor:
        """Embeddings of integer ``positions`` (any shape) → ``[..., dim]``."""
        size = int(positions.max()) + 1 if positions.numel() else 1
        return self.table(size, positions.device, dtype)[positions]


class LearnedPositions(nn.Module):
    """Learned positions (``decoder.embed_positions.weight``, ``max_target_positions + padding_idx + 1`` rows)."""

    def __init__(self, num_embeddings: int, dim: int, padding_idx: int) -> None:
        super().__init__()
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(torch.zeros(num_embeddings, dim))

    def forward(self, positions: Tensor, dtype: torch.dtype) -> Tensor:
        return F.embedding(positions, self.weight).to(dtype)


def make_positions(tokens: Tensor, padding_idx: int) -> Tensor:
    """fairseq ``make_positions``: non-pad tokens get padding_idx + 1, + 2, ...; pads get padding_idx."""
    mask = tokens.ne(padding_idx).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + padding_idx


class DecoderLayer(nn.Module):
    """fairseq ``TransformerDecoderLayer``: causal self-attention, encoder attention, FFN (ReLU by default)."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, normalize_before: bool, activation: str) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.encoder_attn = MultiheadAttention(dim, heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.normalize_before = normalize_before
        self.activation = _activation(activation)

    def _block(self, x: Tensor, norm: nn.LayerNorm, fn) -> Tensor:
        if self.normalize_before:
            return x + fn(norm(x))
        return norm(x + fn(x))

    def _ffn(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation(self.fc1(x)))

    def forward(self, x: Tensor, enc_kv: tuple[Tensor, Tensor], enc_mask: Tensor | None, causal: Tensor) -> Tensor:
        """Teacher-forced pass. ``x [B, L, D]``, ``enc_kv`` = projected encoder keys/values ``[B, H, S, hd]``,
        ``enc_mask [B, 1, 1, S]`` bool (True = padded frame), ``causal [L, L]`` additive."""
        def self_part(h: Tensor) -> Tensor:
            q = self.self_attn.project_q(h)
            k, v = self.self_attn.project_kv(h)
            return self.self_attn.out_proj(self.self_attn.merge_heads(MultiheadAttention.attend(q, k, v, causal)))

        def cross_part(h: Tensor) -> Tensor:
            q = self.encoder_attn.project_q(h)
            out = MultiheadAttention.attend(q, enc_kv[0], enc_kv[1], enc_mask)
            return self.encoder_attn.out_proj(self.encoder_attn.merge_heads(out))

        x = self._block(x, self.self_attn_layer_norm, self_part)
        x = self._block(x, self.encoder_attn_layer_norm, cross_part)
        return self._block(x, self.final_layer_norm, self._ffn)

    def step(self, x: Tensor, cache: "LayerCache", enc_kv: tuple[Tensor, Tensor], enc_mask: Tensor | None,
             beam: int) -> Tensor:
        """One incremental step for ``N = B·beam`` hypotheses.

        Args:
            x: ``[N, D]`` current-token states.
            cache: this layer's self-attention keys/values ``[N, H, t, hd]`` (extended in place by one step).
            enc_kv: encoder keys/values ``[B, H, S, hd]``, **one copy per clip**, shared by its beams.
            enc_mask: ``[B, 1, 1, S]`` bool (True = padded frame) or None.
            beam: hypotheses per clip (N = B·beam, grouped clip-major).
        Returns:
            ``[N, D]``.
        """
        attn = self.self_attn
        cross = self.encoder_attn
        num, dim = x.shape

        def self_part(h: Tensor) -> Tensor:
            q = attn.project_q(h.unsqueeze(1))                      # [N, H, 1, hd]
            k_new, v_new = attn.project_kv(h.unsqueeze(1))         # [N, H, 1, hd]
            cache.append(k_new, v_new)
            out = MultiheadAttention.attend(q, cache.k, cache.v)   # [N, H, 1, hd]
            return attn.out_proj(out.reshape(num, dim))

        def cross_part(h: Tensor) -> Tensor:
            batch = enc_kv[0].shape[0]
            # beams of one clip become the query rows of that clip: [B, H, beam, hd]
            q = (cross.q_proj(h) * cross.scaling).view(batch, beam, cross.num_heads, cross.head_dim).transpose(1, 2)
            out = MultiheadAttention.attend(q, enc_kv[0], enc_kv[1], enc_mask)  # [B, H, beam, hd]
            return cross.out_proj(out.transpose(1, 2).reshape(num, dim))

        x = self._block(x, self.self_attn_layer_norm, self_part)
        x = self._block(x, self.encoder_attn_layer_norm, cross_part)
        return self._block(x, self.final_layer_norm, self._ffn)


class LayerCache:
    """Self-attention keys/values of one decoder layer for ``n`` hypotheses, ``k, v [n, H, t, hd]``.

    Keys and values live in a preallocated ``[2, n, H, capacity, hd]`` buffer; when a step does not fit, a
    buffer of twice the capacity (at most the search's length) takes over (a copy). Fresh large allocations
    every step (what concatenating would do) cost page faults that were measured to take about as long as the
    copy itself. A full reorder writes the selected rows into a spare buffer and swaps the two.

    Args:
        capacity: the search's length in steps when known: the first buffer holds it when it is at most
            ``MAX_FIRST`` steps (a typical search never copies its cache to grow it); None = grow from ``GROW``.
    """

    GROW = 16
    MAX_FIRST = 128

    def __init__(self, capacity: int | None = None) -> None:
        self.steps_limit = capacity
        self.first_capacity = max(1, min(capacity or self.GROW, self.MAX_FIRST))
        self.buf: Tensor | None = None
        self.spare: Tensor | None = None
        self.rows = 0
        self.length = 0

    @property
    def k(self) -> Tensor:
        return self.buf[0, : self.rows, :, : self.length]

    @property
    def v(self) -> Tensor:
        return self.buf[1, : self.rows, :, : self.length]

    def _grow(self, like: Tensor) -> None:
        heads, head_dim = like.shape[1], like.shape[3]
        capacity = self.first_capacity
        if self.buf is not None:
            capacity = 2 * self.buf.shape[3]
            if self.steps_limit and self.steps_limit > self.buf.shape[3]:
                capacity = min(capacity, self.steps_limit)
        buf = like.new_empty(2, like.shape[0], heads, capacity, head_dim)
        if self.buf is not None:
            buf[:, : self.rows, :, : self.length] = self.buf[:, : self.rows, :, : self.length]
        self.buf, self.spare = buf, None
        self.rows = like.shape[0]

    def append(self, k_new: Tensor, v_new: Tensor) -> None:
        """Add one step: ``k_new, v_new [n, H, 1, hd]``."""
        if self.buf is None or self.length >= self.buf.shape[3]:
            self._grow(k_new)
        self.buf[0, : self.rows, :, self.length] = k_new[:, :, 0]
        self.buf[1, : self.rows, :, self.length] = v_new[:, :, 0]
        self.length += 1

    def reorder(self, order: Tensor) -> None:
        """Row i takes the keys/values of row ``order[i]``; ``order`` may be shorter (finished clips dropped) or
        longer (one row per clip expanded to the beam)."""
        if self.buf is None:
            return
        rows = int(order.numel())
        if self.spare is None or self.spare.shape[1] < rows or self.spare.shape[3] != self.buf.shape[3]:
            self.spare = self.buf.new_empty(2, max(rows, self.buf.shape[1]), *self.buf.shape[2:])
        torch.index_select(self.buf[:, : self.rows, :, : self.length], 1, order,
                           out=self.spare[:, :rows, :, : self.length])
        self.buf, self.spare = self.spare, self.buf
        self.rows = rows

    def copy_rows(self, src: list[int], dst: list[int]) -> None:
        """Rows ``dst`` take the keys/values of rows ``src`` (disjoint row sets); the other rows stay. One copy
        per row: a few rows per step, where an indexed copy of them cost 6x more (measured)."""
        if self.buf is not None:
            for row_from, row_to in zip(src, dst):
                self.buf[:, row_to, :, : self.length].copy_(self.buf[:, row_from, :, : self.length])


def stable_rows(parents: list[int], block: int) -> tuple[list[int], list[int], list[int]]:
    """Cache rows for the next step's hypotheses that copy as little as possible.

    Hypothesis i continues the hypothesis whose keys/values are in cache row ``parents[i]``. The first
    child of a row keeps that row; each further child takes a row no hypothesis continues, in the same
    block of ``block`` rows (one clip's beams: children and parents always share the clip), and is copied there.

    Returns:
        ``(rows, src, dst)``: the cache row of each hypothesis, and the copies to make (row ``src[j]`` to
        ``dst[j]``).
    """
    taken = [False] * len(parents)
    rows = [-1] * len(parents)
    extra: list[int] = []
    for i, row in enumerate(parents):
        if taken[row]:
            extra.append(i)
        else:
            taken[row] = True
            rows[i] = row
    free: dict[int, list[int]] = {}
    for row, used in enumerate(taken):
        if not used:
            free.setdefault(row // block, []).append(row)
    src, dst = [], []
    for i in extra:
        row = free[i // block].pop()
        rows[i] = row
        src.append(parents[i])
        dst.append(row)
    return rows, src, dst


@dataclass
class DecoderState:
    """Incremental decoding state of a batch of clips, ``beam`` hypotheses each (clip-major rows).

    Attributes:
        enc_kv: per layer, encoder keys/values ``[B, H, S, hd]`` projected once per clip.
        enc_mask: ``[B, 1, 1, S]`` bool (True = padded frame) or None.
        caches: per layer, the self-attention cache of the ``B·beam`` hypotheses.
        beam: hypotheses per clip.
        steps: tokens consumed so far.
        rows: cache row of each hypothesis (None = hypothesis i is in row i). A reorder that keeps the
            number of hypotheses moves only the rows of second and later children of a hypothesis
            (:func:`stable_rows`) instead of copying every row's keys/values, as a full reorder does.
        stable: use ``rows`` (False: full reorders every step, as fairseq does; for side-by-side benchmarks).
    """

    enc_kv: list[tuple[Tensor, Tensor]]
    enc_mask: Tensor | None
    caches: list[LayerCache]
    beam: int
    steps: int = 0
    rows: Tensor | None = None
    stable: bool = True

    def reorder(self, order: Tensor) -> None:
        """Hypothesis i continues hypothesis ``order[i]`` (indices in the current hypothesis order)."""
        parents = order if self.rows is None else self.rows[order]
        if not self.stable or not self.caches or order.numel() != self.caches[0].rows:
            for cache in self.caches:
                cache.reorder(parents)
            self.rows = None
            return
        rows, src, dst = stable_rows(parents.tolist(), self.beam)
        for cache in self.caches:
            cache.copy_rows(src, dst)
        self.rows = torch.tensor(rows, device=order.device)

    def keep_clips(self, keep: Tensor) -> None:
        """Keep only clips ``keep`` (indices into the current clip list) in the encoder keys/values."""
        self.enc_kv = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in self.enc_kv]
        if self.enc_mask is not None:
            self.enc_mask = self.enc_mask.index_select(0, keep)


class TransformerDecoder(nn.Module):
    """av_hubert's seq2seq decoder with fairseq keys (``embed_tokens``, ``embed_positions``, ``layers.*``,
    ``layer_norm``, ``embed_out`` when not shared)."""

    def __init__(self, cfg: AVHubertConfig) -> None:
        super().__init__()
        dim = cfg.decoder_embed_dim
        self.cfg = cfg
        self.padding_idx = cfg.pad
        self.embed_scale = 1.0 if cfg.no_scale_embedding else math.sqrt(dim)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, dim, padding_idx=cfg.pad)
        self.embed_positions: nn.Module | None = None
        if not cfg.no_token_positional_embeddings:
            if cfg.decoder_learned_pos:
                self.embed_positions = LearnedPositions(cfg.max_target_positions + cfg.pad + 1, dim, cfg.pad)
            else:
                self.embed_positions = SinusoidalPositions(dim, cfg.pad, cfg.max_target_positions + cfg.pad + 1)
        self.layers = nn.ModuleList(
            DecoderLayer(dim, cfg.decoder_ffn_embed_dim, cfg.decoder_attention_heads, cfg.decoder_normalize_before,
                         cfg.decoder_activation_fn)
            for _ in range(cfg.decoder_layers))
        if not cfg.share_decoder_input_output_embed:
            self.embed_out = nn.Parameter(torch.zeros(cfg.vocab_size, dim))
        self.layer_norm = nn.LayerNorm(dim) if cfg.decoder_normalize_before else None

    def max_positions(self) -> int:
        """Longest target the decoder supports (fairseq ``max_decoder_positions``)."""
        return self.cfg.max_target_positions

    def output_matrix(self) -> Tensor:
        return self.embed_tokens.weight if self.cfg.share_decoder_input_output_embed else self.embed_out

    def _embed(self, tokens: Tensor, positions: Tensor | None) -> Tensor:
        x = self.embed_scale * self.embed_tokens(tokens)
        if self.embed_positions is not None and positions is not None:
            x = x + self.embed_positions(positions, x.dtype)
        return x

    def project_encoder(self, encoder_out: Tensor, padding_mask: Tensor | None
                        ) -> tuple[list[tuple[Tensor, Tensor]], Tensor | None]:
        """Cross-attention keys/values of every layer, once per clip.

        Args:
            encoder_out: ``[B, S, D]``; padding_mask: ``[B, S]`` bool (True = padded) or None.
        Returns:
            per layer ``(k, v)`` each ``[B, H, S, hd]``, and the mask as ``[B, 1, 1, S]`` (None if no padding).
        """
        kv = [layer.encoder_attn.project_kv(encoder_out) for layer in self.layers]
        mask = None
        if padding_mask is not None and bool(padding_mask.any()):
            mask = padding_mask[:, None, None, :]
        return kv, mask

    def forward(self, prev_output_tokens: Tensor, encoder_out: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits.

        Args:
            prev_output_tokens: ``[B, L]`` decoder inputs (``</s>`` first, right-padded with ``<pad>``).
            encoder_out: ``[B, S, D]``; padding_mask: ``[B, S]`` bool (True = padded frame) or None.
        Returns:
            logits ``[B, L, V]`` (before log-softmax).
        """
        tokens = prev_output_tokens.long()
        positions = make_positions(tokens, self.padding_idx) if self.embed_positions is not None else None
        x = self._embed(tokens, positions)
        length = tokens.shape[1]
        causal = torch.triu(torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype), 1)
        enc_kv, enc_mask = self.project_encoder(encoder_out, padding_mask)
        for layer, kv in zip(self.layers, enc_kv):
            x = layer(x, kv, enc_mask, causal)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return torch.matmul(x, self.output_matrix().t())

    def init_state(self, encoder_out: Tensor, padding_mask: Tensor | None, beam: int,
                   max_steps: int | None = None) -> DecoderState:
        """Incremental state for ``B`` clips × ``beam`` hypotheses (no copies of the encoder output per beam);
        ``max_steps``: the most steps the search will take (sizes the caches), None = unknown."""
        enc_kv, enc_mask = self.project_encoder(encoder_out, padding_mask)
        # stable cache rows save copies on the CPU; on a GPU the full reorder stays on the device (no host sync)
        return DecoderState(enc_kv=enc_kv, enc_mask=enc_mask, caches=[LayerCache(max_steps) for _ in self.layers],
                            beam=beam, stable=encoder_out.device.type == "cpu")

    def step(self, last_tokens: Tensor, state: DecoderState) -> Tensor:
        """Logits of the next token for every hypothesis.

        Args:
            last_tokens: ``[N]`` the newest token of each hypothesis (N = clips × beam, clip-major).
            state: from :meth:`init_state`; advanced by one step.
        Returns:
            logits ``[N, V]``.
        """
        if state.rows is not None:          # the network runs in cache-row order
            by_row = torch.empty_like(last_tokens)
            by_row[state.rows] = last_tokens
            last_tokens = by_row
        position = None
        if self.embed_positions is not None:
            # every hypothesis has the same length and no pads: position = padding_idx + step count
            position = torch.full_like(last_tokens, self.padding_idx + state.steps + 1)
        x = self._embed(last_tokens.long(), position)
        for layer, cache, kv in zip(self.layers, state.caches, state.enc_kv):
            x = layer.step(x, cache, kv, state.enc_mask, state.beam)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        state.steps += 1
        logits = torch.matmul(x, self.output_matrix().t())
        return logits if state.rows is None else logits[state.rows]


# ----------------------------------------------------------------------------------------------------
# Seq2seq model
# ----------------------------------------------------------------------------------------------------

class HubertEncoderWrapper(nn.Module):
    """Holds the AV-HuBERT encoder as ``w2v_model`` (keys ``encoder.w2v_model.*``)."""

    def __init__(self, w2v_model: AVHubertModel) -> None:
        super().__init__()
        self.w2v_model = w2v_model

    def forward(self, audio: Tensor | None, video: Tensor | None, padding_mask: Tensor | None = None) -> Tensor:
        return self.w2v_model.extract_features(audio, video, padding_mask)


class AVHubertSeq2Seq(nn.Module):
    """The fine-tuned AV-HuBERT lip reader: ``encoder.w2v_model`` (:class:`AVHubertModel`) + ``decoder``.

    Attributes:
        cfg: sizes.
        task_spec: input facts read from the checkpoint's task cfg by the loader (``image_mean``,
            ``image_std``, ``image_crop_size``, ``max_sample_size``, ``modalities``, ...); empty when built by hand.
    """

    def __init__(self, cfg: AVHubertConfig) -> None:
        super().__init__()
        if cfg.decoder_layers <= 0:
            raise ValueError("AVHubertSeq2Seq needs decoder_layers > 0.")
        self.cfg = cfg
        self.encoder = HubertEncoderWrapper(AVHubertModel(cfg))
        self.decoder = TransformerDecoder(cfg)
        self.task_spec: dict[str, Any] = {}

    @property
    def pad(self) -> int:
        return self.cfg.pad

    @property
    def eos(self) -> int:
        return self.cfg.eos

    def encode(self, video: Tensor | None, padding_mask: Tensor | None = None, audio: Tensor | None = None) -> Tensor:
        """Encoder output ``[B, T, D]`` for video ``[B,1,T,88,88]`` and/or audio ``[B,104,T]``."""
        return self.encoder(audio, video, padding_mask)

    def forward_teacher(self, video: Tensor | None, padding_mask: Tensor | None, prev_output_tokens: Tensor,
                        audio: Tensor | None = None) -> Tensor:
        """Teacher-forced logits ``[B, L, V]`` for ``prev_output_tokens [B, L]`` (``</s>`` first)."""
        encoder_out = self.encode(video, padding_mask, audio)
        return self.decoder(prev_output_tokens, encoder_out, padding_mask)

    def forward(self, video: Tensor | None, padding_mask: Tensor | None, prev_output_tokens: Tensor,
                audio: Tensor | None = None) -> Tensor:
        return self.forward_teacher(video, padding_mask, prev_output_tokens, audio)


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------

def video_input(frames_gray_88: np.ndarray, mean: float = IMAGE_MEAN, std: float = IMAGE_STD) -> Tensor:
    """Model video input from gray crops, as av_hubert's eval transform: ``/255`` and ``(x-mean)/std`` in float64,
    then float32.

    Args:
        frames_gray_88: uint8 ``T×H×W`` gray mouth crops (already cropped, normally 88×88).
    Returns:
        float32 ``[1, 1, T, H, W]``.
    """
    frames = np.asarray(frames_gray_88)
    if frames.ndim != 3:
        raise ValueError(f"expected gray frames T×H×W, got shape {frames.shape}.")
    normed = (frames / 255.0 - mean) / std
    return torch.from_numpy(normed.astype(np.float32))[None, None]


def align_audio_to_video(feats: np.ndarray, num_frames: int, mode: str = "avhubert") -> np.ndarray:
    """Make audio features ``T'×C`` have ``num_frames`` rows.

    Args:
        mode: ``avhubert`` (hubert_dataset.load_feature: pad zeros at the end, or drop the tail) or
            ``talklip`` (TalkLip's inf_test: pad zeros at the end, or trim ``diff//2`` rows at the start and
            the rest at the end).
    """
    diff = feats.shape[0] - num_frames
    if diff < 0:
        return np.concatenate([feats, np.zeros((-diff, feats.shape[1]), dtype=feats.dtype)], axis=0)
    if diff == 0:
        return feats
    if mode == "avhubert":
        return feats[:-diff]
    if mode == "talklip":
        left = diff // 2
        return feats[left:feats.shape[0] - (diff - left)]
    raise ValueError(f"mode must be 'avhubert' or 'talklip', got {mode!r}.")


def audio_input(samples_int16: np.ndarray, num_frames: int | None = None, align: str = "talklip") -> Tensor:
    """AV-HuBERT audio input from 16 kHz samples holding int16 values.

    log-fbank (26 filters, 100 Hz) → stack 4 (zero rows pad the remainder, after the log) → per-frame layer
    norm over the 104 values → optionally aligned to ``num_frames`` video frames (see :func:`align_audio_to_video`;
    an all-zero padding row stays zero).

    Returns:
        float32 ``[1, 104, T]``.
    """
    feats = avhubert_audio_features(np.asarray(samples_int16))
    if num_frames is not None:
        feats = align_audio_to_video(feats, num_frames, align)
    return torch.from_numpy(np.ascontiguousarray(feats.T))[None]


@torch.no_grad()
def encode_audio(model: AVHubertModel, samples_int16: np.ndarray, num_frames: int | None = None,
                 align: str = "talklip", device: str | torch.device | None = None) -> Tensor:
    """Audio-only AV-HuBERT encoding (video absent → zeros), as TalkLip's generator runs its audio encoder.

    Args:
        model: the encoder.
        samples_int16: mono 16 kHz samples with int16 values.
        num_frames: align the 25 Hz features to this many video frames (None = keep ``ceil(F/4)``).
        align: alignment rule when ``num_frames`` is given (``talklip`` or ``avhubert``).
        device: where to run (default: the model's device).
    Returns:
        ``[1, T, D]`` encoder output after the final LayerNorm.
    """
    if device is None:
        device = next(model.parameters()).device
    audio = audio_input(samples_int16, num_frames, align).to(device)
    return model.extract_features(audio, None, None)


# ----------------------------------------------------------------------------------------------------
# Loading official fairseq checkpoint files
# ----------------------------------------------------------------------------------------------------

#: Entries of official files that hold no weights and are dropped before the strict load:
#: - ``decoder.embed_positions._float_tensor``: a dtype/device marker buffer of fairseq < 0.12's
#:   SinusoidalPositionalEmbedding (shape [1]); the table itself is computed, not stored.
#: - ``*.version``: fairseq's state-dict version stamps (a 1-element tensor), present in some files.
IGNORED_SUFFIXES: tuple[str, ...] = ("embed_positions._float_tensor", ".version")

SEQ2SEQ_ENCODER_PREFIX = "encoder.w2v_model."


#: Largest ``max_target_positions`` a checkpoint's cfg may ask for. The sinusoidal table is built at that
#: size on first use (rows × decoder width floats); released models use 1024-2048, 16384 rows of a 1024-d
#: decoder are 64 MB. A bigger value is a crafted or broken cfg.
MAX_TARGET_POSITIONS = 16384
#: Most values (parameters + buffers) an AV-HuBERT checkpoint's model may hold: about twice the Large
#: seq2seq lip reader (477 M). Broadcast stand-in tensors can make a tiny file describe a huge model, which
#: loading would then allocate; beyond this bound the file is refused before a model is built.
MAX_AVHUBERT_ELEMENTS = 1_000_000_000
_FIX = "Pass the fine-tuned AV-HuBERT lip-reading file (e.g. the card avhubert-large-lrs2)."


def _layer_count(state: Mapping[str, Tensor], prefix: str, field: str, expected: int, path: str | Path) -> None:
    """Raise unless the keys ``<prefix><i>.`` number exactly the layers 0..expected-1 the cfg ``field`` declares."""
    ids = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if ids != set(range(expected)):
        shown = sorted(ids)
        raise CheckpointError(f"{path}: cfg `{field}` = {expected} but the file stores {len(ids)} such layers "
                              f"(numbered {shown[:4]}{' ...' if len(shown) > 4 else ''}); its cfg does not match its "
                              f"weights (checked before building the model). {_FIX}")


def check_config_against_state(cfg: "AVHubertConfig", state: Mapping[str, Tensor], path: str | Path,
                               encoder_prefix: str) -> None:
    """Check a cfg read from a checkpoint against the checkpoint's own tensors, BEFORE any model is built.

    Every size of the encoder (layers, width, FFN width, positional kernel and groups) and, when the cfg has
    a decoder, of the decoder (layers, width, FFN width) must equal what the stored shapes say, and
    ``max_target_positions`` must not exceed :data:`MAX_TARGET_POSITIONS`; the tensors must be finite and hold
    at most :data:`MAX_AVHUBERT_ELEMENTS` values.

    Raises:
        CheckpointError: naming the file, the cfg field and the fix.
    """
    e = encoder_prefix
    dim = cfg.encoder_embed_dim
    _layer_count(state, e + "encoder.layers.", "encoder_layers", cfg.encoder_layers, path)
    require_shape(state, e + "encoder.layer_norm.weight", (dim,), f"cfg encoder_embed_dim = {dim}", path, _FIX)
    require_shape(state, e + "encoder.pos_conv.0.weight_v", (dim, dim // cfg.conv_pos_groups, cfg.conv_pos),
                  f"cfg conv_pos = {cfg.conv_pos}, conv_pos_groups = {cfg.conv_pos_groups}", path, _FIX)
    if cfg.encoder_layers:
        require_shape(state, e + "encoder.layers.0.fc1.weight", (cfg.encoder_ffn_embed_dim, dim),
                      f"cfg encoder_ffn_embed_dim = {cfg.encoder_ffn_embed_dim}", path, _FIX)
    if cfg.decoder_layers:
        ddim = cfg.decoder_embed_dim
        _layer_count(state, "decoder.layers.", "decoder_layers", cfg.decoder_layers, path)
        require_shape(state, "decoder.embed_tokens.weight", (cfg.vocab_size, ddim),
                      f"cfg decoder_embed_dim = {ddim}", path, _FIX)
        require_shape(state, "decoder.layers.0.fc1.weight", (cfg.decoder_ffn_embed_dim, ddim),
                      f"cfg decoder_ffn_embed_dim = {cfg.decoder_ffn_embed_dim}", path, _FIX)
        if not 1 <= cfg.max_target_positions <= MAX_TARGET_POSITIONS:
            raise CheckpointError(f"{path}: cfg `max_target_positions` = {cfg.max_target_positions} is outside "
                                  f"[1, {MAX_TARGET_POSITIONS}] (released models use 1024-2048). {_FIX}")
    check_state_tensors(state, path, _FIX, max_elements=MAX_AVHUBERT_ELEMENTS)


def _ignored(key: str) -> bool:
    return key == "version" or any(key.endswith(s) for s in IGNORED_SUFFIXES)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Open a fairseq checkpoint with the restricted unpickler, tensors memory-mapped (zip files).

    Returns:
        the checkpoint dict (``model``, ``cfg`` or ``args``, ``task_state``, ...).
    Raises:
        CheckpointError: the file holds no ``model`` state dict.
    """
    ckpt = load_checkpoint(path, map_location="cpu", mmap=True)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(f"{path}: not a fairseq checkpoint (expected a dict with a 'model' state dict, as "
                              "fairseq's checkpoint_utils saves it). Pass an AV-HuBERT .pt file.")
    return dict(ckpt)


def checkpoint_cfg(ckpt: Mapping[str, Any], path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model cfg, task cfg)`` of a checkpoint: ``cfg['model']``/``cfg['task']`` (fairseq ≥ 0.10), else the flat
    argparse ``args`` Namespace of older files."""
    cfg = ckpt.get("cfg")
    if cfg is not None:
        try:
            cfg = _as_plain_dict(cfg)
            return _as_plain_dict(cfg["model"]), _as_plain_dict(cfg.get("task") or {})
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path}: unreadable `cfg` in the checkpoint ({err}).") from err
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        flat = dict(vars(args))
        return flat, flat
    raise CheckpointError(f"{path}: the checkpoint has neither `cfg` nor `args`; it was not written by fairseq.")


def task_spec_from_cfg(task: Mapping[str, Any]) -> dict[str, Any]:
    """Input facts of the task cfg (defaults = hubert_pretraining.py's dataclass)."""
    return {
        "image_mean": float(task["image_mean"]) if task.get("image_mean") is not None else IMAGE_MEAN,
        "image_std": float(task["image_std"]) if task.get("image_std") is not None else IMAGE_STD,
        "image_crop_size": int(task.get("image_crop_size") or IMAGE_CROP),
        "max_sample_size": task.get("max_sample_size"),
        "stack_order_audio": int(task.get("stack_order_audio") or 1),
        "modalities": list(task.get("modalities") or []),
        "normalize": bool(task.get("normalize", False)),
    }


def _report_mismatch(model: nn.Module, state: Mapping[str, Tensor], path: str | Path, what: str) -> None:
    problem = key_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"{path}: not an {what} checkpoint ({problem}). Pass the fine-tuned AV-HuBERT "
                              "lip-reading file (e.g. the card avhubert-large-lrs2).")


def assign_state_dict(model: nn.Module, state: Mapping[str, Tensor], path: str | Path, what: str) -> nn.Module:
    """Strictly load ``state`` into ``model`` (normally built on the meta device) by assignment.

    Floating tensors are cast to float32 (official files may be fp16); memory-mapped float32 tensors are
    used as they are, so the weights are not held twice.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped keys (all listed).
    """
    _report_mismatch(model, state, path, what)
    ready = {}
    for key, value in state.items():
        if value.is_floating_point() and value.dtype != torch.float32:
            value = value.float()
        if not value.is_contiguous():
            value = value.contiguous()
        ready[key] = value
    model.load_state_dict(ready, strict=True, assign=True)
    return model


def seq2seq_config_from_checkpoint(ckpt: Mapping[str, Any], path: str | Path = "<checkpoint>") -> AVHubertConfig:
    """:class:`AVHubertConfig` of a seq2seq checkpoint: cfg sizes + sizes only the weights know."""
    model_cfg, _ = checkpoint_cfg(ckpt, path)
    name = model_cfg.get("_name", model_cfg.get("arch"))
    if name not in ("av_hubert_seq2seq", None) or model_cfg.get("w2v_args") is None:
        raise CheckpointError(f"{path}: model `{name}` is not an AV-HuBERT seq2seq lip reader (cfg.model._name "
                              "should be av_hubert_seq2seq with w2v_args). For an encoder-only file use "
                              "load_avhubert_encoder.")
    state = ckpt["model"]
    emb = state.get("decoder.embed_tokens.weight")
    if emb is None:
        raise CheckpointError(f"{path}: no decoder.embed_tokens.weight; not an AV-HuBERT seq2seq checkpoint.")
    overrides: dict[str, Any] = {"vocab_size": int(emb.shape[0])}
    labels = state.get(SEQ2SEQ_ENCODER_PREFIX + "label_embs_concat")
    overrides["label_embs_shape"] = tuple(int(s) for s in labels.shape) if labels is not None else None
    proj = state.get(SEQ2SEQ_ENCODER_PREFIX + "final_proj.weight")
    overrides["final_proj_out"] = int(proj.shape[0]) if proj is not None else None
    overrides["video_frontend"] = any(k.startswith(SEQ2SEQ_ENCODER_PREFIX + "feature_extractor_video.") for k in state)
    try:
        return AVHubertConfig.from_fairseq_cfg(model_cfg, **overrides)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unusable AV-HuBERT cfg ({err}).") from err


def load_avhubert_seq2seq(path: str | Path, device: str | torch.device = "cpu",
                          tokenizer_files: tuple[str | Path, str | Path] | None = None
                          ) -> tuple[AVHubertSeq2Seq, "Tokenizer"]:
    """Load an official AV-HuBERT seq2seq checkpoint (e.g. ``large_vox_433h.pt``, TalkLip's observer 1).

    Args:
        path: the fairseq ``.pt`` file as released (fp16 or fp32; ``cfg`` dict or legacy ``args``).
        device: where the model goes.
        tokenizer_files: ``(sentencepiece .model, dict.txt)`` used when the file has no ``task_state``
            (or to override it).
    Returns:
        ``(model in eval mode, tokenizer)``.
    Raises:
        CheckpointError: not an AV-HuBERT seq2seq file (missing/unexpected keys listed), or no tokenizer.
    """
    ckpt = read_checkpoint(path)
    cfg = seq2seq_config_from_checkpoint(ckpt, path)
    _, task_cfg = checkpoint_cfg(ckpt, path)
    if tokenizer_files is not None:
        tokenizer = Tokenizer.from_files(*tokenizer_files)
    elif isinstance(ckpt.get("task_state"), Mapping) and ckpt["task_state"].get("target_dictionary") is not None:
        try:
            tokenizer = Tokenizer.from_task_state(ckpt["task_state"], f"{path} task_state")
        except TokenizerError as err:
            raise CheckpointError(str(err)) from err
    else:
        raise CheckpointError(f"{path}: the file has no task_state (dictionary + sentencepiece model); pass "
                              "tokenizer_files=(spm .model, dict.txt) — on the command line, "
                              "`--option avhubert_spm_model=PATH --option avhubert_dict=PATH`.")
    if len(tokenizer.dictionary) != cfg.vocab_size:
        raise CheckpointError(f"{path}: the dictionary has {len(tokenizer.dictionary)} symbols but the decoder "
                              f"{cfg.vocab_size}; pass the dictionary the model was trained with.")
    cfg = cfg.replace(pad=tokenizer.dictionary.pad, eos=tokenizer.dictionary.eos, unk=tokenizer.dictionary.unk)
    state = {k: v for k, v in ckpt["model"].items() if not _ignored(k)}
    check_config_against_state(cfg, state, path, SEQ2SEQ_ENCODER_PREFIX)
    with torch.device("meta"):
        model = AVHubertSeq2Seq(cfg)
    assign_state_dict(model, state, path, "AV-HuBERT seq2seq")
    model.task_spec = task_spec_from_cfg(task_cfg)
    del ckpt, state
    return for_inference(model, device, packed=[model.decoder]), tokenizer


def load_avhubert_encoder(path: str | Path, device: str | torch.device = "cpu") -> AVHubertModel:
    """Load the AV-HuBERT encoder of a seq2seq checkpoint (``encoder.w2v_model.*``) or of a pre-training
    checkpoint (``_name: av_hubert``, keys at the top level).

    Raises:
        CheckpointError: neither kind, or keys do not match (listed).
    """
    ckpt = read_checkpoint(path)
    model_cfg, _ = checkpoint_cfg(ckpt, path)
    raw = ckpt["model"]
    if model_cfg.get("w2v_args") is not None:
        state = {k[len(SEQ2SEQ_ENCODER_PREFIX):]: v for k, v in raw.items() if k.startswith(SEQ2SEQ_ENCODER_PREFIX)}
        enc_cfg = _as_plain_dict(_as_plain_dict(model_cfg["w2v_args"]).get("model") or model_cfg["w2v_args"])
    else:
        state = dict(raw)
        enc_cfg = model_cfg
    state = {k: v for k, v in state.items() if not _ignored(k)}
    overrides: dict[str, Any] = {
        "label_embs_shape": tuple(int(s) for s in state["label_embs_concat"].shape) if "label_embs_concat" in state else None,
        "final_proj_out": int(state["final_proj.weight"].shape[0]) if "final_proj.weight" in state else None,
        "video_frontend": any(k.startswith("feature_extractor_video.") for k in state),
        "decoder_layers": 0,
    }
    try:
        cfg = AVHubertConfig.from_fairseq_cfg({**enc_cfg, "_name": "av_hubert"}, **overrides)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: not an AV-HuBERT checkpoint ({err}).") from err
    check_config_against_state(cfg, state, path, "")
    with torch.device("meta"):
        model = AVHubertModel(cfg)
    assign_state_dict(model, state, path, "AV-HuBERT encoder")
    del ckpt, raw, state
    return for_inference(model, device)

