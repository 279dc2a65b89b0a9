"""``talkbench transcribe``: write a folder suite's ``transcripts.csv`` from the driving audio with Whisper.

Thin layer over :func:`talkbench.transcribe.transcribe_folder`; registered with ``register(app)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from talkbench import transcribe as tr
from talkbench.cli.root import fail, parse_weights, progress_bar, stdout, user_errors


def transcribe_command(
    folder: Path = typer.Argument(..., help="Folder of clips (a folder suite); transcripts.csv is written into it."),
    audio_dir: Optional[Path] = typer.Option(None, "--audio-dir", help="Folder of driving audio at the clips' "
                                             "relative paths (<clip>.wav/.flac/.mp3/… or a video); default: each "
                                             "clip's own audio track."),
    model: str = typer.Option(tr.DEFAULT_MODEL, "--model", help="Whisper model, card whisper-<model>: tiny.en, "
                              "base.en, small.en (default), medium.en, large-v3, large-v3-turbo."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH local checkpoint for a card "
                                                "(e.g. whisper-small.en=small.en.pt)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Table to write (default FOLDER/transcripts.csv, which "
                                       "`evaluate` reads); its provenance goes beside it as .json."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    language: str = typer.Option("en", "--language", help="Spoken language (the .en models know only en); "
                                 "'auto' lets a multilingual model detect it."),
) -> None:
    """Transcribe each clip's (or --audio-dir's) speech with Whisper into FOLDER/transcripts.csv (path,text) and
    record the model in transcripts.json, so that WER against these transcripts is never ranked with WER
    against human transcripts."""
    if model.endswith(".en") and language not in ("en", "auto"):
        fail(f"--model {model} is English-only; use --language en or a multilingual model (large-v3).")
    settings = tr.DecodingSettings(language=None if language == "auto" else language)
    try:
        with user_errors(), progress_bar() as bar:
            task = bar.add_task("transcribe", total=None, rate="-")
            result = tr.transcribe_folder(folder, out=out, audio_dir=audio_dir, model=model,
                                          weights=parse_weights(weights), device=device, settings=settings,
                                          progress=lambda done, total: bar.update(task, completed=done, total=total))
    except ImportError as err:  # the optional extra `asr` is missing
        fail(str(err))
    stdout.print(f"{result.csv_path}: {len(result.texts)} transcript(s), {len(result.failed)} failed; "
                 f"provenance {result.provenance_path}")
    if result.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``transcribe`` to the ``talkbench`` app."""
    app.command("transcribe")(transcribe_command)
