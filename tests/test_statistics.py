"""talkbench.statistics: bootstrap intervals per aggregation, paired comparisons, MAPSSWE, Holm.

Layers: point estimates equal the observer modules' own ``summarize`` on random rows; resampling is
deterministic and chunk-independent; coverage and block-bootstrap width on simulated suites; an independent
check of the corpus-WER bootstrap against kaldialign (Kaldi's ``compute-wer-bootci``); hand-computed MAPSSWE
and Holm examples.
"""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest

from talkbench import statistics as st
from talkbench.observers import METRICS
from talkbench.observers import avhubert, colour_stats, conformer, image_quality, mvm, syncnet

# ------------------------------------------------------------------------------------------------ helpers

VOCAB = [f"w{i}" for i in range(40)]


def random_transcripts(rng: np.random.Generator, n: int, error_rate: float = 0.2) -> list[tuple[str, str]]:
    """``n`` (reference, hypothesis) word strings: hypotheses from random substitutions, deletions, insertions."""
    pairs = []
    for _ in range(n):
        ref = list(rng.choice(VOCAB, size=int(rng.integers(2, 16))))
        hyp = []
        for word in ref:
            u = rng.random()
            if u < error_rate / 2:
                hyp.append(str(rng.choice(VOCAB)))           # substitution (or a lucky match)
            elif u < 0.75 * error_rate:
                continue                                      # deletion
            else:
                hyp.append(word)
            if rng.random() < error_rate / 4:
                hyp.append(str(rng.choice(VOCAB)))           # insertion
        pairs.append((" ".join(ref), " ".join(hyp)))
    return pairs


def wer1_rows(rng: np.random.Generator, n: int, error_rate: float = 0.2) -> list[dict]:
    return [avhubert.wer1_row(ref, hyp, 0.0) for ref, hyp in random_transcripts(rng, n, error_rate)]


