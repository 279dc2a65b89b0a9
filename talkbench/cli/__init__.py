"""The ``talkbench`` command line: thin Typer commands over library functions.

Results go to stdout (a table, or JSON with ``--json``); logs and progress bars go to stderr.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import pickle
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Score talking-face videos for intelligibility, lip-sync and image quality.")
# No file= argument: rich then looks up sys.stdout / sys.stderr at each write (works under CliRunner too).
# soft_wrap: messages are not cut into lines at the console width (paths stay whole for copy and paste).
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def parse_weights(items: List[str] | None) -> dict[str, Path]:
    """``NAME=PATH`` items -> {card name: path}; every name must be a known card and every path a readable file.

    Raises:
        typer.Exit: (code 2, after an ``error:`` line) a malformed item, an unknown card name (with the close
            matches) or a path that is not a readable file.
    """
    from talkbench import weights

    with user_errors():
        return weights.parse_overrides(items or [])


#: Errors a user can act on: shown as one ``error:`` paragraph, exit 2, no traceback. ``ValueError`` covers the
#: checkpoint, card, media, suite and option errors; ``OSError`` files and folders; ``sqlite3.Error`` the run store.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, pickle.UnpicklingError, sqlite3.Error)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from talkbench.evaluate import EvaluationError
    from talkbench.weights import WeightsError

    return USER_ERRORS + (WeightsError, EvaluationError)


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code`` (2: nothing could run)."""
    stderr.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


@contextmanager
def user_errors(offline_hint: str = "") -> Iterator[None]:
    """Turn the errors a user can fix into one ``error:`` paragraph on stderr and exit code 2.

    Args:
        offline_hint: a sentence added when a checkpoint could not be found or downloaded (e.g. how to run
            with the bundled weights instead).
    """
    from talkbench.weights import DownloadError, WeightsNotFoundError

    try:
        yield
    except typer.Exit:
        raise
    except _user_error_types() as err:
        message = str(err) or type(err).__name__
        if isinstance(err, sqlite3.Error):
            message = f"the run's result store cannot be used ({err}); check free disk space and write permission."
        if offline_hint and isinstance(err, (DownloadError, WeightsNotFoundError)):
            message = f"{message}\n{offline_hint}"
        fail(message)


SUMMARY_FORMATS: tuple[str, ...] = ("table", "csv", "json")


def summary_format(requested: str | None, as_json: bool = False) -> str:
    """The format of the summary on stdout: ``--format``, else json with ``--json``, else a table on a terminal
    and CSV when stdout is a pipe or a file (a table there would be squeezed to 80 columns)."""
    if requested is not None:
        if requested not in SUMMARY_FORMATS:
            fail(f"--format must be one of {', '.join(SUMMARY_FORMATS)}, got {requested!r}.")
        return requested
    if as_json:
        return "json"
    return "table" if stdout.is_terminal else "csv"


def print_summary(summary: dict[str, Any], fmt: str = "table") -> None:
    """The summary row on stdout: a table of the filled columns, every column as CSV, or JSON (a metric that
    was not computed is ``null``)."""
    if fmt == "json":
        stdout.print_json(json.dumps({k: None if v == "" else v for k, v in summary.items()}))
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(summary), lineterminator="\n")
        writer.writeheader()
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in summary.items()})
        sys.stdout.write(buffer.getvalue())
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
def _root(ctx: typer.Context,
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr.")) -> None:
    _setup_logging(verbose)
    # downloads started by any command draw their bar on stderr (under the clip bar of evaluate)
    ctx.call_on_close(_models.install_download_progress(stderr))


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
