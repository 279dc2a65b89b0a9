"""``talkbench prepare IN_DIR OUT_DIR``: in-the-wild videos → an LRS2-style suite (thin layer over
:mod:`talkbench.prepare`).

Settings and folders are checked before any video is read; a clip that fails is listed at the end (exit 1) and
the others are prepared; problems a user can fix end in one ``error:`` paragraph and exit 2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from talkbench import prepare as prep
from talkbench import tracks
from talkbench import weights as weights_mod
from talkbench.cli.root import fail, parse_weights, stderr, user_errors

logger = logging.getLogger(__name__)


def prepare_command(
    in_dir: Path = typer.Argument(..., help="Folder of videos (any size, frame rate, codec; sub-folders included), "
                                  "with transcripts.csv (path,text) and/or <id>.txt files if there are transcripts."),
    out_dir: Path = typer.Argument(..., help="Folder for the prepared suite (created; outside IN_DIR)."),
    size: int = typer.Option(prep.SIZE, "--size", help="Side of the prepared frames (LRS2: 160)."),
    scale: float = typer.Option(tracks.SQUARE_SCALE, "--scale", help="Square side as a multiple of the face box's "
                                "larger side."),
    shift_y: float = typer.Option(0.0, "--shift-y", help="Move the square's centre down by this fraction of its "
                                  "side (0: centred on the face box)."),
    detector: str = typer.Option("auto", "--detector", help="dlib (no download), s3fd (--weights s3fd=PATH), or auto "
                                 "= s3fd when its weights are given, else dlib."),
    detect_max_side: int = typer.Option(tracks.MAX_SIDE, "--detect-max-side", help="Face detection runs on frames "
                                        "shrunk to this long side (pixels)."),
    detect_every: int = typer.Option(tracks.EVERY, "--detect-every", help="Detect on every n-th frame, interpolate "
                                     "between."),
    smooth: int = typer.Option(tracks.SMOOTH, "--smooth", help="Running median of the boxes over this many frames "
                               "(odd; 1 = none)."),
    codec: str = typer.Option("h264", "--codec", help="h264 (.mp4, CRF --crf) or ffv1 (lossless .mkv)."),
    crf: Optional[int] = typer.Option(prep.CRF, "--crf", help="libx264 CRF (h264 only)."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH local checkpoint (s3fd)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (S3FD only)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first clip that fails."),
    track_from: Optional[Path] = typer.Option(None, "--track-from", help="Folder of videos with the same ids (e.g. "
                                              "the raw references your clips re-voice): cut each clip by its "
                                              "namesake's face track, so that a generated clip and its reference "
                                              "become the same squares (PSNR/SSIM compare them pixel by pixel)."),
) -> None:
    """Make an LRS2-style suite (160×160 face-centred 25 fps clips, 16 kHz audio, <id>.npy boxes, transcripts)
    from a folder of videos, so that `talkbench evaluate OUT_DIR/... --reference ...` reads faces, not frames."""
    weight_paths = parse_weights(weights)
    if detector == "auto":
        detector = "s3fd" if "s3fd" in weight_paths else "dlib"
    with user_errors():
        if detector not in ("dlib", "s3fd"):
            fail(f"--detector {detector!r}: use dlib (no download), s3fd (--weights s3fd=PATH) or auto.")
        try:
            settings = tracks.TrackSettings(detector=detector, max_side=detect_max_side, every=detect_every,
                                            smooth=smooth)
        except ValueError as err:
            fail(f"--detect-max-side {detect_max_side}, --detect-every {detect_every}, --smooth {smooth}: {err}")
        s3fd = weights_mod.resolve("s3fd", weight_paths) if detector == "s3fd" else None
        config = prep.PrepareConfig(size=size, scale=scale, shift_y=shift_y, track=settings, s3fd_weights=s3fd,
                                    device=device, codec=codec, crf=crf if codec == "h264" else None)
        config.check()
        prep.check_folders(in_dir, out_dir)
        with Progress(TextColumn("[bold]prepare"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[clip]}"), TimeRemainingColumn(), console=stderr) as bar:
            task = bar.add_task("prepare", total=None, clip="")
            stage_task: list = []

            def on_stage(stage: str, done: int, total: int) -> None:
                if not stage_task or stage_task[0][0] != stage:
                    if stage_task:
                        bar.remove_task(stage_task[0][1])
                    stage_task[:] = [(stage, bar.add_task(stage, total=total or None, clip=f"  {stage}"))]
                bar.update(stage_task[0][1], completed=done, total=max(total, done) or None)

            result = prep.prepare_folder(in_dir, out_dir, config, strict=strict, track_from=track_from,
                                         progress=lambda done, total, clip: bar.update(task, completed=done,
                                                                                       total=total, clip=clip),
                                         stage_progress=on_stage)
            if stage_task:
                bar.remove_task(stage_task[0][1])
    stderr.print(f"prepared {len(result.prepared)}, already there {len(result.skipped)}, failed {len(result.failed)}"
                 + (f", few face detections {len(result.flagged)}" if result.flagged else ""))
    for clip_id, message in list(result.failed.items())[:10]:
        stderr.print(f"[red]failed[/red] {escape(clip_id)}: {escape(message)}")
    if len(result.failed) > 10:
        stderr.print(f"... and {len(result.failed) - 10} more (all in {escape(str(out_dir / prep.MANIFEST))})")
    typer.echo(str(out_dir))
    if result.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``prepare`` to the ``talkbench`` app."""
    app.command("prepare")(prepare_command)
