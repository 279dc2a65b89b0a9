"""``talkbench compare RUN_A RUN_B``: paired significance of run B against run A on the same clips."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from talkbench.cli.root import interval_settings, print_rows, summary_format, user_errors
from talkbench.compare import compare_runs


def compare_command(
    run_a: Path = typer.Argument(..., help="Run directory of model A (the baseline)."),
    run_b: Path = typer.Argument(..., help="Run directory of model B, on the same suite, protocol and options."),
    metrics: Optional[str] = typer.Option(None, help="Comma-separated metrics (default: every metric both runs have)."),
    ci_level: float = typer.Option(0.95, "--ci-level", help="Coverage of the difference's interval."),
    ci_resamples: int = typer.Option(10_000, "--ci-resamples", help="Bootstrap resamples."),
    ci_block: str = typer.Option("none", "--ci-block", help="none, or speaker (block bootstrap over speakers)."),
    output_format: Optional[str] = typer.Option(None, "--format", help="table, csv or json (default: table on a "
                                                "terminal, csv otherwise)."),
) -> None:
    """Per metric: B − A, its paired-bootstrap interval, p = P(B not better than A); MAPSSWE for WER."""
    fmt = summary_format(output_format)
    settings = interval_settings(1, ci_level, ci_resamples, ci_block)
    with user_errors():
        chosen = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
        results = compare_runs(run_a, run_b, settings, chosen)
    print_rows([r.row() for r in results], fmt, title=f"{run_b} vs {run_a}")


def register(app: typer.Typer) -> None:
    """Add ``compare`` to the ``talkbench`` app."""
    app.command("compare")(compare_command)
