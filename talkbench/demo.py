"""``talkbench demo``: the main job on the embedded default, with nothing to download.

It builds a small LRS2-layout suite from the sample clips shipped in ``talkbench/data/demo`` and
"generated" versions of it made by simple baselines that need no training:

- ``ground-truth``: the reference clips themselves (the ceiling of every metric);
- ``degraded``: each frame blurred and re-encoded at low quality (image quality drops);
- ``still-frame``: the first frame repeated with the original audio (no lip motion at all);
- ``audio-shift-5``: the reference video with its audio delayed by 5 frames (out of sync);
- ``talklip-mini``: the bundled TalkLip-mini generator (card ``talklip-mini``, from the ablation of
  :mod:`talkbench.train.ablation`) driven by each clip's audio, identity = its first frame (synthetic suite only).

With the mini observers that ship in the package (small lip reader B and SyncNet trained by talkbench on
its synthetic corpus: ``protocol = mini``), the suite is a synthetic test split and every clip is scored
for WER, viseme error rate (VER), LSE-C/LSE-D and PSNR/SSIM (the protocol's default metrics); without them,
the shipped sample clips are scored for image quality.
The summary rows are merged into ``results/demo/leaderboard.csv`` (+ ``.md`` and one PNG per metric).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from talkbench import media, protocols
from talkbench import weights as weights_module
from talkbench.evaluate import EvaluateConfig, RunResult, evaluate
from talkbench.generate import generate_reference_folder
from talkbench.leaderboard import build_leaderboard
from talkbench.synthetic.corpus import synthesize_corpus

logger = logging.getLogger(__name__)

MINI_CARDS: tuple[str, ...] = ("mini-lipreader-b", "mini-syncnet")
MINI_GENERATOR_CARD = "talklip-mini"
N_SYNTHETIC_CLIPS = 12
SHIFT_FRAMES = 5


def sample_clips() -> list[Path]:
    """The shipped sample clips (mp4 with a ``.txt`` transcript beside each)."""
    folder = resources.files("talkbench") / "data" / "demo"
    return sorted(Path(str(p)) for p in folder.iterdir() if str(p).endswith(".mp4"))


def _still(clip: media.Clip) -> tuple[np.ndarray, np.ndarray | None]:
    return np.repeat(clip.frames[:1], clip.num_frames, axis=0), clip.audio_int16


def _degraded(clip: media.Clip) -> tuple[np.ndarray, np.ndarray | None]:
    # A separable 5-tap binomial blur: deterministic and dependency-free.
    kernel = np.array([1, 4, 6, 4, 1], dtype=np.float32) / 16
    frames = clip.frames.astype(np.float32)
    for axis in (1, 2):
        frames = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, frames)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8), clip.audio_int16


def _audio_shift(clip: media.Clip) -> tuple[np.ndarray, np.ndarray | None]:
    if clip.audio_int16 is None:
        return clip.frames, None
    delay = SHIFT_FRAMES * media.SAMPLE_RATE // 25
    shifted = np.concatenate([np.zeros(delay, np.int16), clip.audio_int16[:-delay]])
    return clip.frames, shifted


@dataclass(frozen=True)
class Baseline:
    """A generated-clip maker that needs no training."""

    name: str
    make: Callable[[media.Clip], tuple[np.ndarray, np.ndarray | None]] | None  # None = copy the file
    crf: int | None = None


BASELINES: tuple[Baseline, ...] = (
    Baseline("ground-truth", None),
    Baseline("degraded", _degraded, crf=35),
    Baseline("still-frame", _still),
    Baseline("audio-shift-5", _audio_shift),
)


def build_suite(work: Path) -> Path:
    """Reference folder in LRS2 layout: ``main/demo/<clip>.mp4`` + ``<clip>.txt`` (``Text:  WORDS``)."""
    reference = work / "reference"
    speaker = reference / "main" / "demo"
    speaker.mkdir(parents=True, exist_ok=True)
    for clip in sample_clips():
        shutil.copyfile(clip, speaker / clip.name)
        words = clip.with_suffix(".txt").read_text().strip().upper()
        (speaker / clip.with_suffix(".txt").name).write_text(f"Text:  {words}\n")
    return reference


def make_generated(reference: Path, work: Path, baseline: Baseline) -> Path:
    """Write the baseline's version of every reference clip at the same relative path."""
    out_root = work / "generated" / baseline.name
    for clip_path in sorted(reference.rglob("*.mp4")):
        target = out_root / clip_path.relative_to(reference)
        if clip_path.with_suffix(".npy").exists():  # keep the face boxes beside the clip
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clip_path.with_suffix(".npy"), target.with_suffix(".npy"))
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if baseline.make is None:
            shutil.copyfile(clip_path, target)
            continue
        frames, audio = baseline.make(media.decode_clip(clip_path))
        media.write_clip(target, frames, audio, fps=25.0, codec="h264", crf=baseline.crf)
    return out_root


