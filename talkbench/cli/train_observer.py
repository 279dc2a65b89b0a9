"""``talkbench train-observer lipreader|syncnet``: train the mini observers on a synthetic corpus (CPU).

Thin layer over :mod:`talkbench.train.mini_observers`; the lead wires it with ``register(app)`` (or mounts
``app`` as the ``train-observer`` group).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer

from talkbench.train.mini_observers import lipreader_from_corpus, syncnet_from_corpus

app = typer.Typer(help="Train the mini observers (protocol `mini`) on a synthetic corpus, on CPU.",
                  no_args_is_help=True)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")


@app.command("lipreader")
def lipreader_command(
    corpus: Path = typer.Argument(..., exists=True, file_okay=False, help="Corpus folder (talkbench corpus synth)."),
    out: Path = typer.Argument(..., dir_okay=False, help="Checkpoint to write (.pt)."),
    variant: str = typer.Option("b", "--variant", help="a (expert for training generators) or b (the observer)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed (default: the variant's, A=1, B=0)."),
    epochs: int = typer.Option(12, "--epochs"),
    batch: int = typer.Option(16, "--batch"),
    lr: float = typer.Option(2e-3, "--lr"),
    max_minutes: float = typer.Option(0.0, "--max-minutes", help="Stop after this long (0 = no limit)."),
    threads: int = typer.Option(2, "--threads"),
    n_train: Optional[int] = typer.Option(None, "--n-train", help="Use only the first N training clips."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Keep the decoded corpus here for other runs."),
) -> None:
    """Train a mini lip reader (CTC + viseme loss) and print its test WER."""
    _setup_logging()
    try:
        meta = lipreader_from_corpus(corpus, out, variant, seed, epochs, batch, lr, max_minutes, threads, n_train,
                                     cache_dir)
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(json.dumps({"out": str(out), "test": meta["test"], "train_minutes": meta["train_minutes"]}, indent=2))


@app.command("syncnet")
def syncnet_command(
    corpus: Path = typer.Argument(..., exists=True, file_okay=False, help="Corpus folder (talkbench corpus synth)."),
    out: Path = typer.Argument(..., dir_okay=False, help="Checkpoint to write (.pt)."),
    seed: int = typer.Option(0, "--seed"),
    steps: int = typer.Option(600, "--steps"),
    width: float = typer.Option(0.125, "--width", help="Channel multiplier of the SyncNet network."),
    embed_dim: int = typer.Option(128, "--embed-dim"),
    n_train: int = typer.Option(600, "--n-train", help="Training clips held in memory (full frames)."),
    n_test: int = typer.Option(50, "--n-test"),
    max_minutes: float = typer.Option(0.0, "--max-minutes", help="Stop after this long (0 = no limit)."),
    threads: int = typer.Option(2, "--threads"),
) -> None:
    """Train a mini SyncNet contrastively and print LSE-C/LSE-D in sync and shifted ±5 frames."""
    _setup_logging()
    try:
        meta = syncnet_from_corpus(corpus, out, seed, steps, width, embed_dim, n_train, n_test, max_minutes, threads)
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from None
    typer.echo(json.dumps({"out": str(out), "test": meta["test"], "train_minutes": meta["train_minutes"]}, indent=2))


def register(root: typer.Typer) -> None:
    """Add the ``train-observer`` command group to the root app."""
    root.add_typer(app, name="train-observer")
