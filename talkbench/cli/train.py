"""``talkbench train``: train TalkLip with the lip-reading expert (the paper's Eq. 7, the reference's schedule).

Thin layer over :mod:`talkbench.train`; the lead wires it with ``register(app)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from talkbench.cli.root import parse_weights, stderr
from talkbench.train import TrainError, load_config, train


def train_command(
    config: Optional[str] = typer.Option(None, "--config", help="TOML with training settings, or a preset: "
                                         "'reference' (talkbench/train/talklip_reference.toml, the default) or "
                                         "'mini' (TalkLip-mini on a synthetic corpus, talklip_mini.toml)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="LRS2-layout folder: <id>.mp4 + <id>.txt."),
    train_list: Optional[Path] = typer.Option(None, "--train-list", help="Clip ids, one per line (TalkLip train.txt)."),
    val_list: Optional[Path] = typer.Option(None, "--val-list", help="Validation clip ids (TalkLip valid.txt)."),
    boxes_root: Optional[Path] = typer.Option(None, "--boxes-root", help="Folder of <id>.npy face boxes."),
    audio_root: Optional[Path] = typer.Option(None, "--audio-root", help="Folder of <id>.wav (default: the clip's audio)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Checkpoints and logs; a rerun resumes from here."),
    expert: Optional[str] = typer.Option(None, "--expert", help="Lip-reading expert card or file "
                                         "(default avhubert-base-lrs2)."),
    generator_init: Optional[Path] = typer.Option(None, "--generator-init", help="Start from this TalkLip generator."),
    discriminator_init: Optional[Path] = typer.Option(None, "--discriminator-init", help="Start from this discriminator."),
    weights: Optional[List[str]] = typer.Option(None, "--weights", help="NAME=PATH local checkpoint for a card."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Videos per batch (reference: 8)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many steps."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    no_resume: bool = typer.Option(False, "--no-resume", help="Ignore checkpoints already in --out-dir."),
) -> None:
    """Train the TalkLip generator (L1 + GAN + lip-reading expert + contrastive), resumable."""
    items = parse_weights(weights)
    try:
        cfg = load_config(config, data_root=data_root, train_list=train_list, val_list=val_list, boxes_root=boxes_root,
                          audio_root=audio_root, out_dir=out_dir, expert=expert, generator_init=generator_init,
                          discriminator_init=discriminator_init, weights=items or None, device=device,
                          batch_size=batch_size, max_steps=max_steps, seed=seed)
        with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("step {task.completed}"),
                      TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), console=stderr) as bar:
            task = bar.add_task("train", total=cfg.max_steps, losses="")

            def show(step: int, logs: dict) -> None:
                keys = ("l1", "perceptual", "lip", "contrastive", "disc_real", "disc_fake")
                text = " ".join(f"{k}={logs[k]:.4f}" for k in keys if k in logs) + f" stage={logs.get('stage')}"
                bar.update(task, completed=step, losses=text)

            result = train(cfg, resume=not no_resume, progress=show)
    except (TrainError, ValueError, FileNotFoundError) as err:
        stderr.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    typer.echo(json.dumps({"global_step": result.global_step, "stage": result.stage,
                           "checkpoints": [str(p) for p in result.checkpoints]}))


def register(app: typer.Typer) -> None:
    """Add ``train`` to the ``talkbench`` app."""
    app.command("train")(train_command)
