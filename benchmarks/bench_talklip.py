"""Speed of TalkLip inference (generate) on a sample clip, side by side with a reference-style run.

Both sides use the same network and the same stand-in weights (parity recipe, seed 0; full size =
AV-HuBERT Base audio encoder 12×768 + the U-Net, ``keys_full.json``) and produce the same frames:

* reference-style: what TalkLip's inf_test.py does — one generator call for all frames, BatchNorm as
  separate ops, NCHW tensors, ``torch.no_grad``, then ``emb_roi2im``: the whole clip converted to float,
  one resize per frame, written into the frame, ``.astype(uint8)`` per frame.
* talkbench: :func:`talkbench.generate.synthesize` with :func:`fuse_for_inference` (BatchNorm folded into
  the convolutions, channels-last), frames in batches, one batched resize per box size.

Runs alternate (reference-style, talkbench, ...) so that both see the same machine load; each figure is a
median. The CPU time used by other processes during each run is printed: the box is shared, and with 2
OpenMP threads a busy neighbour slows torch 2-5× (PERF_ANCHORS caveat 1). PERF_ANCHORS row 5 (the real
reference on this machine type, quiet): 8.36 s for 73 frames without writing, 578.9 GFLOP counted.

``--memory``: instead, peak RSS of the real inference path in a fresh process — a full-size stand-in file in the
official layout loaded by :func:`talkbench.generate.load_generator` (memory-mapped, assigned, BatchNorm folded in
place) and one :func:`synthesize` of the clip (PERF_ANCHORS row 5: inference peak 2046 MiB, build + fill 1538 MiB).

Usage: ``python benchmarks/bench_talklip.py [--tiny] [--repeats 3] [--threads 2] [--clip meeting] [--memory]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "talklip"
sys.path.insert(0, str(ROOT / "tests"))

REFERENCE_ANCHOR_S = 8.36     # PERF_ANCHORS row 5, TalkLip inf_test generator + paste, 73 frames, quiet machine
REFERENCE_ANCHOR_GFLOP = 578.9


def vm_hwm_mib() -> float:
    """Peak resident set size of this process so far (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def busy_jiffies() -> int:
    """All CPUs' busy time (user+nice+system+irq+softirq+steal), in clock ticks."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]


def timed(fn):
    """Run fn; returns (result, wall seconds, CPU seconds used by other processes during the run)."""
    tick = os.sysconf("SC_CLK_TCK")
    own0, busy0, t0 = os.times(), busy_jiffies(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    own1, busy1 = os.times(), busy_jiffies()
    own = (own1.user - own0.user) + (own1.system - own0.system)
    others = max(0.0, (busy1 - busy0) / tick - own)
    return out, wall, others


def reference_style(generator, frames, boxes, feats, ref_crop, crops):
    """inf_test.py's procedure with the same modules: one call for all frames, per-frame emb_roi2im."""
    from talkbench.generate import generator_inputs

    with torch.no_grad():
        audio = torch.from_numpy(np.ascontiguousarray(feats.T))[None]
        inp = generator_inputs(crops, ref_crop)
        pred, _ = generator(inp, audio, torch.arange(len(frames)))
        video = torch.from_numpy(frames).float()
        out = []
        for j in range(len(frames)):
            x1, y1, x2, y2 = (int(v) for v in boxes[j])
            resized = F.interpolate(pred[j:j + 1] * 255.0, size=(y2 - y1, x2 - x1), mode="bilinear",
                                    align_corners=False, antialias=True)[0].permute(1, 2, 0)
            video[j, y1:y2, x1:x2] = resized
            out.append(video[j].numpy().astype(np.uint8))
    return np.stack(out)


def read_clip(name: str) -> tuple[np.ndarray, np.ndarray]:
    import cv2
    from scipy.io import wavfile

    cap = cv2.VideoCapture(str(FIXTURES / f"{name}.mp4"))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    return np.stack(frames), wavfile.read(str(FIXTURES / f"{name}.wav"))[1]


def memory_child(path: Path, clip: str) -> None:
    from talkbench.generate import load_generator, synthesize

    frames, samples = read_clip(clip)
    base = vm_hwm_mib()
    t0 = time.perf_counter()
    generator, _ = load_generator(path)
    load_s, load_peak = time.perf_counter() - t0, vm_hwm_mib()
    boxes = np.tile(np.array([0, 0, frames.shape[2], frames.shape[1]]), (len(frames), 1))
    t0 = time.perf_counter()
    synthesize(generator, frames, boxes, samples)
    print(json.dumps({"rss_before_load_mib": round(base, 1), "peak_after_load_mib": round(load_peak, 1),
                      "load_s": round(load_s, 2), "peak_after_synthesize_mib": round(vm_hwm_mib(), 1),
                      "synthesize_s": round(time.perf_counter() - t0, 2)}))


def memory_parent(args: argparse.Namespace) -> None:
    import subprocess
    import tempfile

    from recipe import filled_state_dict

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "talklip_full.pth"
        torch.save({"state_dict": filled_state_dict(FIXTURES / "keys_full.json"), "optimizer": None,
                    "global_step": 0, "global_epoch": 0}, path)
        out = subprocess.run([sys.executable, __file__, "--child", str(path), "--clip", args.clip, "--threads",
                              str(args.threads)], check=True, capture_output=True, text=True)
        report = json.loads(out.stdout.strip().splitlines()[-1])
        report["file_mib"] = round(path.stat().st_size / 2**20, 1)
        report["perf_anchor_row5_inference_peak_mib"] = 2046
        print(json.dumps(report, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the parity fixture's tiny audio encoder (2×64)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clip", default="meeting", choices=("meeting", "another"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--memory", action="store_true", help="peak RSS of load_generator + synthesize")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.child:
        return memory_child(Path(args.child), args.clip)
    if args.memory:
        return memory_parent(args)

    from recipe import filled_state_dict
    from scipy.io import wavfile
    import cv2

    from talkbench.audio_features import avhubert_audio_features
    from talkbench.generate import align_audio_features, crop_faces, synthesize
    from talkbench.nets.talklip import fuse_for_inference, generator_from_state_dict

    keys = FIXTURES / ("keys.json" if args.tiny else "keys_full.json")
    t0 = time.perf_counter()
    generator = generator_from_state_dict(filled_state_dict(keys), attention_heads=4 if args.tiny else None).eval()
    build_s = time.perf_counter() - t0
    build_peak = vm_hwm_mib()
    fused = fuse_for_inference(generator)

    cap = cv2.VideoCapture(str(FIXTURES / f"{args.clip}.mp4"))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    frames = np.stack(frames)
    samples = wavfile.read(str(FIXTURES / f"{args.clip}.wav"))[1]
    h, w = frames.shape[1:3]
    boxes = np.tile(np.array([0, 0, w, h]), (len(frames), 1))
    feats = align_audio_features(avhubert_audio_features(samples), len(frames))
    crops = crop_faces(frames, boxes)

    def run_reference():
        return reference_style(generator, frames, boxes, feats, crops[0], crops)

    def run_talkbench():
        return synthesize(fused, frames, boxes, samples, batch_size=args.batch_size)[0]

    # FLOPs of the network part (matmul/conv only, as PERF_ANCHORS counts them)
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        generator(torch.zeros(len(frames), 6, 96, 96), torch.from_numpy(np.ascontiguousarray(feats.T))[None],
                  torch.arange(len(frames)))
    gflop = counter.get_total_flops() / 1e9

    a, b = run_reference(), run_talkbench()          # warm-up, and the two must agree
    max_diff = int(np.abs(a.astype(int) - b.astype(int)).max())
    ref_t, tb_t, ref_o, tb_o = [], [], [], []
    for _ in range(args.repeats):
        _, wall, other = timed(run_reference)
        ref_t.append(wall), ref_o.append(other)
        _, wall, other = timed(run_talkbench)
        tb_t.append(wall), tb_o.append(other)
    ref_med, tb_med = statistics.median(ref_t), statistics.median(tb_t)
    load = Path("/proc/loadavg").read_text().split()[:3]
    report = {
        "model": "tiny (2x64 audio encoder)" if args.tiny else "full (AV-HuBERT Base 12x768 + U-Net)",
        "clip": args.clip, "frames": len(frames), "threads": args.threads, "build_fill_s": round(build_s, 2),
        "counted_gflop": round(gflop, 1),
        "reference_style_s": [round(t, 3) for t in ref_t], "talkbench_s": [round(t, 3) for t in tb_t],
        "reference_style_median_s": round(ref_med, 3), "talkbench_median_s": round(tb_med, 3),
        "speedup_median": round(ref_med / tb_med, 3),
        "talkbench_s_per_frame": round(tb_med / len(frames), 4),
        "talkbench_achieved_gflops": round(gflop / tb_med, 1),
        "other_processes_cpu_s_during_runs": {"reference_style": [round(v, 2) for v in ref_o],
                                              "talkbench": [round(v, 2) for v in tb_o]},
        "loadavg_1_5_15": load,
        "peak_rss_mib_after_build_fill": round(build_peak, 1),
        "peak_rss_mib_end (both models resident)": round(vm_hwm_mib(), 1),
        "max_abs_pixel_diff_between_sides": max_diff,
        "perf_anchor_row5_reference_s": REFERENCE_ANCHOR_S if not args.tiny else None,
    }
    if not args.tiny:
        report["ratio_to_anchor"] = round(REFERENCE_ANCHOR_S / tb_med, 3)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
