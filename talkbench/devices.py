"""The torch device of ``--device``, host→device transfers, and the CUDA numerics that keep parity.

* :func:`resolve_device`: ``--device`` → ``torch.device`` (a clear error when CUDA is asked for but absent); on
  a CUDA device it also pins full-fp32 numerics (:func:`pin_cuda_parity`).
* :func:`to_device`: one host→device copy of an observer's input (pinned memory and ``non_blocking`` when a CPU
  tensor goes to CUDA; a plain ``.to`` otherwise, so the CPU path is unchanged).

See docs/gpu.md for the GPU settings of each observer.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

#: Environment switch: ``0`` leaves PyTorch's TF32 / cuDNN flags as they are (faster on Ampere and later GPUs,
#: numbers further from the reference scripts'); anything else (the default) pins them (:func:`pin_cuda_parity`).
ENV_CUDA_PARITY = "TALKBENCH_CUDA_PARITY"


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for ``--device`` (``cpu``, ``cuda``, ``cuda:N``).

    A CUDA device also pins full-fp32 numerics for parity (:func:`pin_cuda_parity`, process-wide).

    Raises:
        ValueError: not a device name torch knows, or CUDA is asked for but not available.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu.")
    if dev.type == "cuda":
        pin_cuda_parity()
    return dev


def pin_cuda_parity() -> bool:
    """Set PyTorch's process-wide CUDA flags for parity with the reference scripts and the CPU path.

    * ``torch.backends.cuda.matmul.allow_tf32 = False``: matrix products in full fp32 (PyTorch's default since
      1.12; pinned in case the caller or a library turned TF32 on);
    * ``torch.backends.cudnn.allow_tf32 = False``: convolutions in full fp32 (PyTorch's default is **True**: on
      Ampere and later GPUs cuDNN convolutions run in TF32, 10-bit mantissa, ~1e-3 relative error — every network
      here has convolutions);
    * ``torch.backends.cudnn.benchmark = False``: cuDNN picks its algorithm by heuristics, the same one every run,
      not by timing candidates (which may choose differently from run to run and change the rounding).

    The legacy ``allow_tf32`` setters are used on purpose: PyTorch maps them onto the ``fp32_precision`` API of
    torch >= 2.9, and both kinds of getter still work afterwards (setting the new API and reading
    ``torch.backends.cudnn.allow_tf32`` raises in torch 2.13). Not touched: ``cudnn.deterministic`` (forward
    convolutions are deterministic under the heuristics; see docs/gpu.md) and the CPU (oneDNN) flags.

    Returns:
        True when the flags were set; False when ``TALKBENCH_CUDA_PARITY=0`` keeps them as they are.
    """
    if os.environ.get(ENV_CUDA_PARITY, "1").strip() == "0":
        logger.info("%s=0: TF32 / cuDNN flags left as they are (numbers may differ from the reference beyond "
                    "float32 rounding).", ENV_CUDA_PARITY)
        return False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    return True


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``, in one host→device copy.

    A CPU tensor going to CUDA is copied into pinned (page-locked) memory and sent with ``non_blocking=True``:
    the host goes on (cropping the next clip, queueing the network's kernels) while the copy runs; kernels on the
    same stream see the data in order, and PyTorch's caching host allocator keeps the pinned buffer until the copy
    is done. Anything else is ``tensor.to(device)`` — on the CPU the same tensor, no copy, so the CPU path is
    bit-for-bit what it was.

    Args:
        tensor: any tensor (an observer's input, e.g. uint8 frames ``T×H×W×3`` or float crops ``1×1×T×88×88``).
        device: where the network runs.
    Returns:
        the tensor on ``device`` (same dtype and values).
    """
    target = torch.device(device)
    if target.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(target, non_blocking=True)
    return tensor.to(target)


__all__ = ["ENV_CUDA_PARITY", "pin_cuda_parity", "resolve_device", "to_device"]
