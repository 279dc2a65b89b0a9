"""The paper's ablation in miniature: TalkLip-mini trained with and without the lip-reading expert, on CPU.

Each run trains a generator with ``talkbench train`` (preset ``mini``, :file:`talkbench/train/talklip_mini.toml`)
on the train split of a synthetic corpus, generates the test split (identity = frame 0, every frame generated,
as the paper's inference), and scores it under protocol ``mini`` (WER with mini lip reader B — never the expert
A —, LSE-C/LSE-D with the mini SyncNet, PSNR/SSIM against the ground truth). Configurations differ only in
the loss weights and the audio encoder (:data:`CONFIGS`); every configuration runs with the same seeds and steps.

Layout of ``OUT`` (every stage resumes: a finished training, generated clip or scored clip is kept)::

    OUT/<config>/seed<k>/train/       checkpoints + train_log.jsonl
    OUT/<config>/seed<k>/generated/   the test split as generated (LRS2 layout)
    OUT/<config>/seed<k>/eval/        the evaluate run dir (summary.csv, clips.csv, store)
    OUT/ground-truth/eval/            the test split itself, scored the same way

:func:`report` turns them into ``mini_ablation.csv`` (mean ± std per configuration), ``mini_ablation_runs.csv``
(one row per run), ``mini_ablation.md`` and ``mini_ablation.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from talkbench.evaluate import EvaluateConfig, evaluate
from talkbench.generate import generate_reference_folder
from talkbench.nets.talklip import unwrap_state_dict
from talkbench.safe_unpickle import load_checkpoint
from talkbench.observers import METRICS as METRIC_SPECS
from talkbench.statistics import ClipStats, common_clips, paired_bootstrap
from talkbench.store import ResultStore
from talkbench.summary import IntervalSettings, clip_stats, write_csv
from talkbench.train import load_config
from talkbench.train.loop import build_trainer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AblationConfig:
    """One row of the ablation: a name, what it changes on top of the ``mini`` preset, and a description."""

    name: str
    overrides: Mapping[str, Any]
    description: str


CONFIGS: tuple[AblationConfig, ...] = (
    AblationConfig("no-lip", {"lip_weight": 0.0, "contrastive_weight": 0.0},
                   "L1 + GAN only (the paper's 'Base w/o L_lip'); global (transformer) audio encoder"),
    AblationConfig("lip", {"contrastive_weight": 0.0},
                   "+ lip-reading loss from expert A; global audio encoder"),
    AblationConfig("lip+contrastive", {},
                   "+ lip-reading loss + audio-visual contrastive loss; global audio encoder"),
    AblationConfig("lip+contrastive-local", {"audio_encoder": "local"},
                   "as lip+contrastive with a local audio encoder (7-frame CNN window) instead of the transformer"),
)
CONFIG_NAMES: tuple[str, ...] = tuple(c.name for c in CONFIGS)
#: the columns the ablation reports, with the direction that is better
METRICS: tuple[str, ...] = ("wer1", "cer1", "lse_c", "lse_d", "av_offset", "psnr", "ssim")
GROUND_TRUTH = "ground-truth"
DEFAULT_STEPS = 300
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)


def config_by_name(name: str) -> AblationConfig:
    """The :class:`AblationConfig` called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    for config in CONFIGS:
        if config.name == name:
            return config
    raise ValueError(f"unknown ablation configuration {name!r}; known: {', '.join(CONFIG_NAMES)}.")


def run_dir(out: Path, config: str, seed: int) -> Path:
    """``OUT/<config>/seed<k>``: the folder of one run (train/, generated/, eval/)."""
    return Path(out) / config / f"seed{seed}"


# ----------------------------------------------------------------------------------------------------
# One run: train -> generate -> evaluate
# ----------------------------------------------------------------------------------------------------

def train_generator(corpus: Path, out: Path, config: str, seed: int, steps: int = DEFAULT_STEPS,
                    threads: int = 1) -> Path:
    """Train (or resume / reuse) one configuration; returns the generator checkpoint of step ``steps``."""
    train_dir = run_dir(out, config, seed) / "train"
    final = train_dir / f"checkpoint_step{steps:09d}.pth"
    if final.is_file():
        return final
    corpus = Path(corpus)
    cfg = load_config("mini", data_root=corpus / "train" / "main", train_list=corpus / "train" / "filelist.txt",
                      out_dir=train_dir, seed=seed, max_steps=steps, num_threads=threads,
                      **dict(config_by_name(config).overrides))
    trainer = build_trainer(cfg, resume=True)
    trainer.run()
    if not final.is_file():   # the last step was not on a checkpoint boundary
        trainer.save()
    return final


