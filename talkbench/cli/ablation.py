"""``talkbench ablation``: the paper's ablation in miniature (see talkbench.train.ablation)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from talkbench.cli.root import stdout
from talkbench.train.ablation import (CONFIG_NAMES, DEFAULT_SEEDS, best_run, export_generator, markdown, report,
                                      run_ablation)

logger = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="TalkLip-mini trained with and without the lip-reading expert, scored with the mini observers.")


@app.callback()
def _ablation() -> None:
    """Train, generate, evaluate and report the TalkLip-mini ablation (talkbench.train.ablation)."""


@app.command("run")
def run_command(
    corpus: Path = typer.Argument(..., help="A `talkbench corpus synth` folder (train/ and test/)."),
    out: Path = typer.Option(Path("runs/mini-ablation"), "--out", help="Runs go here; a rerun resumes."),
    configs: Optional[List[str]] = typer.Option(None, "--config", help="Configuration(s) to run (default: all)."),
    seeds: Optional[List[int]] = typer.Option(None, "--seed", help="Training seed(s) (default: 0 1 2)."),
    steps: int = typer.Option(300, "--steps", help="Optimizer steps per run (same for every configuration)."),
    jobs: int = typer.Option(2, "--jobs", "-j", help="Runs at a time (one thread each)."),
) -> None:
    """Every configuration × seed: train, generate the test split, evaluate under protocol mini."""
    try:
        errors = run_ablation(corpus, out, configs or CONFIG_NAMES, seeds or DEFAULT_SEEDS, steps, jobs)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if errors:
        logger.error("%d run(s) failed (see %s): %s", len(errors), out / "errors.json", ", ".join(errors))


@app.command("report")
def report_command(
    out: Path = typer.Argument(Path("runs/mini-ablation"), help="The folder `ablation run` wrote."),
    prefix: Path = typer.Option(Path("results/mini_ablation"), "--prefix",
                                help="Writes PREFIX.csv, PREFIX_runs.csv, PREFIX.md and PREFIX.png."),
) -> None:
    """Aggregate finished runs: mean ± std over seeds per configuration; prints the Markdown table."""
    try:
        table = report(out, prefix)
    except ValueError as err:
        logger.error("%s", err)
        raise typer.Exit(2) from None
    stdout.print(markdown(table), markup=False)


@app.command("export")
def export_command(
    out: Path = typer.Argument(Path("runs/mini-ablation"), help="The folder `ablation run` wrote."),
    dest: Path = typer.Option(..., "--dest", help="Where to write the inference-only generator file."),
    config: Optional[str] = typer.Option(None, "--config", help="Configuration whose best seed is exported "
                                         "(default: the configuration with the lowest mean WER)."),
) -> None:
    """Export the best seed (lowest WER) of a configuration as a small generator file."""
    try:
        path = export_generator(best_run(out, config), dest)
    except ValueError as err:
        logger.error("%s", err)
        raise typer.Exit(2) from None
    stdout.print(str(path), markup=False)


def register(parent: typer.Typer) -> None:
    """Add this group as ``talkbench ablation``."""
    parent.add_typer(app, name="ablation")