def conformer_rows(rng: np.random.Generator, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        words, chars = int(rng.integers(1, 20)), int(rng.integers(5, 90))
        edits, char_edits = int(rng.integers(0, words + 3)), int(rng.integers(0, chars))
        rows.append({"wer2": 100.0 * edits / words, "hyp2": "", "edits2": edits, "ref_words2": words,
                     "cer2": 100.0 * char_edits / chars, "char_edits2": char_edits, "ref_chars2": chars})
    return rows


def image_rows(rng: np.random.Generator, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"psnr": float(rng.normal(28, 3)), "psnr_talklip_compat": float(rng.normal(30, 3)),
               "ssim": float(rng.uniform(0.5, 1.0)), "n_frames": int(rng.integers(1, 300))}
        if i % 17 == 3:
            row["n_frames"] = 0                 # no frames: summarize skips the clip
        if i % 23 == 5:
            row["ssim"] = None                  # a failed measurement
        rows.append(row)
    return rows


def syncnet_rows(rng: np.random.Generator, n: int) -> list[dict]:
    rows = [{"lse_c": float(rng.normal(7, 1.5)), "lse_d": float(rng.normal(7, 1)),
             "av_offset": float(rng.integers(-5, 6)), "n_windows": 50} for _ in range(n)]
    rows[4] = {"error_only": True}              # a row without the observer's columns
    return rows


def mvm_rows(rng: np.random.Generator, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        top1 = int(rng.random() < 0.6)
        rows.append({"acc": top1, "acc_top5": int(top1 or rng.random() < 0.5), "pred_word": "x", "label": "y"})
    return rows


ROWS_AND_SUMMARIZE = {
    "wer1": (wer1_rows, avhubert.summarize), "cer1": (wer1_rows, avhubert.summarize),
    "wer2": (conformer_rows, conformer.summarize), "wer2_corpus": (conformer_rows, conformer.summarize),
    "cer2": (conformer_rows, conformer.summarize), "cer2_corpus": (conformer_rows, conformer.summarize),
    "psnr": (image_rows, image_quality.summarize), "psnr_talklip_compat": (image_rows, image_quality.summarize),
    "ssim": (image_rows, image_quality.summarize),
    "lse_c": (syncnet_rows, syncnet.summarize), "lse_d": (syncnet_rows, syncnet.summarize),
    "av_offset": (syncnet_rows, syncnet.summarize),
    "acc": (mvm_rows, mvm.summarize), "acc_top5": (mvm_rows, mvm.summarize),
}


def colour_features(rng: np.random.Generator, n: int, shift: float = 3.0) -> dict[str, dict[str, np.ndarray]]:
    """Per-clip stored feature arrays of ``n`` clips (random per-frame statistics, generated shifted)."""
    out = {}
    for i in range(n):
        frames = int(rng.integers(5, 40))
        reference = rng.normal(100, 10, size=(frames, colour_stats.N_FEATURES))
        generated = reference + shift + rng.normal(0, 2, size=reference.shape)
        out[f"clip{i:04d}"] = {"colour_generated": colour_stats.sufficient_statistics(generated),
                               "colour_reference": colour_stats.sufficient_statistics(reference)}
    return out


# ------------------------------------------------------------------------------------------------ the input table

def test_per_clip_inputs_of_the_specs_fit_their_aggregation():
    for column, spec in METRICS.items():
        fields = tuple(name for name, _ in spec.inputs)
        expected = () if spec.aggregation == "set" else st.FIELDS_BY_AGGREGATION[spec.aggregation]
        assert fields == expected, column
    assert tuple(st.FIELDS_BY_AGGREGATION) == typing.get_args(st.Aggregation)   # every aggregation, in its order


def test_from_rows_keeps_the_clips_summarize_uses():
    rows = [{"psnr": 30.0, "n_frames": 10}, {"psnr": None, "n_frames": 10}, {"psnr": 20.0, "n_frames": 0},
            {"n_frames": 5}, {"psnr": 25.0, "n_frames": 5}]
    stats = st.ClipStats.from_rows(rows, METRICS["psnr"].inputs, clip_ids=["a", "b", "c", "d", "e"])
    np.testing.assert_array_equal(stats.values, [30.0, 25.0])
    np.testing.assert_array_equal(stats.weights, [10.0, 5.0])
    assert stats.clip_ids == ("a", "e") and stats.n == 2
    with pytest.raises(ValueError, match="from_features"):
        st.ClipStats.from_rows(rows, METRICS["fd_colour"].inputs)
    with pytest.raises(ValueError, match="one entry per clip"):
        st.ClipStats(edits=[1, 2], units=[3])


def test_common_clips_aligns_two_runs():
    a = st.ClipStats(values=[1.0, 2.0, 3.0], clip_ids=["x", "y", "z"])
    b = st.ClipStats(values=[30.0, 10.0], clip_ids=["z", "x"])
    a2, b2 = st.common_clips(a, b)
    assert a2.clip_ids == b2.clip_ids == ("x", "z")
    np.testing.assert_array_equal(a2.values, [1.0, 3.0])
    np.testing.assert_array_equal(b2.values, [10.0, 30.0])


# ------------------------------------------------------------------------------------------------ exactness

@pytest.mark.parametrize("metric", sorted(ROWS_AND_SUMMARIZE))
def test_point_estimate_equals_the_observer_summarize(metric):
    make_rows, summarize = ROWS_AND_SUMMARIZE[metric]
    rng = np.random.default_rng(sum(map(ord, metric)))
    rows = make_rows(rng, 300)
    expected = summarize(rows)[metric]
    stats = st.ClipStats.from_rows(rows, METRICS[metric].inputs)
    aggregation = METRICS[metric].aggregation
    point, lo, hi = st.bootstrap_interval(stats, aggregation, n_resamples=200)
    # the same sums in another order (numpy's pairwise sum vs Python's left-to-right): equal to rounding;
    # integer counts (corpus, accuracy) add up exactly.
    assert point == pytest.approx(expected, rel=1e-13, abs=1e-13)
    if aggregation in ("corpus", "accuracy"):
        assert point == expected
    assert lo <= point <= hi


def test_set_point_estimate_equals_summarize_features():
    features = colour_features(np.random.default_rng(5), 60)
    stats = st.ClipStats.from_features(features, colour_stats.FEATURES)
    assert stats.features.shape == (60, 146)
    point, lo, hi = st.bootstrap_interval(stats, "set", n_resamples=200, set_statistic=colour_stats.set_statistic)
    assert point == colour_stats.summarize_features(features)["fd_colour"]   # same sequential sum, bit-exact
    assert lo < point < hi


def test_no_clips_gives_nan():
    empty = st.ClipStats.from_rows([{"error": "x"}], METRICS["wer1"].inputs)
    assert all(math.isnan(v) for v in st.bootstrap_interval(empty, "corpus", n_resamples=10))
    assert math.isnan(avhubert.summarize([{"error": "x"}])["wer1"])


def test_corpus_resamples_without_reference_words_are_dropped(caplog):
    stats = st.ClipStats(edits=[1.0, 0.0, 2.0], units=[0.0, 0.0, 4.0])   # only one clip has words
    reps = st.bootstrap_distribution(stats, "corpus", n_resamples=2000, seed=1)
    assert np.isnan(reps).any() and np.isfinite(reps).any()
    with caplog.at_level("WARNING"):
        point, lo, hi = st.bootstrap_interval(stats, "corpus", n_resamples=2000, seed=1)
    assert point == 75.0 and lo <= hi and "no defined value" in caplog.text


def test_utterance_mean_rejects_empty_references():
    with pytest.raises(ValueError, match="empty reference"):
        st.bootstrap_interval(st.ClipStats(edits=[1.0, 0.0], units=[3.0, 0.0]), "utterance-mean", n_resamples=5)


def test_non_finite_inputs_give_no_interval():
    point, lo, hi = st.bootstrap_interval(st.ClipStats(values=[30.0, math.inf], weights=[2.0, 3.0]), "frame-mean",
                                          n_resamples=20)
    assert point == math.inf and math.isnan(lo) and math.isnan(hi)


# ------------------------------------------------------------------------------------------------ resampling

def test_resample_counts_are_deterministic_and_chunk_independent():
    whole = np.concatenate(list(st.resample_counts(37, 500, seed=3, chunk=500)))
    pieces = np.concatenate(list(st.resample_counts(37, 500, seed=3, chunk=7)))
    auto = np.concatenate(list(st.resample_counts(37, 500, seed=3)))
    assert whole.dtype == np.int32 and whole.shape == (500, 37)
    np.testing.assert_array_equal(whole, pieces)
    np.testing.assert_array_equal(whole, auto)
    assert (whole.sum(axis=1) == 37).all()
    other = np.concatenate(list(st.resample_counts(37, 500, seed=4)))
    assert not np.array_equal(whole, other)


def test_chunk_memory_budget_for_the_lrs2_test_set():
    chunks = list(st.resample_counts(1243, 10_000, seed=0))
    assert sum(len(c) for c in chunks) == 10_000
    assert max(len(c) for c in chunks) * 1243 * 8 <= st.CHUNK_BYTES     # each int64/float64 work array


def test_block_bootstrap_counts():
    groups = np.array(["s1"] * 3 + ["s2"] * 1 + ["s3"] * 4 + ["s4"] * 2)
    counts = np.concatenate(list(st.resample_counts(10, 300, seed=0, groups=groups, chunk=64)))
    for label in np.unique(groups):       # a clip is drawn as often as its group
        block = counts[:, groups == label]
        assert (block == block[:, :1]).all()
    group_draws = np.stack([counts[:, np.flatnonzero(groups == g)[0]] for g in np.unique(groups)], axis=1)
    assert (group_draws.sum(axis=1) == 4).all()
    # one clip per group is the plain bootstrap, draw for draw
    plain = np.concatenate(list(st.resample_counts(10, 300, seed=0)))
    singletons = np.concatenate(list(st.resample_counts(10, 300, seed=0, groups=np.arange(10))))
    np.testing.assert_array_equal(plain, singletons)


def test_same_seed_same_interval():
    stats = st.ClipStats.from_rows(wer1_rows(np.random.default_rng(1), 200), METRICS["wer1"].inputs)
    first = st.bootstrap_interval(stats, "corpus", n_resamples=1000, seed=11)
    assert first == st.bootstrap_interval(stats, "corpus", n_resamples=1000, seed=11, chunk=33)
    assert first != st.bootstrap_interval(stats, "corpus", n_resamples=1000, seed=12)


# ------------------------------------------------------------------------------------------------ coverage

def test_coverage_of_a_clip_mean():
    rng = np.random.default_rng(2024)
    covered = 0
    suites = 400
    for suite in range(suites):
        stats = st.ClipStats(values=rng.normal(0.0, 1.0, size=100))
        _, lo, hi = st.bootstrap_interval(stats, "clip-mean", n_resamples=500, seed=suite)
        covered += lo <= 0.0 <= hi
    assert 0.90 <= covered / suites <= 0.99


def test_coverage_of_a_corpus_rate():
    rng = np.random.default_rng(7)
    covered = 0
    suites = 300
    for suite in range(suites):
        units = rng.poisson(7, size=150) + 1
        stats = st.ClipStats(edits=rng.binomial(units, 0.2), units=units)   # true corpus rate: 20 %
        _, lo, hi = st.bootstrap_interval(stats, "corpus", n_resamples=500, seed=suite)
        covered += lo <= 20.0 <= hi
    assert 0.90 <= covered / suites <= 0.99


def test_block_bootstrap_is_wider_for_correlated_groups():
    rng = np.random.default_rng(0)
    speakers = np.repeat(np.arange(30), 10)
    values = rng.normal(0, 1, size=30)[speakers] + rng.normal(0, 0.3, size=300)   # clips share their speaker's level
    stats = st.ClipStats(values=values)
    _, plain_lo, plain_hi = st.bootstrap_interval(stats, "clip-mean", n_resamples=2000)
    _, block_lo, block_hi = st.bootstrap_interval(stats, "clip-mean", n_resamples=2000, groups=speakers)
    # design effect 1 + (m − 1)·ρ = 1 + 9·(1/1.09) ≈ 9.3: the block interval is ~3× as wide
    assert (block_hi - block_lo) > 2.0 * (plain_hi - plain_lo)


# ------------------------------------------------------------------------------------------------ kaldialign

def test_corpus_wer_bootstrap_agrees_with_kaldialign():
    """Independent check: kaldialign.bootstrap_wer_ci (Kaldi's compute-wer-bootci: its own alignment, RNG and
    resampling loop) returns, as fractions, the mean of 10,000 bootstrap WERs and mean ± 1.96·sd.

    Tolerances from Monte Carlo error, with σ the bootstrap sd and R = 10,000 on each side: the two means
    differ by N(0, 2σ²/R), SE 0.014σ; the two sds by about σ/√R = 0.01σ; a percentile bound against a
    mean ± 1.96·sd bound by ~0.03σ (quantile SE at 2.5 % is 0.027σ) plus the skew of the distribution
    (γ·(z²−1)/6·σ ≈ 0.01σ for n = 1,500). We allow ~5 SE: 0.07σ, 5 %, and 0.15σ.
    """
    kaldialign = pytest.importorskip("kaldialign")
    rng = np.random.default_rng(16)
    pairs = random_transcripts(rng, 1500, error_rate=0.3)
    refs, hyps = [r.split() for r, _ in pairs], [h.split() for _, h in pairs]
    rows = [avhubert.wer1_row(r, h, 0.0) for r, h in pairs]
    # both count the same Levenshtein edits
    assert sum(r["edits1"] for r in rows) == sum(kaldialign.edit_distance(r, h)["total"] for r, h in zip(refs, hyps))
    kaldi = kaldialign.bootstrap_wer_ci(refs, hyps, replications=10_000, seed=0)
    kaldi_mean, kaldi_sd = 100 * kaldi["wer"], 100 * kaldi["ci95"] / 1.96

    stats = st.ClipStats.from_rows(rows, METRICS["wer1"].inputs)
    reps = st.bootstrap_distribution(stats, "corpus", n_resamples=10_000, seed=0)
    point, lo, hi = st.bootstrap_interval(stats, "corpus", n_resamples=10_000, seed=0)
    assert reps.mean() == pytest.approx(kaldi_mean, abs=0.07 * kaldi_sd)
    assert reps.std() == pytest.approx(kaldi_sd, rel=0.05)
    assert lo == pytest.approx(100 * kaldi["ci95min"], abs=0.15 * kaldi_sd)
    assert hi == pytest.approx(100 * kaldi["ci95max"], abs=0.15 * kaldi_sd)
    assert point == pytest.approx(kaldi_mean, abs=0.07 * kaldi_sd)


# ------------------------------------------------------------------------------------------------ paired

def test_paired_identical_runs():
    stats = st.ClipStats.from_rows(wer1_rows(np.random.default_rng(2), 300), METRICS["wer1"].inputs)
    result = st.paired_bootstrap(stats, stats, "corpus", "lower", n_resamples=2000)
    assert result.difference == 0.0 and result.lo == 0.0 and result.hi == 0.0
    assert 0.5 <= result.p_value <= 1.0


def test_paired_clearly_better_run():
    rng = np.random.default_rng(3)
    pairs = random_transcripts(rng, 400, error_rate=0.4)
    rows_a = [avhubert.wer1_row(r, h, 0.0) for r, h in pairs]
    rows_b = [avhubert.wer1_row(r, h if rng.random() < 0.6 else r, 0.0) for r, h in pairs]  # 40 % fixed
    inputs = METRICS["wer1"].inputs
    a, b = st.ClipStats.from_rows(rows_a, inputs), st.ClipStats.from_rows(rows_b, inputs)
    result = st.paired_bootstrap(a, b, "corpus", "lower", n_resamples=2000)
    assert result.difference < 0 and result.hi < 0 and result.p_value < 0.01
    assert result.a == avhubert.summarize(rows_a)["wer1"] and result.b == avhubert.summarize(rows_b)["wer1"]
    reverse = st.paired_bootstrap(b, a, "corpus", "lower", n_resamples=2000)
    assert reverse.p_value > 0.99
    # the pairing removes the clips' shared difficulty: narrower than the two runs' own intervals added
    _, lo_a, hi_a = st.bootstrap_interval(a, "corpus", n_resamples=2000)
    _, lo_b, hi_b = st.bootstrap_interval(b, "corpus", n_resamples=2000)
    assert result.hi - result.lo < (hi_a - lo_a) + (hi_b - lo_b)


def test_paired_directions():
    rng = np.random.default_rng(4)
    hits_a = (rng.random(500) < 0.5).astype(float)
    hits_b = np.maximum(hits_a, rng.random(500) < 0.3)                        # B right wherever A is, and more
    acc = st.paired_bootstrap(st.ClipStats(hits=hits_a), st.ClipStats(hits=hits_b), "accuracy", "higher",
                              n_resamples=1000)
    assert acc.difference > 0 and acc.p_value < 0.01
    offsets_a = rng.normal(2.0, 1.0, 300)
    offsets_b = rng.normal(0.0, 1.0, 300)
    a, b = st.ClipStats(values=offsets_a), st.ClipStats(values=offsets_b)
    assert st.paired_bootstrap(a, b, "clip-mean", "zero", n_resamples=1000).p_value < 0.01
    assert st.paired_bootstrap(b, a, "clip-mean", "zero", n_resamples=1000).p_value > 0.99
    mirrored = st.paired_bootstrap(b, st.ClipStats(values=-offsets_b), "clip-mean", "zero", n_resamples=1000)
    assert mirrored.p_value == 1.0                                            # |−x| = |x|: never better


def test_paired_set_level_and_blocks():
    rng = np.random.default_rng(6)
    features_a = colour_features(rng, 40, shift=6.0)
    features_b = colour_features(rng, 40, shift=1.0)
    a = st.ClipStats.from_features(features_a, colour_stats.FEATURES)
    b = st.ClipStats.from_features(features_b, colour_stats.FEATURES)
    groups = np.repeat(np.arange(10), 4)
    result = st.paired_bootstrap(a, b, "set", "lower", n_resamples=300, groups=groups,
                                 set_statistic=colour_stats.set_statistic)
    assert result.a == colour_stats.summarize_features(features_a)["fd_colour"]
    assert result.difference < 0 and result.p_value < 0.01


def test_paired_rejects_misaligned_runs():
    with pytest.raises(ValueError, match="same clips"):
        st.paired_bootstrap(st.ClipStats(values=[1.0, 2.0]), st.ClipStats(values=[1.0]), "clip-mean", "higher")
    with pytest.raises(ValueError, match="same order"):
        st.paired_bootstrap(st.ClipStats(values=[1.0, 2.0], clip_ids=["a", "b"]),
                            st.ClipStats(values=[1.0, 2.0], clip_ids=["b", "a"]), "clip-mean", "higher")
    with pytest.raises(ValueError, match="direction"):
        st.paired_bootstrap(st.ClipStats(values=[1.0]), st.ClipStats(values=[1.0]), "clip-mean", "up")


# ------------------------------------------------------------------------------------------------ MAPSSWE, Holm

def test_mapsswe_hand_example():
    # z = a − b = [1, 0, 2, 0, 2]: mean 1, Σ(z − 1)² = 4, s² = 4/(5 − 1) = 1, W = 1/(1/√5) = √5
    w, p = st.mapsswe([2, 1, 3, 0, 4], [1, 1, 1, 0, 2])
    assert w == pytest.approx(math.sqrt(5))
    assert p == pytest.approx(math.erfc(math.sqrt(5) / math.sqrt(2)))        # 2·(1 − Φ(√5))
    assert p == pytest.approx(0.025347, abs=1e-6)
    w_rev, p_rev = st.mapsswe([1, 1, 1, 0, 2], [2, 1, 3, 0, 4])
    assert w_rev == -w and p_rev == p
    assert st.mapsswe([3, 3, 3], [2, 2, 2]) == (0.0, 1.0)                    # zero variance, as sc_stats
    assert all(math.isnan(v) for v in st.mapsswe([1], [0]))
    with pytest.raises(ValueError, match="same utterances"):
        st.mapsswe([1, 2], [1])


def test_holm_hand_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    np.testing.assert_allclose(st.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(st.holm([math.nan, 0.5, 0.01]), [math.nan, 0.5, 0.02])
    np.testing.assert_allclose(st.holm([0.6, 0.9]), [1.0, 1.0])
    assert st.holm([]).shape == (0,)
