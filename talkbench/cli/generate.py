"""``talkbench generate``: lip-sync a face video to a speech track with TalkLip (single clip or a suite).

Thin layer over :mod:`talkbench.generate`; the lead wires it with ``register(app)``. Options, output path,
device and weights are checked before the model is loaded or a frame decoded; problems a user can fix
(including a checkpoint that is missing and cannot be downloaded) end in one ``error:`` paragraph and exit 2.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from talkbench import generate as gen
from talkbench import tracks
from talkbench import wav2lip
from talkbench import weights as weights_mod
from talkbench.cli.root import fail, parse_weights, stderr, user_errors

logger = logging.getLogger(__name__)


def parse_reference_frame(text: str) -> int | None:
    """``--reference-frame``: a frame index, or ``same`` (each frame's own unmasked crop, as inf_demo)."""
    if text.strip().lower() == "same":
        return None
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"--reference-frame takes a frame index or 'same', got {text!r}.") from None


def offline_hint(checkpoint: str) -> str:
    """What to do when the generator's checkpoint is missing and cannot be downloaded here."""
    card = checkpoint if checkpoint and not checkpoint.endswith((".pth", ".pt", ".ckpt")) else "talklip-gc"
    return (f"To generate offline, use `--checkpoint talklip-mini` (the small generator bundled with talkbench, "
            f"for synthetic-corpus faces). Pass an official checkpoint you have with `--weights {card}=PATH` or "
            "`--checkpoint PATH`.")


#: When the S3FD detector's weights are missing and cannot be downloaded.
S3FD_HINT = ("To run without S3FD weights, use `--detector dlib` (no download) or give the face boxes with "
             "`--boxes` / `--boxes-dir`.")


