"""``talkbench lipread``: read the lips of one video with the WER1 observer (AV-HuBERT seq2seq, beam search).

Thin layer over :func:`talkbench.lipread.lipread`; the lead wires it with ``register(app)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from talkbench.cli.root import parse_weights, user_errors
from talkbench.lipread import lipread
from talkbench.protocols import PROTOCOLS

#: Added to the error of a checkpoint that is neither given, cached nor downloadable.
OFFLINE_HINT = ("Without a download: `talkbench lipread --protocol mini` reads with the bundled mini lip reader "
                "(synthetic-corpus faces only); official checkpoints must be downloaded by hand and passed with "
                "--weights NAME=PATH.")


def lipread_command(
    video: Path = typer.Argument(..., exists=True, dir_okay=False, help="Video file to lip-read."),
    protocol: str = typer.Option("talklip2023", "--protocol", help="talklip2023 (centre 88x88 crop of the frame), "
                                 "avhubert-official (dlib landmark-aligned mouth ROI) or mini (the bundled mini lip "
                                 "reader, synthetic-corpus faces, offline)."),
    beam: int = typer.Option(50, "--beam", help="Beam width (the reference uses 50)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH local checkpoint for a card "
                                                "(avhubert-large-lrs2)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of the text."),
) -> None:
    """Print what the lip reader of --protocol (AV-HuBERT, or the mini reader) reads from VIDEO."""
    overrides = parse_weights(weights)
    with user_errors(offline_hint=OFFLINE_HINT):
        if protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}.")
        if beam <= 0:
            raise ValueError(f"--beam must be a positive number of hypotheses, got {beam}.")
        result = lipread(video, overrides, protocol=protocol, device=device, beam=beam)
    if as_json:
        typer.echo(json.dumps({"text": result.text, "score": result.score, "frames": result.frames}))
    else:
        typer.echo(result.text)


def register(app: typer.Typer) -> None:
    """Add ``lipread`` to the top-level app."""
    app.command("lipread")(lipread_command)
