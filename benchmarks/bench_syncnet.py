"""Speed and memory of talkbench's LSE (SyncNet, wav2lip mode) on CPU, side by side with the reference.

Run from the repository root:
    .venv/bin/python benchmarks/bench_syncnet.py [--threads 2] [--reference-dir /tmp/syncnet_ref]

What is timed (stand-in weights from ``tests/recipe.py``; the work does not depend on the weights), per
fixture clip (tests/fixtures/syncnet: meeting 73 frames, another 82 frames, 160×160):

- talkbench end to end: ``media.decode_clip`` + the observer's ``measure`` (resize 224, MFCC, both
  towers, distances for all 31 offsets, scores); also with ``lse_jpeg_compat`` (in-memory JPEG round trip).
- talkbench network part alone (frames already resized), and its counted FLOPs / achieved GFLOP/s.
- batch-size independence: the lip tower run with chunks of 4, 16 and 64 windows (values and time).
- seconds of compute per minute of video, and peak RSS (VmHWM reset after the model is loaded).
- the reference, when ``--reference-dir`` holds ``SyncNetModel.py`` (joonson/syncnet_python) and
  ``SyncNetInstance_calc_scores.py`` (Wav2Lip's evaluation/scores_LSE) with their ``.cuda()`` calls removed:
  ``SyncNetInstance.evaluate`` itself is run, with its two ffmpeg subprocess calls replaced by a stub that
  writes the same JPEG files and wav (there is no ffmpeg CLI here). Its time is reported without the stub,
  and with PERF_ANCHORS row 1a′'s measured ffmpeg cost added back (meeting 0.297 s, another 0.297 s).
  The reference's numbers are checked against talkbench's (same frames, same audio).

Method (as PERF_ANCHORS.md): 1 warm-up, then up to 6 runs until 3 are clean (other processes used <= 10 %
of the wall time, from /proc/stat); the median of the clean runs, or of all runs flagged NOISY.
Reference and talkbench runs alternate, so a busy period hurts both alike; the ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "syncnet"
sys.path.insert(0, str(ROOT / "tests"))  # tests/recipe.py: the stand-in weights rule
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import alternate, counted_gflop, peak_rss_mib, reset_peak_rss, rss_mib, timed  # noqa: E402
from recipe import filled_state_dict  # noqa: E402

from talkbench import lse, media  # noqa: E402
from talkbench.nets.syncnet import load_syncnet  # noqa: E402
from talkbench.observers.base import ClipData  # noqa: E402
from talkbench.observers.syncnet import LSEOptions, SyncNetObserver  # noqa: E402

logger = logging.getLogger("bench_syncnet")
ANCHOR_FFMPEG_S = {"meeting": 0.153 + 0.144, "another": 0.178 + 0.119}   # PERF_ANCHORS 1a′ / 1b′
ANCHOR_E2E_S = {"meeting": 3.94, "another": 4.32}


# ------------------------------------------------------------------------------------------ reference

class _FakeFfmpeg:
    """Stands in for the reference's `subprocess.call("ffmpeg ...")`: writes the frames and wav it asks for."""

    def __init__(self) -> None:
        self.jpegs: list[bytes] = []
        self.audio = np.zeros(0, np.int16)
        self.seconds = 0.0

    def call(self, command: str, shell: bool = True, stdout: Any = None) -> int:
        from scipy.io import wavfile

        t0 = time.perf_counter()
        target = command.split()[-1]
        if target.endswith("%06d.jpg"):
            for i, data in enumerate(self.jpegs):
                Path(target.replace("%06d", f"{i + 1:06d}")).write_bytes(data)
        elif target.endswith(".wav"):
            wavfile.write(target, 16000, self.audio)
        else:
            raise RuntimeError(f"unexpected command {command!r}")
        self.seconds += time.perf_counter() - t0
        return 0


def load_reference(ref_dir: Path, checkpoint: Path):
    sys.path.insert(0, str(ref_dir))
    module = importlib.import_module("SyncNetInstance_calc_scores")
    fake = _FakeFfmpeg()
    module.subprocess = SimpleNamespace(call=fake.call)
    instance = module.SyncNetInstance()
    instance.loadParameters(str(checkpoint))
    return instance, fake


