"""Speed and memory of the bootstrap intervals (:mod:`talkbench.statistics`) at the LRS2 test-set size.

Run from the repository root:  ``.venv/bin/python benchmarks/bench_statistics.py [--threads 2] [--clips 1243]``

What is timed, on synthetic per-clip arrays of ``--clips`` clips (speed does not depend on the values):
- each per-clip aggregation (``clip-mean``, ``frame-mean``, ``corpus``, ``utterance-mean``, ``accuracy``):
  :func:`bootstrap_interval` with 10,000 resamples (count matrices + one matrix product per chunk + quantiles);
  the target is well under a second per metric;
- a paired comparison (``corpus``, both runs under the same 10,000 resamples);
- the block bootstrap (``corpus``, 1,243 clips in 140 speaker groups);
- the set-level ``fd_colour``: 1,000 resamples (one Fréchet distance of 8-d Gaussians, ``scipy.linalg.sqrtm``,
  per resample);
- for context, kaldialign's ``bootstrap_wer_ci`` (Kaldi's C++ loop, alignment included) with 10,000
  replications, when kaldialign is installed.

Method (as PERF_ANCHORS.md, via ``_timing``): 1 warm-up, then runs until 3 are "clean" (other processes used
<= 10 % of one core meanwhile, from /proc/stat), at most 6; the median of the clean runs (of all runs, flagged
"noisy", when fewer than 3 were clean). Peak RSS is VmHWM reset before each metric's runs, reported as the
growth over the RSS before them. The machine's float64 GEMM rate (numpy, 2048³) is printed for context.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (set before numpy is imported)")
    parser.add_argument("--clips", type=int, default=1243, help="clips per suite (LRS2 test: 1,243)")
    parser.add_argument("--resamples", type=int, default=10_000, help="resamples for per-clip metrics")
    parser.add_argument("--set-resamples", type=int, default=1_000, help="resamples for fd_colour")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)

    import numpy as np

    import _timing
    from talkbench import statistics as st
    from talkbench.observers import colour_stats

    rng = np.random.default_rng(0)
    n, R = args.clips, args.resamples

    def gemm_gflops() -> float:
        a, b = rng.standard_normal((2048, 2048)), rng.standard_normal((2048, 2048))
        runs = _timing.median_clean(lambda: a @ b)
        return 2 * 2048 ** 3 / runs.median_s / 1e9

    units = rng.poisson(7, n) + 1
    edits = rng.binomial(units, 0.3)
    per_clip = {
        "clip-mean": st.ClipStats(values=rng.normal(7, 1.5, n)),
        "frame-mean": st.ClipStats(values=rng.normal(28, 3, n), weights=rng.integers(20, 300, n)),
        "corpus": st.ClipStats(edits=edits, units=units),
        "utterance-mean": st.ClipStats(edits=edits, units=units),
        "accuracy": st.ClipStats(hits=(rng.random(n) < 0.6).astype(float)),
    }
    other = st.ClipStats(edits=rng.binomial(units, 0.25), units=units)
    speakers = rng.integers(0, 140, n)

    def colour_features() -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for i in range(n):
            reference = rng.normal(100, 10, size=(int(rng.integers(20, 60)), colour_stats.N_FEATURES))
            generated = reference + 2 + rng.normal(0, 2, size=reference.shape)
            out[f"clip{i:05d}"] = {"colour_generated": colour_stats.sufficient_statistics(generated),
                                   "colour_reference": colour_stats.sufficient_statistics(reference)}
        return out

    colour = st.ClipStats.from_features(colour_features(), colour_stats.FEATURES)

    cases = {f"{agg} ({R:,})": (lambda agg=agg: st.bootstrap_interval(per_clip[agg], agg, n_resamples=R))
             for agg in per_clip}
    cases[f"paired corpus ({R:,})"] = lambda: st.paired_bootstrap(per_clip["corpus"], other, "corpus", "lower",
                                                                   n_resamples=R)
    cases[f"block corpus ({R:,}, 140 groups)"] = lambda: st.bootstrap_interval(per_clip["corpus"], "corpus",
                                                                                n_resamples=R, groups=speakers)
    cases[f"counts only ({R:,})"] = lambda: sum(len(c) for c in st.resample_counts(n, R, seed=0))
    cases[f"set fd_colour ({args.set_resamples:,})"] = lambda: st.bootstrap_interval(
        colour, "set", n_resamples=args.set_resamples, set_statistic=colour_stats.set_statistic)
    try:
        import kaldialign

        words = [f"w{i}" for i in range(50)]
        refs = [list(rng.choice(words, size=int(u))) for u in units]
        hyps = [ref[:-1] if i % 3 == 0 else ref for i, ref in enumerate(refs)]
        cases[f"kaldialign bootstrap_wer_ci ({R:,})"] = lambda: kaldialign.bootstrap_wer_ci(
            refs, hyps, replications=R, seed=0)
    except ImportError:
        pass

    print(f"numpy {np.__version__}, {args.threads} BLAS threads, {n:,} clips; /proc/loadavg at start: "
          f"{Path('/proc/loadavg').read_text().split()[:3]}")
    rate = gemm_gflops()
    print(f"float64 GEMM rate (numpy 2048³) now: {rate:.1f} GFLOP/s")
    print()
    print(f"{'case':<40} {'median s':>9} {'min s':>8} {'CPU s':>7} {'peak +MiB':>9}  runs")
    for name, fn in cases.items():
        fn()  # warm-up (also outside the peak-RSS window)
        base = _timing.rss_mib()
        _timing.reset_peak_rss()
        runs = _timing.median_clean(fn, warmup=False)
        grew = _timing.peak_rss_mib() - base
        flag = "" if not runs.noisy else f" noisy (others up to {runs.others_share_max:.2f} CPU)"
        print(f"{name:<40} {runs.median_s:>9.3f} {runs.min_s:>8.3f} {runs.median_cpu_s:>7.2f} {grew:>9.1f}  "
              f"{runs.clean_count}/{len(runs.timings)} clean{flag}")
    total = colour.features.sum(axis=0)
    per_fd = _timing.median_clean(lambda: [colour_stats.set_statistic(total) for _ in range(1000)])
    print(f"\none fd_colour statistic (two 8-d Gaussians + sqrtm): {per_fd.median_s:.3f} ms (mean of 1,000 calls)")
    print(f"done at {time.strftime('%Y-%m-%d %H:%M:%S')}")


if __name__ == "__main__":
    main()
