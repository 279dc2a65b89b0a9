"""``talkbench generate``: lip-sync a face video to a speech track with TalkLip (single clip or a suite).

Thin layer over :mod:`talkbench.generate`; the lead wires it with ``register(app)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

logger = logging.getLogger(__name__)
_err = Console(stderr=True)


def parse_reference_frame(text: str) -> int | None:
    """``--reference-frame``: a frame index, or ``same`` (each frame's own unmasked crop, as inf_demo)."""
    if text.strip().lower() == "same":
        return None
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"--reference-frame takes a frame index or 'same', got {text!r}.") from None


def _weights(items: List[str] | None) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--weights takes NAME=PATH (e.g. talklip-gc=/data/talklip_gc.pth), got {item!r}.")
        out[name.strip()] = Path(path).expanduser()
    return out


def generate_command(
    out: Path = typer.Option(..., "--out", help="Output video (single clip) or output folder (--suite/--reference)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Face video to re-voice (any frame rate)."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="Driving speech (any audio/video file). "
                                         "Default: the video's own audio."),
    checkpoint: str = typer.Option("talklip-gc", "--checkpoint", help="Generator card name (talklip-g, talklip-gc; "
                                   "talklip-mini = the small bundled generator for synthetic-corpus faces) or "
                                   "checkpoint file."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="Per-frame face boxes .npy (T×4 x1,y1,x2,y2, as "
                                         "TalkLip's bbx files). Default: detect faces."),
    reference_frame: str = typer.Option("0", "--reference-frame", help="Identity frame index (default 0, as "
                                        "inf_test), or 'same' (each frame unmasked, as inf_demo)."),
    codec: str = typer.Option("h264", "--codec", help="h264 (.mp4) or ffv1 (lossless, .mkv/.avi)."),
    crf: Optional[int] = typer.Option(None, "--crf", help="libx264 CRF (h264 only; default 23)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    detector: str = typer.Option("auto", "--detector", help="Face detector when no boxes are given: s3fd (official "
                                 "weights, card s3fd), dlib (no download), or auto = s3fd when --weights s3fd=PATH "
                                 "is given, else dlib."),
    align: str = typer.Option("video", "--align", help="video: output has the video's length (inf_test); audio: "
                              "frames repeated to the speech's length (inf_demo)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Frames per generator call."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH local checkpoint for a card."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Batch form: suite layout of --reference "
                                        "(auto, lrs2, lrw, talklip-filelist, folder)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Batch form: folder of reference clips; "
                                             "each is re-generated from its own audio."),
    filelist: Optional[Path] = typer.Option(None, "--filelist", help="Batch form: TalkLip filelist of clip ids."),
    boxes_dir: Optional[Path] = typer.Option(None, "--boxes-dir", help="Batch form: folder of <id>.npy boxes."),
    strict: bool = typer.Option(False, "--strict", help="Batch form: stop at the first failing clip."),
) -> None:
    """Generate a lip-synced video with TalkLip (or a whole suite into a folder `talkbench evaluate` accepts)."""
    from talkbench import generate as gen

    weight_paths = _weights(weights)
    ref_frame = parse_reference_frame(reference_frame)
    s3fd = None
    if detector == "auto":
        detector = "s3fd" if "s3fd" in weight_paths else "dlib"
    if detector == "s3fd":
        from talkbench import weights as weights_mod

        s3fd = weights_mod.resolve("s3fd", weight_paths)
    elif detector != "dlib":
        raise typer.BadParameter(f"--detector must be dlib or s3fd, got {detector!r}.")
    try:
        if suite is not None or reference is not None:
            if reference is None:
                raise typer.BadParameter("--suite needs --reference (the folder of reference clips).")
            jobs = gen.suite_jobs(reference, suite or "auto", filelist, boxes_dir)
            generator, path = gen.load_generator(checkpoint, weight_paths, device)
            logger.info("generator %s; %d clip(s) -> %s", path, len(jobs), out)
            with Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[clip]}"),
                          TimeRemainingColumn(), console=_err) as bar:
                task = bar.add_task("generate", total=len(jobs), clip="")
                result = gen.generate_suite(jobs, out, checkpoint, ref_frame, codec, crf, device, detector, s3fd,
                                            batch_size, weight_paths, generator, strict,
                                            progress=lambda done, total, clip: bar.update(task, completed=done, clip=clip))
            _err.print(f"written {len(result.written)}, already there {len(result.skipped)}, failed {len(result.failed)}")
            for clip_id, message in list(result.failed.items())[:10]:
                _err.print(f"[red]failed[/red] {clip_id}: {message}")
            if result.failed:
                raise typer.Exit(1)
            return
        if video is None:
            raise typer.BadParameter("give --video (single clip) or --reference/--suite (batch form).")
        gen.generate_video(video, out, audio=audio, checkpoint=checkpoint, boxes=boxes, reference_frame=ref_frame,
                           codec=codec, crf=crf, device=device, detector=detector, s3fd_weights=s3fd, align=align,
                           batch_size=batch_size, weights=weight_paths)
        typer.echo(str(out))
    except typer.BadParameter:
        raise
    except (ValueError, FileNotFoundError) as err:
        _err.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the ``talkbench`` app."""
    app.command("generate")(generate_command)