def jpeg_bytes(path: Path) -> list[bytes]:
    """The JPEG files ffmpeg would write (same encoder route as talkbench.lse.ffmpeg_jpeg_roundtrip)."""
    import av
    from fractions import Fraction

    with av.open(str(path)) as c:
        planes = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    h, w = planes[0].shape[0] * 2 // 3, planes[0].shape[1]
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuvj420p"
    ctx.time_base, ctx.thread_count = Fraction(1, 25), 1
    out = []
    for i, p in enumerate(planes):
        frame = av.VideoFrame.from_ndarray(lse.limited_yuv420_to_jpeg_range(p, h), format="yuvj420p")
        frame.pts, frame.time_base = i, ctx.time_base
        out += [bytes(pk) for pk in ctx.encode(frame)]
    return out + [bytes(pk) for pk in ctx.encode(None)]


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
            frames224 = lse.resize_frames(clip.frames)
            n = lse.count_windows(clip.num_frames, len(clip.audio_int16))
            fns: dict[str, Callable[[], Any]] = {
                "talkbench e2e": lambda: plain.measure(ClipData(name, media.decode_clip(path))),
                "talkbench e2e jpeg-compat": lambda: compat.measure(ClipData(name, media.decode_clip(path))),
                "talkbench network": lambda: lse.embed_clip(model, frames224, clip.audio_int16, n),
            }
            ref_opt = None
            if reference:
                instance, fake = reference
                fake.jpegs, fake.audio = jpeg_bytes(path), clip.audio_int16
                ref_opt = SimpleNamespace(tmp_dir=str(tmp / "ref"), reference="demo", batch_size=20, vshift=15)

                def run_reference() -> Any:
                    fake.seconds = 0.0
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

            ours = plain.measure(ClipData(name, clip))
            print(f"\n== {name}: {clip.num_frames} frames ({seconds:.2f} s), {n} windows")
            for key, r in results.items():
                print(f"  {key:28s} {r.median_s:.3f} s  (min {r.min_s:.3f}; {r.clean_count}/{len(r.timings)} "
                      f"clean{', NOISY' if r.noisy else ''}; others up to {100 * r.others_share_max:.0f} % of a CPU)")
            e2e = results["talkbench e2e"].median_s
            net = results["talkbench network"].median_s
            print(f"  compute per minute of video : {60 * e2e / seconds:.1f} s (jpeg-compat "
                  f"{60 * results['talkbench e2e jpeg-compat'].median_s / seconds:.1f} s)")
            print(f"  FLOPs counted {gflop:.1f} G; achieved {gflop / net:.0f} GFLOP/s in the network part")
            print(f"  peak RSS (model resident)   : {peak:.0f} MiB, {peak - resident:.0f} MiB above the RSS before the run"
                  + (f" (reference evaluate: {peak_ref:.0f} MiB)" if peak_ref else ""))
            print(f"  talkbench LSE-D {ours['lse_d']:.4f}  LSE-C {ours['lse_c']:.4f}  offset {ours['av_offset']}")
            if reference:
                instance, fake = reference
                r = results["reference evaluate"]
                offset, conf, minval = run_reference()
                stub = fake.seconds
                ref_net = r.median_s - stub
                jpg = compat.measure(ClipData(name, clip))
                print(f"  reference LSE-D {float(minval):.4f}  LSE-C {float(conf):.4f}  offset {int(offset)}  "
                      f"(talkbench jpeg-compat: |dD| {abs(jpg['lse_d'] - float(minval)):.1e}, "
                      f"|dC| {abs(jpg['lse_c'] - float(conf)):.1e})")
                ref_e2e = ref_net + ANCHOR_FFMPEG_S[name]
                print(f"  reference without ffmpeg    : {ref_net:.3f} s (stub {stub:.3f} s excluded); with the anchored "
                      f"ffmpeg cost {ref_e2e:.3f} s")
                print(f"  SPEED-UP end to end         : {ref_e2e / e2e:.2f}x (jpeg-compat "
                      f"{ref_e2e / results['talkbench e2e jpeg-compat'].median_s:.2f}x); network vs reference "
                      f"without ffmpeg {ref_net / net:.2f}x")
            else:
                print(f"  vs PERF_ANCHORS reference e2e {ANCHOR_E2E_S[name]:.2f} s: {ANCHOR_E2E_S[name] / e2e:.2f}x "
                      "(different run; pass --reference-dir for a side-by-side ratio)")

        # batch-size independence on the longer clip
        clip = media.decode_clip(FIX / "another.mp4")
        frames = torch.from_numpy(lse.resize_frames(clip.frames))
        n = lse.count_windows(clip.num_frames, len(clip.audio_int16))
        embs, walls = {}, {}
        with torch.inference_mode():
            for chunk in (4, 16, 64):
                run = timed(lambda: model.lip_embeddings(frames, n, chunk=chunk))
                walls[chunk], embs[chunk] = run.wall_s, run.result
        print("\n== batch-size independence (another, lip tower)")
        for chunk in (4, 16, 64):
            diff = (embs[chunk] - embs[16]).abs().max().item()
            print(f"  chunk {chunk:3d}: {walls[chunk]:.3f} s, max |emb - emb(chunk 16)| = {diff:.2e}")
        print(f"\n/proc/loadavg at end: {Path('/proc/loadavg').read_text().strip()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
