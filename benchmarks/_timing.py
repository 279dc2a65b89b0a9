"""Load-aware timing and memory helpers shared by the ``benchmarks/bench_*.py`` scripts.

The benchmark machine is shared, so every timed call also records how much CPU time *other* processes used
meanwhile (from ``/proc/stat``, minus this process's own CPU time). A run is **clean** when the others used at
most :data:`CLEAN_SHARE` of one CPU per wall second. The method (as PERF_ANCHORS.md): one warm-up, then runs
until ``want`` (3) are clean, at most ``most`` (6); the median of the clean runs, or of all runs, flagged
noisy, when fewer were clean. :func:`alternate` interleaves several functions so that a busy period hurts
them alike (their ratio is then the figure to quote); :func:`median_clean` is the one-function case.

Peak RSS is VmHWM from ``/proc/self/status``; :func:`reset_peak_rss` restarts it (``/proc/self/clear_refs``).

The scripts are run as ``python benchmarks/bench_X.py``, so this folder is ``sys.path[0]`` and they
``import _timing`` directly (they also insert the folder themselves, for other ways of running them).
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

logger = logging.getLogger(__name__)

CLEAN_SHARE = 0.10
"""A run is clean when other processes kept at most this share of one CPU busy during it."""


# ------------------------------------------------------------------------------------------ one call

def busy_jiffies() -> int:
    """Busy time of all CPUs since boot (user + nice + system + irq + softirq + steal), in clock ticks."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle + iowait
    return sum(fields[:8]) - idle


@dataclass(frozen=True)
class Timing:
    """One timed call.

    Attributes:
        wall_s: wall-clock seconds.
        cpu_s: this process's CPU seconds (user + system, all threads).
        others_cpu_s: CPU seconds other processes used meanwhile (machine busy time minus ``cpu_s``, >= 0).
        result: what the function returned (dropped by :class:`Runs`).
    """

    wall_s: float
    cpu_s: float
    others_cpu_s: float
    result: Any = field(default=None, repr=False, compare=False)

    @property
    def others_share(self) -> float:
        """CPU seconds used by other processes per wall second (1.0 = one CPU kept busy)."""
        return self.others_cpu_s / max(self.wall_s, 1e-9)

    @property
    def clean(self) -> bool:
        """Whether other processes stayed at or below :data:`CLEAN_SHARE` of a CPU."""
        return self.others_share <= CLEAN_SHARE


