"""A mini lip reader as the frozen lip-reading expert of ``talkbench train`` (the TalkLip-mini ablation).

TalkLip's expert is an AV-HuBERT seq2seq model scored by teacher-forced cross-entropy
(:class:`talkbench.train.losses.LipReadingLoss`). The mini lip readers (:mod:`talkbench.nets.mini_lipreader`) are CTC
models, so the mini expert's loss is the CTC loss of the hybrid video against the transcript, summed over the
batch (like the reference's loss, summed over target tokens). Everything else of the training step stays as it
is: the same hybrid video (:func:`talkbench.train.losses.compose_hybrid_video`), the same expert input
(:func:`talkbench.train.losses.expert_video_input`: grey, centre 88×88, AV-HuBERT normalisation — the crop and
normalisation the mini lip readers were trained with), and the expert's encoder output as the visual side of
the contrastive loss.

Targets travel through the trainer's fairseq-style collation (pad 1, eos 2): :class:`CharTokenizer` encodes a
transcript as CTC character ids shifted by :data:`TOKEN_OFFSET` plus the eos id, and
:class:`MiniLipReadingLoss` undoes the shift.
"""

from __future__ import annotations

from typing import Sequence

import editdistance
import torch
import torch.nn.functional as F
from torch import Tensor

from talkbench.nets.mini_lipreader import ALPHABET, BLANK, FORMAT, encode_text, greedy_decode
from talkbench.safe_unpickle import UnsafeCheckpointError, load_checkpoint
from talkbench.train.losses import EOS, PAD, FrozenExpertLoss, LipReadingOutput

#: token id = CTC id + TOKEN_OFFSET (CTC ids: 1 = space, 2.. letters; 0 = blank is never a target)
TOKEN_OFFSET = 2


class CharTokenizer:
    """Transcript <-> token ids for the mini expert (see the module docstring)."""

    pad = PAD
    eos = EOS

    def encode(self, text: str) -> list[int]:
        """Lowercase words -> shifted CTC ids followed by eos."""
        return [i + TOKEN_OFFSET for i in encode_text(text)] + [EOS]

    def decode(self, ids: Sequence[int]) -> str:
        """Shifted ids (pad/eos ignored) -> text."""
        return "".join(ALPHABET[i - TOKEN_OFFSET - 1] for i in ids if i > EOS)


def ctc_targets(target: Tensor) -> tuple[Tensor, Tensor]:
    """Collated ``B×L`` token ids -> (concatenated CTC ids, per-row lengths)."""
    keep = target > EOS
    return (target[keep] - TOKEN_OFFSET), keep.sum(1)


class MiniLipReadingLoss(FrozenExpertLoss):
    """CTC loss of a frozen :class:`talkbench.nets.mini_lipreader.MiniLipReader` on (hybrid) videos; same call
    and output as :class:`talkbench.train.losses.LipReadingLoss`.

    Args:
        expert: the mini lip reader (kept in eval mode, parameters frozen; BatchNorm statistics stay fixed).
    """

    def forward(self, video: Tensor, padding_mask: Tensor, target: Tensor, prev_output_tokens: Tensor,
                ) -> LipReadingOutput:
        """Score videos against transcripts.

        Args:
            video: ``B×1×T×88×88`` normalised expert input (:func:`talkbench.train.losses.expert_video_input`).
            padding_mask: ``B×T`` bool, True on padded frames.
            target: ``B×L`` ids from :class:`CharTokenizer` (collated); ``prev_output_tokens`` is unused (CTC).
        Returns:
            loss = nll = CTC loss summed over the batch; n_tokens = target characters; n_correct = characters
            minus the edit distance of the greedy transcript (clamped at 0); encoder_out ``B×T×D``.
        """
        del prev_output_tokens
        lengths = (~padding_mask).sum(1)
        out = self.expert.forward_pooled(self.expert.pool(video[:, 0]), lengths)
        log_probs = out["ctc"].float().log_softmax(-1)
        flat, target_lengths = ctc_targets(target)
        loss = F.ctc_loss(log_probs.transpose(0, 1), flat, lengths, target_lengths, blank=BLANK,
                          reduction="sum", zero_infinity=True)
        n_tokens = int(target_lengths.sum())
        with torch.no_grad():
            n_correct = n_tokens - self._edits(log_probs, lengths, target)
        return LipReadingOutput(loss, loss, n_tokens, max(0, n_correct), out["features"])

    @staticmethod
    def _edits(log_probs: Tensor, lengths: Tensor, target: Tensor) -> int:
        tokenizer = CharTokenizer()
        edits = 0
        for row, n, ids in zip(log_probs, lengths.tolist(), target.tolist()):
            hyp, _ = greedy_decode(row[:n])
            edits += editdistance.eval(hyp, tokenizer.decode(ids))
        return edits


def is_mini_lipreader(path: str) -> bool:
    """Whether ``path`` is a mini lip-reader checkpoint (its ``format`` entry), read with the safe unpickler.

    Its config and weights are checked when it is loaded (:func:`talkbench.nets.mini_lipreader.load_lipreader`).

    Raises:
        UnsafeCheckpointError: the file is hostile (refused by the restricted unpickler).
    """
    try:
        obj = load_checkpoint(path, map_location="cpu", mmap=True)
    except UnsafeCheckpointError:
        raise   # a hostile file is reported as such, not retried as another kind
    except Exception:  # noqa: BLE001 - not ours: let the AV-HuBERT loader report it
        return False
    return isinstance(obj, dict) and obj.get("format") == FORMAT


__all__ = ["CharTokenizer", "MiniLipReadingLoss", "TOKEN_OFFSET", "ctc_targets", "is_mini_lipreader"]
