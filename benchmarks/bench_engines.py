"""Scale-out of ``--engine ray``: the demo suite on 1 and 2 local Ray workers against the plain (local) run.

Run from the repository root (needs ``pip install "talkbench[ray]"``):
``.venv/bin/python benchmarks/bench_engines.py [--clips 12] [--work runs/bench-engines]``

What is measured, on the demo's synthetic suite (``--protocol mini``: WER1/CER1, LSE, PSNR/SSIM, the
ground-truth baseline), each observer with one torch thread (the workers get one CPU or less each):

- each observer's own time per clip (its ``measure`` alone, in this process): the cheapest one is the
  reference of the goal "per-clip overhead under 5 % of the cheapest observer's time";
- wall time of a full run (start-up included) for the plain run and for Ray with 1 and 2 workers, on the whole
  suite and on its first ``--small`` clips; the marginal time per clip is (T(all) - T(small)) / (all - small),
  which leaves out the fixed start-up (Ray's dataset and actor start, loading the models);
- clips/s of the whole run, and the per-clip overhead of Ray (1 worker) = its marginal time per clip minus the
  plain run's, in ms and as a share of the cheapest observer's time.

Each figure is one run; the load average before and after is printed (the Ray workers are other processes, so
``_timing``'s "others' CPU" cannot tell a busy machine from our own workers here).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

import _timing  # noqa: E402
from talkbench import demo, protocols, suites  # noqa: E402
from talkbench.engines.ray_engine import RayEngine, import_ray  # noqa: E402
from talkbench.evaluate import EvaluateConfig, evaluate  # noqa: E402
from talkbench.measure import ObserverSetup, measure_clip  # noqa: E402

logger = logging.getLogger("bench_engines")


def one_thread() -> None:
    """``worker_init`` of the Ray workers: one torch thread, as the plain run here."""
    torch.set_num_threads(1)


def observer_times(reference: Path, generated: Path, metrics: tuple[str, ...]) -> dict[str, float]:
    """Median seconds per clip of each observer's ``measure`` (after one warm-up clip), in this process."""
    observers = ObserverSetup(protocols.MINI.name, metrics).build()
    times: dict[str, list[float]] = {o.spec.name: [] for o in observers}
    for built in observers:
        measure, name = built.observer.measure, built.spec.name

        def timed(clip: Any, measure: Any = measure, name: str = name) -> Any:
            started = time.perf_counter()
            try:
                return measure(clip)
            finally:
                times[name].append(time.perf_counter() - started)

        built.observer.measure = timed
    suite = suites.load_suite("lrs2", generated, reference, None)
    for pair in suite.pairs:
        measure_clip(pair, observers)
    return {name: statistics.median(t[1:] or t) for name, t in times.items()}


def _subset(folder: Path, dest: Path, n_clips: int) -> Path:
    """``dest`` holding symlinks to the first ``n_clips`` clips of ``folder`` (with their transcripts, boxes)."""
    for clip in sorted(folder.rglob("*.mp4"))[:n_clips]:
        for path in clip.parent.glob(f"{clip.stem}.*"):
            target = dest / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())
    return dest


def run(reference: Path, generated: Path, out: Path, metrics: tuple[str, ...], engine: RayEngine | None,
        n_clips: int) -> _timing.Timing:
    """One whole run of the first ``n_clips`` clips into a fresh run directory."""
    inputs = out.parent / f"{out.name}-input"
    shutil.rmtree(inputs, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    config = EvaluateConfig(generated=_subset(generated, inputs / "gen", n_clips),
                            reference=_subset(reference, inputs / "ref", n_clips), out=out, metrics=metrics, suite="lrs2",
                            model="ground-truth", split="demo", protocol=protocols.MINI.name, engine=engine)
    timing = _timing.timed(lambda: evaluate(config))
    assert timing.result.computed == n_clips, timing.result
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=demo.N_SYNTHETIC_CLIPS, help="clips of the suite")
    parser.add_argument("--small", type=int, default=2, help="clips of the short run (start-up cost)")
    parser.add_argument("--batch-clips", type=int, default=4, help="clips per actor call (the CLI default)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-engines")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    ray = import_ray()
    if not demo.mini_observers_available():
        raise SystemExit("the mini observers are not installed with this talkbench: nothing to benchmark")
    reference = demo.build_synthetic_suite(args.work, args.clips)
    generated = demo.make_generated(reference, args.work / "mini", demo.BASELINES[0])
    metrics = tuple(protocols.MINI.default_metrics)

    load_before = Path("/proc/loadavg").read_text().split()[:3]
    per_observer = observer_times(reference, generated, metrics)
    cheapest = min(per_observer, key=per_observer.get)
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    engines: dict[str, RayEngine | None] = {
        "plain": None,
        "ray, 1 worker": RayEngine(workers=1, batch_clips=args.batch_clips, worker_init=one_thread),
        "ray, 2 workers": RayEngine(workers=2, batch_clips=args.batch_clips, worker_init=one_thread),
    }
    rows: dict[str, dict[str, _timing.Timing]] = {}
    for label, engine in engines.items():
        slug = label.replace(", ", "-").replace(" ", "")
        rows[label] = {size: run(reference, generated, args.work / "runs" / f"{slug}-{size}", metrics, engine, n)
                       for size, n in (("small", args.small), ("all", args.clips))}
    ray.shutdown()
    load_after = Path("/proc/loadavg").read_text().split()[:3]

    print(f"torch {torch.__version__}, 1 thread per process; {args.clips} clips (protocol mini, metrics "
          f"{','.join(metrics)}); batch {args.batch_clips}; loadavg before "
          f"{load_before}, after {load_after} (the machine is shared: a busy one inflates the Ray rows most)")
    print("observer time per clip (median, measure() alone):")
    for name, seconds in per_observer.items():
        print(f"  {name:<24} {seconds * 1000:8.1f} ms{'  (cheapest)' if name == cheapest else ''}")
    marginal: dict[str, float] = {}
    print(f"{'run':<16} {'wall s':>8} {'clips/s':>8} {'marginal s/clip':>16}")
    for label, runs in rows.items():
        full, small = runs["all"], runs["small"]
        marginal[label] = (full.wall_s - small.wall_s) / (args.clips - args.small)
        print(f"{label:<16} {full.wall_s:8.2f} {args.clips / full.wall_s:8.2f} {marginal[label]:16.3f}")
    overhead = marginal["ray, 1 worker"] - marginal["plain"]
    print(f"Ray per-clip overhead (1 worker vs plain, marginal): {overhead * 1000:.1f} ms = "
          f"{100 * overhead / per_observer[cheapest]:.1f} % of the cheapest observer ({cheapest}, "
          f"{per_observer[cheapest] * 1000:.1f} ms)")
    print(f"scale-out 2 vs 1 worker (marginal): {marginal['ray, 1 worker'] / marginal['ray, 2 workers']:.2f}x")


if __name__ == "__main__":
    main()
