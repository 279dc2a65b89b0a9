"""``talkbench corpus synth``: generate the synthetic viseme corpus (see talkbench.synthetic.corpus)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from talkbench.cli.root import progress_bar, stderr
from talkbench.synthetic.corpus import synthesize_corpus
from talkbench.synthetic.speech import EspeakError

# No file= argument: rich looks up sys.stderr at each write (works under CliRunner too).

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The synthetic viseme corpus: GRID-like sentences, espeak-ng voices, rendered mouths.")


@app.callback()
def _corpus() -> None:
    """Make the synthetic viseme corpus (talkbench.synthetic)."""


@app.command("synth")
def synth_command(
    out_dir: Path = typer.Argument(..., help="Output folder (train/ and test/ in LRS2 layout, corpus.json)."),
    n_train: int = typer.Option(2000, "--n-train", help="Number of training clips."),
    n_test: int = typer.Option(200, "--n-test", help="Number of test clips."),
    seed: int = typer.Option(0, "--seed", help="Corpus seed: the same seed gives identical frames and audio."),
    workers: int = typer.Option(min(2, os.cpu_count() or 1), "--workers", "-j", help="Processes to use."),
    identities: int = typer.Option(8, "--identities", help="Number of faces/voices to draw from."),
    crf: Optional[int] = typer.Option(None, "--crf", help="libx264 CRF (default: libx264's 23)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Generate N train and M test clips (160×160, 25 fps, 16 kHz) with transcripts, face boxes and visemes."""
    started = time.perf_counter()
    try:
        with progress_bar() as bar:
            task = bar.add_task("synth", total=n_train + n_test, rate="-")

            def advance(done: int, total: int) -> None:
                rate = done / max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=done, total=total, rate=f"{rate:.2f}")

            summary = synthesize_corpus(out_dir, n_train, n_test, seed=seed, workers=workers,
                                        n_identities=identities, crf=crf, progress=advance)
    except EspeakError as exc:
        stderr.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(code=1) from exc
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    result = {"out_dir": str(summary.out_dir), "clips": summary.n_clips, "seconds": round(summary.seconds, 2),
              "clips_per_second": round(summary.clips_per_second, 3),
              "kb_per_clip": round(summary.bytes_on_disk / max(summary.n_clips, 1) / 1024, 1),
              "audio_hours": round(summary.audio_seconds / 3600, 3)}
    # plain text on stdout, no colour codes: scripts parse it
    typer.echo(json.dumps(result) if as_json else " ".join(f"{k}={v}" for k, v in result.items()))


def register(parent: typer.Typer) -> None:
    """Add this group as ``talkbench corpus``."""
    parent.add_typer(app, name="corpus")
