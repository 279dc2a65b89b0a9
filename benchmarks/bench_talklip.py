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
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "talklip"
sys.path.insert(0, str(ROOT / "tests"))  # tests/recipe.py: the stand-in weights rule
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import counted_gflop, peak_rss_mib, timed  # noqa: E402

REFERENCE_ANCHOR_S = 8.36     # PERF_ANCHORS row 5, TalkLip inf_test generator + paste, 73 frames, quiet machine
REFERENCE_ANCHOR_GFLOP = 578.9


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
    """uint8 BGR frames (read with cv2, as the reference does) and the int16 samples of a fixture clip."""
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
    base = peak_rss_mib()
    t0 = time.perf_counter()
    generator, _ = load_generator(path)
    load_s, load_peak = time.perf_counter() - t0, peak_rss_mib()
    boxes = np.tile(np.array([0, 0, frames.shape[2], frames.shape[1]]), (len(frames), 1))
    t0 = time.perf_counter()
    synthesize(generator, frames, boxes, samples)
    print(json.dumps({"rss_before_load_mib": round(base, 1), "peak_after_load_mib": round(load_peak, 1),
                      "load_s": round(load_s, 2), "peak_after_synthesize_mib": round(peak_rss_mib(), 1),
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

    from talkbench.audio_features import avhubert_audio_features
    from talkbench.crops.face import face_crops
    from talkbench.generate import align_audio_features, synthesize
    from talkbench.nets.talklip import fuse_for_inference, generator_from_state_dict

    keys = FIXTURES / ("keys.json" if args.tiny else "keys_full.json")
    t0 = time.perf_counter()
    generator = generator_from_state_dict(filled_state_dict(keys), attention_heads=4 if args.tiny else None).eval()
    build_s = time.perf_counter() - t0
    build_peak = peak_rss_mib()
    fused = fuse_for_inference(generator)

    frames, samples = read_clip(args.clip)
    h, w = frames.shape[1:3]
    boxes = np.tile(np.array([0, 0, w, h]), (len(frames), 1))
    feats = align_audio_features(avhubert_audio_features(samples), len(frames))
    crops = face_crops(frames, boxes)

    def run_reference():
        return reference_style(generator, frames, boxes, feats, crops[0], crops)

    def run_talkbench():
        return synthesize(fused, frames, boxes, samples, batch_size=args.batch_size)[0]

    # FLOPs of the network part (matmul/conv only, as PERF_ANCHORS counts them)
    with torch.no_grad():
        gflop = counted_gflop(lambda: generator(torch.zeros(len(frames), 6, 96, 96),
                                                torch.from_numpy(np.ascontiguousarray(feats.T))[None],
                                                torch.arange(len(frames))))

    a, b = run_reference(), run_talkbench()          # warm-up, and the two must agree
    max_diff = int(np.abs(a.astype(int) - b.astype(int)).max())
    ref_t, tb_t, ref_o, tb_o = [], [], [], []
    for _ in range(args.repeats):
        for walls, others, fn in ((ref_t, ref_o, run_reference), (tb_t, tb_o, run_talkbench)):
            run = timed(fn)   # others: CPU seconds used by other processes during the run
            walls.append(run.wall_s)
            others.append(run.others_cpu_s)
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
        "peak_rss_mib_end (both models resident)": round(peak_rss_mib(), 1),
        "max_abs_pixel_diff_between_sides": max_diff,
        "perf_anchor_row5_reference_s": REFERENCE_ANCHOR_S if not args.tiny else None,
    }
    if not args.tiny:
        report["ratio_to_anchor"] = round(REFERENCE_ANCHOR_S / tb_med, 3)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