def mini_observers_available() -> bool:
    """True when the mini observers' weights ship with this install (cards ``mini-*``)."""
    try:
        for card in MINI_CARDS:
            weights_module.resolve(card, download=False)
    except (weights_module.WeightsError, KeyError, ValueError, OSError) as err:
        logger.info("mini observers unavailable (%s); the demo scores image quality only", err)
        return False
    return True


def mini_generator() -> Path | None:
    """The bundled TalkLip-mini generator file, or None when this install does not ship it."""
    try:
        return weights_module.resolve(MINI_GENERATOR_CARD, download=False)
    except (weights_module.WeightsError, KeyError, ValueError, OSError) as err:
        logger.info("TalkLip-mini unavailable (%s); the demo runs the baselines only", err)
        return None


def build_synthetic_suite(work: Path, n_clips: int = N_SYNTHETIC_CLIPS) -> Path:
    """The synthetic test split (seed 0, as the mini observers' reported scores) in LRS2 layout."""
    corpus = work / "corpus"
    reference = corpus / "test"
    if len(list(reference.rglob("*.mp4"))) < n_clips:
        synthesize_corpus(corpus, n_train=0, n_test=n_clips, seed=0, workers=2)
    return reference


def run_demo(out: Path, work: Path, metrics: Sequence[str] | None = None,
             weights: Mapping[str, Path] | None = None, device: str = "cpu",
             n_clips: int = N_SYNTHETIC_CLIPS) -> list[RunResult]:
    """Build the suite and baselines, evaluate each, write the leaderboard; returns the run results.

    With the mini observers shipped (the default install), the suite is a synthetic test split and the
    whole protocol runs under ``--protocol mini``; otherwise the shipped sample clips are scored for
    image quality only.
    """
    if mini_observers_available():
        reference, protocol, generator = build_synthetic_suite(work, n_clips), protocols.MINI, mini_generator()
    else:
        reference, protocol, generator = build_suite(work), protocols.TALKLIP2023, None
    metrics = tuple(metrics or protocol.default_metrics)
    scratch = work / protocol.name
    generated: dict[str, Path] = {b.name: make_generated(reference, scratch, b) for b in BASELINES}
    if generator is not None:
        generated[MINI_GENERATOR_CARD] = generate_reference_folder(
            generator, reference, scratch / "generated" / MINI_GENERATOR_CARD)
    results: list[RunResult] = []
    for name, folder in generated.items():
        config = EvaluateConfig(generated=folder, reference=reference, out=out / "runs" / name,
                                metrics=metrics, suite="lrs2", model=name, split="demo",
                                protocol=protocol.name, device=device, weights=dict(weights or {}))
        results.append(evaluate(config))
        logger.info("%s: %s", name, {m: results[-1].summary.get(m) for m in metrics})
    build_leaderboard([r.run_dir for r in results], out / "leaderboard.csv")
    return results
