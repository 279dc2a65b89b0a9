"""The lip readers' stem max pool — 3×3 windows, stride 2, padding 1, over each frame — as strided maxima.

AV-HuBERT, TalkLip's Conformer, MVM and Auto-AVSR all end their Conv3d stem with
``MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))`` on a ``B×64×T×H×W`` map. PyTorch's CPU kernel for that layout
(``max_pool3d_with_indices``, which also computes indices nobody reads) took 25 ms of the 0.23-0.28 s forward of
each of them (`benchmarks/bench_profile.py`); the same maxima taken over strided rows, then strided columns,
take 13 ms. A maximum is exact, so the result is identical (tested against ``F.max_pool3d``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def frame_max_pool(x: Tensor) -> Tensor:
    """Max over 3×3 windows, stride 2, padding 1, of the last two dims: ``[..., H, W]`` → ``[..., H/2, W/2]``.

    Equal to ``F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))`` on a 5-D ``x`` (and to ``F.max_pool2d(x, 3, 2, 1)``
    on a 4-D one). Odd sizes, and autograd, go to PyTorch's own kernel.
    """
    height, width = x.shape[-2:]
    if height % 2 or width % 2 or height < 2 or width < 2 or (torch.is_grad_enabled() and x.requires_grad):
        if x.dim() == 5:
            return F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
        return F.max_pool2d(x, 3, 2, 1)
    return _max3_stride2(_max3_stride2(x, -2), -1)    # rows first: the column pass then reads half the data


def _max3_stride2(x: Tensor, dim: int) -> Tensor:
    """Along ``dim`` (even size 2n): ``out[i] = max(x[2i-1], x[2i], x[2i+1])``, ``x[-1]`` left out (the padding)."""
    even = x.narrow(dim, 0, x.shape[dim] - 1)[_every_other(x.dim(), dim)]     # x[0], x[2], …, x[2n-2]
    odd = x.narrow(dim, 1, x.shape[dim] - 1)[_every_other(x.dim(), dim)]      # x[1], x[3], …, x[2n-1]
    out = torch.maximum(even, odd)
    inner = out.narrow(dim, 1, out.shape[dim] - 1)
    torch.maximum(inner, odd.narrow(dim, 0, odd.shape[dim] - 1), out=inner)   # x[2i-1] for i >= 1
    return out


def _every_other(ndim: int, dim: int) -> tuple[slice, ...]:
    index = [slice(None)] * ndim
    index[dim] = slice(None, None, 2)
    return tuple(index)


class FrameMaxPool(nn.Module):
    """``nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))`` computed by :func:`frame_max_pool` (no parameters, so a
    drop-in that leaves state-dict keys unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, T, H, W]`` → ``[B, C, T, H/2, W/2]``."""
        return frame_max_pool(x)


__all__ = ["FrameMaxPool", "frame_max_pool"]
