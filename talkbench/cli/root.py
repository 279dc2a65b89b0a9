"""What every ``talkbench`` command shares: the Typer app, the two consoles, error reporting, the
``--weights`` parser and the summary printer.

Results go to :data:`stdout` (a table, CSV or JSON); logs, progress bars and ``error:`` lines go to
:data:`stderr`. Every command module registers itself with ``register(app)`` (:mod:`talkbench.cli`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import pickle
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Mapping, NoReturn, Sequence

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from talkbench import weights
from talkbench.evaluate import EvaluationError
from talkbench.summary import IntervalSettings

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
    with user_errors():
        return weights.parse_overrides(items or [])


#: Errors a user can act on: shown as one ``error:`` paragraph, exit 2, no traceback. ``ValueError`` covers the
#: checkpoint, card, media, suite and option errors; ``OSError`` files and folders; ``sqlite3.Error`` the run store.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, pickle.UnpicklingError, sqlite3.Error,
                                                weights.WeightsError, EvaluationError)


def print_error(message: str) -> None:
    """One ``error: message`` paragraph on stderr (blank lines squeezed, markup escaped)."""
    text = "\n".join(line for line in str(message).strip().splitlines() if line.strip())
    stderr.print(f"[red]error:[/red] {escape(text)}")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: bad arguments, nothing could run)."""
    print_error(message)
    raise typer.Exit(code)


@contextmanager
def user_errors(offline_hint: str = "") -> Iterator[None]:
    """Turn the errors a user can fix into one ``error:`` paragraph on stderr and exit code 2.

    Args:
        offline_hint: a sentence added when a checkpoint could not be found or downloaded (e.g. how to run
            with the bundled weights instead).
    """
    try:
        yield
    except typer.Exit:
        raise
    except USER_ERRORS as err:
        message = str(err) or type(err).__name__
        if isinstance(err, sqlite3.Error):
            message = f"the run's result store cannot be used ({err}); check free disk space and write permission."
        if offline_hint and isinstance(err, (weights.DownloadError, weights.WeightsNotFoundError)):
            message = f"{message}\n{offline_hint}"
        fail(message)


def interval_settings(ci: int, level: float, resamples: int, block: str) -> IntervalSettings:
    """``--ci/--ci-level/--ci-resamples/--ci-block`` -> the summary's interval settings (``--ci 0``: none)."""
    if ci not in (0, 1):
        fail(f"--ci takes 1 (intervals, the default) or 0 (none), got {ci}.")
    try:
        return IntervalSettings(level=level if ci else 0.0, resamples=resamples, block=block)
    except ValueError as err:
        fail(str(err))


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


def print_rows(rows: Sequence[Mapping[str, Any]], fmt: str = "table", title: str = "") -> None:
    """Result rows on stdout: a table of the filled columns, every column as CSV (raw floats), or JSON (empty
    cells and NaN as ``null``)."""
    columns = list(rows[0]) if rows else []
    if fmt == "json":
        stdout.print_json(json.dumps([_json_row(r) for r in rows]))
        return
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
        sys.stdout.write(buffer.getvalue())
        return
    filled = [c for c in columns if any(r.get(c, "") != "" for r in rows)]
    table = Table(title=title or None)
    for column in filled:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in filled])
    stdout.print(table)


def _json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: None if v == "" or (isinstance(v, float) and math.isnan(v)) else v for k, v in row.items()}


def print_summary(summary: dict[str, Any], fmt: str = "table") -> None:
    """The summary row on stdout (see :func:`print_rows`; as JSON one object, not a list)."""
    if fmt == "json":
        stdout.print_json(json.dumps(_json_row(summary)))
        return
    print_rows([summary], fmt, title="talkbench summary")


def progress_bar() -> Progress:
    """clips done / total, clips per second and ETA, on stderr."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]} clips/s"), TimeRemainingColumn(), console=stderr,
                    transient=False)


def setup_logging(verbose: bool) -> None:
    """Log records (progress, warnings) on stderr through rich; DEBUG with ``--verbose``."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=stderr, show_time=False, show_path=False)], force=True)
