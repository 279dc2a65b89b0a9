"""The stems' strided max pool (talkbench.nets.frame_pool) equals PyTorch's max pool."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from talkbench.nets.frame_pool import FrameMaxPool, frame_max_pool


@pytest.mark.parametrize("shape", [(1, 64, 7, 44, 44), (2, 3, 5, 8, 6), (1, 2, 1, 2, 2)])
def test_equals_max_pool3d(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape)
    x[0, 0, 0, 0, 0] = float("inf")                       # extremes pass through like any value
    x.view(-1)[1] = float("-inf")
    with torch.no_grad():
        assert torch.equal(FrameMaxPool()(x), F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1)))
        assert torch.equal(frame_max_pool(x[0]), F.max_pool2d(x[0], 3, 2, 1))


def test_odd_sizes_and_gradients_use_pytorch() -> None:
    torch.manual_seed(0)
    odd = torch.randn(1, 2, 3, 7, 9)
    assert torch.equal(frame_max_pool(odd), F.max_pool3d(odd, (1, 3, 3), (1, 2, 2), (0, 1, 1)))
    x = torch.randn(1, 2, 3, 8, 8, requires_grad=True)
    frame_max_pool(x).sum().backward()
    assert x.grad is not None and float(x.grad.sum()) == 1 * 2 * 3 * 4 * 4   # one winner per window
