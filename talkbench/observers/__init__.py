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
    "wer2_corpus": "talkbench.observers.conformer",
    "acc": "talkbench.observers.mvm",
    "acc_top5": "talkbench.observers.mvm",
}

ALL_METRICS: tuple[str, ...] = tuple(METRIC_SOURCES)

#: Protocols whose observers differ from the official ones, metric -> module. ``mini`` scores with the
#: small observers talkbench trains itself on its synthetic corpus (weights shipped in the package).
PROTOCOL_SOURCES: dict[str, dict[str, str]] = {
    "mini": {
        "wer1": "talkbench.mini.observer_lipreader",
        "cer1": "talkbench.mini.observer_lipreader",
        "lse_c": "talkbench.mini.observer_syncnet",
        "lse_d": "talkbench.mini.observer_syncnet",
        "av_offset": "talkbench.mini.observer_syncnet",
    },
}


#: The metrics each protocol has. ``mini`` has only what its small observers (and PSNR/SSIM) measure: the official
#: WER2/ACC observers need checkpoints that do not fit synthetic-corpus faces, so they are refused up front.
PROTOCOL_METRICS: dict[str, tuple[str, ...]] = {
    "talklip2023": ALL_METRICS,
    "avhubert-official": ALL_METRICS,
    "mini": ("psnr", "psnr_talklip_compat", "ssim", "lse_c", "lse_d", "av_offset", "wer1", "cer1"),
}


def metric_source(metric: str, protocol: str = "talklip2023") -> str:
    """The module whose observer produces ``metric`` under ``protocol``.

    Raises:
        ValueError: the metric is unknown, or the protocol does not have it.
    """
    if metric not in METRIC_SOURCES:
        raise ValueError(f"Unknown metric `{metric}`; choose from {', '.join(ALL_METRICS)}.")
    available = PROTOCOL_METRICS.get(protocol)
    if available is None:
        raise ValueError(f"Unknown protocol `{protocol}`; choose from {', '.join(PROTOCOL_METRICS)}.")
    if metric not in available:
        raise ValueError(f"Protocol `{protocol}` has no metric `{metric}`; its metrics are {', '.join(available)}.")
    return PROTOCOL_SOURCES.get(protocol, {}).get(metric, METRIC_SOURCES[metric])


def build_observers(metrics: Iterable[str], ctx: ObserverContext) -> list[Observer]:
    """Build each observer needed for ``metrics`` once, in the order the metrics are first named.

    Raises:
        ValueError: a metric name is unknown.
    """
    return [importlib.import_module(m).build(ctx) for m in observer_modules(metrics, ctx.protocol)]


def observer_modules(metrics: Iterable[str], protocol: str = "talklip2023") -> list[str]:
    """The observer modules needed for ``metrics``, each once, in the order the metrics are first named."""
    modules: list[str] = []
    for metric in metrics:
        module = metric_source(metric, protocol)
        if module not in modules:
            modules.append(module)
    return modules


__all__ = ["ALL_METRICS", "METRIC_SOURCES", "PROTOCOL_METRICS", "PROTOCOL_SOURCES", "metric_source", "observer_modules", "ClipData", "ClipSkipped", "Observer", "ObserverContext", "Row",
           "build_observers"]
