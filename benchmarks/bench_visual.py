"""Speed of the visual-family observers (FID, FVD, CSIM, LPIPS) on CPU, with the references.

Run from the repository root:
    .venv/bin/python benchmarks/bench_visual.py [--threads 1] [--reference-python /work/refvenv/bin/python]
                                                [--cdfvd-dir DIR] [--only fid,fvd] [--sqrtm]

Each entry of :data:`ENTRIES` measures one observer's ``measure`` on a short clip pair of the fixture media
(stand-in weights from ``tests/recipe.py``; the work does not depend on the weights) and prints:

- seconds of compute per minute of video (25 fps, generated + ground truth, as a run computes both sides), scaled
  from the measured short run;
- the FLOP floor: FLOPs counted by ``torch.utils.flop_counter`` for that minute ÷ this machine's fp32 matmul rate
  (2048³, the faster of ``torch.mm`` (MKL) and oneDNN, the fastest of the runs in the same process:
  ``_timing.matmul_rates``), and the ratio measured time / floor;
- the reference side by side when it can run here: a child process of ``--reference-python`` (a throwaway venv
  with the reference's own packages; default ``/work/refvenv/bin/python`` when it exists) times the reference
  network on the same input size with the same stand-in weights; otherwise the row says it was not available.
  talkbench never imports the reference: the child does, from that venv (pytorch-fid for FID; cd-fvd's unpacked
  sources from ``--cdfvd-dir`` for FVD).

``--sqrtm`` also times the set-level step FID and FVD pay once per summary (scipy ``sqrtm`` of a 2048×2048 or
400×400 product; the 2048 one takes tens of seconds on one core).

Method (as PERF_ANCHORS.md, ``benchmarks/_timing.py``): 1 warm-up, then up to 6 runs until 3 are clean; the
median of the clean runs, or of all runs flagged NOISY. To add a metric, append an :class:`Entry`.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/recipe.py: the stand-in weights rule
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

from _timing import counted_gflop, matmul_rates, median_clean  # noqa: E402
from recipe import filled_state_dict  # noqa: E402

from talkbench import media  # noqa: E402
from talkbench.metrics.frechet import frechet_distance  # noqa: E402
from talkbench.nets.i3d import load_i3d, preprocess_clips  # noqa: E402
from talkbench.nets.inception_fid import load_fid_inception  # noqa: E402
from talkbench.observers import fid, fvd  # noqa: E402
from talkbench.observers.base import ClipData  # noqa: E402

logger = logging.getLogger("bench_visual")
DEMO = ROOT / "talkbench" / "data" / "demo"
FPS = 25.0
DEFAULT_REFERENCE_PYTHON = Path("/work/refvenv/bin/python")


@dataclass
class Prepared:
    """One entry, ready to time.

    Attributes:
        run: one talkbench measurement (both sides of a short clip pair).
        video_seconds: seconds of (generated) video ``run`` covers.
        gflop_per_minute: counted GFLOPs of one minute of video, both sides.
        reference: runs the reference on the same work in a child process and returns its seconds (or raises
            ``RuntimeError`` saying why it cannot run), or None when there is no reference runner.
    """

    run: Callable[[], Any]
    video_seconds: float
    gflop_per_minute: float
    reference: Callable[[], float] | None = None


@dataclass
class Entry:
    """A row of the benchmark: ``prepare(tmp_dir, args)`` loads the network and returns a :class:`Prepared`."""

    metric: str
    prepare: Callable[[Path, argparse.Namespace], Prepared]


def demo_pair(n_frames: int) -> ClipData:
    """``n_frames`` frames of the two demo clips as a generated/ground-truth pair (160×160, 25 fps)."""
    generated = media.decode_clip(DEMO / "meeting.mp4", need_audio=False)
    reference = media.decode_clip(DEMO / "another.mp4", need_audio=False)
    generated.frames, reference.frames = generated.frames[:n_frames], reference.frames[:n_frames]
    return ClipData("bench", generated, reference)


def run_child(python: Path, code: str, payload: dict[str, Any]) -> float:
    """Run ``code`` with ``python`` (one JSON argument); it prints ``{"seconds": s}`` as its last line."""
    if not python.is_file():
        raise RuntimeError(f"no reference venv at {python}")
    done = subprocess.run([str(python), "-c", code, json.dumps(payload)], capture_output=True, text=True,
                          timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "child failed")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


#: The child's timing loop (warm-up, then the median of 3 runs), shared by the reference runners.
_CHILD_TIMING = """
import json, statistics, sys, time
import numpy as np, torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
def median_seconds(fn):
    fn()
    times = []
    for _ in range(3):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return statistics.median(times)
