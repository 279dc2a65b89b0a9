"""``talkbench lipread``: read the lips of one video with the WER1 observer (AV-HuBERT seq2seq, beam search).

Thin layer over :func:`talkbench.observers.avhubert.lipread`; the lead wires it with ``register(app)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def _weights(items: List[str] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--weights takes NAME=PATH (e.g. avhubert-large-lrs2=/data/avhubert.pt), "
                                     f"got {item!r}.")
        out[name.strip()] = Path(path).expanduser()
    return out


def lipread_command(
    video: Path = typer.Argument(..., exists=True, dir_okay=False, help="Video file to lip-read."),
    protocol: str = typer.Option("talklip2023", "--protocol", help="talklip2023 (centre 88x88 crop of the frame) or "
                                 "avhubert-official (dlib landmark-aligned mouth ROI)."),
    beam: int = typer.Option(50, "--beam", help="Beam width (the reference uses 50)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH local checkpoint for a card "
                                                "(avhubert-large-lrs2)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of the text."),
) -> None:
    """Print what the AV-HuBERT lip reader reads from VIDEO."""
    from talkbench.observers.avhubert import lipread

    try:
        result = lipread(video, _weights(weights), protocol=protocol, device=device, beam=beam)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    if as_json:
        typer.echo(json.dumps({"text": result.text, "score": result.score, "frames": result.frames}))
    else:
        typer.echo(result.text)


def register(app: typer.Typer) -> None:
    """Add ``lipread`` to the top-level app."""
    app.command("lipread")(lipread_command)
