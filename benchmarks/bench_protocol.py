"""The whole ``talklip2023`` protocol on one clip: talkbench's ``evaluate`` by stage, next to the reference scripts.

Run from the repository root:  ``.venv/bin/python benchmarks/bench_protocol.py [--threads 2] [--quick]``

What runs: ``talkbench.evaluate.evaluate`` (the library call behind ``talkbench evaluate``) with every
``talklip2023`` metric — LSE-C/LSE-D (SyncNet, the JPEG round trip of the protocol), WER1/CER1 (AV-HuBERT-Large,
beam 50), WER2/CER2 (teacher-forced Conformer), PSNR/SSIM — on the sample clips ``meeting`` (73 frames) and
``another`` (82 frames) as an LRS2-layout suite, and ACC (MVM with its mirror pass) on the LRW-shaped
``about_256``, all with full-size stand-in weights (``tests/recipe.py``) saved in the official layouts, so the
networks do the same work as with the real checkpoints (except beam length: stand-in weights never end a
hypothesis early, as in the anchors).

Stages, measured inside that one call by wrapping the functions that do them (exclusive times: a crop made
inside an observer counts as crops, not as that observer): model load per observer (``observers.build``), decode
(``media.decode_clip``), crops (every shared crop accessor of :mod:`talkbench.crops`), each observer's
``measure`` (network + its own preprocessing and scoring), store (``ResultStore.put``) and the rest (suite,
summary, export).

The reference side: the reference scripts run one after another on the same clip (Wav2Lip's
``calculate_scores_LRS.py`` for LSE, av_hubert's ``infer_s2s.py`` for WER1, TalkLip's ``teacher_force_wer.py``
for WER2, MVM's ``test.py`` for ACC), from ``../shared/PERF_ANCHORS.md`` rows 1a, 2b, 3 and 4, scaled by the
ratio of today's 2048^3 matmul rate (measured here, in this run) to the anchor machine's 135.5 GFLOP/s. TalkLip's
PSNR/SSIM script has no anchor and counts as 0 s (in the reference's favour). Two comparisons are printed:
per-clip compute (model load excluded on both sides: the reference scripts load once per test set too), and a
one-clip suite (each reference script pays one Python + torch start, measured here, and one load of its
checkpoint, measured here as ``torch.load`` of the same stand-in file, which is no slower than the reference's
``torch.load`` + ``load_state_dict``; talkbench pays one start and its loads).

The matmul rate is PyTorch's ``torch.mm`` (MKL), which is what the reference scripts' linear layers use. On a CPU
where oneDNN is much faster than MKL (AMD with AVX-512: MKL takes its AVX2 path), the references' convolutions —
oneDNN in every PyTorch — would gain more than that scale says, so a third, conservative line scales the
convolution-bound anchors (SyncNet, Conformer, MVM) by oneDNN's rate instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/recipe.py: the stand-in weights rule
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py and the other benches

import _timing  # noqa: E402
from bench_avhubert import large_checkpoint  # noqa: E402
from bench_wer2_acc import make_checkpoints  # noqa: E402
from recipe import filled_state_dict  # noqa: E402

from talkbench import crops, evaluate, measure, media, store  # noqa: E402

logger = logging.getLogger("bench_protocol")

ANCHOR_MATMUL_GFLOPS = 135.5
#: PERF_ANCHORS.md, seconds per clip of each reference script's compute (2 threads, stand-in weights).
REFERENCE_ANCHORS = {
    "meeting": {"lse (1a)": 3.94, "wer1 beam 50 (2b)": 22.06, "wer2 (3)": 1.40},
    "about_256": {"acc (4)": 1.04},
}
#: Anchors whose time is convolutions (PERF_ANCHORS: SyncNet 245 of 245 GFLOP, Conformer 74 of 79, MVM 80 of 84); the
#: reference runs those through oneDNN like talkbench, so the conservative comparison scales them by oneDNN's rate.
CONVOLUTION_BOUND = {"lse (1a)", "wer2 (3)", "acc (4)"}
CLIPS = {"meeting": "tests/fixtures/conformer/meeting", "another": "tests/fixtures/conformer/another"}
LRW_CLIP = "tests/fixtures/mvm/about_256"
METRICS = ("lse_c", "lse_d", "av_offset", "wer1", "cer1", "wer2", "cer2", "psnr", "ssim")
CACHE = Path(tempfile.gettempdir()) / "talkbench-bench-protocol"


# ------------------------------------------------------------------------------------------ stage timer

class StageTimer:
    """Exclusive wall time per stage: a wrapped call nested in another is subtracted from its parent."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[float]] = []

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                nested = self._stack.pop()[0]
                self.seconds[stage] += elapsed - nested
                self.calls[stage] += 1
                if self._stack:
                    self._stack[-1][0] += elapsed
        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


