"""The ``talkbench`` command line: thin Typer commands over library functions.

Each module of this package holds one command or one group of commands and adds it to the app with
``register(app)``; what they share (the app, the consoles, error reporting, ``--weights``) is in
:mod:`talkbench.cli.root`. Results go to stdout; logs, progress bars and ``error:`` lines to stderr.
"""

from __future__ import annotations

import typer

from talkbench.cli import (ablation, avhubert, commands, compare, corpus, generate, models, prepare, train,
                           train_observer, transcribe)
from talkbench.cli.root import app, setup_logging, stderr

for _module in (commands, compare, prepare, generate, avhubert, train, models, corpus, train_observer, ablation,
                transcribe):
    _module.register(app)


@app.callback()
def _root(ctx: typer.Context,
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging on stderr.")) -> None:
    setup_logging(verbose)
    # downloads started by any command draw their bar on stderr (under the clip bar of evaluate)
    ctx.call_on_close(models.install_download_progress(stderr))


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
