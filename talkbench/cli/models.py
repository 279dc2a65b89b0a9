"""``talkbench models list | path | download | verify``: the weights cards and the local cache.

A thin Typer layer over :mod:`talkbench.weights`. Results go to stdout (table, paths, or JSON with
``--json``); progress bars and warnings go to stderr. Exit codes: 0 ok, 1 a file is missing, corrupt
or could not be downloaded, 2 bad arguments (unknown card).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from talkbench import weights

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Checkpoint cards: list them, find, download and verify their files.")
# No file= argument: rich then looks up sys.stdout / sys.stderr at each write (works under CliRunner too).
_out = Console(soft_wrap=True)
_err = Console(stderr=True)


def _cards(names: List[str] | None) -> list[weights.Card]:
    """The named cards (exit 2 on an unknown name), or every card when no name is given."""
    if not names:
        return weights.list_cards()
    try:
        return [weights.load_card(n) for n in names]
    except weights.CardError as err:
        _err.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None


def card_status(card: weights.Card) -> dict[str, object]:
    """One row of ``models list``: the card plus the state of its cached file (does not hash the file)."""
    path = weights.cache_path(card)
    expected, source = weights.expected_sha256(card)
    return {
        "name": card.name, "role": card.role, "file_name": card.file_name, "released": card.released,
        "metrics": list(card.metrics), "size_bytes": card.size_bytes, "license": card.license,
        "sha256": expected, "sha256_source": source, "urls": list(card.urls),
        "cached": path.is_file(), "path": str(path), "title": card.title,
    }


@app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout.")) -> None:
    """Every card: what it is, where its file is, whether it is cached."""
    rows = [card_status(c) for c in weights.list_cards()]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))  # plain JSON, no colour codes
        return
    table = Table(title=f"talkbench weights cards (cache: {weights.home()})")
    table.add_column("name", no_wrap=True, min_width=max(len(str(r["name"])) for r in rows))
    for column in ("role", "metrics", "file", "sha256", "cached"):
        table.add_column(column, overflow="fold")
    for r in rows:
        sha = f"{r['sha256'][:12]} ({r['sha256_source']})" if r["sha256"] else "unknown"
        cached = "yes" if r["cached"] else ("not released" if not r["released"] else "no")
        table.add_row(str(r["name"]), str(r["role"]), ",".join(r["metrics"]) or "-", str(r["file_name"]), sha, cached)
    _out.print(table)


@app.command("path")
def path_command(
    name: str = typer.Argument(..., help="Card name, e.g. syncnet-v2."),
    weights_opt: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH: a local file for a card."),
    download: bool = typer.Option(False, "--download/--no-download", help="Download the file if it is not cached."),
) -> None:
    """Print the local file the card resolves to (override, else verified cache; download only if asked)."""
    try:
        overrides = weights.parse_overrides(weights_opt or [])
        path = weights.resolve(name, overrides, download=download)
    except ValueError as err:  # unknown card (CardError) or a malformed NAME=PATH
        _err.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    except (weights.WeightsError, FileNotFoundError) as err:
        _err.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    typer.echo(str(path))  # plain text: scripts use $(talkbench models path NAME)


@app.command("download")
def download_command(
    names: Optional[List[str]] = typer.Argument(None, help="Card names (default: with --all, every released card)."),
    all_cards: bool = typer.Option(False, "--all", help="Download every released card."),
    force: bool = typer.Option(False, help="Download again even if a verified file is cached."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Download card files into the cache (resuming partial files); the sha256 is always checked."""
    if not names and not all_cards:
        _err.print("[red]error:[/red] name at least one card (see `talkbench models list`) or pass --all.")
        raise typer.Exit(2)
    cards = _cards(names) if names else [c for c in weights.list_cards() if c.released]
    failed = 0
    for card in cards:
        try:
            path = weights.download(card, progress=progress, force=force)
        except (weights.WeightsError, OSError) as err:
            _err.print(f"[red]{card.name}:[/red] {escape(str(err))}")
            failed += 1
            continue
        typer.echo(f"{card.name}\t{path}")
    if failed:
        raise typer.Exit(1)


@app.command("verify")
def verify_command(
    names: Optional[List[str]] = typer.Argument(None, help="Card names (default: every card with a cached file)."),
    pin: bool = typer.Option(False, "--pin", help="Record the sha256 of files whose card publishes none."),
    file: Optional[Path] = typer.Option(None, "--file", help="Check this file instead of the cached one (one card)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Hash cached files and compare with the cards (or local pins); exit 1 on a mismatch or missing file."""
    cards = _cards(names)
    if file is not None and len(cards) != 1:
        _err.print("[red]error:[/red] --file needs exactly one card name.")
        raise typer.Exit(2)
    rows = []
    bad = False
    for card in cards:
        path = file if file is not None else weights.cache_path(card)
        if not names and not path.is_file():
            continue  # default: only what is cached
        check = weights.verify_file(card, path)
        pinned = False
        if pin and check.status == "unverified":
            weights.pin(card, check.sha256, path.stat().st_size)
            pinned = True
        bad |= check.status in ("mismatch", "missing")
        rows.append({"name": card.name, "path": str(path), "status": "pinned" if pinned else check.status,
                     "sha256": check.sha256, "expected": check.expected, "message": check.message})
    if as_json:
        typer.echo(json.dumps(rows, indent=1))  # plain JSON, no colour codes
    else:
        if not rows:
            _err.print("no cached files to verify (name a card, or run `talkbench models download NAME`).")
        for r in rows:
            colour = {"ok": "green", "pinned": "green", "unverified": "yellow"}.get(str(r["status"]), "red")
            _out.print(f"[{colour}]{r['status']}[/{colour}]\t{r['name']}\t{r['sha256'][:12] or '-'}\t"
                       f"{escape(str(r['message']))}")
    if bad:
        raise typer.Exit(1)


def register(parent: typer.Typer) -> None:
    """Attach this sub-app as ``talkbench models``."""
    parent.add_typer(app, name="models")


__all__ = ["app", "card_status", "register"]


if __name__ == "__main__":  # python -m talkbench.cli.models ...
    app()
