"""Training settings of ``talkbench train`` (TalkLip's objective, Eq. 7 of the paper).

The defaults are the reference's (TalkLip train.py); ``talklip_reference.toml`` beside this module
lists them with their source. A TOML file with sections ``[loss] [optim] [schedule] [sampling] [model]
[data] [run]`` (any subset) overrides them; the section names only group keys, every key is a field of
:class:`TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REFERENCE_TOML = Path(__file__).with_name("talklip_reference.toml")
MINI_TOML = Path(__file__).with_name("talklip_mini.toml")
#: names ``--config`` accepts besides a file path
PRESETS: dict[str, Path] = {"reference": REFERENCE_TOML, "mini": MINI_TOML}


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Data (LRS2 layout: ``<data_root>/<id>.mp4`` with ``<id>.txt`` whose first line is ``Text:  WORDS``):
        data_root: folder of the clips.
        train_list / val_list: files with one clip id per line (TalkLip's ``train.txt`` / ``valid.txt``).
        boxes_root: folder of per-clip face boxes ``<id>.npy`` (T×4); a clip without one uses the full frame.
        audio_root: folder of ``<id>.wav``; default: the clip's own audio track.
    Run:
        out_dir: checkpoints, ``train_log.jsonl`` and the resumable state go here.
        device, seed: torch device and the seed of every random draw (data order, spans, negatives).
        max_steps: stop after this many optimizer steps (None: run the schedule / epochs to the end).
        generator_init / discriminator_init: start from these TalkLip files (official layout); the
            generator's audio encoder is otherwise copied from the expert's encoder, as the reference does.
        expert: card name (or file) of the frozen AV-HuBERT seq2seq lip-reading expert.
        weights: card name -> local file overrides (``--weights NAME=PATH``).
        val_observer_wer: also generate every validation clip in full (inf_test procedure) and score it
            with the WER1 lip-reading observer (card ``avhubert-large-lrs2``, from ``weights`` or the cache;
            beam ``val_observer_beam``); off: only the reference's teacher-forced token error.
    ``disc_lr``: the discriminator's learning rate (None = ``lr``, as the reference).
    ``max_train_clips``: use only the first N clips of ``train_list``; ``cache_clips``: decoded clips kept in
    memory (about 5 MB each for 160×160 clips of 3 s) so that they are decoded once.
    The loss/optimizer/schedule/sampling fields are documented in ``talklip_reference.toml``;
    ``label_smoothing`` None = the expert checkpoint's criterion setting (0.1 when the file has none).
    ``disc_keeps_generator_grads``: the reference does not clear the discriminator's gradients from the
    generator's adversarial term before the discriminator step (they add up); False clears them.
    ``start_stage``: begin the schedule at this stage (0, 1 or 2), e.g. to fine-tune a released generator.
    Model size (defaults = the released TalkLip; the mini ablation, ``talkbench/train/talklip_mini.toml``,
    sets them):
        generator_width: divide every U-Net and discriminator width by this.
        audio_encoder: ``"expert"`` = a copy of the expert's AV-HuBERT encoder (the reference; only its last
            ``finetune_last_layers`` layers train), ``"transformer"`` = a new AV-HuBERT audio encoder of
            ``audio_dim``/``audio_layers``/``audio_ffn`` with 16-d attention heads, as the loader assumes
            (global: every frame attends to the whole utterance), ``"local"`` =
            :class:`talkbench.nets.talklip.LocalAudioEncoder` of width ``audio_dim`` (each frame sees 7 frames
            of audio). New encoders train entirely from the first step.
    """

    # data
    data_root: Path | None = None
    train_list: Path | None = None
    val_list: Path | None = None
    boxes_root: Path | None = None
    audio_root: Path | None = None
    # run
    out_dir: Path = Path("runs/talklip-train")
    device: str = "cpu"
    seed: int = 0
    max_steps: int | None = None
    generator_init: Path | None = None
    discriminator_init: Path | None = None
    expert: str = "avhubert-base-lrs2"
    weights: Mapping[str, Path] = field(default_factory=dict)
    val_observer_wer: bool = False
    val_observer_beam: int = 50
    val_max_clips: int | None = None
    max_train_clips: int | None = None
    cache_clips: int = 64
    num_threads: int | None = None
    # model size
    generator_width: int = 1
    audio_encoder: str = "expert"
    audio_dim: int = 128
    audio_layers: int = 2
    audio_ffn: int = 256
    # loss
    lip_weight: float = 1e-5
    perceptual_weight: float = 0.07
    contrastive_weight: float = 1e-3
    label_smoothing: float | None = None
    temperature: float = 0.07
    max_negatives: int = 100
    # optim
    lr: float = 1e-4
    disc_lr: float | None = None
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 8
    epochs: int = 100
    # schedule
    eval_interval: int = 3000
    checkpoint_interval: int = 3000
    patience: int = 5
    finetune_last_layers: int = 3
    start_stage: int = 0
    disc_keeps_generator_grads: bool = True
    # sampling
    span_prob: float = 0.08
    span_length: int = 5
    val_span_stride: float = 0.12

    @property
    def l1_weight(self) -> float:
        """Weight of the L1 reconstruction term: ``1 - lip_weight - perceptual_weight`` (train.py)."""
        return 1.0 - self.lip_weight - self.perceptual_weight

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


_PATH_FIELDS = {f.name for f in dataclasses.fields(TrainConfig) if str(f.type).startswith("Path")}


def _coerce(name: str, value: Any) -> Any:
    if name == "weights":
        return {k: Path(v) for k, v in dict(value).items()}
    if name == "betas":
        return tuple(float(v) for v in value)
    if name in _PATH_FIELDS and value not in (None, ""):
        return Path(value)
    return value


def config_from_mapping(values: Mapping[str, Any], base: TrainConfig | None = None, source: str = "<config>",
                        ) -> TrainConfig:
    """Apply ``values`` (flat, or grouped in TOML sections) on top of ``base`` (default: the reference).

    Raises:
        ValueError: an unknown key (the message lists the known ones).
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and key not in ("weights",):
            flat.update(value)
        else:
            flat[key] = value
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ValueError(f"{source}: unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    changes = {k: _coerce(k, v) for k, v in flat.items()}
    return dataclasses.replace(base or TrainConfig(), **changes)


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """The reference settings, then a TOML file (if given; or a preset name of :data:`PRESETS`), then keyword
    overrides (None values ignored)."""
    config = config_from_mapping(tomllib.loads(REFERENCE_TOML.read_text()), TrainConfig(), str(REFERENCE_TOML))
    if path is not None:
        path = PRESETS.get(str(path), Path(path))
        if not path.is_file():
            raise ValueError(f"{path}: training config file not found.")
        config = config_from_mapping(tomllib.loads(path.read_text()), config, str(path))
    return config_from_mapping({k: v for k, v in overrides.items() if v is not None}, config, "overrides")
