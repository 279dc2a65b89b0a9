"""Where each network's time goes, next to its FLOP floor: the profile behind issue #20's "time ÷ floor" figures.

Run from the repository root:  ``.venv/bin/python benchmarks/bench_profile.py [--threads 2] [--only conformer,mvm]``

For each network of the ``talklip2023`` protocol (full-size stand-in weights, ``tests/recipe.py``; speed does not
depend on the weights here) on one sample clip, one warm-up and then one profiled forward
(``torch.profiler``, CPU, ``with_flops``): time ÷ FLOP floor of the whole forward (floor = FLOPs counted by
``torch.utils.flop_counter`` ÷ the 2048³ fp32 matmul rate measured in this run, the method of
``../shared/PERF_ANCHORS.md``), then the operators by self CPU time with their share of the forward, their counted
GFLOP and the rate each family (convolution, matmul, other) achieves. Operators with no counted FLOPs (norms, activations, pooling, copies, softmax)
are time the floor does not count at all; a convolution far below the matmul rate (e.g. a 1-input-channel Conv3d
stem) is time the floor counts as if it ran at matmul speed. Their sum is the measured reason a network sits above
its floor.

Networks: ``avhubert`` (AV-HuBERT-Large encoder, 73 frames of meeting, centre 88×88 crops), ``conformer`` (TalkLip's
Conformer, teacher-forced, meeting), ``mvm`` (MVM with its mirror pass, about_256), ``syncnet`` (the lip and audio
towers over meeting's 68 windows).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/recipe.py: the stand-in weights rule
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py and the other benches

import _timing  # noqa: E402
from recipe import filled_state_dict  # noqa: E402

from talkbench import media  # noqa: E402

logger = logging.getLogger("bench_profile")

NETWORKS = ("avhubert", "conformer", "mvm", "syncnet")
TOP = 8


def matmul_rate() -> float:
    """Best 2048³ fp32 matmul rate of this run, GFLOP/s (the floor's divisor)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    runs = _timing.median_clean(lambda: [torch.mm(a, b) for _ in range(10)])
    return 10 * 2 * 2048 ** 3 / runs.min_s / 1e9


# ------------------------------------------------------------------------------------------ the networks

def avhubert_forward(work: Path) -> Callable[[], Any]:
    from bench_avhubert import FIXTURE, large_checkpoint

    from talkbench.crops.mouth import centre88_crops
    from talkbench.nets.avhubert import load_avhubert_seq2seq, video_input

    ckpt, dict_txt = large_checkpoint(work)
    model, _ = load_avhubert_seq2seq(ckpt, "cpu", tokenizer_files=(FIXTURE / "spm_unigram200.model", dict_txt))
    video = video_input(centre88_crops(media.decode_clip(FIXTURE / "meeting.mp4", need_audio=False).frames))
    return lambda: model.encode(video, None)


def conformer_forward(work: Path) -> Callable[[], Any]:
    from talkbench.crops.lipreader_inputs import conformer_crops
    from talkbench.nets.conformer import load_conformer
    from talkbench.observers import conformer as wer2

    path = work / "conformer.pth"
    if not path.exists():
        torch.save(OrderedDict(filled_state_dict(ROOT / "tests/fixtures/conformer/keys.json")), path)
    model = load_conformer(path, "cpu")
    clip = ROOT / "tests/fixtures/conformer/meeting"
    video = wer2.normalise(conformer_crops(media.decode_clip(clip.with_suffix(".mp4"), need_audio=False).frames))
    target = wer2.transcript_indices(clip.with_suffix(".txt").read_text().split("\n")[0])
    return lambda: model.teacher_force(video, target)


def mvm_forward(work: Path) -> Callable[[], Any]:
    from talkbench.crops.lipreader_inputs import lrw_crops
    from talkbench.nets.mvm import load_mvm
    from talkbench.observers import mvm as acc

    path = work / "Pretrained_Ckpt.ckpt"
    if not path.exists():
        nested: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in filled_state_dict(ROOT / "tests/fixtures/mvm/keys.json").items():
            outer, inner = key.split("/", 1)
            nested.setdefault(outer, {})[inner] = value
        torch.save(nested, path)
    model = load_mvm(path, "cpu")
    video = acc.input_tensor(lrw_crops(media.decode_clip(ROOT / "tests/fixtures/mvm/about_256.mp4",
                                                         need_audio=False).frames))
    return lambda: model.logits_with_flip(video)


def syncnet_forward(work: Path) -> Callable[[], Any]:
    from talkbench import lse
    from talkbench.crops.syncnet import resize_frames
    from talkbench.nets.syncnet import load_syncnet

    path = work / "syncnet_v2.model"
    if not path.exists():
        torch.save(filled_state_dict(ROOT / "tests/fixtures/syncnet/keys.json"), path)
    model = load_syncnet(path, "cpu")
    clip = media.decode_clip(ROOT / "tests/fixtures/syncnet/meeting.mp4")
    frames224 = resize_frames(clip.frames)
    n = lse.count_windows(clip.num_frames, len(clip.audio_int16))
    return lambda: lse.embed_clip(model, frames224, clip.audio_int16, n)


FORWARDS: dict[str, Callable[[Path], Callable[[], Any]]] = {
    "avhubert": avhubert_forward, "conformer": conformer_forward, "mvm": mvm_forward, "syncnet": syncnet_forward}


# ------------------------------------------------------------------------------------------ profile

def profile_forward(name: str, forward: Callable[[], Any], rate: float) -> None:
    """Print one network's time ÷ floor and its operators (see the module docstring)."""
    with torch.no_grad():
        forward()                                                        # warm-up (plans, caches)
        gflop = _timing.counted_gflop(forward)
        runs = _timing.median_clean(forward, want=3, most=5)
        with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            forward()
    seconds = runs.median_s
    floor = gflop / rate
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    family_flops: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        entry = by_op[event.key]
        entry[0] += event.self_cpu_time_total / 1e6
        entry[2] += event.count
        family_flops[_family(event.key)] += (event.flops or 0) / 1e9   # counted on aten::conv2d / addmm / …
    family_time: dict[str, float] = defaultdict(float)
    for key, (cpu_s, _, _) in by_op.items():
        family_time[_family(key)] += cpu_s
    profiled = sum(family_time.values())
    print(f"\n== {name}: {seconds:.3f} s per forward{' (NOISY)' if runs.noisy else ''}, {gflop:.1f} GFLOP counted, "
          f"floor {floor:.3f} s -> time / floor = {seconds / floor:.2f} "
          f"(achieved {gflop / seconds:.0f} GFLOP/s of {rate:.0f})")
    for family in ("convolution", "matmul", "other"):
        achieved = f", {family_flops[family] / family_time[family]:.0f} GFLOP/s" \
            if family_flops[family] and family_time[family] else ""
        print(f"   {family:<12} {family_time[family]:7.3f} s = {100 * family_time[family] / profiled:3.0f} % of the "
              f"profiled time, {family_flops[family]:7.1f} GFLOP{achieved}")
    print(f"   {'operator (self CPU)':<44}{'s':>8}{'share':>8}{'calls':>7}")
    for key, (cpu_s, _, count) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:TOP]:
        print(f"   {key[:43]:<44}{cpu_s:8.3f}{100 * cpu_s / profiled:7.0f}%{count:7d}")


_CONV = ("conv", "mkldnn_convolution", "_convolution")
_MATMUL = ("addmm", "aten::mm", "bmm", "matmul", "linear", "baddbmm", "scaled_dot_product")


def _family(op: str) -> str:
    """``convolution``, ``matmul`` or ``other`` (norms, activations, pooling, softmax, copies: no counted FLOPs)."""
    if any(part in op for part in _CONV):
        return "convolution"
    if any(part in op for part in _MATMUL):
        return "matmul"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(NETWORKS), help="comma-separated subset of " + ", ".join(NETWORKS))
    parser.add_argument("--workdir", default=str(Path("/tmp") / "talkbench-bench-protocol" / "weights"),
                        help="where the stand-in checkpoints are written once (shared with bench_protocol.py)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rate = matmul_rate()
    print(f"fp32 matmul {rate:.0f} GFLOP/s (best 2048³ run, {args.threads} threads)")
    for name in args.only.split(","):
        if name not in FORWARDS:
            parser.error(f"--only: unknown network {name!r}; choose from {', '.join(NETWORKS)}")
        profile_forward(name, FORWARDS[name](work), rate)


if __name__ == "__main__":
    main()