"""

#: pytorch-fid's InceptionV3 (block 3 = pool3) with the stand-in weights, on random 160×160 frames in [0, 1].
_FID_CHILD = _CHILD_TIMING + """
import pytorch_fid.inception as inc
inc.load_state_dict_from_url = lambda url, progress=True: torch.load(args["weights"])
model = inc.InceptionV3([3]).eval()
x = torch.rand(args["frames"], 3, args["size"], args["size"])
with torch.no_grad():
    seconds = median_seconds(lambda: model(x))
print(json.dumps({"seconds": seconds}))
"""

#: cd-fvd's preprocess_i3d + InceptionI3d (unpacked sources in args["cdfvd_dir"]) on random uint8 windows.
_FVD_CHILD = _CHILD_TIMING + """
sys.path.insert(0, args["cdfvd_dir"])
from cdfvd.third_party.i3d.utils import load_i3d_model, preprocess_i3d
model = load_i3d_model(torch.device("cpu"), args["weights"])
videos = np.random.RandomState(0).randint(0, 256, (args["windows"], 16, args["size"], args["size"], 3), np.uint8)
with torch.no_grad():
    seconds = median_seconds(lambda: model(preprocess_i3d(videos)))
print(json.dumps({"seconds": seconds}))
"""


def prepare_fid(tmp: Path, args: argparse.Namespace) -> Prepared:
    """FID on whole 160×160 frames (``fid_frames=whole``, stride 1): 16 frames a side."""
    weights = tmp / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(filled_state_dict(ROOT / "tests" / "fixtures" / "fid" / "keys.json"), weights)
    observer = fid.FIDObserver(load_fid_inception(weights), torch.device("cpu"), batch=16)
    clip = demo_pair(16)
    frame = torch.rand(1, 3, 160, 160)
    gflop_frame = counted_gflop(lambda: observer.model.pool3(frame))
    payload = {"weights": str(weights), "frames": 16 * 2, "size": 160, "threads": args.threads}

    def reference() -> float:
        return run_child(args.reference_python, _FID_CHILD, payload)

    return Prepared(lambda: observer.measure(clip), 16 / FPS, gflop_frame * 2 * 60 * FPS, reference)


def prepare_fvd(tmp: Path, args: argparse.Namespace) -> Prepared:
    """FVD with ``fvd_windows=all`` (the dense case: 93.75 windows a minute and side): 2 windows a side."""
    weights = tmp / "i3d_pretrained_400.pt"
    torch.save(filled_state_dict(ROOT / "tests" / "fixtures" / "fvd" / "keys.json"), weights)
    observer = fvd.FVDObserver(load_i3d(weights), torch.device("cpu"), windows="all", batch=2)
    clip = demo_pair(32)
    window = preprocess_clips(torch.from_numpy(np.zeros((1, 16, 160, 160, 3), np.uint8)))
    gflop_window = counted_gflop(lambda: observer.model(window))
    payload = {"weights": str(weights), "windows": 2 * 2, "size": 160, "threads": args.threads,
               "cdfvd_dir": str(args.cdfvd_dir)}

    def reference() -> float:
        if args.cdfvd_dir is None or not (args.cdfvd_dir / "cdfvd").is_dir():
            raise RuntimeError("pass --cdfvd-dir (the unpacked cd-fvd 0.1.1 sources)")
        return run_child(args.reference_python, _FVD_CHILD, payload)

    return Prepared(lambda: observer.measure(clip), 32 / FPS, gflop_window * 2 * 60 * FPS / 16, reference)


#: arcface_torch's iresnet100 (``backbones/iresnet.py`` under args["arcface_dir"]) on random aligned crops.
_CSIM_CHILD = _CHILD_TIMING + """
sys.path.insert(0, args["arcface_dir"])
from backbones.iresnet import iresnet100
model = iresnet100(False, fp16=False)
model.load_state_dict(torch.load(args["weights"]))
model.eval()
crops = np.random.RandomState(0).randint(0, 256, (args["crops"], 112, 112, 3), np.uint8)
def run():
    x = torch.from_numpy(crops[..., ::-1].transpose(0, 3, 1, 2).copy()).float()   # inference.py: BGR->RGB, CHW
    x.div_(255).sub_(0.5).div_(0.5)
    return model(x)
