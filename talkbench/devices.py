"""The torch device of ``--device``."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """``torch.device`` for ``--device`` (``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        ValueError: CUDA is asked for but not available.
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here; use --device cpu.")
    return dev
