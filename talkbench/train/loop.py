"""TalkLip training (``talkbench train``): the paper's objective with the reference's schedule.

Per step (TalkLip train.py ``train``):

1. A batch of videos; per video, 5-frame spans are chosen (p = 0.08, Sec. 3.5) and only their frames
   are generated, from the masked target crop and a random other 5-frame window as identity.
2. Generator loss = λ_lip·lip + λ_perc·BCE(D(fake), 1) + (1 - λ_lip - λ_perc)·L1 + λ_cont·InfoNCE, where the
   lip-reading loss scores the *hybrid* video (generated faces pasted into the real frames) with the
   frozen AV-HuBERT expert, and the InfoNCE term pairs the generator's audio embeddings with the expert's
   visual features at the generated frames. Adam step on the generator.
3. Discriminator loss = BCE(D(real), 1) + BCE(D(fake.detach()), 0); Adam step on the discriminator. As in
   the reference, the discriminator's gradients from the generator's adversarial term (step 2) are not
   cleared before this step, so they add up (``disc_keeps_generator_grads``; the reference zeroes only the
   generator's optimizer in between).
4. Every ``eval_interval`` steps: validation (frame 0 as identity, spans every 12 % of the clip) and the
   staged schedule: the validation L1 drives a patience counter (5); each plateau moves to the next stage:
   0 = audio encoder frozen, lip/contrastive off → 1 = audio encoder fine-tuned (its last 3 transformer
   layers) → 2 = lip-reading + contrastive losses on → 3 = stop.

Checkpoints use TalkLip's layout (``checkpoint_step{N:09d}.pth`` / ``disc_checkpoint_step{N:09d}.pth``,
``{"state_dict", "optimizer", "global_step", "global_epoch"}``), plus a ``talkbench`` entry with the
schedule state; ``latest.json`` names the last pair. ``resume=True`` continues from it exactly: the data
order and every random draw are functions of (seed, epoch, step), so an interrupted run and an
uninterrupted one take the same steps.

Differences from the reference (measured consequences are in the report): the audio encoder has no
dropout/layer-drop in training (talkbench's AV-HuBERT is inference-only), and resuming restores the
schedule stage (the reference restarts at stage 0 unless edited).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from talkbench import media, weights
from talkbench.audio_features import avhubert_audio_features
from talkbench.boxes import check_boxes
from talkbench.crops.face import face_crops
from talkbench.generate import generator_inputs, synthesize
from talkbench.media import Clip
from talkbench.nets.avhubert import AVHubertConfig, AVHubertModel, load_avhubert_seq2seq, read_checkpoint
from talkbench.nets.mini_lipreader import MiniLipReader, load_lipreader
from talkbench.nets.talklip import (LocalAudioEncoder, TalkLipAudioEncoder, TalkLipDiscriminator, TalkLipGenerator,
                                    UNetChannels, encoder_heads, load_talklip_discriminator, load_talklip_generator,
                                    save_talklip_checkpoint, unwrap_state_dict)
from talkbench.observers import ClipData, ClipSkipped, ObserverContext
from talkbench.protocols import build_observers
from talkbench.safe_unpickle import load_checkpoint
from talkbench.train.config import TrainConfig
from talkbench.train.losses import (LipReadingLoss, collate_targets, compose_hybrid_video, expert_video_input,
                                    gan_discriminator_loss, gan_generator_loss, l1_reconstruction, pick_rows,
                                    sample_span_starts, span_frames)
from talkbench.train.mini_expert import CharTokenizer, MiniLipReadingLoss, is_mini_lipreader

logger = logging.getLogger(__name__)

STAGES = ("reconstruction", "audio-finetune", "lip-reading", "done")


class TrainError(ValueError):
    """Training cannot start with these settings or data; the message says what to fix."""


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainClip:
    """One training/validation video.

    Attributes:
        clip_id: relative id (e.g. ``5535415699068794046/00001``).
        video: the video file (frames; its audio track is used when ``audio`` is None).
        text: transcript (LRS2 ``Text:`` line content).
        audio: separate audio file (TalkLip's ``<audio_root>/<id>.wav``), or None.
        boxes: ``T×4`` face boxes ``.npy``, or None for the full frame.
    """

    clip_id: str
    video: Path
    text: str
    audio: Path | None = None
    boxes: Path | None = None


def read_transcript(path: Path) -> str:
    """First line of an LRS2 ``.txt`` without its ``Text:`` label (TalkLip: ``readline()[7:]``)."""
    line = Path(path).read_text(encoding="utf-8").splitlines()[0] if Path(path).stat().st_size else ""
    return re.sub(r"^\s*Text:\s*", "", line).strip()


def clips_from_list(list_file: Path, data_root: Path, boxes_root: Path | None = None,
                    audio_root: Path | None = None) -> list[TrainClip]:
    """Clips named in a TalkLip filelist (one id per line, first column), LRS2 layout under ``data_root``.

    Raises:
        TrainError: the list is missing or empty, or a named clip/transcript is missing.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise TrainError(f"{list_file}: clip list not found (one clip id per line, as TalkLip's train.txt).")
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise TrainError(f"{list_file}: no clip ids.")
    clips = []
    for clip_id in ids:
        video = Path(data_root) / f"{clip_id}.mp4"
        text = Path(data_root) / f"{clip_id}.txt"
        if not video.is_file() or not text.is_file():
            raise TrainError(f"{list_file}: clip {clip_id!r} needs {video} and {text}.")
        boxes = Path(boxes_root) / f"{clip_id}.npy" if boxes_root else video.with_suffix(".npy")
        audio = Path(audio_root) / f"{clip_id}.wav" if audio_root else None
        clips.append(TrainClip(clip_id, video, read_transcript(text), audio, boxes if boxes.is_file() else None))
    return clips


@dataclass
class LoadedClip:
    """A decoded clip: uint8 frames ``T×H×W×3`` (BGR), boxes ``T×4``, audio features ``T×104``, tokens,
    and the 16 kHz samples (for full-clip generation at validation)."""

    clip_id: str
    frames: np.ndarray
    boxes: np.ndarray
    audio: np.ndarray
    tokens: list[int]
    samples: np.ndarray | None = None


def align_audio_train(features: np.ndarray, n_frames: int) -> np.ndarray:
    """train.py's ``audio_visual_align``: cut the tail of a longer sequence, zero-pad a shorter one."""
    diff = len(features) - n_frames
    if diff < 0:
        return np.concatenate([features, np.zeros((-diff, features.shape[1]), dtype=features.dtype)])
    return features[:n_frames]


class ClipLoader:
    """Decodes clips (with a small in-memory cache) into :class:`LoadedClip`."""

    def __init__(self, tokenizer: Any, cache_size: int = 64, min_frames: int = 6) -> None:
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self.min_frames = min_frames
        self._cache: dict[str, LoadedClip] = {}

    def __call__(self, clip: TrainClip) -> LoadedClip:
        if clip.clip_id in self._cache:
            return self._cache[clip.clip_id]

        decoded = media.decode_clip(clip.video, need_audio=clip.audio is None)
        frames = decoded.frames
        if len(frames) < self.min_frames:
            raise TrainError(f"{clip.video}: {len(frames)} frames; training needs at least {self.min_frames}.")
        samples = media.read_wav_int16(clip.audio) if clip.audio is not None else decoded.audio_int16
        h, w = frames.shape[1:3]
        boxes = (check_boxes(np.load(clip.boxes), len(frames), (h, w), str(clip.boxes)) if clip.boxes is not None
                 else np.tile(np.array([0, 0, w, h], dtype=np.int64), (len(frames), 1)))
        audio = align_audio_train(avhubert_audio_features(samples), len(frames))
        loaded = LoadedClip(clip.clip_id, frames, boxes, audio, list(self.tokenizer.encode(clip.text)), samples)
        if len(self._cache) < self.cache_size:
            self._cache[clip.clip_id] = loaded
        return loaded


@dataclass
class Batch:
    """Generator inputs and everything the losses need (TalkLip train.py ``collate_fn``).

    Attributes:
        inputs: ``N×6×96×96`` masked target + identity crops of the picked frames of all videos.
        gt: ``N×3×96×96`` ground-truth crops in [0, 1].
        audio: ``B×104×T`` audio features, zero-padded; padding_mask ``B×T`` (True = padded).
        audio_index: ``N`` rows of the flattened ``B×T`` embeddings (b·T + t) of the picked frames.
        picked: per video, the picked frame indices.
        frames / boxes: per video, uint8 frames and boxes (for the hybrid video).
        target / prev_output_tokens: ``B×L`` token ids for the lip-reading expert.
    """

    inputs: Tensor
    gt: Tensor
    audio: Tensor
    padding_mask: Tensor
    audio_index: Tensor
    picked: list[list[int]]
    frames: list[np.ndarray]
    boxes: list[np.ndarray]
    target: Tensor
    prev_output_tokens: Tensor

    def to(self, device: str | torch.device) -> "Batch":
        for name in ("inputs", "gt", "audio", "padding_mask", "audio_index", "target", "prev_output_tokens"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def make_batch(clips: Sequence[LoadedClip], rng: random.Random, train: bool, config: TrainConfig) -> Batch:
    """Pick frames and build a :class:`Batch` (TalkLip ``Talklipdata.__getitem__`` + ``collate_fn``)."""
    span = config.span_length
    inputs, gts, picked_all = [], [], []
    length = max(len(c.frames) for c in clips)
    audio = torch.zeros(len(clips), length, clips[0].audio.shape[1])
    padding_mask = torch.zeros(len(clips), length, dtype=torch.bool)
    index = []
    for b, clip in enumerate(clips):
        n = len(clip.frames)
        starts = sample_span_starts(n, config.span_prob, span, train, config.val_span_stride, rng)
        picked = span_frames(starts, span)
        if train:   # identity = another random window of the same video, per span
            ident = []
            for s in starts:
                other = rng.choice(range(n - span + 1))
                while other == s:
                    other = rng.choice(range(n - span + 1))
                ident += list(range(other, other + span))
        else:
            ident = [0] * len(picked)
        pose = face_crops(clip.frames[picked], clip.boxes[picked])
        ref = face_crops(clip.frames[ident], clip.boxes[ident])
        inputs.append(generator_inputs(pose, ref))
        gts.append(torch.from_numpy(pose).float().div_(255.0).permute(0, 3, 1, 2))
        audio[b, :n] = torch.from_numpy(clip.audio)
        padding_mask[b, n:] = True
        index += [b * length + t for t in picked]
        picked_all.append(picked)
    target, prev = collate_targets([c.tokens for c in clips])
    return Batch(torch.cat(inputs), torch.cat(gts).contiguous(), audio.transpose(1, 2).contiguous(), padding_mask,
                 torch.tensor(index, dtype=torch.long), picked_all, [c.frames for c in clips],
                 [c.boxes for c in clips], target, prev)


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------

def generator_from_expert(expert: nn.Module, finetune_last_layers: int = 3) -> TalkLipGenerator:
    """A new generator whose audio encoder is a copy of the expert's encoder (TalkLip ``get_avhubert``).

    Only the last ``finetune_last_layers`` transformer layers of the audio encoder keep
    ``requires_grad`` (``retrieve_avhubert``: layers 9, 10, 11 of the 12-layer Base model).
    """
    w2v = copy.deepcopy(expert.encoder.w2v_model)
    w2v.cfg = w2v.cfg.replace(decoder_layers=0) if hasattr(w2v.cfg, "replace") else w2v.cfg
    generator = TalkLipGenerator(TalkLipAudioEncoder(w2v), int(w2v.cfg.encoder_embed_dim))
    set_trainable_audio_layers(generator, finetune_last_layers)
    return generator


AUDIO_ENCODERS = ("expert", "transformer", "local")


def expert_feature_dim(expert: nn.Module) -> int:
    """Width of the expert's visual features (the contrastive head's target width)."""
    if isinstance(expert, MiniLipReader):
        return int(expert.cfg.dim)
    return int(expert.encoder.w2v_model.cfg.encoder_embed_dim)


def new_generator(config: TrainConfig, expert: nn.Module) -> TalkLipGenerator:
    """A generator with a newly initialised audio encoder (``audio_encoder`` = transformer or local) and
    U-Net widths divided by ``generator_width``; every parameter trains."""
    channels = UNetChannels.scaled(config.generator_width)
    if config.audio_encoder == "local":
        audio: nn.Module = LocalAudioEncoder(config.audio_dim)
    else:
        cfg = AVHubertConfig.for_talklip(encoder_layers=config.audio_layers, encoder_embed_dim=config.audio_dim,
                                         encoder_ffn_embed_dim=config.audio_ffn,
                                         encoder_attention_heads=encoder_heads(config.audio_dim), conv_pos=15,
                                         conv_pos_groups=16, video_frontend=False)
        audio = TalkLipAudioEncoder(AVHubertModel(cfg))
    return TalkLipGenerator(audio, config.audio_dim, channels=channels, sync_dim=expert_feature_dim(expert))


def build_lip_loss(expert: nn.Module, label_smoothing: float) -> nn.Module:
    """The lip-reading loss for this expert: seq2seq cross-entropy (AV-HuBERT) or CTC (mini lip reader)."""
    if isinstance(expert, MiniLipReader):
        return MiniLipReadingLoss(expert)
    return LipReadingLoss(expert, label_smoothing, pad=getattr(expert, "pad", 1))


def set_trainable_audio_layers(generator: TalkLipGenerator, last: int) -> list[str]:
    """Freeze the audio encoder except its last ``last`` transformer layers; returns the trainable names."""
    n_layers = len(generator.audio_encoder.w2v_model.encoder.layers)
    keep = {f"w2v_model.encoder.layers.{i}." for i in range(max(0, n_layers - last), n_layers)}
    names = []
    for name, p in generator.audio_encoder.named_parameters():
        p.requires_grad_(any(name.startswith(k) for k in keep))
        if p.requires_grad:
            names.append(name)
    return names


DEFAULT_LABEL_SMOOTHING = 0.1   # av_hubert conf/finetune/*.yaml


def expert_label_smoothing(path: Path) -> float:
    """The label smoothing of the expert's own training criterion (``cfg.criterion.label_smoothing``), as the
    reference builds its criterion from it; 0.1 (av_hubert's fine-tuning configs) when the file has none."""
    cfg = read_checkpoint(path).get("cfg")
    try:
        value = cfg["criterion"]["label_smoothing"]  # type: ignore[index]
    except (KeyError, TypeError, IndexError):
        value = None
    return float(value) if value is not None else DEFAULT_LABEL_SMOOTHING


def load_expert(config: TrainConfig) -> tuple[nn.Module, Any, float]:
    """The frozen lip-reading expert, its tokenizer and the label smoothing to use, from a card name or a file.

    An AV-HuBERT seq2seq file (the reference) or a mini lip reader (:mod:`talkbench.train.mini_expert`; label
    smoothing does not apply to its CTC loss and is reported as 0).
    """
    path = Path(config.expert)
    if not path.is_file():
        path = weights.resolve(config.expert, config.weights)
    if is_mini_lipreader(str(path)):
        mini, _ = load_lipreader(path, device=config.device)
        return mini.eval(), CharTokenizer(), 0.0
    model, tokenizer = load_avhubert_seq2seq(path, device=config.device)
    smoothing = config.label_smoothing if config.label_smoothing is not None else expert_label_smoothing(path)
    return model.eval(), tokenizer, smoothing


# ----------------------------------------------------------------------------------------------------
# Schedule state
# ----------------------------------------------------------------------------------------------------

@dataclass
class Schedule:
    """TalkLip's ``status_manager``: a patience counter on the validation L1 that advances the stage."""

    stage: int = 0
    best: float = 100.0
    waited: int = 0
    patience: int = 5

    def update(self, val_l1: float) -> bool:
        """Record a validation L1; returns True when the stage advanced."""
        if val_l1 < self.best:
            self.best, self.waited = val_l1, 0
        else:
            self.waited += 1
        if self.waited > self.patience:
            self.stage += 1
            self.waited = 0
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"stage": self.stage, "best": self.best, "waited": self.waited, "patience": self.patience}


@dataclass
class TrainResult:
    """A finished (or stopped) run: last step, stage, per-step and validation logs, checkpoint paths."""

    global_step: int
    stage: int
    history: list[dict[str, float]] = field(default_factory=list)
    validations: list[dict[str, float]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------

class TalkLipTrainer:
    """Holds the models, optimizers, losses and schedule of one run (see the module docstring)."""

    def __init__(self, config: TrainConfig, generator: TalkLipGenerator, discriminator: TalkLipDiscriminator,
                 expert: nn.Module, tokenizer: Any, train_clips: Sequence[TrainClip],
                 val_clips: Sequence[TrainClip], loader: Callable[[TrainClip], LoadedClip] | None = None) -> None:
        if not train_clips:
            raise TrainError("no training clips.")
        self.config = config
        self.device = torch.device(config.device)
        self.generator = generator.to(self.device)
        self.discriminator = discriminator.to(self.device)
        smoothing = config.label_smoothing if config.label_smoothing is not None else DEFAULT_LABEL_SMOOTHING
        self.lip = build_lip_loss(expert.to(self.device), smoothing)
        sync = self.generator.sync_net
        sync.temperature, sync.max_negatives = config.temperature, config.max_negatives
        self.tokenizer = tokenizer
        self.train_clips, self.val_clips = list(train_clips), list(val_clips)
        self.loader = loader or ClipLoader(tokenizer, cache_size=config.cache_clips)
        self.opt_gen = torch.optim.Adam([p for p in self.generator.parameters() if p.requires_grad],
                                        lr=config.lr, betas=config.betas)
        self.opt_disc = torch.optim.Adam([p for p in self.discriminator.parameters() if p.requires_grad],
                                         lr=config.disc_lr if config.disc_lr is not None else config.lr,
                                         betas=config.betas)
        self.schedule = Schedule(stage=config.start_stage, patience=config.patience)
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.out_dir = Path(config.out_dir)
        self.disc_keeps_generator_grads = config.disc_keeps_generator_grads
        self._observer: Any = None
        self._apply_stage()

    # -- stage ---------------------------------------------------------------------------------------
    def _apply_stage(self) -> None:
        # a new (untrained) audio encoder trains from the first step; the expert's copy from stage 1 on
        self.generator.ft = self.schedule.stage >= 1 or self.config.audio_encoder != "expert"

    @property
    def lip_on(self) -> bool:
        return self.schedule.stage >= 2

    # -- data order ----------------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_clips) / self.config.batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.train_clips)))
        random.Random(self.config.seed * 100003 + epoch).shuffle(order)
        return order

    def _rng(self, *keys: int) -> random.Random:
        return random.Random(hash((self.config.seed,) + keys))

    def _torch_gen(self, *keys: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.config.seed, 7) + keys) & 0x7FFFFFFF)

    # -- one step ------------------------------------------------------------------------------------
    def _expert_video(self, batch: Batch, faces: Tensor) -> Tensor:
        """The lip expert's input: each clip's frames with its generated faces pasted on the picked frames.

        Args:
            faces: generated faces in [0, 1] of all picked frames of the batch, clip after clip (``ΣP×3×96×96``).
        Returns:
            ``B×1×T×88×88``, T = the batch's audio length (:func:`talkbench.train.losses.expert_video_input`).
        """
        hybrids, start = [], 0
        for frames, boxes, picked in zip(batch.frames, batch.boxes, batch.picked):
            video = torch.from_numpy(frames).to(self.device)
            hybrids.append(compose_hybrid_video(video, boxes, faces[start:start + len(picked)], picked))
            start += len(picked)
        video, _ = expert_video_input(hybrids, length=batch.audio.shape[2])
        return video

    def generator_losses(self, batch: Batch, neg_gen: torch.Generator | None) -> tuple[Tensor, dict[str, Any], Tensor]:
        """All generator terms; returns (total loss, logged values, generated faces)."""
        cfg = self.config
        faces, embedding = self.generator(batch.inputs, batch.audio, batch.audio_index, batch.padding_mask)
        logs: dict[str, Any] = {}
        zero = faces.new_zeros(())
        lip = sync = zero
        if self.lip_on and (cfg.lip_weight > 0 or cfg.contrastive_weight > 0):
            out = self.lip(self._expert_video(batch, faces), batch.padding_mask, batch.target,
                           batch.prev_output_tokens)
            lip = out.loss
            logs.update(lip=float(lip.detach()), lip_tokens=out.n_tokens, lip_correct=out.n_correct)
            if cfg.contrastive_weight > 0:
                v_rows, a_rows = pick_rows(embedding, out.encoder_out, batch.audio_index)
                neg = self.generator.sync_net.sample_negatives(len(v_rows), neg_gen).to(self.device)
                sync = self.generator.sync_net(v_rows, a_rows, neg)
                logs["contrastive"] = float(sync.detach())
        perceptual = gan_generator_loss(self.discriminator, faces) if cfg.perceptual_weight > 0 else zero
        l1 = l1_reconstruction(faces, batch.gt)
        logs.update(l1=float(l1.detach()), perceptual=float(perceptual.detach()))
        total = (cfg.lip_weight * lip + cfg.perceptual_weight * perceptual + cfg.l1_weight * l1
                 + cfg.contrastive_weight * sync)
        logs["gen_total"] = float(total.detach())
        return total, logs, faces

    def train_step(self, batch: Batch, neg_gen: torch.Generator | None = None) -> dict[str, Any]:
        """One generator step then one discriminator step; returns the logged loss values."""
        self.generator.train()
        self.discriminator.train()
        self.lip.train()
        self.opt_gen.zero_grad(set_to_none=False)
        self.opt_disc.zero_grad(set_to_none=False)
        total, logs, faces = self.generator_losses(batch, neg_gen)
        total.backward()
        self.opt_gen.step()
        self.opt_gen.zero_grad(set_to_none=False)
        if not self.disc_keeps_generator_grads:
            self.opt_disc.zero_grad(set_to_none=False)
        real, fake = gan_discriminator_loss(self.discriminator, batch.gt, faces)
        (real + fake).backward()
        self.opt_disc.step()
        logs.update(disc_real=float(real.detach()), disc_fake=float(fake.detach()))
        return logs

    # -- validation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Reference validation: L1 (summed over batches: the schedule's measure), lip loss, token error."""
        clips = self.val_clips[: self.config.val_max_clips] if self.config.val_max_clips else self.val_clips
        if not clips:
            return {}
        self.generator.eval()
        self.discriminator.eval()
        totals = {"l1": 0.0, "lip": 0.0, "contrastive": 0.0, "perceptual": 0.0, "disc_real": 0.0, "disc_fake": 0.0}
        correct = tokens = 0
        n_batches = 0
        for k in range(0, len(clips), self.config.batch_size):
            loaded = [self.loader(c) for c in clips[k:k + self.config.batch_size]]
            batch = make_batch(loaded, self._rng(-1, k), train=False, config=self.config).to(self.device)
            faces, embedding = self.generator(batch.inputs, batch.audio, batch.audio_index, batch.padding_mask)
            real, fake = gan_discriminator_loss(self.discriminator, batch.gt, faces)
            totals["disc_real"] += float(real)
            totals["disc_fake"] += float(fake)
            out = self.lip(self._expert_video(batch, faces), batch.padding_mask, batch.target,
                           batch.prev_output_tokens)
            totals["lip"] += float(out.loss)
            correct += out.n_correct
            tokens += out.n_tokens
            if self.config.contrastive_weight > 0:
                v_rows, a_rows = pick_rows(embedding, out.encoder_out, batch.audio_index)
                neg = self.generator.sync_net.sample_negatives(len(v_rows), self._torch_gen(-1, k))
                totals["contrastive"] += float(self.generator.sync_net(v_rows, a_rows, neg.to(self.device)))
            totals["perceptual"] += float(gan_generator_loss(self.discriminator, faces))
            totals["l1"] += float(l1_reconstruction(faces, batch.gt))
            n_batches += 1
        result = {k: v for k, v in totals.items()}
        result["token_error"] = 1.0 - correct / max(tokens, 1)
        result["batches"] = n_batches
        if self.config.val_observer_wer:
            result.update(self.observer_wer(clips))
        return result

    def observer_wer(self, clips: Sequence[TrainClip]) -> dict[str, float]:
        """Corpus WER of fully generated validation clips (inf_test procedure: identity = frame 0, every
        frame generated) as the WER1 lip-reading observer scores them (beam search)."""
        if self._observer is None:
            ctx = ObserverContext(device=self.config.device, protocol="talklip2023", weights=dict(self.config.weights),
                                  options={"avhubert_beam": self.config.val_observer_beam})
            self._observer = build_observers(["wer1"], ctx)[0]
        rows = []
        for clip in clips:
            loaded = self.loader(clip)
            if loaded.samples is None:
                raise TrainError(f"{clip.clip_id}: no audio samples for full-clip generation.")
            frames, _ = synthesize(self.generator, loaded.frames, loaded.boxes, loaded.samples, device=self.device)
            generated = Clip(path=clip.video, frames=frames, fps=25.0, audio_int16=loaded.samples, source_fps=25.0)
            try:
                rows.append(self._observer.measure(ClipData(clip.clip_id, generated, text=clip.text)))
            except ClipSkipped as err:   # a clip the observer refuses (e.g. too long) is logged, not fatal
                logger.warning("validation WER: %s: %s", clip.clip_id, err)
        summary = self._observer.summarize(rows) if rows else {}
        return {"observer_wer": float(summary.get("wer1", float("nan"))), "observer_clips": len(rows)}

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self) -> Path:
        """Write the generator/discriminator pair of this step and point ``latest.json`` at it."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        gen_path = self.out_dir / f"checkpoint_step{self.global_step:09d}.pth"
        disc_path = self.out_dir / f"disc_checkpoint_step{self.global_step:09d}.pth"
        state = {"talkbench": {"schedule": self.schedule.state(), "epoch": self.epoch,
                               "step_in_epoch": self.step_in_epoch, "seed": self.config.seed}}
        save_talklip_checkpoint(gen_path, self.generator, self.opt_gen, self.global_step, self.epoch, extra=state)
        save_talklip_checkpoint(disc_path, self.discriminator, self.opt_disc, self.global_step, self.epoch)
        latest = self.out_dir / "latest.json"
        tmp = latest.with_name("latest.json.tmp")
        tmp.write_text(json.dumps({"generator": gen_path.name, "discriminator": disc_path.name,
                                   "global_step": self.global_step}))
        tmp.replace(latest)
        return gen_path

    def resume(self) -> bool:
        """Continue from ``latest.json`` in ``out_dir``; returns False when there is nothing to resume."""
        latest = self.out_dir / "latest.json"
        if not latest.is_file():
            return False
        names = json.loads(latest.read_text())
        gen = load_checkpoint(self.out_dir / names["generator"], map_location=self.device)
        disc = load_checkpoint(self.out_dir / names["discriminator"], map_location=self.device)
        self.generator.load_state_dict(unwrap_state_dict(gen), strict=True)
        self.discriminator.load_state_dict(unwrap_state_dict(disc), strict=True)
        self.opt_gen.load_state_dict(gen["optimizer"])
        self.opt_disc.load_state_dict(disc["optimizer"])
        extra = gen.get("talkbench", {})
        sched = extra.get("schedule", {})
        self.schedule = Schedule(int(sched.get("stage", 0)), float(sched.get("best", 100.0)),
                                 int(sched.get("waited", 0)), int(sched.get("patience", self.config.patience)))
        self.global_step = int(gen["global_step"])
        self.epoch = int(extra.get("epoch", gen.get("global_epoch", 0)))
        self.step_in_epoch = int(extra.get("step_in_epoch", 0))
        self._apply_stage()
        logger.info("resumed from %s at step %d (stage %d: %s)", names["generator"], self.global_step,
                    self.schedule.stage, STAGES[min(self.schedule.stage, 3)])
        return True

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, progress: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
        """Train until the schedule ends, ``epochs`` are done or ``max_steps`` is reached."""
        cfg = self.config
        result = TrainResult(self.global_step, self.schedule.stage)
        log_path = self.out_dir / "train_log.jsonl"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        per_epoch = self.batches_per_epoch()
        while self.epoch < cfg.epochs and self.schedule.stage < 3:
            order = self.epoch_order(self.epoch)
            while self.step_in_epoch < per_epoch:
                if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                    result.global_step, result.stage = self.global_step, self.schedule.stage
                    return result
                k = self.step_in_epoch
                chosen = [self.train_clips[i] for i in order[k * cfg.batch_size:(k + 1) * cfg.batch_size]]
                rng = self._rng(self.epoch, k)
                batch = make_batch([self.loader(c) for c in chosen], rng, train=True, config=cfg).to(self.device)
                started = time.perf_counter()
                logs = self.train_step(batch, self._torch_gen(self.epoch, k))
                self.global_step += 1
                self.step_in_epoch += 1
                logs.update(step=self.global_step, epoch=self.epoch, stage=self.schedule.stage,
                            seconds=time.perf_counter() - started)
                result.history.append(logs)
                with log_path.open("a") as fh:
                    fh.write(json.dumps(logs) + "\n")
                if progress is not None:
                    progress(self.global_step, logs)
                if self.global_step % cfg.eval_interval == 0:
                    val = self.validate()
                    if val:
                        val["step"] = self.global_step
                        advanced = self.schedule.update(val["l1"])
                        val["stage"] = self.schedule.stage
                        result.validations.append(val)
                        with log_path.open("a") as fh:
                            fh.write(json.dumps({"validation": val}) + "\n")
                        if advanced:
                            logger.info("validation L1 plateaued: stage %d (%s)", self.schedule.stage,
                                        STAGES[min(self.schedule.stage, 3)])
                            self._apply_stage()
                if self.global_step == 1 or self.global_step % cfg.checkpoint_interval == 0:
                    result.checkpoints.append(self.save())
                if self.schedule.stage >= 3:
                    break
            if self.step_in_epoch >= per_epoch:
                self.epoch += 1
                self.step_in_epoch = 0
        result.global_step, result.stage = self.global_step, self.schedule.stage
        return result


def build_trainer(config: TrainConfig, train_clips: Sequence[TrainClip] | None = None,
                  val_clips: Sequence[TrainClip] | None = None, resume: bool = True) -> TalkLipTrainer:
    """Load the expert, build/load the generator and discriminator, read the clip lists, resume if possible."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if config.audio_encoder not in AUDIO_ENCODERS:
        raise TrainError(f"audio_encoder must be one of {', '.join(AUDIO_ENCODERS)}, got {config.audio_encoder!r}.")
    torch.manual_seed(config.seed)
    expert, tokenizer, smoothing = load_expert(config)
    config = config.replace(label_smoothing=smoothing)
    if config.generator_init is not None:
        generator = load_talklip_generator(config.generator_init, device="cpu")
        if config.audio_encoder == "expert":
            set_trainable_audio_layers(generator, config.finetune_last_layers)
    elif config.audio_encoder == "expert":
        if config.generator_width != 1:
            raise TrainError("generator_width needs audio_encoder = transformer or local (a new audio encoder).")
        generator = generator_from_expert(expert, config.finetune_last_layers)
    else:
        generator = new_generator(config, expert)
    discriminator = TalkLipDiscriminator(config.generator_width)
    if config.discriminator_init is not None:
        discriminator = load_talklip_discriminator(config.discriminator_init)
    if train_clips is None:
        if config.data_root is None or config.train_list is None:
            raise TrainError("give data_root and train_list (TalkLip's train.txt) to train.")
        train_clips = clips_from_list(config.train_list, config.data_root, config.boxes_root, config.audio_root)
        train_clips = train_clips[:config.max_train_clips] if config.max_train_clips else train_clips
    if val_clips is None:
        val_clips = (clips_from_list(config.val_list, config.data_root, config.boxes_root, config.audio_root)
                     if config.val_list is not None and config.data_root is not None else [])
    trainer = TalkLipTrainer(config, generator, discriminator, expert, tokenizer, train_clips, val_clips)
    if resume:
        trainer.resume()
    return trainer


def train(config: TrainConfig, resume: bool = True, progress: Callable[[int, dict[str, Any]], None] | None = None,
          ) -> TrainResult:
    """``talkbench train``: build everything from ``config`` and run (resuming from ``out_dir`` if possible)."""
    return build_trainer(config, resume=resume).run(progress)
