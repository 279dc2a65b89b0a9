"""Auto-AVSR's joint CTC/attention beam search, as ``lightning.get_beam_search_decoder`` + ESPnet's ``BatchBeamSearch``.

Written from mpc001/auto_avsr @ 182b628 (``lightning.py``, ``espnet/nets/batch_beam_search.py``, ``beam_search.py``,
``scorers/ctc.py``, ``ctc_prefix_score.CTCPrefixScoreTH``, ``e2e_asr_common.end_detect``). The settings of
``get_beam_search_decoder`` (what ``eval.py`` and the inference tutorial use): beam 40, weights decoder 0.9, CTC 0.1,
no language model (its weight is 0 and no LM is published), length bonus 0 (so it is not a scorer at all),
pre-beam of ``int(1.5 × 40) = 60`` tokens per hypothesis chosen by the decoder's scores, maximum output length = the
number of encoder frames (``maxlenratio = 0``), minimum 0, end detection on. The search, step by step:

1. the running hypotheses (all of one length) are scored by the decoder (log-softmax of the last position) and by
   the CTC prefix scorer on each hypothesis' 60 best decoder tokens; tokens outside the pre-beam get the CTC
   "log zero" (−1e10), <eos> always gets the CTC probability of the whole prefix, the blank never;
2. ``0.9 · decoder + 0.1 · (CTC prefix score − the prefix's own CTC score) + the hypothesis' score``, then the 40
   best (hypothesis, token) pairs of the flattened ``n × 5049`` matrix (``torch.topk``);
3. at the last allowed step <eos> is appended to every running hypothesis; hypotheses ending in <eos> leave the beam
   with their score as it is (no length normalisation, no final scores);
4. ESPnet's end detection (Watanabe et al. 2017, eq. 50: M = 3, D_end = −10) may stop the search earlier;
5. the result is the ended hypotheses sorted by score (stable), the best first.

Speed: the encoder output, the CTC log-probabilities and every decoder layer's cross-attention keys/values are
computed once per clip; each decoder layer keeps its self-attention keys/values and each step runs the last
position only (ESPnet recomputes the keys/values of the whole prefix and of the encoder output for every
hypothesis at every step: same numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from talkbench.nets.avsr import BLANK, SOS_EOS, AutoAVSR
from talkbench.nets.espnet_layers import MultiHeadedAttention

#: ESPnet's CTC "log zero".
LOGZERO = -10000000000.0


@dataclass(frozen=True)
class DecodeSettings:
    """``get_beam_search_decoder``'s defaults (mpc001/auto_avsr lightning.py)."""

    beam: int = 40
    ctc_weight: float = 0.1
    pre_beam_ratio: float = 1.5
    end_detect: bool = True


OFFICIAL = DecodeSettings()


@dataclass
class Hypothesis:
    """An ended hypothesis: ``tokens`` = ``yseq`` without <sos> (ends with <eos>), total ``score`` and the
    accumulated ``decoder`` and ``ctc`` scores (unweighted), as ESPnet's ``Hypothesis.asdict``."""

    tokens: list[int]
    score: float
    decoder: float
    ctc: float
    yseq: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ decoder


