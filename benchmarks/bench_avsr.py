"""Speed and memory of the Auto-AVSR observer (WER_AVSR, LipScore) on CPU.

Run from the repository root:  ``.venv/bin/python benchmarks/bench_avsr.py [--threads 1] [--quick]``

What is measured (full-size stand-in weights from ``tests/recipe.py``, seed 0, written once in the official file
layout and loaded through :func:`talkbench.nets.avsr.load_auto_avsr` in a fresh process), on the 73 landmark-aligned
88×88 crops of ``meeting.mp4`` stored in the parity fixture (``tests/fixtures/avsr/inputs.npz``):

- load: wall time and peak RSS of loading the 1.0 GB file.
- encoder (what LipScore runs, twice per clip): ``AutoAVSR.encode``; its FLOPs counted by ``torch.utils.flop_counter``
  (matmuls and convolutions) and the **FLOP floor** = counted FLOPs ÷ this machine's fp32 matmul rate (2048³,
  measured in the same run: the faster of ``torch.mm`` (MKL) and oneDNN, ``_timing.matmul_rates``): encoder
  time ÷ floor says how far from the machine's matmul speed the network runs.
- beam: the official search (beam 40, CTC 0.1, max length = 73 frames: the stand-in weights never end a hypothesis
  early, so all 73 steps run), and the same search capped at 20 tokens (a trained model ends LRS sentences after
  10–20 word pieces), with talkbench's strategy (encoder output, CTC posteriors and each decoder layer's
  cross-attention keys/values computed once per clip, self-attention keys/values cached) and, side by side in
  this run, with ESPnet's (cross-attention keys/values projected from the encoder output copied for every
  hypothesis at every step, self-attention keys/values of the whole prefix recomputed at every step).
- the reference: the wall times its own code took on the same input and weights when the parity fixture was made
  (``tests/fixtures/avsr/expected.json``: ``encoder_seconds``, ``beam_seconds``; one thread). The reference code is
  not run from here (talkbench keeps no script that imports it); see tests/fixtures/avsr/PROVENANCE.md.

Figures are seconds and seconds per second of video (25 fps). Timing method (``benchmarks/_timing.py``): one
warm-up, then runs until 3 are clean (other processes used <= 10 % of a CPU), at most 6; the median of the clean
runs (flagged noisy otherwise). With one thread, CPU seconds are the robust figure on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/recipe.py (stand-in weights)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_timing.py

import _timing  # noqa: E402
from _timing import counted_gflop, peak_rss_mib, reset_peak_rss, rss_mib  # noqa: E402

logger = logging.getLogger("bench_avsr")

FPS = 25.0
FIXTURE = ROOT / "tests" / "fixtures" / "avsr"


def median_clean(fn: Callable[[], Any], quick: bool = False) -> dict[str, Any]:
    runs = _timing.median_clean(fn, most=1 if quick else 6, warmup=not quick)
    return {"median_s": round(runs.median_s, 3), "cpu_s": round(runs.median_cpu_s, 3),
            "runs": [round(t.wall_s, 3) for t in runs.timings],
            "others_share": [round(t.others_share, 2) for t in runs.timings], "clean": not runs.noisy}


def standin_checkpoint(directory: Path) -> Path:
    """Write (once) the full-size stand-in checkpoint: a plain state dict, as the model zoo's files."""
    from recipe import filled_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vsr_trlrs2lrs3vox2avsp_base_standin.pth"
    if not path.exists():
        t0 = time.perf_counter()
        torch.save(OrderedDict(filled_state_dict(FIXTURE / "keys.json")), path)
        logger.info("wrote %s (%.2f GB) in %.1f s", path, path.stat().st_size / 1e9, time.perf_counter() - t0)
    return path


class EspnetStyleDecoder:
    """ESPnet's execution strategy (``TransformerDecoder.batch_score`` → ``forward_one_step`` with its layer cache),
    for the side-by-side ratio: every layer keeps its *inputs* for the prefix; at every step it normalises all of
    them and projects self-attention keys/values for all positions, and projects cross-attention keys/values from a
    copy of the encoder output per hypothesis (``xs = x.expand(n_batch, ...)``); only the last position's query,
    attention output and feed-forward are new. Same numbers as :class:`IncrementalDecoder`."""

    def __init__(self, model, memory: torch.Tensor, incremental: type) -> None:
        self.inner = incremental(model, memory)  # talkbench's decoder, reused for its sub-modules and helpers only
        self.memory = memory
        self.inputs: list[torch.Tensor] | None = None

    def select(self, index: torch.Tensor) -> None:
        if self.inputs is not None:
            self.inputs = [x[index] for x in self.inputs]

    @torch.no_grad()
    def step(self, last_tokens: torch.Tensor) -> torch.Tensor:
        from talkbench.nets.avsr_decoding import _absolute_position

        inner = self.inner
        decoder = inner.decoder
        embed, pos = decoder.embed[0], decoder.embed[1]
        x = embed(last_tokens)[:, None] * pos.xscale + _absolute_position(inner.length, pos.d_model,
                                                                          last_tokens.device)
        n = x.size(0)
        copies = self.memory[None].expand(n, -1, -1)
        inputs = []
        for i, layer in enumerate(inner.layers):
            full = x if self.inputs is None else torch.cat([self.inputs[i], x], dim=1)
            inputs.append(full)
            h = layer.norm1(full)
            k = inner._heads(layer.self_attn, layer.self_attn.linear_k, h)
            v = inner._heads(layer.self_attn, layer.self_attn.linear_v, h)
            x = x + inner._attend(layer.self_attn, h[:, -1:], k, v)
            k_mem = inner._heads(layer.src_attn, layer.src_attn.linear_k, copies)
            v_mem = inner._heads(layer.src_attn, layer.src_attn.linear_v, copies)
            x = x + inner._attend(layer.src_attn, layer.norm2(x), k_mem, v_mem)
            x = x + layer.feed_forward(layer.norm3(x))
        self.inputs = inputs
        inner.length += 1
        return torch.log_softmax(decoder.output_layer(decoder.after_norm(x[:, 0])), dim=-1)