@contextlib.contextmanager
def instrumented(timer: StageTimer) -> Iterator[None]:
    """Wrap the stage functions for the duration of the block (and restore them)."""
    patched: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)
        patched.append((owner, name, original))
        setattr(owner, name, timer.wrap(stage, original))

    patch(media, "decode_clip", "decode")
    patch(store.ResultStore, "put", "store")
    # every crop accessor goes through talkbench.crops.cached, imported by name into each crops module
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if name.startswith("talkbench.crops") and getattr(module, "cached", None) is crops.cached:
            patch(module, "cached", "crops")
    original_build = measure.build  # observers.build(spec, ctx), as measure.py imported it

    def build(spec: Any, ctx: Any) -> Any:
        observer = timer.wrap(f"load {spec.name}", original_build)(spec, ctx)
        observer.measure = timer.wrap(f"observer {spec.name}", observer.measure)
        return observer

    patched.append((measure, "build", original_build))
    measure.build = build  # type: ignore[assignment]
    try:
        yield
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)


# ------------------------------------------------------------------------------------------ inputs

def stand_in_weights(directory: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Full-size stand-in checkpoints in the official layouts (written once into ``directory``), and the options
    naming the AV-HuBERT tokenizer files (the stand-in file, like bench_avhubert's, has no task state)."""
    directory.mkdir(parents=True, exist_ok=True)
    syncnet = directory / "syncnet_v2.model"
    if not syncnet.exists():
        torch.save(filled_state_dict(ROOT / "tests/fixtures/syncnet/keys.json"), syncnet)
    if not (directory / "conformer.pth").exists():
        make_checkpoints(directory)
    avhubert, dict_txt = large_checkpoint(directory)
    weights = {"syncnet-v2": syncnet, "avhubert-large-lrs2": avhubert, "conformer-lrs2": directory / "conformer.pth",
               "mvm-lrw": directory / "Pretrained_Ckpt.ckpt"}
    options = {"avhubert_spm_model": str(ROOT / "tests/fixtures/avhubert/spm_unigram200.model"),
               "avhubert_dict": str(dict_txt)}
    return weights, options


def lrs2_suite(root: Path, clips: dict[str, str]) -> Path:
    """An LRS2-layout suite ``main/bench/<clip>.mp4`` + ``.txt`` (``Text:  WORDS``)."""
    folder = root / "main" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    for name, stem in clips.items():
        shutil.copy(ROOT / f"{stem}.mp4", folder / f"{name}.mp4")
        words = (ROOT / f"{stem}.txt").read_text().split("\n")[0].replace("Text:", "").strip().upper()
        (folder / f"{name}.txt").write_text(f"Text:  {words}\n")
    return root


def lrw_suite(root: Path) -> Path:
    """An LRW-layout suite ``ABOUT/test/ABOUT_00001.mp4``."""
    folder = root / "ABOUT" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / f"{LRW_CLIP}.mp4", folder / "ABOUT_00001.mp4")
    return root


# ------------------------------------------------------------------------------------------ runs

def run_evaluate(suite: Path, out: Path, metrics: tuple[str, ...], weights: dict[str, Path], kind: str,
                 options: dict[str, str]) -> tuple[StageTimer, float, dict[str, Any]]:
    """One fresh ``evaluate`` run; returns its stage times, its wall time and its summary."""
    shutil.rmtree(out, ignore_errors=True)
    timer = StageTimer()
    config = evaluate.EvaluateConfig(generated=suite, reference=suite, out=out, metrics=metrics, suite=kind,
                                     protocol="talklip2023", model="bench", weights=weights,
                                     options=options if "wer1" in metrics else {})
    with instrumented(timer):
        t0 = time.perf_counter()
        result = evaluate.evaluate(config)
        wall = time.perf_counter() - t0
    return timer, wall, result.summary


def python_start_s() -> float:
    """Seconds for a fresh ``python -c 'import torch, cv2, numpy'`` (one reference script's start)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, cv2, numpy"], check=True)
        times.append(time.perf_counter() - t0)
    return sorted(times)[1]


def torch_load_s(path: Path) -> float:
    """Seconds of one plain ``torch.load`` of a checkpoint (the reference scripts' load, lower bound)."""
    t0 = time.perf_counter()
    torch.load(path, map_location="cpu", weights_only=False)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ report

def report(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    rates = _timing.matmul_rates()
    rate = rates["mkl"]
    scale = rate / ANCHOR_MATMUL_GFLOPS
    onednn_scale = max(rates.values()) / ANCHOR_MATMUL_GFLOPS
    weights, options = stand_in_weights(CACHE / "weights")
    work = Path(tempfile.mkdtemp(prefix="bench-protocol-"))
    try:
        clips = {"meeting": CLIPS["meeting"]} if args.quick else CLIPS
        suite = lrs2_suite(work / "lrs2", clips)
        lrw = lrw_suite(work / "lrw")
        timer, wall, summary = run_evaluate(suite, work / "run", METRICS, weights, "lrs2", options)
        acc_timer, acc_wall, acc_summary = run_evaluate(lrw, work / "run-acc", ("acc",), weights, "lrw", options)
        start = python_start_s()
        loads = {card: torch_load_s(path) for card, path in weights.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(clips)
    stages = {k: v for k, v in sorted(timer.seconds.items())}
    stages["rest"] = wall - sum(timer.seconds.values())
    load = sum(v for k, v in timer.seconds.items() if k.startswith("load "))
    acc_load = sum(v for k, v in acc_timer.seconds.items() if k.startswith("load "))
    compute = (wall - load) / n
    acc_compute = acc_wall - acc_load
    reference_compute = sum(REFERENCE_ANCHORS["meeting"].values()) / scale
    reference_acc = sum(REFERENCE_ANCHORS["about_256"].values()) / scale
    print(f"== whole talklip2023 protocol, {n} clip(s) ({', '.join(clips)}), {args.threads} threads; "
          f"matmul {rate:.0f} GFLOP/s today (anchors: {ANCHOR_MATMUL_GFLOPS}); scale {scale:.2f}")
    print(f"  evaluate wall {wall:.2f} s for {n} clip(s) (+ acc run {acc_wall:.2f} s on about_256)")
    for stage, seconds in stages.items():
        calls = timer.calls.get(stage, 0)
        print(f"    {stage:<28} {seconds:7.2f} s  ({seconds / n:6.2f} s/clip; {calls} calls)")
    for stage, seconds in sorted(acc_timer.seconds.items()):
        print(f"    [acc run] {stage:<18} {seconds:7.2f} s")
    print("  reference checkpoint torch.load: " + ", ".join(f"{k} {v:.2f} s" for k, v in loads.items()))
    print(f"  python + torch start: {start:.2f} s per script")
    per_clip = compute + acc_compute
    ref_per_clip = reference_compute + reference_acc
    print(f"  per-clip compute: talkbench {per_clip:.2f} s (lrs2 metrics {compute:.2f} + acc {acc_compute:.2f}) "
          f"vs reference scripts {ref_per_clip:.2f} s (anchors scaled) -> {ref_per_clip / per_clip:.2f}x")
    conservative = sum(seconds / (onednn_scale if row in CONVOLUTION_BOUND else scale)
                       for anchors in REFERENCE_ANCHORS.values() for row, seconds in anchors.items())
    print(f"  conservative: the convolution-bound anchors scaled by oneDNN's matmul rate ({onednn_scale:.2f}), "
          f"reference {conservative:.2f} s -> {conservative / per_clip:.2f}x")
    one_clip_ours = start + load + acc_load + per_clip
    one_clip_ref = 4 * start + sum(loads.values()) + ref_per_clip
    print(f"  one-clip suite incl. start + load: talkbench {one_clip_ours:.2f} s vs reference {one_clip_ref:.2f} s "
          f"-> {one_clip_ref / one_clip_ours:.2f}x")
    print("  values: " + json.dumps({m: summary.get(m) for m in METRICS} | {"acc": acc_summary.get("acc")}))
    return {"rate": rate, "stages": stages, "per_clip_s": per_clip, "reference_per_clip_s": ref_per_clip,
            "conservative_reference_per_clip_s": conservative}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one clip (meeting) only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report(args)


if __name__ == "__main__":
    main()