class IncrementalDecoder:
    """The transformer decoder run one position at a time for ``n`` hypotheses over one clip's encoder output.

    Cross-attention keys/values ``1×H×T×dk`` per layer are made once; each layer keeps the self-attention
    keys/values of the positions seen so far (``n×H×L×dk``).
    """

    def __init__(self, model: AutoAVSR, memory: torch.Tensor) -> None:
        """``memory``: encoder output ``T×768``."""
        self.decoder = model.decoder
        self.layers = list(self.decoder.decoders)
        mem = memory[None]
        self.cross = [(self._heads(layer.src_attn, layer.src_attn.linear_k, mem),
                       self._heads(layer.src_attn, layer.src_attn.linear_v, mem)) for layer in self.layers]
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.length = 0

    @staticmethod
    def _heads(attn: MultiHeadedAttention, linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return linear(x).view(x.size(0), -1, attn.h, attn.d_k).transpose(1, 2)

    @staticmethod
    def _attend(attn: MultiHeadedAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One query position ``n×1×d`` against keys/values ``n×H×L×dk`` (no mask) → ``n×1×d``."""
        qh = attn.linear_q(q).view(q.size(0), -1, attn.h, attn.d_k).transpose(1, 2)
        scores = torch.matmul(qh, k.transpose(-2, -1)) / math.sqrt(attn.d_k)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)
        return attn.linear_out(context.transpose(1, 2).reshape(q.size(0), -1, attn.h * attn.d_k))

    def select(self, index: torch.Tensor) -> None:
        """Keep the caches of hypotheses ``index`` (in that order)."""
        if self.cache is not None:
            self.cache = [(k[index], v[index]) for k, v in self.cache]

    @torch.no_grad()
    def step(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``n×V`` of the next token after each hypothesis, whose last token is ``last_tokens``."""
        embed, pos = self.decoder.embed[0], self.decoder.embed[1]
        position = self.length
        pe = _absolute_position(position, pos.d_model, last_tokens.device)
        x = embed(last_tokens)[:, None] * pos.xscale + pe  # n×1×d
        new_cache = []
        for i, layer in enumerate(self.layers):
            h = layer.norm1(x)
            k_new = self._heads(layer.self_attn, layer.self_attn.linear_k, h)
            v_new = self._heads(layer.self_attn, layer.self_attn.linear_v, h)
            if self.cache is not None:
                k_new = torch.cat([self.cache[i][0], k_new], dim=2)
                v_new = torch.cat([self.cache[i][1], v_new], dim=2)
            new_cache.append((k_new, v_new))
            x = x + self._attend(layer.self_attn, h, k_new, v_new)
            k_mem, v_mem = self.cross[i]
            n = x.size(0)
            x = x + self._attend(layer.src_attn, layer.norm2(x), k_mem.expand(n, -1, -1, -1),
                                 v_mem.expand(n, -1, -1, -1))
            x = x + layer.feed_forward(layer.norm3(x))
        self.cache = new_cache
        self.length += 1
        logits = self.decoder.output_layer(self.decoder.after_norm(x[:, 0]))
        return torch.log_softmax(logits, dim=-1)


def _absolute_position(position: int, d_model: int, device: torch.device) -> torch.Tensor:
    """Row ``position`` of ESPnet's absolute sinusoid table, ``1×1×d`` (float32 as ESPnet computes it)."""
    steps = torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
    div = torch.exp(steps * -(math.log(10000.0) / d_model))
    angles = torch.tensor([float(position)], dtype=torch.float32, device=device)[:, None] * div
    row = torch.empty(1, d_model, dtype=torch.float32, device=device)
    row[:, 0::2] = torch.sin(angles)
    row[:, 1::2] = torch.cos(angles)
    return row[None]


# ------------------------------------------------------------------------------------------------ CTC prefix scores


class CTCPrefixScorer:
    """``CTCPrefixScoreTH`` for one clip (batch 1, no windowing), scoring only each hypothesis' pre-beam tokens.

    State per hypothesis: the forward variables ``r`` (``T×2``: ending in a label / in a blank) and the prefix's
    own log-probability ``s``.
    """

    def __init__(self, logp: torch.Tensor, eos: int = SOS_EOS, blank: int = BLANK) -> None:
        """``logp``: CTC log-probabilities ``T×V``."""
        self.x = logp
        self.blank, self.eos = blank, eos
        self.length, self.odim = logp.shape

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``r`` ``T×2×1`` and ``s`` ``(1,)`` of the empty prefix."""
        r = torch.full((self.length, 2, 1), LOGZERO, dtype=self.x.dtype, device=self.x.device)
        r[:, 1] = torch.cumsum(self.x[:, self.blank], 0).unsqueeze(1)
        return r, torch.zeros(1, dtype=self.x.dtype, device=self.x.device)

    def score(self, output_length: int, last: torch.Tensor, r_prev: torch.Tensor, s_prev: torch.Tensor,
              ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefix scores of ``prefix + c`` for the tokens ``ids`` of each hypothesis.

        Args:
            output_length: tokens in each prefix (without <sos>).
            last: each prefix's last token ``(n,)``.
            r_prev: forward variables ``T×2×n``; s_prev: the prefixes' log-probabilities ``(n,)``.
            ids: the scored tokens ``n×S``.
        Returns:
            ``(scores n×V, r T×2×n×S, log_psi n×V)``: ``log_psi − s_prev`` with LOGZERO − s_prev for tokens not
            scored, the whole prefix's probability for <eos> and LOGZERO − s_prev for the blank.
        """
        n, snum = ids.shape
        x_label = self.x[:, ids]  # T×n×S
        x_blank = self.x[:, self.blank][:, None, None].expand(-1, n, snum)
        x_ = torch.stack([x_label, x_blank])  # 2×T×n×S
        r = torch.full((self.length, 2, n, snum), LOGZERO, dtype=self.x.dtype, device=self.x.device)
        if output_length == 0:
            r[0, 0] = x_[0, 0]
        r_sum = torch.logsumexp(r_prev, 1)  # T×n
        log_phi = r_sum.unsqueeze(2).repeat(1, 1, snum)
        hit = ids == last[:, None]  # the token repeating the prefix's last label
        rows, cols = torch.nonzero(hit, as_tuple=True)
        # ESPnet keeps the last position of a duplicated id (scoring_idmap), topk ids are distinct anyway
        for row, col in zip(rows.tolist(), cols.tolist()):
            log_phi[:, row, col] = r_prev[:, 1, row]
        start = max(output_length, 1)
        for t in range(start, self.length):
            rp = r[t - 1]
            rr = torch.stack([rp[0], log_phi[t - 1], rp[0], rp[1]]).view(2, 2, n, snum)
            r[t] = torch.logsumexp(rr, 1) + x_[:, t]
        log_phi_x = torch.cat((log_phi[0].unsqueeze(0), log_phi[:-1]), dim=0) + x_[0]
        log_psi_ids = torch.logsumexp(torch.cat((log_phi_x[start:], r[start - 1, 0].unsqueeze(0)), dim=0), dim=0)
        log_psi = torch.full((n, self.odim), LOGZERO, dtype=self.x.dtype, device=self.x.device)
        log_psi.scatter_(1, ids, log_psi_ids)
        log_psi[:, self.eos] = r_sum[self.length - 1]
        log_psi[:, self.blank] = LOGZERO
        return log_psi - s_prev[:, None], r, log_psi


# ------------------------------------------------------------------------------------------------ search


def _end_detect(ended: Sequence[tuple[int, float]], i: int, m_steps: int = 3, d_end: float = float(np.log(np.exp(-10)))
                ) -> bool:
    """ESPnet ``end_detect`` over ``(len(yseq), score)`` of the ended hypotheses at loop index ``i``."""
    if not ended:
        return False
    best = max(score for _, score in ended)
    count = 0
    for m in range(m_steps):
        same = [score for length, score in ended if length == i - m]
        if same and max(same) - best < d_end:
            count += 1
    return count == m_steps


@torch.no_grad()
def beam_search(model: AutoAVSR, memory: torch.Tensor, settings: DecodeSettings = OFFICIAL,
                max_length: int | None = None) -> list[Hypothesis]:
    """Joint CTC/attention beam search over one clip's encoder output (module docstring).

    Args:
        memory: encoder output ``T×768`` (:meth:`AutoAVSR.encode` of one clip, batch dimension removed).
        settings: beam and weights (default: Auto-AVSR's).
        max_length: maximum output length (default: ``T``, the reference's ``maxlenratio = 0``).
    Returns:
        the ended hypotheses, best first (at least one).
    """
    if memory.dim() != 2:
        raise ValueError(f"expected encoder output T×D, got shape {tuple(memory.shape)}")
    device, dtype = memory.device, memory.dtype
    vocab = model.decoder.output_layer.out_features
    eos = vocab - 1
    beam = settings.beam
    w_dec, w_ctc = 1.0 - settings.ctc_weight, settings.ctc_weight
    pre_beam = int(settings.pre_beam_ratio * beam)
    use_ctc = w_ctc != 0
    do_pre_beam = use_ctc and pre_beam < vocab
    if w_dec == 0:
        raise ValueError("ctc_weight = 1 (CTC only) is not supported; Auto-AVSR decodes with 0.1")
    maxlen = int(memory.size(0)) if max_length is None else int(max_length)

    decoder = IncrementalDecoder(model, memory)
    ctc = CTCPrefixScorer(model.ctc.log_softmax(memory[None])[0], eos=eos) if use_ctc else None
    yseq = torch.full((1, 1), eos, dtype=torch.long, device=device)
    score = torch.zeros(1, dtype=dtype, device=device)
    dec_total = torch.zeros(1, dtype=dtype, device=device)
    ctc_total = torch.zeros(1, dtype=dtype, device=device)
    r_prev, s_prev = ctc.initial() if ctc is not None else (None, None)
    ended: list[Hypothesis] = []
    ended_lengths: list[tuple[int, float]] = []

    for i in range(maxlen):
        n = yseq.size(0)
        dec = decoder.step(yseq[:, -1])  # n×V
        weighted = torch.zeros(n, vocab, dtype=dtype, device=device)
        weighted += w_dec * dec
        if ctc is not None:
            ids = (torch.topk(dec, pre_beam, dim=-1)[1] if do_pre_beam
                   else torch.arange(vocab, device=device).expand(n, -1))
            ctc_scores, r_all, log_psi = ctc.score(yseq.size(1) - 1, yseq[:, -1], r_prev, s_prev, ids)
            weighted += w_ctc * ctc_scores
        weighted += score.to(dtype=dtype).unsqueeze(1)
        top = weighted.view(-1).topk(beam)[1]
        prev = torch.div(top, vocab, rounding_mode="trunc")
        token = top % vocab
        score = weighted[prev, token]
        dec_total = dec_total[prev] + dec[prev, token]
        yseq = torch.cat([yseq[prev], token[:, None]], dim=1)
        decoder.select(prev)
        if ctc is not None:
            ctc_total = ctc_total[prev] + ctc_scores[prev, token]
            idmap = torch.full((n, vocab), -1, dtype=torch.long, device=device)
            idmap.scatter_(1, ids, torch.arange(ids.size(1), device=device).expand(n, -1).contiguous())
            cols = idmap[prev, token]  # -1 (not scored, e.g. <eos>) picks the last column, as ESPnet's indexing
            r_prev = r_all[:, :, prev, cols]
            s_prev = log_psi[prev, token]
        if i == maxlen - 1:
            yseq = torch.cat([yseq, torch.full((yseq.size(0), 1), eos, dtype=torch.long, device=device)], dim=1)
        is_eos = yseq[:, -1] == eos
        for b in torch.nonzero(is_eos, as_tuple=False).view(-1).tolist():
            seq = yseq[b].tolist()
            ended.append(Hypothesis(tokens=seq[1:], score=float(score[b]), decoder=float(dec_total[b]),
                                    ctc=float(ctc_total[b]), yseq=seq))
            ended_lengths.append((len(seq), float(score[b])))
        keep = torch.nonzero(~is_eos, as_tuple=False).view(-1)
        if keep.numel() < yseq.size(0):
            yseq, score, dec_total, ctc_total = yseq[keep], score[keep], dec_total[keep], ctc_total[keep]
            decoder.select(keep)
            if ctc is not None:
                r_prev, s_prev = r_prev[:, :, keep], s_prev[keep]
        if settings.end_detect and max_length is None and _end_detect(ended_lengths, i):
            break
        if yseq.size(0) == 0:
            break
    return sorted(ended, key=lambda h: h.score, reverse=True)


__all__ = ["CTCPrefixScorer", "DecodeSettings", "Hypothesis", "IncrementalDecoder", "LOGZERO", "OFFICIAL",
           "beam_search"]
