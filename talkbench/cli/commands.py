"""``talkbench evaluate | merge | leaderboard``."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import List, Optional

import typer

from talkbench.cli import app, parse_weights, print_summary, progress_bar, stderr, user_errors
from talkbench.evaluate import PROTOCOLS, EvaluateConfig, evaluate, parse_shard

logger = logging.getLogger("talkbench")

DEFAULT_METRICS = "psnr,psnr_talklip_compat,ssim"
#: Added to the error of a checkpoint that is neither given, cached nor downloadable.
OFFLINE_HINT = ("Without a download: `--protocol mini` scores WER1/CER1, LSE and PSNR/SSIM with the observers "
                "bundled in talkbench (synthetic-corpus faces only); official checkpoints must be downloaded by "
                "hand and passed with --weights NAME=PATH.")


@app.command("evaluate")
def evaluate_command(
    generated: Path = typer.Argument(..., help="Folder of generated clips (same relative paths as the reference)."),
    reference: Optional[Path] = typer.Option(None, "--reference", "-r", help="Ground-truth folder (clips + transcripts)."),
    suite: str = typer.Option("auto", help="Suite layout: auto, lrs2, lrw, talklip-filelist, folder."),
    filelist: Optional[Path] = typer.Option(None, help="TalkLip filelist (test.wrd style) for --suite talklip-filelist."),
    metrics: str = typer.Option(DEFAULT_METRICS, help="Comma-separated metric columns, e.g. wer1,lse_c,lse_d,psnr,ssim."),
    protocol: str = typer.Option("talklip2023", help="talklip2023 (the paper's Table 1), avhubert-official "
                                 "(landmark-aligned mouth ROIs) or mini (bundled mini observers, synthetic corpus)."),
    name: str = typer.Option("", "--name", help="Model name for the leaderboard row (default: the folder name)."),
    split: str = typer.Option("test", help="Split name recorded in the summary."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<name>)."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH: use a local checkpoint file."),
    strict: bool = typer.Option(False, help="Stop at the first clip that fails."),
    shard: Optional[str] = typer.Option(None, help="K/N: evaluate the K-th of N deterministic shards."),
    retry_failed: bool = typer.Option(False, help="Recompute clips stored with an error."),
    lse_mode: str = typer.Option("wav2lip", help="LSE frames: wav2lip (whole frame) or pipeline (face tracks)."),
    lse_jpeg_compat: Optional[bool] = typer.Option(
        None, "--lse-jpeg-compat/--no-lse-jpeg-compat",
        help="Reproduce the reference's JPEG round trip of frames (default: on for talklip2023, off otherwise)."),
    lse_min_track: int = typer.Option(100, help="Pipeline mode: shortest face track scored (frames)."),
    lse_min_face_size: float = typer.Option(100.0, help="Pipeline mode: smallest mean face size (pixels)."),
    lse_track_agg: str = typer.Option("first", help="Pipeline mode: per-clip value from tracks: first, best, mean."),
    lse_detector: str = typer.Option("dlib", help="Pipeline mode face detector: dlib (offline) or s3fd (--weights s3fd=PATH)."),
    max_frames: Optional[int] = typer.Option(
        None, help="Lip-reading clips longer than this become error rows (default: the checkpoint's limit, 500 for AV-HuBERT)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Score a folder of generated clips; per-clip rows are stored as they finish (re-run to resume)."""
    model = name or generated.resolve().name
    run_dir = out or Path("runs") / model
    overrides = parse_weights(weights)
    with user_errors(offline_hint=OFFLINE_HINT):
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
        config = EvaluateConfig(
            generated=generated, reference=reference, out=run_dir, suite=suite, filelist=filelist,
            metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()), protocol=protocol, model=model,
            split=split, device=device, weights=overrides, strict=strict,
            shard=parse_shard(shard) if shard else None, retry_failed=retry_failed,
            options={"lse_mode": lse_mode,
                     "lse_jpeg_compat": protocol == "talklip2023" if lse_jpeg_compat is None else lse_jpeg_compat,
                     "lse_min_track": lse_min_track, "lse_min_face_size": lse_min_face_size,
                     "lse_track_agg": lse_track_agg, "lse_detector": lse_detector,
                     **({"max_frames": max_frames} if max_frames is not None else {})},
        )
        started = time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task("evaluate", total=None, rate="-")

            def advance(done: int, total: int) -> None:
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=done, total=total, rate=f"{done / elapsed:.2f}")

            result = evaluate(config, progress=advance)
    print_summary(result.summary, as_json)
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
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Combine shard run directories into the summary a single run would give."""
    from talkbench.merge import merge_runs

    with user_errors():
        summary = merge_runs(run_dirs, out, allow_partial=allow_partial)
    print_summary(summary, as_json)


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