with torch.no_grad():
    seconds = median_seconds(run)
print(json.dumps({"seconds": seconds}))
"""


def prepare_csim(tmp: Path, args: argparse.Namespace) -> Prepared:
    """CSIM with its defaults (IResNet-100, reference = the ground truth's frame 0): dlib landmarks of every generated
    frame (and of the reference's frame 0), 5-point alignment, the network; 8 frames (9 crops: the per-minute FLOPs keep
    that ratio). The FLOPs are the network's (dlib's HOG and shape predictor are not counted). The reference row
    times arcface_torch's iresnet100 and its input normalisation alone, on the same 9 crops."""
    from talkbench.nets.arcface import load_arcface
    from talkbench.observers.identity import IdentityObserver

    weights = tmp / "backbone.pth"
    torch.save(filled_state_dict(ROOT / "tests" / "fixtures" / "arcface" / "keys_r100.json"), weights)
    observer = IdentityObserver(load_arcface(weights), torch.device("cpu"))
    clip = demo_pair(8)
    gflop_crop = counted_gflop(lambda: observer.model(torch.rand(1, 3, 112, 112)))
    payload = {"weights": str(weights), "crops": 8 + 1, "threads": args.threads, "arcface_dir": str(args.arcface_dir)}

    def reference() -> float:
        if args.arcface_dir is None or not (args.arcface_dir / "backbones" / "iresnet.py").is_file():
            raise RuntimeError("pass --arcface-dir (insightface's recognition/arcface_torch folder)")
        return run_child(args.reference_python, _CSIM_CHILD, payload)

    # a fresh ClipData per run: the landmarks are cached per clip and must be recomputed, as in a run
    return Prepared(lambda: observer.measure(ClipData("bench", clip.generated, clip.reference)), 8 / FPS,
                    gflop_crop * (60 * FPS + 60 * FPS / 8), reference)


#: lpips 0.1.4's LPIPS(net=args["net"]) with the stand-in backbone (torchvision names mapped onto its slices) and its
#: own shipped lin layers, on random 96×96 crop pairs prepared as lpips.im2tensor does.
_LPIPS_CHILD = _CHILD_TIMING + """
import warnings
warnings.filterwarnings("ignore")
import lpips
loss_fn = lpips.LPIPS(net=args["net"], version="0.1", pnet_rand=True, verbose=False)
backbone = torch.load(args["weights"])
state = loss_fn.state_dict()
for key in state:
    if key.startswith("net.slice"):
        state[key] = backbone["features.%s.%s" % tuple(key.split(".")[2:4])]
loss_fn.load_state_dict(state)
crops = np.random.RandomState(0).randint(0, 256, (2, args["pairs"], 96, 96, 3), np.uint8)
in0 = torch.cat([lpips.im2tensor(im) for im in crops[0]])
in1 = torch.cat([lpips.im2tensor(im) for im in crops[1]])
with torch.no_grad():
    seconds = median_seconds(lambda: loss_fn(in0, in1))
print(json.dumps({"seconds": seconds}))
"""


