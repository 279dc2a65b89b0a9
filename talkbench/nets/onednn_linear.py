"""CPU inference: ``nn.Linear`` layers computed by oneDNN instead of MKL's sgemm.

Why: on this workplace's CPUs (AMD EPYC, Zen 5 with AVX-512) PyTorch's ``F.linear`` calls MKL, whose sgemm
takes its AVX2 code path on AMD processors, while oneDNN — already used by PyTorch for every convolution —
detects AVX-512 itself. Measured on the 2-core machine, fp32, 2 threads (``benchmarks/bench_profile.py``
prints both rates in each run): 2048³ matmul 224-233 GFLOP/s through MKL, 457-509 through oneDNN; the beam
search's 50×1024 @ 1024×4096 step 121 → 310 (weight as it is) → 516 GFLOP/s (weight packed once). Below
``MIN_MACS`` multiply-adds oneDNN's ~10 µs call overhead makes it the slower one, so such calls stay on MKL.
On Intel CPUs MKL takes its AVX-512 path; the two were not compared there (no such machine here).
``TALKBENCH_ONEDNN=0`` in the environment keeps PyTorch's default path (then a run sums exactly as the
reference scripts do on the same CPU, more slowly).

What it changes: the sum order inside each dot product, so results differ from ``F.linear`` by fp32
rounding (relative ~1e-7); the parity fixtures pass, with one bound moved by the measured cause (Auto-AVSR's
encoder, ``tests/test_avsr.py``). Parameters and state-dict keys are untouched
(:class:`OneDNNLinear` *is* an ``nn.Linear`` sharing the same parameters).

When it applies (else plain ``F.linear``): CPU tensors, float32 input and weight, at least 2-D input, no
gradient needed (the TalkLip training loss runs the same modules with autograd), and at least ``MIN_MACS``
multiply-adds per call. ``packed=True`` keeps a copy of the weight in oneDNN's blocked layout — worth it
for layers called many times per clip (a beam-search decoder: 1.3× faster steps than the unpacked weight);
it costs one more copy of those weights in memory (AV-HuBERT-Large decoder: ~530 MB), so encoders stay
unpacked. The packed copy is rebuilt when the weight changes (its storage or version).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: Below this many multiply-adds a call stays with F.linear: oneDNN's ~10 µs per call would cost more.
MIN_MACS = 1 << 22

#: Environment switch: ``0`` keeps every linear layer on PyTorch's default path.
ENV_SWITCH = "TALKBENCH_ONEDNN"


def onednn_available() -> bool:
    """True on x86-64 when this PyTorch build has oneDNN with the linear op this module calls and
    ``TALKBENCH_ONEDNN`` is not ``0``. (Arm builds route oneDNN through other kernels, never measured here.)"""
    if os.environ.get(ENV_SWITCH, "1").strip() == "0" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """oneDNN's ``x @ weightᵀ + bias``: ``x [..., in]``, ``weight [out, in]`` (plain or packed), ``bias [out]``."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(nn.Linear):
    """An ``nn.Linear`` that computes through oneDNN when it applies (see the module docstring).

    Attributes:
        packed: keep the weight in oneDNN's blocked layout between calls.
    """

    packed: bool = False
    _packed_weight: Tensor | None = None
    _packed_key: tuple[int, int] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., in_features]`` → ``[..., out_features]``."""
        weight = self.weight
        if not self._applies(x, weight):
            return F.linear(x, weight, self.bias)
        if self.packed:
            weight = self._packed(weight)
        return onednn_linear(x, weight, self.bias)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed weight behind (oneDNN's opaque tensors have no storage to copy)."""
        state = self.__dict__.copy()
        state["_packed_weight"] = None
        state["_packed_key"] = None
        return state

    def _applies(self, x: Tensor, weight: Tensor) -> bool:
        if x.device.type != "cpu" or weight.device.type != "cpu":
            return False
        if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() < 2:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (self.bias is not None and self.bias.requires_grad)):
            return False
        return x.numel() * self.out_features >= MIN_MACS

    def _packed(self, weight: Tensor) -> Tensor:
        key = (weight.data_ptr(), weight._version)
        if self._packed_key != key or self._packed_weight is None:
            self._packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
            self._packed_key = key
        return self._packed_weight


def use_onednn_linears(module: nn.Module, packed: bool = False) -> int:
    """Make every plain ``nn.Linear`` in ``module`` (itself included) a :class:`OneDNNLinear`, in place, with
    the same parameters. Subclasses of ``nn.Linear`` with a forward of their own are left alone.

    Args:
        module: a model or part of one.
        packed: keep packed weights (for layers called many times per clip; costs a copy of their weights).
    Returns:
        how many layers were switched (0 when this PyTorch has no oneDNN).
    """
    if not onednn_available():
        return 0
    count = 0
    for layer in module.modules():
        if type(layer) is nn.Linear or (isinstance(layer, OneDNNLinear) and layer.packed != packed):
            layer.__class__ = OneDNNLinear
            layer.packed = packed
            layer._packed_weight = None
            layer._packed_key = None
            count += 1
    logger.debug("%d linear layers of %s on oneDNN (packed: %s)", count, type(module).__name__, packed)
    return count


@contextlib.contextmanager
def plain_linears(module: nn.Module) -> Iterator[int]:
    """Within the block, the :class:`OneDNNLinear` layers of ``module`` compute with ``F.linear`` again
    (side-by-side benchmarks, parity checks against the reference's own sums). Yields how many."""
    switched = [layer for layer in module.modules() if isinstance(layer, OneDNNLinear)]
    for layer in switched:
        layer.__class__ = nn.Linear
    try:
        yield len(switched)
    finally:
        for layer in switched:
            layer.__class__ = OneDNNLinear


def for_inference(model: nn.Module, device: str | torch.device, packed: Iterable[nn.Module] = ()) -> nn.Module:
    """``model.to(device).eval()``, with its linear layers on oneDNN when the device is the CPU.

    Args:
        model: a freshly loaded network.
        device: where it runs.
        packed: parts of ``model`` called many times per clip (a beam-search decoder) whose weights are
            kept packed (see :func:`use_onednn_linears`).
    Returns:
        the same model.
    """
    model = model.to(device).eval()
    if torch.device(device).type == "cpu":
        use_onednn_linears(model)
        for part in packed:
            use_onednn_linears(part, packed=True)
    return model


__all__ = ["ENV_SWITCH", "MIN_MACS", "OneDNNLinear", "for_inference", "onednn_available", "onednn_linear",
           "plain_linears", "use_onednn_linears"]