def evaluate_split(generated: Path, reference: Path, out: Path, model: str) -> dict[str, Any]:
    """Score ``generated`` against ``reference`` under protocol ``mini``; returns the summary row."""
    # no metrics named: the mini protocol's default metrics (WER/CER, LSE, PSNR/SSIM)
    config = EvaluateConfig(generated=Path(generated), reference=Path(reference), out=Path(out), metrics=(),
                            suite="lrs2", model=model, split="mini-test", protocol="mini")
    return evaluate(config).summary


def run_one(corpus: Path, out: Path, config: str, seed: int, steps: int = DEFAULT_STEPS, threads: int = 1,
            ) -> dict[str, Any]:
    """Train, generate and evaluate one (configuration, seed); returns the summary row."""
    torch.set_num_threads(threads)
    _worker_logging()
    checkpoint = train_generator(corpus, out, config, seed, steps, threads)
    base = run_dir(out, config, seed)
    generated = generate_reference_folder(checkpoint, Path(corpus) / "test", base / "generated")
    summary = evaluate_split(generated, Path(corpus) / "test", base / "eval", f"talklip-mini/{config}/seed{seed}")
    logger.info("%s seed %d: %s", config, seed, {m: summary.get(m) for m in METRICS})
    return summary


def evaluate_ground_truth(corpus: Path, out: Path, threads: int = 1) -> dict[str, Any]:
    """The test split scored against itself (the ceiling row)."""
    torch.set_num_threads(threads)
    _worker_logging()
    reference = Path(corpus) / "test"
    return evaluate_split(reference, reference, Path(out) / GROUND_TRUTH / "eval", GROUND_TRUTH)


def _worker_logging() -> None:
    # worker processes: show talkbench's INFO lines, on stderr
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(message)s")


def run_ablation(corpus: Path, out: Path, configs: Sequence[str] = CONFIG_NAMES,
                 seeds: Sequence[int] = DEFAULT_SEEDS, steps: int = DEFAULT_STEPS, jobs: int = 2) -> dict[str, str]:
    """Every (configuration, seed) plus the ground-truth row, ``jobs`` processes at a time (1 thread each).

    A failing run is logged and recorded (returned as ``{run: error}``); the others go on.
    """
    for name in configs:
        config_by_name(name)
    units = [(c, s) for s in seeds for c in configs]
    errors: dict[str, str] = {}
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(evaluate_ground_truth, Path(corpus), Path(out)): GROUND_TRUTH}
        futures.update({pool.submit(run_one, Path(corpus), Path(out), c, s, steps): f"{c}/seed{s}" for c, s in units})
        for future in as_completed(futures):
            name = futures[future]
            try:
                future.result()
                logger.info("finished %s", name)
            except Exception as err:  # noqa: BLE001 - a failed run is a recorded row, the others go on
                logger.error("%s failed: %s", name, err)
                errors[name] = f"{type(err).__name__}: {err}"
    if errors:
        (Path(out) / "errors.json").write_text(json.dumps(errors, indent=2))
    return errors


# ----------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------

