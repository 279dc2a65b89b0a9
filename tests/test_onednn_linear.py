"""oneDNN linear layers for CPU inference (talkbench.nets.onednn_linear)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from talkbench.nets import onednn_linear as od
from talkbench.nets.onednn_linear import (MIN_MACS, OneDNNLinear, for_inference, onednn_available, plain_linears,
                                          use_onednn_linears)

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear op")


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Shapes of the inputs that reached oneDNN."""
    seen: list[tuple[int, ...]] = []
    real = od.onednn_linear

    def spy(x, weight, bias):
        seen.append(tuple(x.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(od, "onednn_linear", spy)
    return seen


def float64_reference(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.double()
    return F.linear(x.double(), layer.weight.double(), bias)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("shape,bias", [((50, 1024), True), ((2, 37, 1024), True), ((64, 1024), False)])
def test_same_result_as_f_linear_within_float32_rounding(calls, packed, shape, bias) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(1024, 512, bias=bias)
    use_onednn_linears(layer, packed=packed)
    x = torch.randn(*shape)
    with torch.no_grad():
        mine, plain = layer(x), F.linear(x, layer.weight, layer.bias)
        exact = float64_reference(layer, x)
    assert calls == [shape]
    assert mine.shape == plain.shape
    # both are float32 sums of 1024 products in different orders: each within float32 rounding of the exact value
    plain_err = (plain.double() - exact).abs().max().item()
    mine_err = (mine.double() - exact).abs().max().item()
    assert 0 < plain_err and mine_err <= 4 * plain_err


def test_gradients_and_small_calls_stay_on_f_linear(calls) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(1024, 1024)
    use_onednn_linears(layer)
    x = torch.randn(8, 1024, requires_grad=True)
    layer(x).sum().backward()                      # training: autograd needs F.linear
    expected = layer.weight.sum(dim=0).expand(8, -1)
    assert torch.allclose(x.grad, expected, atol=1e-4)
    with torch.no_grad():
        layer(torch.randn(2, 1024))                # 2·1024·1024 < MIN_MACS multiply-adds
        layer(torch.randn(1024))                   # 1-D input
        layer(torch.randn(8, 1024))                # float32, large enough: oneDNN
        layer.double()(torch.randn(8, 1024, dtype=torch.float64))
    assert 2 * 1024 * 1024 < MIN_MACS <= 8 * 1024 * 1024
    assert calls == [(8, 1024)]


def test_packed_weight_follows_weight_changes() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(1024, 1024)
    use_onednn_linears(layer, packed=True)
    x = torch.randn(16, 1024)
    with torch.no_grad():
        first = layer(x)
        layer.weight.mul_(2.0)                     # in place: the version counter moves
        second = layer(x)
        expected = F.linear(x, layer.weight, layer.bias)
        layer.load_state_dict({"weight": torch.zeros(1024, 1024), "bias": torch.ones(1024)})
        third = layer(x)
    assert not torch.allclose(first, second, atol=1e-2)
    assert torch.allclose(second, expected, atol=1e-4)
    assert torch.equal(third, torch.ones(16, 1024))


def test_module_keeps_keys_copies_and_switches_back(calls) -> None:
    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024))
    keys = list(model.state_dict())
    part = model[2]
    for_inference(model, "cpu", packed=[part])
    assert [type(m) for m in model] == [OneDNNLinear, nn.ReLU, OneDNNLinear]
    assert (model[0].packed, model[2].packed) == (False, True)
    assert list(model.state_dict()) == keys and isinstance(model[0], nn.Linear)
    x = torch.randn(32, 1024)
    with torch.no_grad():
        y = model(x)
        twin = copy.deepcopy(model)               # the packed weight is not copied, it is rebuilt on use
        assert torch.equal(twin(x), y)
        with plain_linears(model) as n:
            assert n == 2 and type(model[0]) is nn.Linear
            plain = model(x)
        assert type(model[0]) is OneDNNLinear and model[2].packed
    assert len(calls) == 4                        # model, twin: two layers each; none inside plain_linears
    assert torch.allclose(plain, y, atol=1e-4)


def test_environment_switch_keeps_pytorch_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(od.ENV_SWITCH, "0")
    model = nn.Sequential(nn.Linear(64, 64))
    assert not onednn_available() and use_onednn_linears(model) == 0
    assert type(for_inference(model, "cpu")[0]) is nn.Linear
