"""``talkbench evaluate | merge | leaderboard``."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer

from talkbench.cli.root import (fail, interval_settings, parse_weights, print_summary, progress_bar, stderr,
                                summary_format, user_errors)
from talkbench.demo import run_demo
from talkbench.engines import EngineError
from talkbench.engines.ray_engine import RayEngine, import_ray
from talkbench.engines.slurm_engine import SlurmSettings, evaluate_slurm, parse_array
from talkbench.evaluate import EvaluateConfig, RunResult, evaluate, parse_shard
from talkbench.leaderboard import build_leaderboard
from talkbench.measure import Engine
from talkbench.merge import merge_runs
from talkbench.observers import METRIC_COLUMNS, OPTIONS
from talkbench.protocols import PROTOCOLS

logger = logging.getLogger("talkbench")

#: Added to the error of a checkpoint that is neither given, cached nor downloadable.
OFFLINE_HINT = ("Without a download: `--protocol mini` scores WER1/CER1, LSE and PSNR/SSIM with the observers "
                "bundled in talkbench (synthetic-corpus faces only); official checkpoints must be downloaded by "
                "hand and passed with --weights NAME=PATH.")


def parse_key_values(items: List[str] | None, flag: str, example: str) -> dict[str, str]:
    """``KEY=VALUE`` items of a repeatable ``flag`` -> {key: value}; a malformed item is an ``error:``, exit 2."""
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"{flag} takes KEY=VALUE (e.g. {flag} {example}), got {item!r}.")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_options(items: List[str] | None) -> dict[str, str]:
    """``--option KEY=VALUE`` items -> {key: value} (typed and checked later by the observers' specs)."""
    return parse_key_values(items, "--option", "mini_lexicon=false")


def evaluate_command(
    generated: Path = typer.Argument(..., help="Folder of generated clips (same relative paths as the reference)."),
    reference: Optional[Path] = typer.Option(None, "--reference", "-r", help="Ground-truth folder (clips + transcripts)."),
    suite: str = typer.Option("auto", help="Suite layout: auto, lrs2, lrw, talklip-filelist, folder."),
    filelist: Optional[Path] = typer.Option(None, help="TalkLip filelist (test.wrd style) for --suite talklip-filelist."),
    metrics: Optional[str] = typer.Option(None, help="Comma-separated metric columns (default: the protocol's): "
                                          + ", ".join(METRIC_COLUMNS) + "."),
    protocol: str = typer.Option("talklip2023", help="; ".join(f"{p.name}: {p.title}" for p in PROTOCOLS.values())
                                 + "."),
    name: str = typer.Option("", "--name", help="Model name for the leaderboard row (default: the folder name)."),
    split: str = typer.Option("test", help="Split name recorded in the summary."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<name>)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH: use a local checkpoint file."),
    option: Optional[List[str]] = typer.Option(None, "--option", help="KEY=VALUE: an observer option ("
                                               + ", ".join(sorted(OPTIONS)) + "; see docs/observers)."),
    strict: bool = typer.Option(False, help="Stop at the first clip that fails."),
    shard: Optional[str] = typer.Option(None, help="K/N: evaluate the K-th of N deterministic shards."),
    retry_failed: bool = typer.Option(False, help="Recompute clips stored with an error."),
    lse_mode: Optional[str] = typer.Option(None, help="= --option lse_mode: wav2lip (whole frame, default) or "
                                           "pipeline (face tracks)."),
    lse_jpeg_compat: Optional[bool] = typer.Option(
        None, "--lse-jpeg-compat/--no-lse-jpeg-compat",
        help="= --option lse_jpeg_compat: the reference's JPEG round trip of frames (default: on for talklip2023)."),
    lse_min_track: Optional[int] = typer.Option(None, help="= --option lse_min_track (pipeline mode, default 100)."),
    lse_min_face_size: Optional[float] = typer.Option(None, help="= --option lse_min_face_size (pipeline, 100 px)."),
    lse_track_agg: Optional[str] = typer.Option(None, help="= --option lse_track_agg: first, best, mean."),
    lse_detector: Optional[str] = typer.Option(None, help="= --option lse_detector: dlib (offline) or s3fd "
                                               "(--weights s3fd=PATH)."),
    max_frames: Optional[int] = typer.Option(None, help="= --option max_frames: longer lip-reading clips are error "
                                             "rows (default: the checkpoint's limit, 500 for AV-HuBERT)."),
    ci: int = typer.Option(1, "--ci", help="Confidence intervals next to every metric: 1 (default) or 0 (off)."),
    ci_level: float = typer.Option(0.95, "--ci-level", help="Coverage of the intervals."),
    ci_resamples: int = typer.Option(10_000, "--ci-resamples", help="Bootstrap resamples."),
    ci_block: str = typer.Option("none", "--ci-block", help="none, or speaker: resample LRS2 speakers (the clip "
                                 "id's folder) as blocks, since one speaker's utterances are correlated."),
    output_format: Optional[str] = typer.Option(None, "--format", help="Summary on stdout: table, csv or json "
                                                "(default: table on a terminal, csv otherwise)."),
    as_json: bool = typer.Option(False, "--json", help="= --format json."),
    engine: str = typer.Option("local", "--engine", help="Where clips are measured: local (this process), ray (a "
                               "Ray Data actor pool; pip install \"talkbench[ray]\") or slurm (a submitit job array "
                               "of shards, then merge; pip install \"talkbench[slurm]\"). See docs/engines.md."),
    workers: Optional[int] = typer.Option(None, "--workers", help="ray: actors in the pool (default: one per CPU, or "
                                          "per GPU with --gpus-per-worker)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray: cluster to join (auto, "
                                              "ray://HOST:10001); default: start a local instance."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="ray: GPUs per actor (with --device cuda)."),
    batch_clips: int = typer.Option(4, "--batch-clips", help="ray: clips per actor call."),
    slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition", help="slurm: partition."),
    slurm_array: Optional[str] = typer.Option(None, "--slurm-array", help="slurm: N or N%P: N tasks = N shards "
                                              "(at most P running at once)."),
    slurm_gpus: int = typer.Option(0, "--slurm-gpus", help="slurm: GPUs per task."),
    slurm_cpus: int = typer.Option(2, "--slurm-cpus", help="slurm: CPUs per task."),
    slurm_time: int = typer.Option(240, "--slurm-time", help="slurm: time limit per task, minutes."),
    slurm_param: Optional[List[str]] = typer.Option(None, "--slurm-param", help="slurm: KEY=VALUE, another submitit "
                                                    "parameter (e.g. slurm_account=abc, mem_gb=32)."),
    slurm_cluster: str = typer.Option("slurm", "--slurm-cluster", help="slurm: slurm (sbatch) or local (the "
                                      "array as local processes: try a setup on one machine)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="slurm: submit, print the job ids and the merge command, "
                                 "and return."),
) -> None:
    """Score a folder of generated clips; per-clip rows are stored as they finish (re-run to resume)."""
    model = name or generated.resolve().name
    run_dir = out or Path("runs") / model
    overrides = parse_weights(weights)
    flags = {"lse_mode": lse_mode, "lse_jpeg_compat": lse_jpeg_compat, "lse_min_track": lse_min_track,
             "lse_min_face_size": lse_min_face_size, "lse_track_agg": lse_track_agg, "lse_detector": lse_detector,
             "max_frames": max_frames}
    options = {**{k: v for k, v in flags.items() if v is not None}, **parse_options(option)}
    fmt = summary_format(output_format, as_json)
    with user_errors(offline_hint=OFFLINE_HINT), engine_errors():
        config = EvaluateConfig(
            generated=generated, reference=reference, out=run_dir, suite=suite, filelist=filelist,
            metrics=tuple(m.strip() for m in (metrics or "").split(",") if m.strip()), protocol=protocol,
            model=model, split=split, device=device, weights=overrides, strict=strict,
            shard=parse_shard(shard) if shard else None, retry_failed=retry_failed, options=options,
            ci=interval_settings(ci, ci_level, ci_resamples, ci_block),
        )
        misplaced = [flag for flag, given, owner in (
            ("--workers", workers is not None, "ray"), ("--ray-address", ray_address is not None, "ray"),
            ("--slurm-array", slurm_array is not None, "slurm"), ("--no-wait", no_wait, "slurm"),
            ("--slurm-partition", slurm_partition is not None, "slurm")) if given and engine != owner]
        if misplaced:
            fail(f"{', '.join(misplaced)} only apply to another --engine (this run uses --engine {engine}).")
        if engine == "slurm":
            if not slurm_array:
                fail("--engine slurm needs --slurm-array N (the number of tasks = shards).")
            n_tasks, parallelism = parse_array(slurm_array)
            settings = SlurmSettings(array=n_tasks, parallelism=parallelism, partition=slurm_partition,
                                     gpus=slurm_gpus, cpus=slurm_cpus, time_min=slurm_time,
                                     params=_slurm_params(slurm_param), cluster=slurm_cluster)
            outcome = evaluate_slurm(config, settings, wait=not no_wait)
            if not isinstance(outcome, RunResult):
                typer.echo("\n".join(outcome.job_ids))
                stderr.print(f"submitted {len(outcome.job_ids)} task(s); once they have finished, merge with:")
                typer.echo(outcome.merge_command)
                return
            result = outcome
        else:
            config = replace(config, engine=_engine(engine, workers, ray_address, gpus_per_worker, batch_clips))
            started = time.perf_counter()
            with progress_bar() as bar:
                task = bar.add_task("evaluate", total=None, rate="-")

                def advance(done: int, total: int) -> None:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    bar.update(task, completed=done, total=total, rate=f"{done / elapsed:.2f}")

                result = evaluate(config, progress=advance)
    print_summary(result.summary, fmt)
    if result.n_failed:
        stderr.print(f"[yellow]{result.n_failed} of {result.n_clips} clip(s) failed[/yellow]; "
                     f"see the error column of {result.run_dir / 'clips.csv'}")
    stderr.print(f"results in {result.run_dir} ({result.computed} clip(s) computed in this run)")


ENGINES: tuple[str, ...] = ("local", "ray", "slurm")


@contextmanager
def engine_errors() -> Iterator[None]:
    """An engine that cannot run (missing extra, unreachable cluster, failed jobs) -> ``error:``, exit 2."""
    try:
        yield
    except EngineError as err:
        fail(str(err))


def _engine(name: str, workers: int | None, address: str | None, gpus_per_worker: float, batch_clips: int
            ) -> Engine | None:
    """The ``--engine`` of a run measured by :func:`evaluate` (None = local); ray needs its extra."""
    if name not in ENGINES:
        fail(f"--engine must be one of {', '.join(ENGINES)}, got {name!r}.")
    if name == "local":
        return None
    import_ray()  # a missing extra is an error before anything is read or written
    return RayEngine(address=address, workers=workers, gpus_per_worker=gpus_per_worker, batch_clips=batch_clips)


def _slurm_params(items: List[str] | None) -> dict[str, Any]:
    """``--slurm-param KEY=VALUE`` -> submitit parameters (integers typed as such)."""
    return {key: int(value) if value.lstrip("-").isdigit() else value
            for key, value in parse_key_values(items, "--slurm-param", "slurm_account=abc").items()}


def merge_command(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories of the shards."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write the merged run to."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Merge although shards are missing; the "
                                       "summary's `partial` column names them."),
    ci: int = typer.Option(1, "--ci", help="Confidence intervals: 1 (default) or 0 (off)."),
    ci_level: float = typer.Option(0.95, "--ci-level", help="Coverage of the intervals."),
    ci_resamples: int = typer.Option(10_000, "--ci-resamples", help="Bootstrap resamples."),
    ci_block: str = typer.Option("none", "--ci-block", help="none or speaker (block bootstrap over speakers)."),
    output_format: Optional[str] = typer.Option(None, "--format", help="Summary on stdout: table, csv or json."),
    as_json: bool = typer.Option(False, "--json", help="= --format json."),
) -> None:
    """Combine shard run directories into the summary a single run would give."""

    fmt = summary_format(output_format, as_json)
    with user_errors():
        summary = merge_runs(run_dirs, out, allow_partial=allow_partial,
                             ci=interval_settings(ci, ci_level, ci_resamples, ci_block))
    print_summary(summary, fmt)


