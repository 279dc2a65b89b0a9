"""The ``talkbench`` command line: thin Typer commands over library functions.

Results go to stdout (a table, or JSON with ``--json``); logs and progress bars go to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, List

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Score talking-face videos for intelligibility, lip-sync and image quality.")
stdout = Console(file=sys.stdout, soft_wrap=True)
stderr = Console(file=sys.stderr)


def parse_weights(items: List[str] | None) -> dict[str, Path]:
    """``NAME=PATH`` items -> {card name: path}."""
    weights: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--weights takes NAME=PATH (e.g. syncnet-v2=/data/syncnet_v2.model), got {item!r}.")
        weights[name.strip()] = Path(path).expanduser()
    return weights


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    """The summary row on stdout: JSON, or a table of the filled columns."""
    if as_json:
        stdout.print_json(json.dumps(summary))
        return
    table = Table(title="talkbench summary")
    for column, value in summary.items():
        if value != "":
            table.add_column(column)
    table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in summary.values() if v != ""])
    stdout.print(table)


def progress_bar() -> Progress:
    """clips done / total, clips per second and ETA, on stderr."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]} clips/s"), TimeRemainingColumn(), console=stderr,
                    transient=False)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=stderr, show_time=False, show_path=False)], force=True)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr.")) -> None:
    _setup_logging(verbose)


def main() -> None:
    """Console-script entry point."""
    app()


# Sub-commands live in their own modules; importing them registers them on `app`.
from talkbench.cli import commands  # noqa: E402,F401
from talkbench.cli import models as _models  # noqa: E402

app.add_typer(_models.app, name="models")
from talkbench.cli import corpus as _corpus  # noqa: E402

app.add_typer(_corpus.app, name="corpus")
from talkbench.cli import generate as _generate, train as _train  # noqa: E402

_generate.register(app)
_train.register(app)
from talkbench.cli import avhubert as _avhubert  # noqa: E402

_avhubert.register(app)
from talkbench.cli import train_observer as _train_observer  # noqa: E402

_train_observer.register(app)
from talkbench.cli import ablation as _ablation  # noqa: E402

app.add_typer(_ablation.app, name="ablation")
