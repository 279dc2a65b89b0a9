"""ESPnet 0.10.6 transformer/conformer building blocks, as TalkLip's Conformer lip reader uses them (and
Auto-AVSR's vendored copy, :mod:`talkbench.nets.avsr`: ReLU feed-forward modules, ``ConvolutionModuleCov``).

Written from the published architecture (ESPnet 0.10.6, ``espnet.nets.pytorch_backend``); attribute
names follow ESPnet's so that official state-dict keys load unchanged. Only what inference needs is here
(no caches, no stochastic depth, no concat-after). Facts that matter for parity:

- ESPnet's ``LayerNorm`` uses ``eps=1e-12`` (not torch's 1e-5).
- The relative positional encoding is the *new* ESPnet variant (PR 2816, class ``RelPositionalEncoding``):
  the input is scaled by ``sqrt(d)`` and a separate table of ``2T-1`` embeddings for relative positions
  ``T-1 ... 0 ... -(T-1)`` is returned (sin at even, cos at odd channels); the attention
  (``RelPositionMultiHeadedAttention``, ``zero_triu=False``) keeps, for query ``i`` and key ``j``, the
  entry of relative position ``i - j``.
- Swish is ``x * sigmoid(x)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: ESPnet's LayerNorm epsilon (``espnet.nets.pytorch_backend.transformer.layer_norm``).
ESPNET_LAYER_NORM_EPS = 1e-12


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` over the last dimension with ESPnet's epsilon (1e-12)."""

    def __init__(self, size: int) -> None:
        super().__init__(size, eps=ESPNET_LAYER_NORM_EPS)


def sinusoid_div_term(d_model: int, device: torch.device | None = None) -> torch.Tensor:
    """``exp(-(2i) ln(10000) / d)`` for ``i < d/2``, float32 ``(d/2,)``, computed as ESPnet does."""
    steps = torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
    return torch.exp(steps * -(math.log(10000.0) / d_model))


