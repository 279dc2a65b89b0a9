"""``talkbench models list | path | download | verify``: the weights cards and the local cache.

A thin Typer layer over :mod:`talkbench.cards` and :mod:`talkbench.weights`. Results go to stdout (table, paths,
or JSON with ``--json``); progress bars, warnings and errors go to stderr. An error is one ``error: <message>``
paragraph (no traceback); the message names the file or card and the fix. The download bar lives here
(:func:`rich_download_progress`); :func:`install_download_progress` makes the automatic downloads of other
commands draw it too.

Exit codes:
    0  ok (``list`` also exits 0 when some card files are malformed: they are shown as rows with their error);
    1  a file is missing, corrupt (sha256 mismatch) or could not be downloaded;
    2  bad arguments: an unknown card, a malformed ``--weights NAME=PATH`` item or a PATH that is not a
       readable file, or a card file that cannot be read (malformed TOML or fields).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.errors import LiveError
from rich.markup import escape
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.table import Table

from talkbench import weights
from talkbench.cli.root import fail, print_error, stderr, stdout
from talkbench.cards import Card, CardError, load_card, scan_cards

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Checkpoint cards: list them, find, download and verify their files.")
# No file= argument: rich then looks up sys.stdout / sys.stderr at each write (works under CliRunner too).
# soft_wrap: long paths and URLs in messages are never broken by inserted newlines.

EXIT_OK, EXIT_FILE, EXIT_USAGE = 0, 1, 2


def exit_code(err: BaseException) -> int:
    """The documented exit code for an error of :mod:`talkbench.cards` or :mod:`talkbench.weights` (see the
    module docstring)."""
    if isinstance(err, CardError) or isinstance(err, ValueError) and not isinstance(err, weights.WeightsError):
        return EXIT_USAGE
    return EXIT_FILE


class _DownloadBar:
    """One rich download bar (bytes, speed, time left), a row per card; started by the first bytes it is given.

    Inside another live display of the same console (e.g. ``evaluate``'s clip bar) rich >= 14 draws it below
    that one; rich 13 cannot nest live displays, and the progress is then logged instead (every ~10 %).
    """

    def __init__(self, console: Console) -> None:
        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                             TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=False)
        self._tasks: dict[str, TaskID] = {}
        self._started = False
        self._logged: weights.ProgressFn | None = None

    def __call__(self, done: int, total: int | None, label: str) -> None:
        if self._logged is not None:
            self._logged(done, total, label)
            return
        if not self._started:
            try:
                self._bar.start()
            except LiveError:  # rich 13 under another live display
                self._logged = weights.logging_progress()
                self._logged(done, total, label)
                return
            self._started = True
        if label not in self._tasks:
            self._tasks[label] = self._bar.add_task(label, total=total)
        self._bar.update(self._tasks[label], completed=done, total=total)

    def close(self) -> None:
        """Stop the bar (it stays on screen, complete or where the download stopped); nothing if never started."""
        if self._started:
            self._bar.stop()
            self._started = False


def rich_download_progress(console: Console | None = None) -> tuple[weights.ProgressFn, Callable[[], None]]:
    """A download bar on ``console`` (default: this module's stderr console): ``(callback, close)``.

    Pass the callback to :func:`talkbench.weights.download` or :func:`talkbench.weights.resolve` as
    ``progress`` and call ``close`` when the download ends (also on failure). Nothing is drawn before the first
    bytes arrive, so a cached file draws no bar.
    """
    bar = _DownloadBar(console or stderr)
    return bar, bar.close


def install_download_progress(console: Console | None = None) -> Callable[[], None]:
    """Make every download that is given no callback (``resolve``'s during evaluate, generate, train ...) draw
    :func:`rich_download_progress` on ``console``; returns the function that puts the previous reporter back.

    The root command calls it once at startup (``ctx.call_on_close(install_download_progress(stderr))``), with
    the console its own progress bars use, so that a download bar nests under them.
    """
    previous = weights.set_download_progress(lambda: rich_download_progress(console))

    def restore() -> None:
        weights.set_download_progress(previous)

    return restore


def _fetch(card: Card, bar: bool, force: bool) -> Path:
    """:func:`talkbench.weights.download` with a rich bar on stderr (``bar``), else its progress logged."""
    if not bar:
        return weights.download(card, progress=weights.logging_progress(), force=force)
    report, close = rich_download_progress()
    try:
        return weights.download(card, progress=report, force=force)
    finally:
        close()


def _cards(names: List[str] | None) -> list[Card]:
    """The named cards (exit 2 on an unknown or malformed card), or every card when no name is given.

    With no names, malformed cards are reported as errors on stderr and left out (the others are returned).
    """
    if not names:
        cards, broken = scan_cards()
        for err in broken.values():
            print_error(str(err))
        return cards
    try:
        return [load_card(n) for n in names]
    except CardError as err:
        fail(str(err), EXIT_USAGE)


def _local_file(card: Card) -> tuple[Path, bool]:
    """(the file ``resolve`` would use without an override or download, whether it is the bundled one)."""
    bundled = card.bundled_path()
    if bundled is not None and bundled.is_file():
        return bundled, True
    return weights.cache_path(card), False


def card_status(card: Card) -> dict[str, object]:
    """One row of ``models list``: the card plus the state of its local file (does not hash the file).

    ``cached`` is True when the file is available without a download: in the cache, or shipped inside the
    package (then ``bundled`` is True too and ``path`` is the bundled file). ``error`` is None (a row for a
    malformed card file carries the message there; see :func:`broken_card_status`).
    """
    path, bundled = _local_file(card)
    expected, source = weights.expected_sha256(card)
    return {
        "name": card.name, "role": card.role, "file_name": card.file_name, "released": card.released,
        "metrics": list(card.metrics), "size_bytes": card.size_bytes, "license": card.license,
        "sha256": expected, "sha256_source": source, "urls": list(card.urls),
        "cached": path.is_file(), "bundled": bundled, "path": str(path), "title": card.title, "error": None,
    }


def broken_card_status(name: str, err: CardError) -> dict[str, object]:
    """The ``models list`` row of a card file that cannot be read: the same keys, ``error`` set."""
    return {
        "name": name, "role": None, "file_name": None, "released": None, "metrics": [], "size_bytes": None,
        "license": None, "sha256": None, "sha256_source": None, "urls": [], "cached": False, "bundled": False,
        "path": str(err.card_path) if err.card_path else None, "title": None, "error": str(err),
    }


@app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """Every card: what it is, where its file is, whether it is available (cached or bundled).

    A malformed card file is listed as a row with its error (and a warning on stderr); the others are listed.
    """
    cards, broken = scan_cards()
    rows = [card_status(c) for c in cards] + [broken_card_status(n, e) for n, e in broken.items()]
    rows.sort(key=lambda r: str(r["name"]))
    for name, err in broken.items():
        stderr.print(f"[yellow]warning:[/yellow] card `{escape(name)}` is skipped: {escape(str(err))}")
    if as_json:
        typer.echo(json.dumps(rows, indent=1))  # plain JSON, no colour codes
        return
    table = Table(title=f"talkbench weights cards (cache: {weights.home()})")
    table.add_column("name", no_wrap=True, min_width=max([len(str(r["name"])) for r in rows] + [4]))
    for column in ("role", "metrics", "file", "sha256", "cached"):
        table.add_column(column, overflow="fold")
    for r in rows:
        if r["error"]:
            table.add_row(str(r["name"]), "[red]error[/red]", "-", "-", "-", escape(str(r["error"])))
            continue
        sha = f"{r['sha256'][:12]} ({r['sha256_source']})" if r["sha256"] else "unknown"
        if r["bundled"]:
            cached = "bundled"
        else:
            cached = "yes" if r["cached"] else ("not released" if not r["released"] else "no")
        table.add_row(str(r["name"]), str(r["role"]), ",".join(r["metrics"]) or "-", str(r["file_name"]), sha, cached)
    stdout.print(table)


@app.command("path")
def path_command(
    name: str = typer.Argument(..., help="Card name, e.g. syncnet-v2."),
    weights_opt: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH: a local file for a card."),
    download: bool = typer.Option(False, "--download/--no-download", help="Download the file if it is not cached."),
) -> None:
    """Print the local file the card resolves to (override, else verified cache; download only if asked)."""
    try:
        overrides = weights.parse_overrides(weights_opt or [])
    except (ValueError, weights.WeightsError) as err:  # a bad --weights item is a bad argument
        fail(str(err), EXIT_USAGE)
    try:
        path = weights.resolve(name, overrides, download=download)
    except (weights.WeightsError, ValueError, OSError) as err:
        fail(str(err), exit_code(err))
    typer.echo(str(path))  # plain text: scripts use $(talkbench models path NAME)


@app.command("download")
def download_command(
    names: Optional[List[str]] = typer.Argument(None, help="Card names (default: with --all, every released card)."),
    all_cards: bool = typer.Option(False, "--all", help="Download every released card."),
    force: bool = typer.Option(False, help="Download again even if a verified file is cached."),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Progress bar on stderr (without it, progress is logged every ~10 %)."),
) -> None:
    """Download card files into the cache (resuming partial files); the sha256 is always checked."""
    if not names and not all_cards:
        fail("name at least one card (see `talkbench models list`) or pass --all.", EXIT_USAGE)
    if names:
        cards, broken = _cards(names), 0
    else:
        every, bad = scan_cards()
        for err in bad.values():
            print_error(str(err))
        cards, broken = [c for c in every if c.released], len(bad)
    code = EXIT_USAGE if broken else EXIT_OK
    for card in cards:
        try:
            path = _fetch(card, progress, force)
        except (weights.WeightsError, OSError) as err:
            print_error(str(err))
            code = max(code, exit_code(err))
            continue
        typer.echo(f"{card.name}\t{path}")
    if code:
        raise typer.Exit(code)


@app.command("verify")
def verify_command(
    names: Optional[List[str]] = typer.Argument(None, help="Card names (default: every card with a cached file)."),
    pin: bool = typer.Option(False, "--pin", help="Record the sha256 of files whose card publishes none."),
    file: Optional[Path] = typer.Option(None, "--file", help="Check this file instead of the cached one (one card)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Re-hash files (never trusting the remembered hashes) and compare with the cards or local pins.

    Named cards are checked where ``resolve`` finds them (the bundled file, else the cache); with no names,
    every cached file. Exit 1 on a mismatch or a missing file, 2 on an unknown or malformed card.
    """
    cards = _cards(names)
    if file is not None and len(cards) != 1:
        fail("--file needs exactly one card name.", EXIT_USAGE)
    rows = []
    bad = False
    try:
        for card in cards:
            if file is not None:
                path = file
            elif names:
                path = _local_file(card)[0]
            else:
                path = weights.cache_path(card)
                if not path.is_file():
                    continue  # default: only what is cached
            check = weights.verify_file(card, path, trust_memo=False)
            pinned = False
            if pin and check.status == "unverified":
                weights.pin(card, check.sha256, path.stat().st_size)
                pinned = True
            bad |= check.status in ("mismatch", "missing")
            rows.append({"name": card.name, "path": str(path), "status": "pinned" if pinned else check.status,
                         "sha256": check.sha256, "expected": check.expected, "message": check.message})
    except (weights.WeightsError, OSError) as err:  # unreadable file, read-only pins.json, ...
        fail(str(err), exit_code(err))
    if as_json:
        typer.echo(json.dumps(rows, indent=1))  # plain JSON, no colour codes
    else:
        if not rows:
            stderr.print("no cached files to verify (name a card, or run `talkbench models download NAME`).")
        for r in rows:
            colour = {"ok": "green", "pinned": "green", "unverified": "yellow"}.get(str(r["status"]), "red")
            stdout.print(f"[{colour}]{r['status']}[/{colour}]\t{r['name']}\t{r['sha256'][:12] or '-'}\t"
                       f"{escape(str(r['message']))}")
    if bad:
        raise typer.Exit(EXIT_FILE)


def register(parent: typer.Typer) -> None:
    """Attach this sub-app as ``talkbench models``."""
    parent.add_typer(app, name="models")


__all__ = ["app", "broken_card_status", "card_status", "exit_code", "install_download_progress", "register",
           "rich_download_progress"]


if __name__ == "__main__":  # python -m talkbench.cli.models ...
    app()
