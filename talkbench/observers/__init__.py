"""Registry of observers: which observer produces which metric column.

Each entry names a module with a ``build(ctx: ObserverContext) -> Observer`` function; modules are
imported only when one of their metrics is asked for, so that e.g. PSNR needs no torch model.
"""

from __future__ import annotations

import importlib
from typing import Iterable

from talkbench.observers.base import ClipData, ClipSkipped, Observer, ObserverContext, Row

#: metric column -> module that builds its observer
METRIC_SOURCES: dict[str, str] = {
    "psnr": "talkbench.observers.image_quality",
    "psnr_talklip_compat": "talkbench.observers.image_quality",
    "ssim": "talkbench.observers.image_quality",
    "lse_c": "talkbench.observers.syncnet",
    "lse_d": "talkbench.observers.syncnet",
    "av_offset": "talkbench.observers.syncnet",
    "wer1": "talkbench.observers.avhubert",
    "cer1": "talkbench.observers.avhubert",
    "wer2": "talkbench.observers.conformer",
    "acc": "talkbench.observers.mvm",
    "acc_top5": "talkbench.observers.mvm",
}

ALL_METRICS: tuple[str, ...] = tuple(METRIC_SOURCES)


def build_observers(metrics: Iterable[str], ctx: ObserverContext) -> list[Observer]:
    """Build each observer needed for ``metrics`` once, in the order the metrics are first named.

    Raises:
        ValueError: a metric name is unknown.
    """
    modules: list[str] = []
    for metric in metrics:
        if metric not in METRIC_SOURCES:
            raise ValueError(f"Unknown metric `{metric}`; choose from {', '.join(ALL_METRICS)}.")
        module = METRIC_SOURCES[metric]
        if module not in modules:
            modules.append(module)
    return [importlib.import_module(m).build(ctx) for m in modules]


__all__ = ["ALL_METRICS", "METRIC_SOURCES", "ClipData", "ClipSkipped", "Observer", "ObserverContext", "Row",
           "build_observers"]