def _read_summary(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows[0] if rows else None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def collect_runs(out: Path) -> list[dict[str, Any]]:
    """One row per finished run (configuration, seed, steps, metrics, n_clips, n_failed), ground truth first."""
    rows: list[dict[str, Any]] = []
    truth = _read_summary(Path(out) / GROUND_TRUTH / "eval" / "summary.csv")
    if truth:
        rows.append({"config": GROUND_TRUTH, "seed": "", "steps": "", "n_clips": truth.get("n_clips"),
                     "n_failed": truth.get("n_failed"), **{m: _number(truth.get(m)) for m in METRICS}})
    for config in CONFIGS:
        for seed_dir in sorted((Path(out) / config.name).glob("seed*")):
            summary = _read_summary(seed_dir / "eval" / "summary.csv")
            if summary is None:
                continue
            steps = _trained_steps(seed_dir / "train")
            rows.append({"config": config.name, "seed": int(seed_dir.name[4:]), "steps": steps,
                         "n_clips": summary.get("n_clips"), "n_failed": summary.get("n_failed"),
                         **{m: _number(summary.get(m)) for m in METRICS}})
    return rows


def _trained_steps(train_dir: Path) -> int | None:
    latest = train_dir / "latest.json"
    return int(json.loads(latest.read_text())["global_step"]) if latest.is_file() else None


def aggregate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation (n - 1) of each metric over the seeds of each configuration."""
    table = []
    descriptions = {c.name: c.description for c in CONFIGS}
    descriptions[GROUND_TRUTH] = "the test clips themselves (ceiling)"
    for name in [GROUND_TRUTH, *CONFIG_NAMES]:
        group = [r for r in runs if r["config"] == name]
        if not group:
            continue
        row: dict[str, Any] = {"config": name, "description": descriptions[name], "n_seeds": len(group),
                               "seeds": " ".join(str(r["seed"]) for r in group if r["seed"] != ""),
                               "steps": group[0]["steps"]}
        for metric in METRICS:
            values = [r[metric] for r in group if r[metric] is not None]
            row[f"{metric}_mean"] = statistics.fmean(values) if values else None
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        table.append(row)
    return table


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


DIGITS = {"wer1": 2, "cer1": 2, "lse_c": 3, "lse_d": 3, "av_offset": 2, "psnr": 2, "ssim": 4}
ARROWS = {"wer1": "↓", "cer1": "↓", "lse_c": "↑", "lse_d": "↓", "av_offset": "→0", "psnr": "↑", "ssim": "↑"}


def markdown(table: Sequence[Mapping[str, Any]]) -> str:
    """The aggregated table as Markdown (mean ± std over seeds)."""
    head = ["configuration", "seeds", *[f"{m} {ARROWS[m]}" for m in METRICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [row["config"], str(row["n_seeds"]) if row["config"] != GROUND_TRUTH else "—"]
        cells += [_fmt(row[f"{m}_mean"], row[f"{m}_std"], DIGITS[m]) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One panel per metric: bars = mean over seeds, error bars = standard deviation."""
    import matplotlib  # lazy: matplotlib (~0.5 s to import) only when the report draws its chart

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("wer1", "lse_c", "lse_d", "psnr", "ssim")
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4))
    names = [r["config"] for r in table]
    for ax, metric in zip(axes, shown):
        means = [r[f"{metric}_mean"] if r[f"{metric}_mean"] is not None else 0.0 for r in table]
        stds = [r[f"{metric}_std"] or 0.0 for r in table]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3,
               color=["#999999" if n == GROUND_TRUTH else "#4C72B0" for n in names])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{metric} ({ARROWS[metric]})")
    fig.suptitle("TalkLip-mini ablation (mean ± std over training seeds, synthetic test split, protocol mini)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: The configuration every other one is compared with, and the metrics of the paired comparisons.
BASELINE = "no-lip"
PAIRED_METRICS: tuple[str, ...] = ("wer1", "cer1", "lse_c", "lse_d")


def _eval_records(out: Path, config: str, seed: int) -> list[Any] | None:
    store_dir = run_dir(out, config, seed) / "eval"
    if not (store_dir / "store.sqlite").is_file():
        return None
    with ResultStore(store_dir) as store:
        return list(store.records())


def _concatenate(parts: Sequence[tuple[int, ClipStats]]) -> ClipStats:
    """Per-seed clip arrays one after the other; clip ids become ``seed<k>/<clip id>``."""
    fields = {}
    for name in ("values", "weights", "edits", "units", "hits"):
        arrays = [getattr(stats, name) for _, stats in parts]
        if all(a is not None for a in arrays):
            fields[name] = np.concatenate(arrays)
    ids = tuple(f"seed{seed}/{clip_id}" for seed, stats in parts for clip_id in stats.clip_ids or ())
    return ClipStats(**fields, clip_ids=ids)


def paired_against_baseline(out: Path, ci: IntervalSettings = IntervalSettings(),
                            metrics: Sequence[str] = PAIRED_METRICS) -> list[dict[str, Any]]:
    """Every configuration against :data:`BASELINE` on the same test clips, per seed and pooled over seeds.

    Per seed: the two runs of that seed, paired by clip (:func:`talkbench.statistics.paired_bootstrap`: the
    difference configuration − baseline, its percentile interval, p = P(the configuration is not better)).
    Pooled: the clips of every seed one after the other (Σ edits / Σ words over all of them for WER), resampled
    with each test clip's seeds as one block (a clip is the same clip in every seed).

    Returns:
        rows ``{config, seed ("pooled" for the pooled row), metric, baseline, value, difference, lo, hi, p_value,
        n_clips}``.
    """
    rows: list[dict[str, Any]] = []
    seeds = sorted({int(p.name[4:]) for p in (Path(out) / BASELINE).glob("seed*")})
    for config in CONFIG_NAMES:
        if config == BASELINE:
            continue
        pairs = []
        for seed in seeds:
            base, other = _eval_records(out, BASELINE, seed), _eval_records(out, config, seed)
            if base is not None and other is not None:
                pairs.append((seed, base, other))
        for metric in metrics:
            spec = METRIC_SPECS[metric]
            aligned = []
            for seed, base, other in pairs:
                a, b = common_clips(clip_stats(metric, base, "mini")[0], clip_stats(metric, other, "mini")[0])
                aligned.append((seed, a, b))
                rows.append(_paired_row(config, seed, metric, a, b, spec, ci))
            if len(aligned) > 1:
                a = _concatenate([(seed, a) for seed, a, _ in aligned])
                b = _concatenate([(seed, b) for seed, _, b in aligned])
                groups = [clip_id.split("/", 1)[1] for clip_id in a.clip_ids or ()]
                rows.append(_paired_row(config, "pooled", metric, a, b, spec, ci, groups))
    return rows


def _paired_row(config: str, seed: Any, metric: str, a: ClipStats, b: ClipStats, spec: Any,
                ci: IntervalSettings, groups: Sequence[str] | None = None) -> dict[str, Any]:
    result = paired_bootstrap(a, b, spec.aggregation, spec.direction, ci.level or 0.95, ci.resamples, ci.seed,
                              groups=groups)
    return {"config": config, "seed": seed, "metric": metric, "baseline": result.a, "value": result.b,
            "difference": result.difference, "lo": result.lo, "hi": result.hi, "p_value": result.p_value,
            "n_clips": a.n}


def paired_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The pooled comparisons as Markdown, one line per configuration and metric (per-seed rows in the CSV)."""
    lines = [f"| configuration | metric | {BASELINE} | configuration | difference (95 % interval) | p (not better) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        if row["seed"] != "pooled":
            continue
        digits = DIGITS.get(row["metric"], 3)
        lines.append(f"| {row['config']} | {row['metric']} | {row['baseline']:.{digits}f} | {row['value']:.{digits}f} | "
                     f"{row['difference']:+.{digits}f} ({row['lo']:+.{digits}f}, {row['hi']:+.{digits}f}) | "
                     f"{row['p_value']:.4f} |")
    return "\n".join(lines) + "\n"


def report(out: Path, prefix: Path, ci: IntervalSettings = IntervalSettings()) -> list[dict[str, Any]]:
    """Write ``<prefix>.csv`` (aggregated), ``<prefix>_runs.csv`` (per run), ``<prefix>.md`` and ``<prefix>.png``,
    and, when the baseline configuration ran, ``<prefix>_paired.csv`` / ``.md`` (:func:`paired_against_baseline`).

    Raises:
        ValueError: no finished run under ``out``.
    """
    runs = collect_runs(out)
    if not runs:
        raise ValueError(f"{out}: no finished ablation run (expected <config>/seed<k>/eval/summary.csv).")
    table = aggregate(runs)
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_csv(prefix.with_name(prefix.name + "_runs.csv"), runs, list(runs[0]))
    write_csv(prefix.with_suffix(".csv"), table, list(table[0]))
    prefix.with_suffix(".md").write_text(markdown(table))
    plot(table, prefix.with_suffix(".png"))
    paired = paired_against_baseline(out, ci)
    if paired:
        write_csv(prefix.with_name(prefix.name + "_paired.csv"), paired, list(paired[0]))
        prefix.with_name(prefix.name + "_paired.md").write_text(paired_markdown(paired))
    return table


def best_run(out: Path, config: str | None = None, metric: str = "wer1") -> Path:
    """The generator checkpoint of the seed with the lowest ``metric`` within ``config`` (default: the
    configuration with the lowest mean ``metric`` over its seeds).

    Raises:
        ValueError: no finished run (of ``config``).
    """
    all_runs = collect_runs(out)
    if config is None:
        means = [r for r in aggregate(all_runs) if r["config"] != GROUND_TRUTH and r[f"{metric}_mean"] is not None]
        if not means:
            raise ValueError(f"{out}: no finished ablation run.")
        config = min(means, key=lambda r: r[f"{metric}_mean"])["config"]
    runs = [r for r in all_runs if r["config"] == config and r[metric] is not None]
    if not runs:
        raise ValueError(f"{out}: no finished run of {config!r}.")
    best = min(runs, key=lambda r: r[metric])
    return run_dir(out, config, int(best["seed"])) / "train" / f"checkpoint_step{int(best['steps']):09d}.pth"


def export_generator(checkpoint: Path, dest: Path) -> Path:
    """Copy a trained generator as a small inference file (TalkLip layout, no optimizer state)."""
    obj = load_checkpoint(checkpoint, map_location="cpu")
    state = {k: v.detach().clone() for k, v in unwrap_state_dict(obj, checkpoint).items()}
    payload = {"state_dict": state, "optimizer": None, "global_step": int(obj.get("global_step", 0)),
               "global_epoch": int(obj.get("global_epoch", 0))}
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, dest)
    return dest


__all__ = ["AblationConfig", "CONFIGS", "CONFIG_NAMES", "METRICS", "aggregate", "best_run", "collect_runs",
           "config_by_name", "evaluate_ground_truth", "export_generator", "markdown", "plot",
           "report", "run_ablation", "run_one", "train_generator"]
