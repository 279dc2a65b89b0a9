"""Speed and memory of the WER2 (Conformer) and ACC (MVM) observers on CPU, next to PERF_ANCHORS rows 3 and 4.

Run from the repository root:  ``.venv/bin/python benchmarks/bench_wer2_acc.py [--threads 2] [--clip meeting]``

What is timed (stand-in weights from ``tests/recipe.py``; speed does not depend on the weights here):
- WER2, per clip: decode (``talkbench.media.decode_clip``) + gray/resize/crop + teacher forcing + scoring,
  and the network alone. Anchor row 3: TalkLip's ``teacher_force_wer.py`` on meeting.mp4 = 1.40 s per clip,
  forward alone 0.97 s, inference peak RSS 779 MiB, 79.4 GFLOP.
- ACC, per clip: decode + PIL crop/resize/gray + 29-frame tensor + network with test-time flip, and the
  network alone. Anchor row 4: MVM's test.py body on about_256.mp4 = 1.04 s per clip, network with flip
  1.05 s (video path only 0.99 s), inference peak 744 MiB, 80.2 GFLOP without the audio branch.

Method (as PERF_ANCHORS.md): 1 warm-up, then runs until 3 are "clean" (other processes used <= 10 % of one
core during the run, from /proc/stat), at most 6; the median of the clean runs (of all runs, flagged
"noisy", when fewer than 3 were clean). The 2048^3 matmul rate is measured in the same process, so the
anchors can also be compared after scaling by today's matmul rate / 135.5 GFLOP/s. Peak RSS is VmHWM,
reset after the model is loaded (so it includes the resident model, as the anchors do).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/recipe.py: the stand-in weights rule
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

import _timing  # noqa: E402
from _timing import counted_gflop, matmul_rates, peak_rss_mib, reset_peak_rss  # noqa: E402
from recipe import filled_state_dict  # noqa: E402

from talkbench import media  # noqa: E402
from talkbench.crops.lipreader_inputs import conformer_crops, lrw_crops  # noqa: E402
from talkbench.nets.conformer import load_conformer  # noqa: E402
from talkbench.nets.mvm import load_mvm  # noqa: E402
from talkbench.observers import conformer as wer2  # noqa: E402
from talkbench.observers import mvm as acc  # noqa: E402
from talkbench.observers.base import ClipData  # noqa: E402

ANCHOR_MATMUL_GFLOPS = 135.5
ANCHORS = {
    "wer2": {"end_to_end_s": 1.40, "network_s": 0.97, "peak_mib": 779, "gflop": 79.4},
    "acc": {"end_to_end_s": 1.04, "network_s": 1.05, "peak_mib": 744, "gflop": 80.2},
}


def median_clean(fn: Callable[[], Any]) -> dict[str, Any]:
    """Median wall time over clean runs (see the module docstring) and the run counts, as a JSON-able dict."""
    runs = _timing.median_clean(fn)
    return {"median_s": runs.median_s, "min_s": runs.min_s, "clean_runs": runs.clean_count,
            "runs": len(runs.timings), "noisy": runs.noisy, "others_share_max": runs.others_share_max}


def make_checkpoints(tmp: Path) -> None:
    """Write both stand-in checkpoints in their official layouts (run in a child process, so that the
    benchmark process never holds the filled dicts and its RSS reflects only the loaded models)."""
    torch.save(OrderedDict(filled_state_dict(ROOT / "tests/fixtures/conformer/keys.json")), tmp / "conformer.pth")
    nested: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in filled_state_dict(ROOT / "tests/fixtures/mvm/keys.json").items():
        outer, inner = key.split("/", 1)
        nested.setdefault(outer, {})[inner] = value
    torch.save(nested, tmp / "Pretrained_Ckpt.ckpt")


def bench_wer2(tmp: Path, clip_path: Path, text: str) -> dict[str, Any]:
    ckpt = tmp / "conformer.pth"
    reset_peak_rss()
    t0 = time.perf_counter()
    model = load_conformer(ckpt, "cpu")
    load = {"load_s": time.perf_counter() - t0, "load_peak_mib": peak_rss_mib()}
    observer = wer2.ConformerObserver(model=model, device=torch.device("cpu"))

    def end_to_end() -> None:
        observer.measure(ClipData(clip_id=clip_path.stem, generated=media.decode_clip(clip_path, need_audio=False),
                                  text=text))

    clip = media.decode_clip(clip_path, need_audio=False)
    target = wer2.transcript_indices(text)
    video = wer2.normalise(conformer_crops(clip.frames))
    prep = median_clean(lambda: wer2.normalise(conformer_crops(clip.frames)))
    reset_peak_rss()
    e2e = median_clean(end_to_end)
    net = median_clean(lambda: model.teacher_force(video, target))
    return {"frames": int(clip.frames.shape[0]), **load, "end_to_end": e2e, "preprocessing": prep, "network": net,
            "peak_mib": peak_rss_mib(), "gflop": counted_gflop(lambda: model.teacher_force(video, target))}


def bench_acc(tmp: Path, clip_path: Path) -> dict[str, Any]:
    ckpt = tmp / "Pretrained_Ckpt.ckpt"
    reset_peak_rss()
    t0 = time.perf_counter()
    model = load_mvm(ckpt, "cpu")
    load = {"load_s": time.perf_counter() - t0, "load_peak_mib": peak_rss_mib()}
    observer = acc.MVMObserver(model=model, device=torch.device("cpu"))

    def end_to_end() -> None:
        observer.measure(ClipData(clip_id=clip_path.stem, generated=media.decode_clip(clip_path, need_audio=False),
                                  text="ABOUT"))

    clip = media.decode_clip(clip_path, need_audio=False)
    video = acc.input_tensor(lrw_crops(clip.frames))
    prep = median_clean(lambda: acc.input_tensor(lrw_crops(clip.frames)))
    reset_peak_rss()
    e2e = median_clean(end_to_end)
    net = median_clean(lambda: model.logits_with_flip(video))
    with torch.no_grad():
        flops = counted_gflop(lambda: model.logits_with_flip(video))
    return {"frames": int(clip.frames.shape[0]), **load, "end_to_end": e2e, "preprocessing": prep, "network": net,
            "peak_mib": peak_rss_mib(), "gflop": flops}


def report(name: str, result: dict[str, Any], rates: dict[str, float]) -> None:
    anchor = ANCHORS[name]
    scale = rates["mkl"] / ANCHOR_MATMUL_GFLOPS  # >1: this machine is faster today than when the anchors were taken
    e2e, net = result["end_to_end"]["median_s"], result["network"]["median_s"]
    floor = result["gflop"] / max(rates.values())
    flags = [k for k in ("end_to_end", "network") if result[k]["noisy"]]
    print(f"\n== {name.upper()} ({result['frames']} frames){'  NOISY: ' + ', '.join(flags) if flags else ''}")
    print(f"  seconds per clip, end to end : {e2e:.3f} s  (anchor {anchor['end_to_end_s']:.2f} s; "
          f"anchor/ours = {anchor['end_to_end_s'] / e2e:.2f}x; "
          f"matmul-scaled anchor {anchor['end_to_end_s'] / scale:.2f} s)")
    print(f"  network alone                : {net:.3f} s  (anchor {anchor['network_s']:.2f} s; "
          f"anchor/ours = {anchor['network_s'] / net:.2f}x)")
    print(f"  preprocessing alone          : {result['preprocessing']['median_s'] * 1000:.1f} ms")
    print(f"  FLOPs counted {result['gflop']:.1f} G (anchor {anchor['gflop']}); floor at today's faster matmul rate "
          f"{floor:.3f} s; achieved {result['gflop'] / net:.0f} GFLOP/s")
    anchor_floor = anchor["gflop"] / ANCHOR_MATMUL_GFLOPS
    print(f"  network time / FLOP floor    : {net / floor:.2f} (anchor {anchor['network_s'] / anchor_floor:.2f}; "
          "load-independent-ish: both relative to the matmul rate of their own run)")
    print(f"  peak RSS during inference    : {result['peak_mib']:.0f} MiB (anchor {anchor['peak_mib']} MiB); "
          f"load {result['load_s']:.2f} s, load peak {result['load_peak_mib']:.0f} MiB")


def run_one(name: str, ckpt_dir: Path, threads: int) -> dict[str, Any]:
    """Benchmark one observer in this process (a fresh one, so peak RSS is its own)."""
    torch.set_num_threads(threads)
    rates = matmul_rates()
    print(f"[{name}] loadavg {Path('/proc/loadavg').read_text().strip()}; matmul 2048^3: "
          + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in rates.items())
          + f" (anchor {ANCHOR_MATMUL_GFLOPS}, MKL's; the floor uses the faster)")
    fixtures = ROOT / "tests" / "fixtures"
    if name == "wer2":
        text = (fixtures / "conformer" / "meeting.txt").read_text().splitlines()[0]
        result = bench_wer2(ckpt_dir, fixtures / "conformer" / "meeting.mp4", text)
    else:
        result = bench_acc(ckpt_dir, fixtures / "mvm" / "about_256.mp4")
    report(name, result, rates)
    return {"matmul": rates, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("wer2", "acc"), default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    parser.add_argument("--make-checkpoints", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("NAME", "DIR"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.make_checkpoints:
        make_checkpoints(args.make_checkpoints)
        return
    if args.child:
        result = run_one(args.child[0], Path(args.child[1]), args.threads)
        (Path(args.child[1]) / f"{args.child[0]}.json").write_text(json.dumps(result))
        return
    print(f"torch {torch.__version__}, {args.threads} threads, loadavg before: "
          f"{Path('/proc/loadavg').read_text().strip()}", flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Checkpoints are written by one child and each observer runs in its own child process, so that no
        # process holds the filled dicts or the other model and each peak RSS is that observer's alone.
        subprocess.run([sys.executable, __file__, "--make-checkpoints", tmp], check=True)
        for name in ("wer2", "acc"):
            if args.only in (None, name):
                subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child", name, tmp],
                               check=True)
                results[name] = json.loads((Path(tmp) / f"{name}.json").read_text())
    print(f"\nloadavg after: {Path('/proc/loadavg').read_text().strip()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
