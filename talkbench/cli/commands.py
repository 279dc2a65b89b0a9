"""``talkbench evaluate | merge | leaderboard``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import List, Optional

import typer

from talkbench.cli import (app, fail, parse_weights, print_summary, progress_bar, stderr, summary_format,
                           user_errors)
from talkbench.evaluate import EvaluateConfig, evaluate, parse_shard
from talkbench.observers import METRIC_COLUMNS, OPTIONS
from talkbench.protocols import PROTOCOLS

logger = logging.getLogger("talkbench")

#: Added to the error of a checkpoint that is neither given, cached nor downloadable.
OFFLINE_HINT = ("Without a download: `--protocol mini` scores WER1/CER1, LSE and PSNR/SSIM with the observers "
                "bundled in talkbench (synthetic-corpus faces only); official checkpoints must be downloaded by "
                "hand and passed with --weights NAME=PATH.")


def parse_options(items: List[str] | None) -> dict[str, str]:
    """``--option KEY=VALUE`` items -> {key: value} (typed and checked later by the observers' specs)."""
    options: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--option takes KEY=VALUE (e.g. --option mini_lexicon=false), got {item!r}.")
        options[key.strip()] = value.strip()
    return options


@app.command("evaluate")
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
    output_format: Optional[str] = typer.Option(None, "--format", help="Summary on stdout: table, csv or json "
                                                "(default: table on a terminal, csv otherwise)."),
    as_json: bool = typer.Option(False, "--json", help="= --format json."),
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
    with user_errors(offline_hint=OFFLINE_HINT):
        config = EvaluateConfig(
            generated=generated, reference=reference, out=run_dir, suite=suite, filelist=filelist,
            metrics=tuple(m.strip() for m in (metrics or "").split(",") if m.strip()), protocol=protocol,
            model=model, split=split, device=device, weights=overrides, strict=strict,
            shard=parse_shard(shard) if shard else None, retry_failed=retry_failed, options=options,
        )
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


@app.command("merge")
def merge_command(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories of the shards."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write the merged run to."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Merge although shards are missing; the "
                                       "summary's `partial` column names them."),
    output_format: Optional[str] = typer.Option(None, "--format", help="Summary on stdout: table, csv or json."),
    as_json: bool = typer.Option(False, "--json", help="= --format json."),
) -> None:
    """Combine shard run directories into the summary a single run would give."""
    from talkbench.merge import merge_runs

    fmt = summary_format(output_format, as_json)
    with user_errors():
        summary = merge_runs(run_dirs, out, allow_partial=allow_partial)
    print_summary(summary, fmt)


@app.command("leaderboard")
def leaderboard_command(
    sources: List[Path] = typer.Argument(..., help="Run directories or CSV files in the leaderboard schema."),
    out: Path = typer.Option(Path("results/leaderboard.csv"), "--out", "-o", help="CSV to write (+ .md, PNGs)."),
) -> None:
    """Merge summary rows into a leaderboard CSV, a Markdown table and one PNG chart per metric."""
    from talkbench.leaderboard import build_leaderboard

    with user_errors():
        rows = build_leaderboard(sources, out)
    stdout_md = out.with_suffix(".md").read_text()
    typer.echo(stdout_md)
    stderr.print(f"{len(rows)} row(s) -> {out}")


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("results/demo"), "--out", "-o", help="Where the runs and leaderboard go."),
    work: Path = typer.Option(Path("runs/demo-work"), help="Scratch folder for the demo suite's clips."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH: add observers with local weights."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
) -> None:
    """Run the whole protocol on the embedded sample suite and print its leaderboard."""
    from talkbench.demo import run_demo

    overrides = parse_weights(weights)
    started = time.perf_counter()
    with user_errors():
        run_demo(out, work, weights=overrides, device=device)
    typer.echo((out / "leaderboard.md").read_text())
    stderr.print(f"demo finished in {time.perf_counter() - started:.1f} s; leaderboard in {out / 'leaderboard.csv'}")
