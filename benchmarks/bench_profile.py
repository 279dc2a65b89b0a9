"""Where each network's time goes, next to its FLOP floor: the profile behind issue #20's "time ÷ floor" figures.

Run from the repository root:  ``.venv/bin/python benchmarks/bench_profile.py [--threads 2] [--only conformer,mvm]``

For each network of the ``talklip2023`` protocol (full-size stand-in weights, ``tests/recipe.py``; speed does not
depend on the weights here) on one sample clip, one warm-up and then one profiled forward
(``torch.profiler``, CPU): time ÷ FLOP floor of the whole forward (floor = FLOPs counted by
``torch.utils.flop_counter`` ÷ the faster 2048³ fp32 matmul rate measured in this run, the method of
``../shared/PERF_ANCHORS.md``), then the operators by self CPU time with their share of the forward, their counted
GFLOP and the rate each family (convolution, matmul, other) achieves. Two matmul rates are measured: PyTorch's
``torch.mm`` (MKL) and oneDNN's (the library behind PyTorch's convolutions and talkbench's linear layers,
:mod:`talkbench.nets.onednn_linear`); the floor uses the faster, i.e. what this CPU can do in fp32. On AMD CPUs
with AVX-512 MKL takes its AVX2 path and oneDNN runs about 2.2x faster, so the floor is about half of what
MKL's rate alone would give. Each network is also timed side by side with its linear layers on PyTorch's default
path (``plain_linears``), which is what talkbench ran before the oneDNN routing. Operators with no counted FLOPs
(norms, activations, pooling, copies, softmax) are time the floor does not count at all; a convolution far below
the matmul rate (e.g. a 1-input-channel Conv3d stem) is time the floor counts as if it ran at matmul speed. Their
sum is the measured reason a network sits above its floor.

Networks: ``avhubert`` (AV-HuBERT-Large encoder, 73 frames of meeting, centre 88×88 crops), ``avhubert-beam`` (the
WER1 beam search, beam 50, capped at 20 tokens as PERF_ANCHORS row 2c — a real model's sentence length — encoder
included), ``conformer`` (TalkLip's Conformer, teacher-forced, meeting), ``mvm`` (MVM with its mirror pass,
about_256), ``syncnet`` (the lip and audio towers over meeting's 68 windows).
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
from talkbench.nets.onednn_linear import plain_linears  # noqa: E402

logger = logging.getLogger("bench_profile")

#: a network and one forward of it on its sample input
Network = tuple[torch.nn.Module, Callable[[], Any]]

NETWORKS = ("avhubert", "avhubert-beam", "conformer", "mvm", "syncnet")
TOP = 8


# ------------------------------------------------------------------------------------------ the networks

def _avhubert_large(work: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    from bench_avhubert import FIXTURE, large_checkpoint

    from talkbench.crops.mouth import centre88_crops
    from talkbench.nets.avhubert import load_avhubert_seq2seq, video_input

    ckpt, dict_txt = large_checkpoint(work)
    model, _ = load_avhubert_seq2seq(ckpt, "cpu", tokenizer_files=(FIXTURE / "spm_unigram200.model", dict_txt))
    video = video_input(centre88_crops(media.decode_clip(FIXTURE / "meeting.mp4", need_audio=False).frames))
    return model, video


def avhubert_forward(work: Path) -> Network:
    model, video = _avhubert_large(work)
    return model, lambda: model.encode(video, None)


def avhubert_beam(work: Path) -> Network:
    from talkbench.nets.avhubert_decoding import beam_search

    model, video = _avhubert_large(work)
    return model, lambda: beam_search(model, video, None, beam=50, max_len_a=0, max_len_b=20)


def conformer_forward(work: Path) -> Network:
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
    return model, lambda: model.teacher_force(video, target)


def mvm_forward(work: Path) -> Network:
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
    return model, lambda: model.logits_with_flip(video)


def syncnet_forward(work: Path) -> Network:
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
    return model, lambda: lse.embed_clip(model, frames224, clip.audio_int16, n)


FORWARDS: dict[str, Callable[[Path], Network]] = {
    "avhubert": avhubert_forward, "avhubert-beam": avhubert_beam, "conformer": conformer_forward, "mvm": mvm_forward,
    "syncnet": syncnet_forward}


# ------------------------------------------------------------------------------------------ profile

def profile_forward(name: str, network: Network, rate: float) -> None:
    """Print one network's time ÷ floor, its time with PyTorch's default linears, and its operators."""
    model, forward = network
    with torch.no_grad():
        forward()                                                        # warm-up (plans, packed weights)
        family_flops = counted_flops_by_family(forward)
        gflop = sum(family_flops.values())
        runs = _timing.median_clean(forward, want=3, most=5)
        with plain_linears(model) as switched:
            forward()
            mkl = _timing.median_clean(forward, want=3, most=5) if switched else None
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            forward()
    seconds = runs.median_s
    floor = gflop / rate
    by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.key_averages():
        entry = by_op[event.key]
        entry[0] += event.self_cpu_time_total / 1e6
        entry[1] += event.count
    family_time: dict[str, float] = defaultdict(float)
    for key, (cpu_s, _) in by_op.items():
        family_time[_family(key)] += cpu_s
    profiled = sum(family_time.values())
    print(f"\n== {name}: {seconds:.3f} s per forward{' (NOISY)' if runs.noisy else ''}, {gflop:.1f} GFLOP counted, "
          f"floor {floor:.3f} s -> time / floor = {seconds / floor:.2f} "
          f"(achieved {gflop / seconds:.0f} GFLOP/s of {rate:.0f})")
    if mkl is not None:
        print(f"   with PyTorch's default linears (MKL), side by side: {mkl.median_s:.3f} s"
              f"{' (NOISY)' if mkl.noisy else ''} -> oneDNN linears {mkl.median_s / seconds:.2f}x faster "
              f"({switched} linear layers)")
    for family in ("convolution", "matmul", "other"):
        achieved = f", {family_flops[family] / family_time[family]:.0f} GFLOP/s" \
            if family_flops[family] and family_time[family] else ""
        print(f"   {family:<12} {family_time[family]:7.3f} s = {100 * family_time[family] / profiled:3.0f} % of the "
              f"profiled time, {family_flops[family]:7.1f} GFLOP{achieved}")
    print(f"   {'operator (self CPU)':<44}{'s':>8}{'share':>8}{'calls':>7}")
    for key, (cpu_s, count) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:TOP]:
        print(f"   {key[:43]:<44}{cpu_s:8.3f}{100 * cpu_s / profiled:7.0f}%{count:7d}")


def counted_flops_by_family(forward: Callable[[], Any]) -> dict[str, float]:
    """GFLOP counted by ``torch.utils.flop_counter`` (oneDNN linears included) in one call, by operator family."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_timing.onednn_flop_formulas())
    with counter:
        forward()
    by_family: dict[str, float] = defaultdict(float)
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        by_family[_family(str(op))] += flops / 1e9
    return by_family


_CONV = ("conv", "mkldnn_convolution", "_convolution")
_MATMUL = ("addmm", "aten::mm", "aten.mm", "bmm", "matmul", "linear", "baddbmm", "scaled_dot_product")


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
    rates = _timing.matmul_rates()
    rate = max(rates.values())
    print(f"fp32 matmul, 2048³ (median of clean runs), {args.threads} threads: "
          + ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in rates.items())
          + f"; the floor uses {rate:.0f}")
    for name in args.only.split(","):
        if name not in FORWARDS:
            parser.error(f"--only: unknown network {name!r}; choose from {', '.join(NETWORKS)}")
        profile_forward(name, FORWARDS[name](work), rate)


if __name__ == "__main__":
    main()
