"""Beam search and teacher forcing: parity with av_hubert's generator, and checks against a plain search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from talkbench.nets.avhubert_decoding import Hypothesis, beam_search, collate_targets, teacher_forced_nll
from talkbench.nets.avhubert import AVHubertConfig, AVHubertSeq2Seq, LayerCache, stable_rows
from test_avhubert_common import expected_json, loaded_parity_model, video_of


@pytest.fixture(scope="module")
def parity():
    return loaded_parity_model()


@pytest.mark.parametrize("clip", ["meeting", "another"])
def test_beam50_matches_reference(parity, clip: str) -> None:
    model, tokenizer = parity
    info = expected_json()
    video = video_of(clip)
    hyps = beam_search(model, video, torch.zeros(1, video.shape[2], dtype=torch.bool))[0]
    top5 = info[f"{clip}.beam.top5"]
    assert hyps[0].tokens == top5[0]["tokens"]
    assert len(hyps[0].tokens) == info[f"{clip}.beam.max_len"] + 1
    assert tokenizer.decode(hyps[0].tokens) == top5[0]["text"]
    for ours, ref in zip(hyps[:5], top5):
        assert ours.score == pytest.approx(ref["score"], abs=1e-4)
        np.testing.assert_allclose(ours.positional_scores, ref["positional_scores"], atol=1e-4)
    assert len(hyps) == info[f"{clip}.beam.num_finalized"] == 50
    np.testing.assert_allclose(sorted(h.score for h in hyps), sorted(info[f"{clip}.beam.all_scores"]), atol=1e-4)
    assert sorted(len(h.tokens) for h in hyps) == sorted(info[f"{clip}.beam.all_lengths"])
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    # the normalised score is the mean of the positional scores (lenpen 1, eos counted)
    assert hyps[0].score == pytest.approx(float(np.mean(hyps[0].positional_scores)), abs=1e-5)


def test_batched_beam_matches_reference_and_wer(parity) -> None:
    model, tokenizer = parity
    info = expected_json()
    another, meeting = video_of("another"), video_of("meeting")
    frames = another.shape[2]
    video = torch.zeros(2, 1, frames, 88, 88)
    video[0] = another[0]
    video[1, :, : meeting.shape[2]] = meeting[0]
    padding = torch.zeros(2, frames, dtype=torch.bool)
    padding[1, meeting.shape[2]:] = True
    hyps = beam_search(model, video, padding)
    for i, clip in enumerate(info["batched.order"]):
        top1 = info[f"batched.{clip}.top1"]
        assert hyps[i][0].tokens == top1["tokens"]
        assert hyps[i][0].score == pytest.approx(top1["score"], abs=1e-4)
        assert tokenizer.decode(hyps[i][0].tokens) == top1["text"]
    import editdistance

    errors = words = 0
    for i, clip in enumerate(info["batched.order"]):
        ref = tokenizer.normalize_reference(info[f"{clip}.transcript"])
        errors += editdistance.eval(tokenizer.decode(hyps[i][0].tokens).split(), ref.split())
        words += len(ref.split())
    assert (errors, words) == (info["wer_batched"]["n_err"], info["wer_batched"]["n_ref_words"])


@pytest.mark.parametrize("clip", ["meeting", "another"])
def test_teacher_forced_nll_matches_reference(parity, clip: str) -> None:
    model, _ = parity
    info = expected_json()
    with torch.no_grad():
        nll = teacher_forced_nll(model, video_of(clip), None, [info[f"{clip}.target_tokens"]])
    assert float(nll[0]) == pytest.approx(info[f"{clip}.tf_nll_sum"], abs=1e-3)


def test_collate_targets_moves_eos_to_front() -> None:
    target, prev = collate_targets([[5, 6, 2], [7, 2]], pad=1, eos=2)
    assert target.tolist() == [[5, 6, 2], [7, 2, 1]]
    assert prev.tolist() == [[2, 5, 6], [2, 7, 1]]
    with pytest.raises(ValueError, match="must end with </s>"):
        collate_targets([[5, 6]], pad=1, eos=2)


# ------------------------------------------------------------------------------------------------------
# a tiny random model and a plain (cache-free, one clip at a time) beam search to compare with
# ------------------------------------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    """Tiny models: one thread (an OpenMP team on a shared CPU makes their small ops much slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(vocab: int = 9, seed: int = 0, eos_boost: float = 2.0) -> AVHubertSeq2Seq:
    torch.manual_seed(seed)
    cfg = AVHubertConfig(encoder_layers=1, encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_attention_heads=2,
                         conv_pos=4, conv_pos_groups=2, video_frontend=False, decoder_layers=2, decoder_embed_dim=16,
                         decoder_ffn_embed_dim=32, decoder_attention_heads=2, vocab_size=vocab)
    model = AVHubertSeq2Seq(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.3)
        model.decoder.embed_tokens.weight[cfg.eos] *= eos_boost  # make </s> come early and unevenly
    return model


def plain_beam(model: AVHubertSeq2Seq, audio: torch.Tensor, beam: int, max_len: int) -> list[Hypothesis]:
    """One clip; full decoder recomputed every step; fairseq's rules written plainly (valid when the 2·beam
    candidates always hold at least `beam` live non-</s> entries, true for vocab ≥ 2·beam + 3)."""
    pad, eos = model.cfg.pad, model.cfg.eos
    with torch.no_grad():
        enc = model.encode(None, None, audio)
    beams = [([eos], [])]  # (tokens incl. leading eos, cumulative scores)
    finished: list[Hypothesis] = []
    for step in range(max_len + 1):
        prev = torch.tensor([b[0] for b in beams])
        with torch.no_grad():
            logits = model.decoder(prev, enc.expand(len(beams), -1, -1))[:, -1]
        lprobs = torch.log_softmax(logits.float(), -1)
        lprobs[:, pad] = -math.inf
        if step >= max_len:
            keep = lprobs[:, eos].clone()
            lprobs[:] = -math.inf
            lprobs[:, eos] = keep
        elif step < 1:
            lprobs[:, eos] = -math.inf
        base = torch.tensor([b[1][-1] if b[1] else 0.0 for b in beams]).unsqueeze(1)
        total = (lprobs + base) if step > 0 else lprobs[:1]
        flat = total.reshape(-1)
        scores, idx = torch.topk(flat, k=min(2 * beam, flat.numel() - 1))
        vocab = lprobs.shape[1]
        new_beams = []
        for rank, (score, index) in enumerate(zip(scores.tolist(), idx.tolist())):
            src, token = index // vocab, index % vocab
            tokens, cum = beams[src]
            if token == eos and score != -math.inf:
                if rank < beam and len(finished) < beam:
                    per_token = np.diff([0.0] + cum + [score]).tolist()
                    finished.append(Hypothesis(tokens[1:] + [eos], score / (step + 1), per_token))
                continue
            if len(new_beams) < beam:
                new_beams.append((tokens + [token], cum + [score]))
        if len(finished) >= beam or step >= max_len:
            break
        beams = new_beams
    return sorted(finished, key=lambda h: -h.score)


def test_incremental_steps_equal_full_decoder(one_thread) -> None:
    model = tiny_model()
    audio = torch.randn(1, 104, 7)
    with torch.no_grad():
        enc = model.encode(None, None, audio)
        tokens = torch.tensor([[2, 5, 4, 7, 6, 5]]).repeat(3, 1)
        full = model.decoder(tokens, enc.expand(3, -1, -1))
        state = model.decoder.init_state(enc, None, beam=3)
        steps = [model.decoder.step(tokens[:, t], state) for t in range(tokens.shape[1])]
    np.testing.assert_allclose(torch.stack(steps, 1).numpy(), full.numpy(), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_cached_search_equals_plain_search(seed: int, one_thread) -> None:
    model = tiny_model(vocab=9, seed=seed)
    torch.manual_seed(100 + seed)
    lengths = [9, 6, 4]
    audio = torch.zeros(3, 104, max(lengths))
    padding = torch.zeros(3, max(lengths), dtype=torch.bool)
    singles = []
    for i, n in enumerate(lengths):
        clip = torch.randn(1, 104, n)
        audio[i, :, :n] = clip[0]
        padding[i, n:] = True
        singles.append(clip)
    # video-only semantics for max_len: src_len = padded length; here we pass audio and let max_len_b set it
    batched = beam_search(model, None, padding, beam=3, max_len_a=0.0, max_len_b=8, audio=audio)
    for i, clip in enumerate(singles):
        alone = beam_search(model, None, None, beam=3, max_len_a=0.0, max_len_b=8, audio=clip)[0]
        plain = plain_beam(model, clip, beam=3, max_len=8)
        for got in (batched[i], alone):
            assert [h.tokens for h in got] == [h.tokens for h in plain]
            np.testing.assert_allclose([h.score for h in got], [h.score for h in plain], atol=1e-5)
            np.testing.assert_allclose(got[0].positional_scores, plain[0].positional_scores, atol=1e-5)
    # early </s> happened: some hypotheses are shorter than max_len + 1
    assert any(len(h.tokens) < 9 for hyps in batched for h in hyps)


def test_stable_rows_keep_first_children_in_place_and_copy_the_others() -> None:
    # two clips of 4 beams: clip 0's hypotheses continue rows 0, 0, 1, 3; clip 1's 5, 5, 5, 6
    rows, src, dst = stable_rows([0, 0, 1, 3, 5, 5, 5, 6], block=4)
    assert rows[0] == 0 and rows[2] == 1 and rows[3] == 3 and rows[4] == 5 and rows[7] == 6
    assert sorted(rows) == list(range(8))                  # a permutation: every row used once
    assert all(r // 4 == i // 4 for i, r in enumerate(rows))  # never across clips
    assert list(zip(src, dst)) == [(0, rows[1]), (5, rows[5]), (5, rows[6])]


@pytest.mark.parametrize("stable", [True, False])
@torch.no_grad()
def test_cache_rows_follow_the_hypotheses(stable: bool, one_thread) -> None:
    """After random reorders and appends, each hypothesis sees the keys/values of its own history, whether the
    rows move (full reorder) or stay and only extra children are copied (stable rows)."""
    model = tiny_model(vocab=11, seed=4)
    gen = torch.Generator().manual_seed(7)
    enc = torch.randn(2, 5, model.cfg.decoder_embed_dim, generator=gen)
    state = model.decoder.init_state(enc, None, beam=3, max_steps=4)   # capacity 4: the 6 steps below grow it
    state.stable = stable
    history = [[] for _ in range(6)]                      # per logical hypothesis: its tokens so far
    for step in range(6):
        tokens = torch.randint(0, 11, (6,), generator=gen)
        model.decoder.step(tokens, state)
        history = [h + [int(t)] for h, t in zip(history, tokens)]
        order = torch.cat([torch.randint(0, 3, (3,), generator=gen), 3 + torch.randint(0, 3, (3,), generator=gen)])
        state.reorder(order)
        history = [list(history[int(o)]) for o in order]
    # a fresh state fed each hypothesis' history row by row gives the same caches
    fresh = model.decoder.init_state(enc, None, beam=3)
    for t in range(6):
        model.decoder.step(torch.tensor([h[t] for h in history]), fresh)
    rows = state.rows if state.rows is not None else torch.arange(6)
    assert (state.rows is None) == (not stable)
    for got, want in zip(state.caches, fresh.caches):
        assert got.length == want.length == 6
        torch.testing.assert_close(got.k[rows], want.k, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.v[rows], want.v, rtol=0, atol=1e-6)


def test_cache_capacity_fits_the_search_and_grows_to_its_length() -> None:
    cache = LayerCache(capacity=300)
    assert cache.first_capacity == LayerCache.MAX_FIRST
    for _ in range(200):
        cache.append(torch.zeros(2, 1, 1, 4), torch.ones(2, 1, 1, 4))
    assert cache.buf.shape[3] == 256 and cache.length == 200
    for _ in range(100):
        cache.append(torch.zeros(2, 1, 1, 4), torch.ones(2, 1, 1, 4))
    assert cache.buf.shape[3] == 300 and float(cache.v.sum()) == 2 * 300 * 4
    assert LayerCache(capacity=21).first_capacity == 21 and LayerCache().first_capacity == LayerCache.GROW


def test_search_is_deterministic_and_respects_settings(one_thread) -> None:
    model = tiny_model(vocab=12, seed=3, eos_boost=0.5)
    audio = torch.randn(2, 104, 5)
    first = beam_search(model, None, None, beam=4, max_len_a=0.0, max_len_b=6, audio=audio)
    second = beam_search(model, None, None, beam=4, max_len_a=0.0, max_len_b=6, audio=audio)
    assert [[h.tokens for h in c] for c in first] == [[h.tokens for h in c] for c in second]
    for clip in first:
        assert 1 <= len(clip) <= 4
        for h in clip:
            assert h.tokens[-1] == model.cfg.eos and model.cfg.pad not in h.tokens
            assert 2 <= len(h.tokens) <= 7  # min_len 1 + eos .. max_len 6 + eos
    # greedy = beam 1; a length penalty changes the normalisation only
    greedy = beam_search(model, None, None, beam=1, max_len_a=0.0, max_len_b=6, audio=audio[:1])[0]
    assert len(greedy) == 1
    long = beam_search(model, None, None, beam=4, lenpen=2.0, max_len_a=0.0, max_len_b=6, audio=audio[:1])[0]
    for h in long:
        assert h.score == pytest.approx(sum(h.positional_scores) / len(h.tokens) ** 2.0, abs=1e-5)


def test_audio_input_sets_source_length_from_feature_dim(one_thread) -> None:
    """Reference quirk: with audio present, max_len comes from source['audio'].size(1) = 104."""
    model = tiny_model(vocab=12, seed=4)
    # min_len = max_len forbids </s> until the forced end, so every hypothesis has max_len + 1 tokens
    hyps = beam_search(model, None, None, beam=2, max_len_a=0.1, max_len_b=0, min_len=10,
                       audio=torch.randn(1, 104, 3))[0]
    assert {len(h.tokens) for h in hyps} == {int(0.1 * 104) + 1}


def test_min_len_above_max_len_is_an_error(one_thread) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="min_len"):
        beam_search(model, None, None, beam=2, max_len_a=0.0, max_len_b=0, audio=torch.randn(1, 104, 3))