def timed(fn: Callable[[], Any]) -> Timing:
    """Call ``fn()`` once and time it (wall, own CPU, other processes' CPU); the result is kept."""
    tick = os.sysconf("SC_CLK_TCK")
    own0, busy0, t0 = os.times(), busy_jiffies(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    own1, busy1 = os.times(), busy_jiffies()
    own = (own1.user - own0.user) + (own1.system - own0.system)
    return Timing(wall_s=wall, cpu_s=own, others_cpu_s=max(0.0, (busy1 - busy0) / tick - own), result=out)


# ------------------------------------------------------------------------------------------ repeated calls

@dataclass
class Runs:
    """The timed runs of one function (results dropped) and the clean-run statistics over them."""

    want: int = 3
    timings: list[Timing] = field(default_factory=list)

    def add(self, timing: Timing) -> None:
        """Record a run; its result is not kept (it would stay resident and distort peak RSS)."""
        self.timings.append(replace(timing, result=None))

    @property
    def clean_count(self) -> int:
        """How many runs were clean."""
        return sum(t.clean for t in self.timings)

    @property
    def noisy(self) -> bool:
        """Fewer than ``want`` clean runs: the statistics use all runs."""
        return self.clean_count < self.want

    @property
    def used(self) -> list[Timing]:
        """The clean runs, or all runs when :attr:`noisy`."""
        return list(self.timings) if self.noisy else [t for t in self.timings if t.clean]

    @property
    def median_s(self) -> float:
        """Median wall seconds over :attr:`used`."""
        return statistics.median(t.wall_s for t in self.used)

    @property
    def median_cpu_s(self) -> float:
        """Median own CPU seconds over :attr:`used` (robust to waiting for a core when single-threaded)."""
        return statistics.median(t.cpu_s for t in self.used)

    @property
    def min_s(self) -> float:
        """Fastest wall time over all runs."""
        return min(t.wall_s for t in self.timings)

    @property
    def others_share_max(self) -> float:
        """Largest share of a CPU other processes used during any run."""
        return max(t.others_share for t in self.timings)


def alternate(fns: Mapping[str, Callable[[], Any]], want: int = 3, most: int = 6,
              warmup: bool = True) -> dict[str, Runs]:
    """Time several functions in turns (f1, f2, ..., f1, f2, ...) until each has ``want`` clean runs.

    Args:
        fns: name -> function of no arguments.
        want: clean runs needed per function.
        most: rounds at most (each round runs every function once).
        warmup: call each function once, untimed, first.

    Returns:
        name -> its :class:`Runs`.
    """
    if warmup:
        for fn in fns.values():
            fn()
    runs = {name: Runs(want=want) for name in fns}
    for _ in range(most):
        for name, fn in fns.items():
            runs[name].add(timed(fn))
        if all(r.clean_count >= want for r in runs.values()):
            break
    return runs


def median_clean(fn: Callable[[], Any], want: int = 3, most: int = 6, warmup: bool = True) -> Runs:
    """Time one function: warm-up, then runs until ``want`` are clean, at most ``most`` (see :func:`alternate`)."""
    return alternate({"fn": fn}, want=want, most=most, warmup=warmup)["fn"]


# ------------------------------------------------------------------------------------------ memory and FLOPs

def status_mib(field_name: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``, ...) in MiB; NaN when absent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM) since start or the last :func:`reset_peak_rss`, MiB."""
    return status_mib("VmHWM")


def rss_mib() -> float:
    """Current resident set size of this process (VmRSS), MiB."""
    return status_mib("VmRSS")


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS; False (and a warning) when the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        logger.warning("cannot reset VmHWM (/proc/self/clear_refs); later peak RSS readings include earlier phases")
        return False
    return True


def counted_gflop(fn: Callable[[], Any]) -> float:
    """GFLOP counted by ``torch.utils.flop_counter`` (matmuls and convolutions) during one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=onednn_flop_formulas())
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def matmul_rates(repeats: int = 10, best: bool = False) -> dict[str, float]:
    """fp32 2048³ matmul rates of this run, GFLOP/s: median of clean runs, as PERF_ANCHORS' row F1 (``best``: the
    fastest run, what the machine can do when a shared machine's load leaves it alone).

    ``mkl``: ``torch.mm``, PyTorch's default path, which the reference scripts' linear layers take (the rate that
    scales the anchors). ``onednn`` (when this PyTorch has it): the library of every PyTorch convolution and of
    talkbench's linear layers (:mod:`talkbench.nets.onednn_linear`). FLOP floors use the faster of the two.
    """
    import torch

    from talkbench.nets.onednn_linear import onednn_available, onednn_linear

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    calls: dict[str, Callable[[], Any]] = {"mkl": lambda: torch.mm(a, b)}
    if onednn_available():
        calls["onednn"] = lambda: onednn_linear(a, b, None)
    rates = {}
    for name, call in calls.items():
        runs = median_clean(lambda: [call() for _ in range(repeats)])
        rates[name] = repeats * 2 * 2048 ** 3 / (runs.min_s if best else runs.median_s) / 1e9
    return rates


def onednn_flop_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for the oneDNN linear op (``talkbench.nets.onednn_linear``), which the counter does not know:
    2 · rows · in · out, as for ``addmm``."""
    import torch

    def linear_flops(x_shape: Any, w_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        rows = 1
        for size in x_shape[:-1]:
            rows *= int(size)
        return 2 * rows * int(w_shape[0]) * int(w_shape[1])

    if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return {}
    return {torch.ops.mkldnn._linear_pointwise: linear_flops}
