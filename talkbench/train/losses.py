"""Training losses of TalkLip (CVPR 2023, Eq. 7), usable by any talking-face generator.

* :class:`LipReadingLoss` — a frozen AV-HuBERT seq2seq lip reader scores a *hybrid* video (real frames
  with generated faces pasted into some of them) against the transcript: label-smoothed cross-entropy
  under teacher forcing, summed over target tokens (fairseq's ``label_smoothed_cross_entropy`` with
  ``reduce=True``, as TalkLip's criterion). Gradients flow through the expert into the generated faces;
  the expert's own weights never change.
* :class:`AVContrastiveLoss` — InfoNCE between the generator's audio embeddings and the expert's visual
  context features at the generated frames (linear projection of the audio, both L2-normalised,
  temperature τ, negatives = other audio rows of the batch).
* GAN terms of the visual-quality discriminator (:func:`gan_generator_loss`, :func:`gan_discriminator_loss`)
  and the L1 reconstruction (:func:`l1_reconstruction`).
* Hybrid-video helpers: :func:`sample_span_starts` (the paper's p / M frame selection),
  :func:`compose_hybrid_video` (differentiable paste-back), :func:`expert_video_input` (grey, centre 88,
  normalisation, padding — exactly TalkLip's ``images2avhubert``), :func:`collate_targets`.

Example (any generator producing ``N×3×96×96`` faces in [0, 1] for frames ``picked`` of a video)::

    lip = LipReadingLoss(expert)                       # AVHubertSeq2Seq, frozen inside
    hybrid = compose_hybrid_video(frames, boxes, faces, picked)
    video, mask = expert_video_input([hybrid])
    out = lip(video, mask, target, prev_output_tokens)
    out.loss.backward()                                # reaches the generator through `faces`
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talkbench.generate import resize_faces
from talkbench.nets.avhubert import IMAGE_MEAN, IMAGE_STD
from talkbench.nets.talklip import AVSyncHead

#: The expert's centre crop (hubert_dataset / TalkLip data_avhubert.transform); its normalisation is AV-HuBERT's
EXPERT_CROP = 88
PAD, EOS = 1, 2


# ----------------------------------------------------------------------------------------------------
# Hybrid videos
# ----------------------------------------------------------------------------------------------------

def sample_span_starts(n_frames: int, prob: float = 0.08, span: int = 5, train: bool = True,
                       val_stride: float = 0.12, rng: random.Random | None = None) -> list[int]:
    """Start frames of the generated spans (TalkLip ``Talklipdata.__getitem__``, paper Sec. 3.5).

    Training: ``max(int(T·prob), 1)`` distinct starts drawn from ``range(1, T - 4)``; after sorting, a start
    closer than ``span`` frames to the previously kept one is dropped (spans never overlap). Validation:
    ``range(0, T - 4, max(int(T·val_stride), 1))``.

    Args:
        n_frames: T, the video's frame count (at least ``span + 1``).
    Returns:
        sorted starts; each covers frames ``start .. start + span - 1``.
    """
    if n_frames < span + 1:
        raise ValueError(f"a clip of {n_frames} frames is too short for {span}-frame spans; need > {span} frames.")
    rng = rng or random.Random()
    if train:
        candidates = list(range(1, n_frames - span + 1))
        starts = sorted(rng.sample(candidates, min(len(candidates), max(int(n_frames * prob), 1))))
    else:
        starts = list(range(0, n_frames - span + 1, max(int(n_frames * val_stride), 1)))
    kept = [starts[0]]
    for s in starts[1:]:
        if s - kept[-1] >= span:
            kept.append(s)
    return kept


def span_frames(starts: Sequence[int], span: int = 5) -> list[int]:
    """Frame indices covered by the spans, in order."""
    return [s + k for s in starts for k in range(span)]


def compose_hybrid_video(frames: Tensor, boxes: Tensor | np.ndarray, faces: Tensor, frame_index: Sequence[int]) -> Tensor:
    """Paste generated faces into a real video (differentiable; TalkLip ``emb_roi2im`` without truncation).

    The training twin of :func:`talkbench.generate.paste_faces` (same resize, :func:`talkbench.generate.resize_faces`),
    on float frames, before the grey conversion.

    Args:
        frames: ``T×H×W×3`` video, uint8 or float pixel values, BGR.
        boxes: ``T×4`` face boxes (x1, y1, x2, y2).
        faces: ``N×3×96×96`` generated faces in [0, 1] for frames ``frame_index``.
    Returns:
        float ``T×H×W×3`` pixel values: each box replaced by its resized face (no truncation); gradients
        reach ``faces``.
    """
    boxes = np.asarray(boxes)
    out = frames.float().clone()
    for j, t in enumerate(frame_index):
        x1, y1, x2, y2 = (int(v) for v in boxes[t])
        out[t, y1:y2, x1:x2] = resize_faces(faces[j:j + 1], y2 - y1, x2 - x1)[0].permute(1, 2, 0)
    return out


def expert_video_input(videos: Sequence[Tensor], length: int | None = None) -> tuple[Tensor, Tensor]:
    """The lip-reading expert's input from BGR pixel videos (TalkLip ``affine_trans`` + ``collater_audio``).

    Per frame: grey = 0.299·R + 0.587·G + 0.114·B in float (no rounding), /255, centre crop 88×88
    (offset ``int(round(W - 88) / 2)``), (x - 0.421) / 0.165; videos zero-padded at the end to ``length``.

    Args:
        videos: B tensors ``T_b×H×W×3`` (float or uint8 pixel values).
        length: padded length (default: the longest video); TalkLip uses the audio length.
    Returns:
        (video ``B×1×T×88×88``, padding mask ``B×T`` bool, True on padding).
    """
    length = length or max(len(v) for v in videos)
    out, masks = [], []
    for v in videos:
        v = v.float()
        h, w = v.shape[1:3]
        dy, dx = int(round(h - EXPERT_CROP) / 2.0), int(round(w - EXPERT_CROP) / 2.0)
        crop = v[:, dy:dy + EXPERT_CROP, dx:dx + EXPERT_CROP]
        grey = 0.299 * crop[..., 2] + 0.587 * crop[..., 1] + 0.114 * crop[..., 0]
        x = (grey / 255.0 - IMAGE_MEAN) / IMAGE_STD  # the expert's input: AV-HuBERT's normalisation
        if len(x) > length:
            raise ValueError(f"a video of {len(x)} frames is longer than the padded length {length}.")
        x = F.pad(x, (0, 0, 0, 0, 0, length - len(x)))
        mask = torch.zeros(length, dtype=torch.bool, device=x.device)
        mask[len(v):] = True
        out.append(x)
        masks.append(mask)
    return torch.stack(out)[:, None], torch.stack(masks)


def collate_targets(tokens: Sequence[Tensor | Sequence[int]], pad: int = PAD, eos: int = EOS) -> tuple[Tensor, Tensor]:
    """Pad target token ids (each ending with eos) and build the teacher-forcing inputs.

    Returns:
        (target ``B×L``, prev_output_tokens ``B×L`` = [eos, t0, ..., t_{n-2}]), right-padded with ``pad``
        (fairseq ``collate_tokens(..., move_eos_to_beginning=True)``).
    """
    seqs = [torch.as_tensor(t, dtype=torch.long) for t in tokens]
    length = max(len(s) for s in seqs)
    target = torch.full((len(seqs), length), pad, dtype=torch.long)
    prev = torch.full((len(seqs), length), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) == 0 or int(s[-1]) != eos:
            raise ValueError("each target sequence must end with the eos token")
        target[i, :len(s)] = s
        prev[i, 0] = eos
        prev[i, 1:len(s)] = s[:-1]
    return target, prev


# ----------------------------------------------------------------------------------------------------
# Lip-reading loss
# ----------------------------------------------------------------------------------------------------

def label_smoothed_nll(lprobs: Tensor, target: Tensor, epsilon: float, ignore_index: int | None = PAD,
                       ) -> tuple[Tensor, Tensor]:
    """fairseq's ``label_smoothed_nll_loss`` (reduce=True): summed over tokens.

    loss = (1 - ε - ε/(V-1))·NLL + ε/(V-1)·Σ_v -log p_v, padding positions excluded.

    Args:
        lprobs: ``N×V`` log-probabilities; target: ``N`` token ids.
    Returns:
        (loss, nll) scalars.
    """
    target = target.unsqueeze(-1)
    nll = -lprobs.gather(dim=-1, index=target)
    smooth = -lprobs.sum(dim=-1, keepdim=True)
    if ignore_index is not None:
        pad_mask = target.eq(ignore_index)
        nll = nll.masked_fill(pad_mask, 0.0)
        smooth = smooth.masked_fill(pad_mask, 0.0)
    nll, smooth = nll.sum(), smooth.sum()
    eps_i = epsilon / (lprobs.size(-1) - 1)
    return (1.0 - epsilon - eps_i) * nll + eps_i * smooth, nll


@dataclass
class LipReadingOutput:
    """What :class:`LipReadingLoss` returns.

    Attributes:
        loss: label-smoothed cross-entropy summed over target tokens (what TalkLip weights by λ_lip).
        nll: plain negative log-likelihood summed over target tokens.
        n_tokens: target tokens (padding excluded).
        n_correct: tokens whose argmax equals the target (teacher forcing); 1 - n_correct/n_tokens is
            the "wer" TalkLip's validation prints.
        encoder_out: the expert's visual context features ``B×T×D`` (for :class:`AVContrastiveLoss`).
    """

    loss: Tensor
    nll: Tensor
    n_tokens: int
    n_correct: int
    encoder_out: Tensor


class FrozenExpertLoss(nn.Module):
    """Base of the lip-reading losses: holds a frozen expert.

    The expert is put in ``eval()`` mode and its parameters get ``requires_grad=False``; it stays in eval
    mode when this module is switched to training (as in the reference, which never calls
    ``avhubert.train()``). Gradients still flow through it to its input.
    """

    def __init__(self, expert: nn.Module) -> None:
        super().__init__()
        self.expert = expert
        for p in self.expert.parameters():
            p.requires_grad_(False)
        self.expert.eval()

    def train(self, mode: bool = True) -> "FrozenExpertLoss":
        super().train(mode)
        self.expert.eval()
        return self


class LipReadingLoss(FrozenExpertLoss):
    """Lip-reading loss from a frozen AV-HuBERT seq2seq expert (TalkLip ``criterion(avhubert, sample)``).

    The expert stays frozen and in eval mode (:class:`FrozenExpertLoss`).

    Args:
        expert: :class:`talkbench.nets.avhubert.AVHubertSeq2Seq` (``encoder.w2v_model`` + ``decoder``).
        label_smoothing: ε of the criterion (0.1 in av_hubert's fine-tuning configs, i.e. the expert's).
        pad: padding token id (fairseq dictionary: 1).
    """

    def __init__(self, expert: nn.Module, label_smoothing: float = 0.1, pad: int = PAD) -> None:
        super().__init__(expert)
        self.label_smoothing = label_smoothing
        self.pad = pad

    def encode(self, video: Tensor, padding_mask: Tensor) -> Tensor:
        """Expert visual features ``B×T×D`` of a video ``B×1×T×88×88`` (see :func:`expert_video_input`)."""
        return self.expert.encoder.w2v_model.extract_features(None, video, padding_mask)

    def decode(self, prev_output_tokens: Tensor, encoder_out: Tensor, padding_mask: Tensor) -> Tensor:
        """Teacher-forced decoder logits ``B×L×V``."""
        return self.expert.decoder(prev_output_tokens, encoder_out, padding_mask)

    def forward(self, video: Tensor, padding_mask: Tensor, target: Tensor, prev_output_tokens: Tensor,
                ) -> LipReadingOutput:
        """Score a (hybrid) video against its transcript.

        Args:
            video: ``B×1×T×88×88`` expert input (see :func:`expert_video_input`).
            padding_mask: ``B×T`` bool, True on padded frames.
            target / prev_output_tokens: ``B×L`` (see :func:`collate_targets`).
        """
        encoder_out = self.encode(video, padding_mask)
        logits = self.decode(prev_output_tokens, encoder_out, padding_mask)
        lprobs = F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.shape[-1])
        flat_target = target.reshape(-1)
        loss, nll = label_smoothed_nll(lprobs, flat_target, self.label_smoothing, self.pad)
        with torch.no_grad():
            keep = flat_target.ne(self.pad)
            n_correct = int(lprobs.argmax(1)[keep].eq(flat_target[keep]).sum())
        return LipReadingOutput(loss, nll, int(keep.sum()), n_correct, encoder_out)


# ----------------------------------------------------------------------------------------------------
# Contrastive loss
# ----------------------------------------------------------------------------------------------------

class AVContrastiveLoss(AVSyncHead):
    """InfoNCE between audio embeddings and the lip-reading expert's visual features (TalkLip ``av_sync``).

    For each selected frame: anchor = the generator's audio embedding, L2-normalised, projected by the
    linear layer ``Linearaudio`` and L2-normalised again; positive = the expert's visual context feature
    of the same frame (of the hybrid video), L2-normalised; negatives = ``min(max_negatives, N // 2)``
    projected audio rows of *other* frames of the batch, drawn without replacement. Logits = cosine /
    ``temperature``; loss = mean cross-entropy with the positive first.

    The parameter name ``Linearaudio`` is the checkpoint's (``sync_net.Linearaudio.*`` in TalkLip files).

    Args:
        audio_dim: width of the audio embeddings.
        video_dim: width of the expert's features (default ``audio_dim``).
        temperature: τ (0.07).
        max_negatives: cap on negatives per anchor (100).
    """

    @staticmethod
    def rows(audio_embedding: Tensor, expert_features: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """See :func:`pick_rows`."""
        return pick_rows(audio_embedding, expert_features, index)


def pick_rows(audio_embedding: Tensor, expert_features: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``index`` (batch-major: b·T + t) of ``B×T×D`` audio embeddings and expert features.

    TalkLip train.py ``local_sync_loss``: the generated frames' rows of both.

    Returns:
        (video rows ``N×Dv``, audio rows ``N×Da``) — the argument order of :meth:`AVContrastiveLoss.forward`.
    """
    video = expert_features.reshape(-1, expert_features.shape[-1])[index]
    audio = audio_embedding.reshape(-1, audio_embedding.shape[-1])[index]
    return video, audio


# ----------------------------------------------------------------------------------------------------
# GAN and reconstruction terms
# ----------------------------------------------------------------------------------------------------

def gan_generator_loss(discriminator: nn.Module, fake: Tensor) -> Tensor:
    """Perceptual (adversarial) term for the generator: BCE(D(fake), 1), as TalkLip ``perceptual_forward``.

    ``discriminator`` returns P(real) ``N×1``; the BCE on probabilities (log clamped at -100 by torch) is
    kept, as the reference, so saturated discriminators give the reference's value (≈100).
    """
    pred = discriminator(fake)
    return F.binary_cross_entropy(pred, torch.ones_like(pred))


def gan_discriminator_loss(discriminator: nn.Module, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """Discriminator terms (BCE(D(real), 1), BCE(D(fake), 0)); ``fake`` is detached here."""
    pred_real = discriminator(real)
    pred_fake = discriminator(fake.detach())
    return (F.binary_cross_entropy(pred_real, torch.ones_like(pred_real)),
            F.binary_cross_entropy(pred_fake, torch.zeros_like(pred_fake)))


def l1_reconstruction(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error between generated and ground-truth faces (``nn.L1Loss``)."""
    return F.l1_loss(pred, target)


__all__ = ["AVContrastiveLoss", "LipReadingLoss", "LipReadingOutput", "collate_targets", "compose_hybrid_video",
           "expert_video_input", "gan_discriminator_loss", "gan_generator_loss", "l1_reconstruction",
           "label_smoothed_nll", "pick_rows", "sample_span_starts", "span_frames"]