def lpips_entry(net: str) -> Callable[[Path, argparse.Namespace], Prepared]:
    """LPIPS (``lpips_net=net``) on the 96×96 face crops of 16 frame pairs (whole 160×160 frames: no boxes)."""

    def prepare(tmp: Path, args: argparse.Namespace) -> Prepared:
        from talkbench.nets.lpips import BACKBONE_FILES, load_lpips
        from talkbench.observers.lpips import LPIPSObserver

        name = {"alex": "keys_alexnet.json", "vgg": "keys_vgg16.json"}[net]
        full = filled_state_dict(ROOT / "tests" / "fixtures" / "lpips" / name)
        weights = tmp / BACKBONE_FILES[net]
        torch.save({k: v for k, v in full.items() if k.startswith("features.")}, weights)
        observer = LPIPSObserver(load_lpips(weights, net), torch.device("cpu"))
        clip = demo_pair(16)
        crop = torch.rand(1, 3, 96, 96) * 2 - 1
        gflop_pair = counted_gflop(lambda: observer.model(crop, crop))
        payload = {"weights": str(weights), "net": net, "pairs": 16, "threads": args.threads}

        def reference() -> float:
            return run_child(args.reference_python, _LPIPS_CHILD, payload)

        # a fresh ClipData per run: the crops are cached per clip and must be cut again, as in a run
        return Prepared(lambda: observer.measure(ClipData("bench", clip.generated, clip.reference)), 16 / FPS,
                        gflop_pair * 60 * FPS, reference)

    return prepare


ENTRIES: list[Entry] = [Entry("fid", prepare_fid), Entry("fvd", prepare_fvd), Entry("csim", prepare_csim),
                        Entry("lpips", lpips_entry("alex")), Entry("lpips_vgg", lpips_entry("vgg"))]


def time_sqrtm() -> None:
    """The once-per-summary step: scipy sqrtm of a 2048² (FID) and a 400² (FVD) product of covariances."""
    rs = np.random.RandomState(0)
    for dim, n in ((400, 300), (2048, 1500)):
        a, b = rs.standard_normal((n, dim)), rs.standard_normal((n, dim)) + 0.1
        sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        start = time.perf_counter()
        frechet_distance(a.mean(0), sigma1, b.mean(0), sigma2)
        print(f"  Fréchet distance at {dim} dims ({n} samples a side, singular): {time.perf_counter() - start:.1f} s "
              "once per summary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference-python", type=Path, default=DEFAULT_REFERENCE_PYTHON)
    parser.add_argument("--cdfvd-dir", type=Path, default=None, help="unpacked cd-fvd 0.1.1 sources (holds cdfvd/)")
    parser.add_argument("--arcface-dir", type=Path, default=None,
                        help="insightface's recognition/arcface_torch folder (holds backbones/iresnet.py), for CSIM")
    parser.add_argument("--only", default="", help="comma-separated metrics (default: all entries)")
    parser.add_argument("--sqrtm", action="store_true", help="also time the once-per-summary sqrtm")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); /proc/loadavg at start: "
          f"{Path('/proc/loadavg').read_text().strip()}")
    rates = matmul_rates(repeats=3, best=True)   # the fastest run: what the machine can do
    rate = max(rates.values())
    print("fp32 matmul rates of this machine now: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in rates.items())
          + f" (the FLOP floor divides by the faster, {rate:.0f})")
    wanted = {m for m in args.only.split(",") if m}
    with tempfile.TemporaryDirectory(prefix="bench_visual_") as tmp:
        for entry in ENTRIES:
            if wanted and entry.metric not in wanted:
                continue
            prepared = entry.prepare(Path(tmp), args)
            runs = median_clean(prepared.run)
            per_minute = runs.median_s * 60 / prepared.video_seconds
            floor = prepared.gflop_per_minute / rate
            print(f"\n== {entry.metric}: {runs.median_s:.3f} s for {prepared.video_seconds:.2f} s of video, both sides "
                  f"({runs.clean_count}/{len(runs.timings)} clean{', NOISY' if runs.noisy else ''})")
            print(f"  talkbench   : {per_minute:7.1f} s per minute of video; FLOPs {prepared.gflop_per_minute:,.0f} G "
                  f"a minute, floor {floor:.1f} s, measured / floor {per_minute / floor:.2f}")
            if prepared.reference is None:
                print("  reference   : no runner for this entry")
                continue
            try:
                ref_seconds = prepared.reference()
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                print(f"  reference   : not available ({err})")
                continue
            ref_minute = ref_seconds * 60 / prepared.video_seconds
            print(f"  reference   : {ref_minute:7.1f} s per minute of video (network and its preprocessing only; "
                  f"measured / floor {ref_minute / floor:.2f}); talkbench e2e / reference network "
                  f"{per_minute / ref_minute:.2f}")
    if args.sqrtm:
        print("\n== set-level step")
        time_sqrtm()


if __name__ == "__main__":
    main()