def leaderboard_command(
    sources: List[Path] = typer.Argument(..., help="Run directories or CSV files in the leaderboard schema."),
    out: Path = typer.Option(Path("results/leaderboard.csv"), "--out", "-o", help="CSV to write (+ .md, PNGs)."),
    ci: int = typer.Option(1, "--ci", help="Mark rows tied with the best (paired tests on run directories): 1 or 0."),
    ci_resamples: int = typer.Option(10_000, "--ci-resamples", help="Bootstrap resamples of the tie tests."),
    ci_block: str = typer.Option("none", "--ci-block", help="none or speaker (block bootstrap over speakers)."),
) -> None:
    """Merge summary rows into a leaderboard CSV, a Markdown table and one PNG chart per metric (with intervals
    and ties)."""
    settings = interval_settings(ci, 0.95, ci_resamples, ci_block)
    with user_errors():
        rows = build_leaderboard(sources, out, settings)
    stdout_md = out.with_suffix(".md").read_text()
    typer.echo(stdout_md)
    stderr.print(f"{len(rows)} row(s) -> {out}")


def demo_command(
    out: Path = typer.Option(Path("results/demo"), "--out", "-o", help="Where the runs and leaderboard go."),
    work: Path = typer.Option(Path("runs/demo-work"), help="Scratch folder for the demo suite's clips."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH: add observers with local weights."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
) -> None:
    """Run the whole protocol on the embedded sample suite and print its leaderboard."""
    overrides = parse_weights(weights)
    started = time.perf_counter()
    with user_errors():
        run_demo(out, work, weights=overrides, device=device)
    typer.echo((out / "leaderboard.md").read_text())
    stderr.print(f"demo finished in {time.perf_counter() - started:.1f} s; leaderboard in {out / 'leaderboard.csv'}")


def register(app: typer.Typer) -> None:
    """Add ``evaluate``, ``merge``, ``leaderboard`` and ``demo`` to the ``talkbench`` app."""
    app.command("evaluate")(evaluate_command)
    app.command("merge")(merge_command)
    app.command("leaderboard")(leaderboard_command)
    app.command("demo")(demo_command)