def generate_command(
    out: Path = typer.Option(..., "--out", help="Output video (single clip) or output folder (--suite/--reference)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Face video to re-voice (any frame rate)."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="Driving speech (any audio/video file). "
                                         "Default: the video's own audio."),
    model: str = typer.Option("talklip", "--model", help="talklip (default) or wav2lip: Wav2Lip's inference.py "
                              "(cards wav2lip, wav2lip-gan; --checkpoint defaults to wav2lip-gan; the reference is the "
                              "frame itself, so --reference-frame, --align, --paste, --smooth and --save-boxes do not "
                              "apply). See docs/wav2lip.md."),
    checkpoint: str = typer.Option("talklip-gc", "--checkpoint", help="Generator card name (talklip-g, talklip-gc; "
                                   "talklip-mini = the small bundled generator for synthetic-corpus faces) or "
                                   "checkpoint file."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="Per-frame face boxes .npy (T×4 x1,y1,x2,y2, as "
                                         "TalkLip's bbx files). Default: detect faces."),
    reference_frame: str = typer.Option("0", "--reference-frame", help="Identity frame index, 0 to the frame "
                                        "count - 1 (default 0, as inf_test), or 'same' (each frame unmasked, as "
                                        "inf_demo)."),
    codec: str = typer.Option("h264", "--codec", help="h264 (.mp4) or ffv1 (lossless, .mkv/.avi)."),
    crf: Optional[int] = typer.Option(None, "--crf", help="libx264 CRF (h264 only; default 23)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    detector: str = typer.Option("auto", "--detector", help="Face detector when no boxes are given: s3fd (official "
                                 "weights, card s3fd), dlib (no download), or auto = s3fd when --weights s3fd=PATH "
                                 "is given, else dlib."),
    align: str = typer.Option("video", "--align", help="video: output has the video's length (inf_test); audio: "
                              "frames repeated to the speech's length (inf_demo)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Frames per generator call (1 or more)."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH local checkpoint for a card."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Batch form: suite layout of --reference "
                                        "(auto, lrs2, lrw, talklip-filelist, folder)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Batch form: folder of reference clips; "
                                             "each is re-generated from its own audio."),
    filelist: Optional[Path] = typer.Option(None, "--filelist", help="Batch form: TalkLip filelist of clip ids."),
    boxes_dir: Optional[Path] = typer.Option(None, "--boxes-dir", help="Batch form: folder of <id>.npy boxes."),
    strict: bool = typer.Option(False, "--strict", help="Batch form: stop at the first failing clip."),
    save_boxes: Optional[Path] = typer.Option(None, "--save-boxes", help="Save the face boxes used (T×4 .npy, the "
                                              "format --boxes reads): a file for one clip, a folder of <id>.npy for "
                                              "the batch form."),
    paste: str = typer.Option("hard", "--paste", help="hard: the generated face replaces the whole box (the "
                              "reference's paste, default, for parity with TalkLip's numbers); feather: blended in "
                              "with a mask that ramps up from the box edge (no visible square seam)."),
    feather: float = typer.Option(gen.FEATHER, "--feather", help="Ramp width of --paste feather, as a fraction of "
                                  "the box's shorter side (0 < f <= 0.5)."),
    detect_max_side: int = typer.Option(tracks.MAX_SIDE, "--detect-max-side", help="Face detection runs on "
                                        "frames shrunk to this long side (pixels); boxes are scaled back."),
    detect_every: int = typer.Option(tracks.EVERY, "--detect-every", help="Detect faces on every n-th frame "
                                     "and interpolate between (1 = every frame)."),
    smooth: int = typer.Option(tracks.SMOOTH, "--smooth", help="Running median of the face boxes over this many "
                               "frames (odd; 1 = none)."),
) -> None:
    """Generate a lip-synced video with TalkLip (or a whole suite into a folder `talkbench evaluate` accepts)."""
    weight_paths = parse_weights(weights)
    ref_frame = parse_reference_frame(reference_frame)
    if suite is not None and reference is None:
        raise typer.BadParameter("--suite needs --reference (the folder of reference clips).")
    if reference is None and video is None:
        raise typer.BadParameter("give --video (single clip) or --reference/--suite (batch form).")
    if detector == "auto":
        detector = "s3fd" if "s3fd" in weight_paths else "dlib"
    if model == "wav2lip":     # issue #21: talkbench.wav2lip runs Wav2Lip's inference.py
        with user_errors(offline_hint=wav2lip.OFFLINE_HINT):
            result = wav2lip.generate_from_cli(out, video, audio, checkpoint, boxes, codec, crf, device, detector,
                                               batch_size, weight_paths, reference, suite, filelist, boxes_dir, strict)
        if result is not None:
            stderr.print(f"written {len(result.written)}, already there {len(result.skipped)}, "
                         f"failed {len(result.failed)}")
            for clip_id, message in list(result.failed.items())[:10]:
                stderr.print(f"[red]failed[/red] {escape(clip_id)}: {escape(message)}")
            if result.failed:
                raise typer.Exit(1)
        typer.echo(str(out))
        return
    if model != "talklip":
        raise typer.BadParameter(f"--model {model!r}: use talklip or wav2lip.")
    with user_errors(offline_hint=offline_hint(checkpoint)):
        # everything that can be refused is checked before the model is loaded or a frame decoded
        if detector not in ("dlib", "s3fd"):
            fail(f"--detector {detector!r}: use dlib (no download), s3fd (official weights, --weights s3fd=PATH) "
                 "or auto.")
        config = gen.GenerateConfig(checkpoint=checkpoint, reference_frame=ref_frame, codec=codec, crf=crf,
                                    device=device, detector=detector, align=align, batch_size=batch_size,
                                    weights=weight_paths, paste=paste, feather=feather,
                                    detect_max_side=detect_max_side, detect_every=detect_every, smooth=smooth)
        config.check(needs_detector=False)
        config.track_settings()                              # detection settings, checked before any work
        if reference is not None:
            gen.check_output_dir(out, codec, crf)
        else:
            gen.check_output_file(out, codec, crf)
            if save_boxes is not None:
                gen.check_boxes_output(save_boxes)
        if detector == "s3fd" and (reference is not None or boxes is None):     # given boxes need no detector
            with user_errors(offline_hint=S3FD_HINT):
                config = replace(config, s3fd_weights=weights_mod.resolve("s3fd", weight_paths))
        if reference is not None:
            _generate_batch(out, reference, suite or "auto", filelist, boxes_dir, config, strict, save_boxes)
            return
        if video is not None:
            with _stage_bar() as stage:
                gen.generate_video(video, out, audio=audio, boxes=boxes, config=config, save_boxes=save_boxes,
                                   progress=stage)
    typer.echo(str(out))


class _stage_bar:
    """Rich progress on stderr for the stages of a clip (faces, crops, generate, write), as evaluate shows its
    clips: ``with _stage_bar() as stage: generate_video(..., progress=stage)``. Given the batch form's bar, it shows
    one stage line at a time under it."""

    def __init__(self, progress: Progress | None = None) -> None:
        self._own = progress is None
        self.bar = progress or Progress(TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                                        TimeRemainingColumn(), console=stderr)
        self._stage: str | None = None
        self._task = None

    def __enter__(self) -> "_stage_bar":
        if self._own:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._own:
            self.bar.__exit__(*exc)
        elif self._task is not None:
            self.bar.remove_task(self._task)
            self._task = self._stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            if self._task is not None and not self._own:
                self.bar.remove_task(self._task)
            self._task = self.bar.add_task(stage, total=total or None, clip=f"  {stage}")
            self._stage = stage
        self.bar.update(self._task, completed=done, total=max(total, done) or None)


def _generate_batch(out: Path, reference: Path, suite: str, filelist: Path | None, boxes_dir: Path | None,
                    config: gen.GenerateConfig, strict: bool, save_boxes: Path | None = None) -> None:
    """The batch form: every reference clip of the suite into ``out``; exit 1 when a clip failed."""
    jobs = gen.suite_jobs(reference, suite, filelist, boxes_dir)
    generator, path = gen.load_generator(config.checkpoint, dict(config.weights), config.device)
    logger.info("generator %s; %d clip(s) -> %s", path, len(jobs), out)
    with Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[clip]}"),
                  TimeRemainingColumn(), console=stderr) as bar:
        task = bar.add_task("generate", total=len(jobs), clip="")
        with _stage_bar(bar) as stages:
            result = gen.generate_suite(jobs, out, config, generator, strict,
                                        progress=lambda done, total, clip: bar.update(task, completed=done, clip=clip),
                                        save_boxes_dir=save_boxes, stage_progress=stages)
    stderr.print(f"written {len(result.written)}, already there {len(result.skipped)}, failed {len(result.failed)}")
    for clip_id, message in list(result.failed.items())[:10]:
        stderr.print(f"[red]failed[/red] {escape(clip_id)}: {escape(message)}")
    if result.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the ``talkbench`` app."""
    app.command("generate")(generate_command)