def absolute_positions(length: int, d_model: int, device: torch.device | None = None) -> torch.Tensor:
    """Absolute sinusoidal table ``(length, d_model)``: row ``p`` = sin/cos of ``p * div`` (even/odd channels)."""
    position = torch.arange(0, length, dtype=torch.float32, device=device).unsqueeze(1)
    angles = position * sinusoid_div_term(d_model, device)
    table = torch.empty(length, d_model, dtype=torch.float32, device=device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


def relative_positions(length: int, d_model: int, device: torch.device | None = None) -> torch.Tensor:
    """Relative sinusoidal table ``(2*length-1, d_model)`` for relative positions ``length-1`` down to ``-(length-1)``.

    Row ``p`` encodes relative position ``r = length-1-p``. ESPnet builds the negative half as
    ``sin(-1 * pos * div)``, which equals ``sin(r * div)`` here bit for bit (negation is exact).
    """
    rel = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device).unsqueeze(1)
    angles = rel * sinusoid_div_term(d_model, device)
    table = torch.empty(2 * length - 1, d_model, dtype=torch.float32, device=device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table


class PositionalEncoding(nn.Module):
    """Absolute positional encoding: ``x * sqrt(d) + pe[:T]`` (``x``: ``B×T×d``). No parameters."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pe = absolute_positions(x.size(1), self.d_model, x.device).to(x.dtype)
        return x * self.xscale + pe.unsqueeze(0)


class RelPositionalEncoding(nn.Module):
    """ESPnet's new relative positional encoding (PR 2816). No parameters.

    ``forward(x)`` with ``x`` ``B×T×d`` returns ``(x * sqrt(d), pos_emb)``, ``pos_emb`` ``1×(2T-1)×d``.
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos_emb = relative_positions(x.size(1), self.d_model, x.device).to(x.dtype)
        return x * self.xscale, pos_emb.unsqueeze(0)


def _attend(value: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over keys then weighted sum; masked keys get weight exactly 0 (as ESPnet's masked_fill).

    value ``B×H×T2×dk``, scores ``B×H×T1×T2``, mask ``B×1×T2`` or ``B×T1×T2`` (True/1 = keep) or None.
    Returns ``B×T1×(H·dk)``.
    """
    if mask is not None:
        blocked = mask.unsqueeze(1).eq(0)
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1).masked_fill(blocked, 0.0)
    else:
        attn = torch.softmax(scores, dim=-1)
    context = torch.matmul(attn, value)  # B×H×T1×dk
    batch, heads, time1, d_k = context.shape
    return context.transpose(1, 2).reshape(batch, time1, heads * d_k)


class MultiHeadedAttention(nn.Module):
    """Scaled dot-product multi-head attention (ESPnet ``MultiHeadedAttention``)."""

    def __init__(self, n_head: int, n_feat: int) -> None:
        super().__init__()
        if n_feat % n_head:
            raise ValueError(f"attention size {n_feat} is not divisible by {n_head} heads")
        self.d_k = n_feat // n_head
        self.h = n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)

    def _heads(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``B×T×d`` -> ``B×H×T×dk``."""
        return linear(x).view(x.size(0), -1, self.h, self.d_k).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """query ``B×T1×d``, key/value ``B×T2×d``, mask ``B×1×T2``/``B×T1×T2`` or None -> ``B×T1×d``."""
        q = self._heads(self.linear_q, query)
        k = self._heads(self.linear_k, key)
        v = self._heads(self.linear_v, value)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.d_k)
        return self.linear_out(_attend(v, scores, mask))


class RelPositionMultiHeadedAttention(MultiHeadedAttention):
    """Transformer-XL style attention with ESPnet's new relative positions (``zero_triu=False``)."""

    def __init__(self, n_head: int, n_feat: int) -> None:
        super().__init__(n_head, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(self.h, self.d_k))

    @staticmethod
    def select_relative(bd: torch.Tensor) -> torch.Tensor:
        """Pick, for query ``i`` and key ``j``, column ``T-1-i+j`` (relative position ``i-j``).

        ``bd``: ``B×H×T×(2T-1)`` -> ``B×H×T×T``. Same entries as ESPnet's pad-and-reshape ``rel_shift``
        followed by keeping the first ``T`` columns; done here with one strided view.
        """
        bd = bd.contiguous()
        batch, heads, time1, width = bd.shape
        s_b, s_h, _, _ = bd.stride()
        return bd.as_strided((batch, heads, time1, time1), (s_b, s_h, width - 1, 1),
                             bd.storage_offset() + time1 - 1)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,  # type: ignore[override]
                pos_emb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """query/key/value ``B×T×d``, pos_emb ``1×(2T-1)×d``, mask or None -> ``B×T×d``."""
        q = self.linear_q(query).view(query.size(0), -1, self.h, self.d_k)  # B×T×H×dk
        k = self._heads(self.linear_k, key)
        v = self._heads(self.linear_v, value)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        ac = torch.matmul(q_u, k.transpose(-2, -1))
        bd = self.select_relative(torch.matmul(q_v, p.transpose(-2, -1)))
        scores = (ac + bd) / math.sqrt(self.d_k)
        return self.linear_out(_attend(v, scores, mask))


class PositionwiseFeedForward(nn.Module):
    """``w_2(act(w_1(x)))``; act is ReLU (transformer decoder) or Swish (conformer encoder)."""

    def __init__(self, idim: int, hidden_units: int, swish: bool) -> None:
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.w_2 = nn.Linear(hidden_units, idim)
        self.swish = swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.w_1(x)
        hidden = F.silu(hidden) if self.swish else F.relu(hidden)
        return self.w_2(hidden)


class ConvolutionModule(nn.Module):
    """Conformer convolution module (ESPnet 0.10.6): pointwise, GLU, depthwise, BatchNorm1d, Swish, pointwise."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"conformer kernel size must be odd, got {kernel_size}")
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, kernel_size=1)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2,
                                        groups=channels)
        self.norm = nn.BatchNorm1d(channels)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×T×C`` -> ``B×T×C``."""
        y = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)
        y = F.silu(self.norm(self.depthwise_conv(y)))
        return self.pointwise_conv2(y).transpose(1, 2)


class ConvolutionModuleCov(ConvolutionModule):
    """:class:`ConvolutionModule` under the key names of Auto-AVSR's vendored ESPnet (mpc001/auto_avsr
    ``encoder/conformer_encoder.py``): ``pointwise_cov1`` / ``pointwise_cov2`` (sic) instead of ``pointwise_conv1`` /
    ``pointwise_conv2``; same maths (pointwise, GLU, depthwise, BatchNorm1d, Swish, pointwise)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        nn.Module.__init__(self)
        if kernel_size % 2 != 1:
            raise ValueError(f"conformer kernel size must be odd, got {kernel_size}")
        self.pointwise_cov1 = nn.Conv1d(channels, 2 * channels, kernel_size=1)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2,
                                        groups=channels)
        self.norm = nn.BatchNorm1d(channels)
        self.pointwise_cov2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×T×C`` -> ``B×T×C``."""
        y = F.glu(self.pointwise_cov1(x.transpose(1, 2)), dim=1)
        y = F.silu(self.norm(self.depthwise_conv(y)))
        return self.pointwise_cov2(y).transpose(1, 2)


class ConformerEncoderLayer(nn.Module):
    """Macaron conformer block, pre-norm: FFN/2 -> rel-pos MHSA -> conv -> FFN/2 -> ``norm_final``."""

    def __init__(self, size: int, heads: int, linear_units: int, kernel_size: int, swish_ffn: bool = True,
                 conv_module: type[nn.Module] | None = None) -> None:
        """``swish_ffn``: Swish (ESPnet 0.10.6) or ReLU (Auto-AVSR's vendored ESPnet) in both feed-forward modules;
        ``conv_module``: the convolution module's class (default :class:`ConvolutionModule`; Auto-AVSR's checkpoints
        name its pointwise convolutions differently, :class:`ConvolutionModuleCov`)."""
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(heads, size)
        self.feed_forward = PositionwiseFeedForward(size, linear_units, swish=swish_ffn)
        self.feed_forward_macaron = PositionwiseFeedForward(size, linear_units, swish=swish_ffn)
        self.conv_module = (conv_module or ConvolutionModule)(size, kernel_size)
        self.norm_ff = LayerNorm(size)
        self.norm_mha = LayerNorm(size)
        self.norm_ff_macaron = LayerNorm(size)
        self.norm_conv = LayerNorm(size)
        self.norm_final = LayerNorm(size)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x ``B×T×d``, pos_emb ``1×(2T-1)×d``, mask ``B×1×T`` or None -> ``B×T×d``."""
        x = x + 0.5 * self.feed_forward_macaron(self.norm_ff_macaron(x))
        h = self.norm_mha(x)
        x = x + self.self_attn(h, h, h, pos_emb, mask)
        x = x + self.conv_module(self.norm_conv(x))
        x = x + 0.5 * self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class DecoderLayer(nn.Module):
    """Pre-norm transformer decoder block: self-attention, source attention, ReLU FFN."""

    def __init__(self, size: int, heads: int, linear_units: int) -> None:
        super().__init__()
        self.self_attn = MultiHeadedAttention(heads, size)
        self.src_attn = MultiHeadedAttention(heads, size)
        self.feed_forward = PositionwiseFeedForward(size, linear_units, swish=False)
        self.norm1 = LayerNorm(size)
        self.norm2 = LayerNorm(size)
        self.norm3 = LayerNorm(size)

    def forward(self, tgt: torch.Tensor, tgt_mask: torch.Tensor | None, memory: torch.Tensor,
                memory_mask: torch.Tensor | None) -> torch.Tensor:
        """tgt ``B×L×d``, tgt_mask ``B×L×L``, memory ``B×T×d``, memory_mask ``B×1×T`` -> ``B×L×d``."""
        h = self.norm1(tgt)
        x = tgt + self.self_attn(h, h, h, tgt_mask)
        x = x + self.src_attn(self.norm2(x), memory, memory, memory_mask)
        return x + self.feed_forward(self.norm3(x))


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """``1×L×L`` bool, True where key position <= query position (ESPnet ``subsequent_mask``)."""
    return torch.tril(torch.ones(length, length, dtype=torch.bool, device=device)).unsqueeze(0)