def run_search(model, memory: torch.Tensor, max_length: int | None, style: str) -> list[int]:
    from talkbench.nets import avsr_decoding

    if style == "talkbench":
        return avsr_decoding.beam_search(model, memory, max_length=max_length)[0].yseq
    original = avsr_decoding.IncrementalDecoder
    avsr_decoding.IncrementalDecoder = lambda m, mem: EspnetStyleDecoder(m, mem, original)  # type: ignore
    try:
        return avsr_decoding.beam_search(model, memory, max_length=max_length)[0].yseq
    finally:
        avsr_decoding.IncrementalDecoder = original


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from talkbench.nets.avsr import load_auto_avsr, video_input

    torch.set_num_threads(args.threads)
    path = standin_checkpoint(Path(args.workdir))
    rates = _timing.matmul_rates(repeats=5)
    rate = max(rates.values())          # the floor: the faster of MKL and oneDNN
    load_avg = os.getloadavg()
    t0 = time.perf_counter()
    model = load_auto_avsr(path, "cpu")
    load_s, load_peak, resident = time.perf_counter() - t0, peak_rss_mib(), rss_mib()
    reset_peak_rss()

    with np.load(FIXTURE / "inputs.npz") as z:
        crops = z["crops"]
    video = video_input(torch.from_numpy(crops))
    seconds = crops.shape[0] / FPS
    with torch.no_grad():
        encoder = median_clean(lambda: model.encode(video), args.quick)
        gflop = counted_gflop(lambda: model.encode(video))
        memory = model.encode(video)[0]
    encoder_peak = peak_rss_mib()
    floor_s = gflop / rate
    best: dict[str, list[int]] = {}
    beam = median_clean(lambda: best.__setitem__("full", run_search(model, memory, None, "talkbench")), args.quick)
    beam20 = median_clean(lambda: best.__setitem__("cap20", run_search(model, memory, 20, "talkbench")), args.quick)
    espnet20 = median_clean(lambda: best.__setitem__("espnet20", run_search(model, memory, 20, "espnet")),
                            args.quick)
    if best["espnet20"] != best["cap20"]:
        raise RuntimeError("the ESPnet-style search found another best hypothesis; the comparison is void")
    reference = json.loads((FIXTURE / "expected.json").read_text())["full_beam40"]
    return {
        "frames": int(crops.shape[0]), "threads": args.threads, "torch": torch.__version__,
        "loadavg_before": [round(v, 2) for v in load_avg], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "matmul_gflops": {k: round(v, 1) for k, v in rates.items()},
        "load_s": round(load_s, 2), "load_peak_mib": round(load_peak), "resident_after_load_mib": round(resident),
        "encoder": encoder, "encoder_gflop": round(gflop, 2), "encoder_flop_floor_s": round(floor_s, 3),
        "encoder_over_floor": round(encoder["median_s"] / floor_s, 2),
        "encoder_s_per_video_s": round(encoder["median_s"] / seconds, 3), "encoder_peak_mib": round(encoder_peak),
        "beam40": beam, "beam40_best_tokens": len(best["full"]) - 1,  # incl. the final <eos>
        "beam40_s_per_video_s": round(beam["median_s"] / seconds, 3),
        "beam40_cap20": beam20, "beam40_cap20_espnet_style": espnet20,
        "ratio_espnet_style_over_talkbench_cap20": round(espnet20["median_s"] / beam20["median_s"], 2),
        "reference_recorded": {"encoder_s": round(reference["encoder_seconds"], 2),
                               "beam40_s": round(reference["beam_seconds"], 2),
                               "note": "auto_avsr's own code, same weights and input, 1 thread, when the fixture "
                                       "was made (tests/fixtures/avsr/PROVENANCE.md)"},
        "ratio_reference_over_talkbench_beam40": round(reference["beam_seconds"] / beam["median_s"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/talkbench-bench-avsr",
                        help="where the 1.0 GB stand-in checkpoint is written (once)")
    parser.add_argument("--quick", action="store_true", help="one run per item (no warm-up, no clean-run repeats)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if os.environ.get("BENCH_AVSR_CHILD") != "1":
        # a fresh process, so that the load peak is not inflated by writing the checkpoint
        standin_checkpoint(Path(args.workdir))
        env = dict(os.environ, BENCH_AVSR_CHILD="1")
        sys.exit(subprocess.call([sys.executable, __file__, *sys.argv[1:]], env=env))
    print(json.dumps(measure(args), indent=1))


if __name__ == "__main__":
    main()
