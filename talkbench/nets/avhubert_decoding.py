"""Beam search and teacher forcing for the AV-HuBERT seq2seq lip reader (:mod:`talkbench.nets.avhubert`).

:func:`beam_search` gives the hypotheses of av_hubert's ``infer_s2s.py`` with its ``s2s_decode.yaml``
settings (av_hubert ``sequence_generator.py`` + fairseq ``search.BeamSearch``): beam 50, length penalty 1,
``max_len = min(int(a·src_len + b), max_decoder_positions - 1)`` with a = 1, b = 0, min length 1, the first
decoder input ``</s>``, ``<pad>`` never chosen, scores = summed natural-log probabilities including the
final ``</s>`` divided by (tokens incl. ``</s>``)^lenpen. The search logic (2·beam candidates, EOS
candidates among the first ``beam`` finalised, finished clips dropped from the batch) follows the
reference step for step, so ties and corner cases resolve the same way.

Speed: the encoder output is projected to cross-attention keys/values **once per clip** and shared by
the clip's beams (the reference copies the encoder output 50 times and projects every copy); only the
self-attention caches are reordered between steps.

:func:`teacher_forced_nll` scores a given transcript (``</s>`` + target[:-1] fed to the decoder).

AV-HuBERT only: the WER1 observer (:mod:`talkbench.observers.avhubert`) decodes with it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import Tensor

from talkbench.nets.avhubert import AVHubertSeq2Seq


@dataclass
class Hypothesis:
    """One finished hypothesis.

    Attributes:
        tokens: token ids, ending with ``</s>`` (the leading ``</s>`` decoder input is not included).
        score: length-normalised log-probability (natural log): sum over tokens incl. ``</s>`` / len^lenpen.
        positional_scores: log-probability of each token (same length as ``tokens``).
    """

    tokens: list[int]
    score: float
    positional_scores: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class BeamSettings:
    """av_hubert ``s2s_decode.yaml`` generation settings (the reference's other defaults alongside).

    Attributes:
        beam: beam width (clipped to vocab size − 1, as fairseq does).
        lenpen: length penalty exponent on the hypothesis length (incl. ``</s>``).
        max_len_a, max_len_b: max output length = a · source length + b (then capped by the decoder).
        min_len: ``</s>`` is forbidden before this many tokens.
        unk_penalty: subtracted from ``<unk>`` log-probabilities.
        temperature: logits are divided by it before the log-softmax.
    """

    beam: int = 50
    lenpen: float = 1.0
    max_len_a: float = 1.0
    max_len_b: int = 0
    min_len: int = 1
    unk_penalty: float = 0.0
    temperature: float = 1.0


#: av_hubert ``conf/s2s_decode.yaml`` (what TalkLip's WER1 runs); pass as ``beam_search(..., **asdict(S2S_DECODE))``.
S2S_DECODE = BeamSettings()


def source_length(video: Tensor | None, padding_mask: Tensor | None, audio: Tensor | None = None) -> int:
    """The ``src_len`` that sets max_len in the reference.

    Video only: ``padding_mask.size(1)`` = frames of the (padded) batch. With audio present the reference
    takes ``source['audio'].size(1)`` — the feature dimension (104) of ``[B, 104, T]``, not the frame
    count; kept for parity.
    """
    if audio is not None:
        return int(audio.shape[1])
    if padding_mask is not None:
        return int(padding_mask.shape[1])
    if video is None:
        raise ValueError("beam search needs video or audio input.")
    return int(video.shape[2])


@torch.no_grad()
def beam_search(model: AVHubertSeq2Seq, video: Tensor | None, padding_mask: Tensor | None = None, beam: int = 50,
                lenpen: float = 1.0, max_len_a: float = 1.0, max_len_b: int = 0, audio: Tensor | None = None,
                min_len: int = 1, unk_penalty: float = 0.0, temperature: float = 1.0) -> list[list[Hypothesis]]:
    """Beam search over a batch of clips, as av_hubert's SequenceGenerator.

    Args:
        model: the seq2seq lip reader (in eval mode).
        video: ``[B, 1, T, 88, 88]`` normalised gray crops (zero-padded at the end for shorter clips) or None.
        padding_mask: ``[B, T]`` bool, True = padded frame; None = no padding.
        beam, lenpen, max_len_a, max_len_b, min_len, unk_penalty, temperature: see :class:`BeamSettings`.
        audio: ``[B, 104, T]`` audio features or None.
    Returns:
        per clip, up to ``beam`` hypotheses sorted by score (best first).
    Raises:
        ValueError: max length below min length, or no input.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    decoder = model.decoder
    beam = min(beam, model.cfg.vocab_size - 1)
    src_len = source_length(video, padding_mask, audio)
    max_len = min(int(max_len_a * src_len + max_len_b), decoder.max_positions() - 1)
    if min_len > max_len:
        raise ValueError(f"min_len {min_len} is larger than max_len {max_len}; adjust max_len_a/max_len_b.")

    encoder_out = model.encode(video, padding_mask, audio)          # [B, S, D]
    with _threads_for_decoder(model, encoder_out.shape[0] * beam):
        return _search(model, encoder_out, padding_mask, beam, lenpen, max_len, min_len, unk_penalty, temperature)


#: Below this many multiply-adds per decoder step, the step runs on one thread: the ops are too small
#: to split, and on a shared CPU an OpenMP team that waits for a busy core makes them 10-50x slower.
SINGLE_THREAD_STEP_MACS = 50_000_000


@contextlib.contextmanager
def _threads_for_decoder(model: AVHubertSeq2Seq, rows: int) -> Iterator[None]:
    cfg = model.cfg
    dim, ffn = cfg.decoder_embed_dim, cfg.decoder_ffn_embed_dim
    macs = rows * (cfg.decoder_layers * (6 * dim * dim + 2 * dim * ffn) + dim * cfg.vocab_size)
    before = torch.get_num_threads()
    if macs < SINGLE_THREAD_STEP_MACS and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _search(model: AVHubertSeq2Seq, encoder_out: Tensor, padding_mask: Tensor | None, beam: int, lenpen: float,
            max_len: int, min_len: int, unk_penalty: float, temperature: float) -> list[list[Hypothesis]]:
    """The search loop proper (see :func:`beam_search`)."""
    decoder = model.decoder
    pad, eos, unk = model.cfg.pad, model.cfg.eos, model.cfg.unk
    vocab = model.cfg.vocab_size
    bsz = encoder_out.shape[0]
    device = encoder_out.device
    state = decoder.init_state(encoder_out, padding_mask, beam, max_len + 1)
    del encoder_out

    scores = torch.zeros(bsz * beam, max_len + 1, device=device)
    tokens = torch.full((bsz * beam, max_len + 2), pad, dtype=torch.long, device=device)
    tokens[:, 0] = eos
    cands_to_ignore = torch.zeros(bsz, beam, dtype=torch.bool, device=device)
    finalized: list[list[Hypothesis]] = [[] for _ in range(bsz)]
    finished = [False] * bsz
    clip_of_row = list(range(bsz))       # current batch row -> original clip index
    cand_size = 2 * beam
    bbsz_offsets = (torch.arange(bsz, device=device) * beam).unsqueeze(1)
    cand_offsets = torch.arange(cand_size, device=device)
    reorder: Tensor | None = None

    for step in range(max_len + 1):      # one extra step for the final </s>
        if reorder is not None:
            # after step 0 the caches hold one row per clip (see below): hypothesis row r came from clip r // beam
            state.reorder(reorder // beam if step == 1 else reorder)
        if step == 0:
            # every beam of a clip starts from the same </s>: run one row per clip (the search reads beam 0 only)
            state.beam = 1
            logits = decoder.step(tokens[::beam, 0], state).repeat_interleave(beam, dim=0)
            state.beam = beam
        else:
            logits = decoder.step(tokens[:, step], state)
        if temperature != 1.0:
            logits = logits / temperature
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        lprobs[lprobs != lprobs] = -math.inf
        lprobs[:, pad] = -math.inf
        lprobs[:, unk] -= unk_penalty
        if step >= max_len:               # force </s>
            lprobs[:, :eos] = -math.inf
            lprobs[:, eos + 1:] = -math.inf
        elif step < min_len:
            lprobs[:, eos] = -math.inf

        # -- fairseq BeamSearch.step -------------------------------------------------------------------
        lp = lprobs.view(bsz, beam, vocab)
        if step == 0:
            lp = lp[:, ::beam, :].contiguous()   # all beams are equal: expand beam 0 only
        else:
            lp = lp + scores.view(bsz, beam, -1)[:, :, step - 1].unsqueeze(-1)
        flat = lp.view(bsz, -1)
        cand_scores, cand_flat = torch.topk(flat, k=min(cand_size, flat.shape[1] - 1))
        cand_beams = torch.div(cand_flat, vocab, rounding_mode="floor")
        cand_indices = cand_flat.fmod(vocab)
        cand_bbsz_idx = cand_beams + bbsz_offsets

        # -- finalize hypotheses ending in </s> among the first `beam` candidates -----------------------
        eos_mask = cand_indices.eq(eos) & cand_scores.ne(-math.inf)
        eos_mask[:, :beam][cands_to_ignore] = False
        eos_rows = torch.masked_select(cand_bbsz_idx[:, :beam], eos_mask[:, :beam])
        newly_finished: list[int] = []
        if eos_rows.numel() > 0:
            eos_scores = torch.masked_select(cand_scores[:, :beam], eos_mask[:, :beam])
            newly_finished = _finalize(step, eos_rows, eos_scores, tokens, scores, finalized, finished, clip_of_row,
                                       beam, max_len, lenpen, eos)
        if all(finished):
            break
        if step >= max_len:  # every clip finishes at max_len; kept for safety
            break

        if newly_finished:
            # drop finished clips from the batch
            keep_mask = torch.ones(bsz, dtype=torch.bool, device=device)
            keep_mask[newly_finished] = False
            keep = torch.arange(bsz, device=device).masked_select(keep_mask)
            eos_mask = eos_mask[keep]
            cand_beams = cand_beams[keep]
            bsz = int(keep.numel())
            bbsz_offsets = (torch.arange(bsz, device=device) * beam).unsqueeze(1)
            cand_bbsz_idx = cand_beams + bbsz_offsets
            cand_scores = cand_scores[keep]
            cand_indices = cand_indices[keep]
            cands_to_ignore = cands_to_ignore[keep]
            scores = scores.view(-1, beam, scores.shape[1])[keep].view(bsz * beam, -1)
            tokens = tokens.view(-1, beam, tokens.shape[1])[keep].view(bsz * beam, -1)
            clip_of_row = [clip_of_row[i] for i in keep.tolist()]
            state.keep_clips(keep)
        else:
            keep = None

        # -- choose the `beam` best non-finished candidates ----------------------------------------------
        eos_mask[:, :beam] = ~((~cands_to_ignore) & (~eos_mask[:, :beam]))
        active_mask = eos_mask.long() * cand_size + cand_offsets[: eos_mask.shape[1]]
        new_cands_to_ignore, active_hypos = torch.topk(active_mask, k=beam, dim=1, largest=False)
        cands_to_ignore = new_cands_to_ignore.ge(cand_size)[:, :beam]
        if not bool((~cands_to_ignore).any(dim=1).all()):
            raise RuntimeError("beam search left a clip without an active hypothesis")
        active_bbsz_idx = torch.gather(cand_bbsz_idx, dim=1, index=active_hypos).view(-1)

        tokens[:, : step + 1] = torch.index_select(tokens[:, : step + 1], dim=0, index=active_bbsz_idx)
        tokens.view(bsz, beam, -1)[:, :, step + 1] = torch.gather(cand_indices, dim=1, index=active_hypos)
        if step > 0:
            scores[:, :step] = torch.index_select(scores[:, :step], dim=0, index=active_bbsz_idx)
        scores.view(bsz, beam, -1)[:, :, step] = torch.gather(cand_scores, dim=1, index=active_hypos)

        reorder = active_bbsz_idx
        if keep is not None:
            # active rows are numbered in the reduced batch; the caches still have the old layout
            reorder = (active_bbsz_idx.view(-1, beam) + (keep - torch.arange(bsz, device=device)).unsqueeze(1) * beam
                       ).view(-1)
            # the self-attention caches must drop the finished clips' rows too: a reorder into the old
            # layout selects exactly the surviving rows

    for hyps in finalized:
        hyps.sort(key=lambda h: -h.score)  # stable: equal scores keep finalisation order
    return finalized


def _finalize(step: int, rows: Tensor, eos_scores: Tensor, tokens: Tensor, scores: Tensor,
              finalized: list[list[Hypothesis]], finished: list[bool], clip_of_row: list[int], beam: int,
              max_len: int, lenpen: float, eos: int) -> list[int]:
    """Store the hypotheses of ``rows`` that end with ``</s>`` at ``step``; return batch rows of clips now finished."""
    hyp_tokens = tokens.index_select(0, rows)[:, 1: step + 2].clone()
    hyp_tokens[:, step] = eos
    pos_scores = scores.index_select(0, rows)[:, : step + 1].clone()
    pos_scores[:, step] = eos_scores
    pos_scores[:, 1:] = pos_scores[:, 1:] - pos_scores[:, :-1]   # cumulative -> per token
    normed = eos_scores / (step + 1) ** lenpen
    seen: list[int] = []
    for i, row in enumerate(rows.tolist()):
        batch_row = row // beam
        clip = clip_of_row[batch_row]
        if batch_row not in seen:
            seen.append(batch_row)
        if len(finalized[clip]) < beam:
            finalized[clip].append(Hypothesis(tokens=hyp_tokens[i].tolist(), score=float(normed[i]),
                                              positional_scores=pos_scores[i].tolist()))
    newly: list[int] = []
    for batch_row in seen:
        clip = clip_of_row[batch_row]
        if not finished[clip] and (len(finalized[clip]) == beam or step == max_len):
            finished[clip] = True
            newly.append(batch_row)
    return newly


def collate_targets(targets: Sequence[Sequence[int]], pad: int, eos: int, device: torch.device | str = "cpu"
                    ) -> tuple[Tensor, Tensor]:
    """Right-padded ``(target [B, L], prev_output_tokens [B, L])``; prev = ``</s>`` + target[:-1] (fairseq's
    ``move_eos_to_beginning``). Each target must end with ``</s>``."""
    if not targets:
        raise ValueError("no target sequences given.")
    length = max(len(t) for t in targets)
    target = torch.full((len(targets), length), pad, dtype=torch.long)
    prev = torch.full((len(targets), length), pad, dtype=torch.long)
    for i, seq in enumerate(targets):
        seq = [int(s) for s in seq]
        if not seq or seq[-1] != eos:
            raise ValueError(f"target {i} must end with </s> (id {eos}); encode it with Tokenizer.encode.")
        target[i, : len(seq)] = torch.tensor(seq)
        prev[i, 0] = eos
        prev[i, 1: len(seq)] = torch.tensor(seq[:-1])
    return target.to(device), prev.to(device)


def teacher_forced_nll(model: AVHubertSeq2Seq, video: Tensor | None, padding_mask: Tensor | None,
                       target_tokens: Sequence[Sequence[int]] | Tensor, audio: Tensor | None = None) -> Tensor:
    """Negative log-likelihood (natural log) of each clip's transcript under teacher forcing.

    Args:
        model: the seq2seq lip reader.
        video: ``[B, 1, T, 88, 88]`` or None; padding_mask: ``[B, T]`` bool or None; audio: ``[B, 104, T]`` or None.
        target_tokens: per clip, token ids ending with ``</s>`` (:meth:`talkbench.nets.avhubert_tokenizer.Tokenizer.encode`),
            or a right-padded ``[B, L]`` tensor.
    Returns:
        ``[B]`` summed NLL over each target's tokens (``</s>`` included, pads excluded). Differentiable
        with respect to the inputs and weights when called under grad mode (the TalkLip training loss).
    """
    pad, eos = model.cfg.pad, model.cfg.eos
    device = next(model.parameters()).device
    if isinstance(target_tokens, Tensor):
        rows = [[int(t) for t in row if int(t) != pad] for row in target_tokens]
    else:
        rows = [list(row) for row in target_tokens]
    target, prev = collate_targets(rows, pad, eos, device)
    logits = model.forward_teacher(video, padding_mask, prev, audio)
    lprobs = torch.log_softmax(logits.float(), dim=-1)
    token_lp = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return -(token_lp * target.ne(pad)).sum(dim=1)
