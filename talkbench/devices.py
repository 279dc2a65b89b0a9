"""The torch device of ``--device``."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for ``--device`` (``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        ValueError: not a device name torch knows, or CUDA is asked for but not available.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu.")
    return dev
