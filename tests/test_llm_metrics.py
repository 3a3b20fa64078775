"""Hand-computed checks of the pure MUSE / TOFU metric functions (Shi et al., MUSE, ICLR 2025; Maini et al., TOFU, 2024)."""
from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import pytest

from obliviate.metrics import muse, tofu
from obliviate.metrics.muse import (AUC_RETRAIN, bootstrap_ci, clean_knowmem_answer, mia_auc, min_k_percent, privleak,
                                    rouge_l_f1, rouge_l_recall)
from obliviate.metrics.tofu import (exact_memorization, extraction_strength, forget_quality, ks_statistic,
                                    model_utility, probability, truth_ratio, truth_ratio_closer_to_1,
                                    truth_ratio_true_better)

HAVE_ROUGE = importlib.util.find_spec("rouge_score") is not None
needs_rouge = pytest.mark.skipif(not HAVE_ROUGE, reason="rouge-score (obliviate[llm]) missing")


# ---------------------------------------------------------------- ROUGE-L

@needs_rouge
def test_rouge_l_prefix():
    # prediction "the cat sat" (3 tokens), target "the cat sat down" (4):
    # LCS 3, P = 1, R = 3/4, F = 2·1·¾/(1+¾) = 6/7
    assert rouge_l_f1("the cat sat", "the cat sat down") == pytest.approx(6 / 7)
    assert rouge_l_recall("the cat sat", "the cat sat down") == pytest.approx(3 / 4)
    # argument order matters for recall: swapped, R = LCS/len(target) = 3/3
    assert rouge_l_recall("the cat sat down", "the cat sat") == pytest.approx(1.0)


@needs_rouge
def test_rouge_l_subsequence_not_substring():
    # target "a c d", prediction "a b c d": LCS = "a c d" = 3 (non-contiguous), P = 3/4, R = 1, F = 2·¾/(7/4) = 6/7
    assert rouge_l_f1("a b c d", "a c d") == pytest.approx(6 / 7)
    # target "a b c", prediction "c b a": LCS 1, P = R = 1/3, F = 1/3 (order matters, unlike ROUGE-1)
    assert rouge_l_f1("c b a", "a b c") == pytest.approx(1 / 3)


@needs_rouge
def test_rouge_l_default_tokenizer_no_stemmer():
    # default tokenizer lower-cases and drops punctuation → identical token lists
    assert rouge_l_f1("The cat.", "the cat") == pytest.approx(1.0)
    # no stemmer: "cats" ≠ "cat" → LCS = 1 ("the") of 2 tokens each → F = 1/2 (a stemmer would give 1)
    assert rouge_l_f1("the cats", "the cat") == pytest.approx(0.5)
    assert rouge_l_f1("dog", "cat") == 0.0
    assert rouge_l_f1("", "cat") == 0.0


@needs_rouge
def test_rouge_scorer_built_once():
    rouge_l_f1("a", "a")
    scorer = muse._SCORER
    assert scorer is not None
    rouge_l_recall("b", "b")
    assert muse._SCORER is scorer


@needs_rouge
def test_rouge_rejects_non_strings():
    with pytest.raises(ValueError, match="must be str"):
        rouge_l_f1(["the"], "the")


# ---------------------------------------------------------------- KnowMem post-processing

def test_clean_knowmem_answer():
    assert clean_knowmem_answer(" Paris\nQuestion: and Spain?\nAnswer: Madrid") == "Paris"
    assert clean_knowmem_answer("Paris.\n\nQuestion: next\nAnswer: x") == "Paris."
    assert clean_knowmem_answer("Paris Question: more") == "Paris"
    # a single newline without "Question" is kept (only the three MUSE splits apply)
    assert clean_knowmem_answer("line one\nline two") == "line one\nline two"
    assert clean_knowmem_answer("  no cut  ") == "no cut"
    assert clean_knowmem_answer("") == ""


# ---------------------------------------------------------------- Min-k%

def test_min_k_percent_hand():
    lp = np.array([-1.0, -2.0, -3.0, -4.0, -5.0])
    # int(5·0.4) = 2 smallest: −5, −4 → −mean = 4.5
    assert min_k_percent(lp, 0.4) == pytest.approx(4.5)
    # order of the input does not matter
    assert min_k_percent(lp[::-1].copy(), 0.4) == pytest.approx(4.5)
    # k = 1 → the mean NLL over all tokens = 3
    assert min_k_percent(lp, 1.0) == pytest.approx(3.0)
    # int(5·0.2) = 1 → 5
    assert min_k_percent(lp, 0.2) == pytest.approx(5.0)
    # default k is 0.4
    assert min_k_percent(lp) == pytest.approx(4.5)


def test_min_k_percent_truncates_count_like_muse():
    lp = -np.arange(1.0, 11.0)  # −1 … −10
    # int(10·0.5) = 5 → mean(10, 9, 8, 7, 6) = 8
    assert min_k_percent(lp, 0.5) == pytest.approx(8.0)
    # int(10·0.25) = int(2.5) = 2 → mean(10, 9) = 9.5 (not 3 tokens)
    assert min_k_percent(lp, 0.25) == pytest.approx(9.5)
    # int(10·0.29) = int(2.9) = 2 → 9.5 (rounding would take 3 tokens → 9)
    assert min_k_percent(lp, 0.29) == pytest.approx(9.5)
    # float artefact kept as in MUSE: 100·0.29 = 28.999999999999996 → 28 tokens, mean of −100 … −73 = 86.5
    assert min_k_percent(-np.arange(1.0, 101.0), 0.29) == pytest.approx(86.5)


def test_min_k_percent_guard_and_empty():
    # int(2·0.2) = 0: MUSE would average an empty slice (NaN); the guard uses the single smallest → 2
    assert min_k_percent(np.array([-1.0, -2.0]), 0.2) == pytest.approx(2.0)
    assert min_k_percent(np.array([-0.5]), 0.05) == pytest.approx(0.5)
    assert math.isnan(min_k_percent(np.array([]), 0.4))


def test_min_k_percent_validation():
    with pytest.raises(ValueError, match="fraction"):
        min_k_percent(np.array([-1.0]), 40)
    with pytest.raises(ValueError, match="fraction"):
        min_k_percent(np.array([-1.0]), 0.0)
    with pytest.raises(ValueError, match="1-D"):
        min_k_percent(np.zeros((2, 3)), 0.4)


# ---------------------------------------------------------------- MIA AUC (MUSE convention)

def test_mia_auc_hand_with_ties():
    # forget (label 0) [1, 2, 3], holdout (label 1) [2, 4]; AUC = P(holdout score < forget score) + ½ P(tie)
    # pairs (h, f): (2,1) 0, (2,2) ½, (2,3) 1, (4,·) 0 → 1.5 / 6 = 0.25
    assert mia_auc([1.0, 2.0, 3.0], [2.0, 4.0]) == pytest.approx(0.25)
    # swapping the splits gives the complement
    assert mia_auc([2.0, 4.0], [1.0, 2.0, 3.0]) == pytest.approx(0.75)


def test_mia_auc_memorised_and_extremes():
    # memorised forget set: forget NLLs all below holdout NLLs → AUC = 0
    assert mia_auc([0.1, 0.2, 0.3], [1.0, 2.0]) == pytest.approx(0.0)
    # over-unlearned: forget NLLs all above holdout → AUC = 1
    assert mia_auc([5.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    # all tied → ½
    assert mia_auc([1.0, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(0.5)


def test_mia_auc_matches_pairwise_count():
    rng = np.random.default_rng(3)
    f = rng.integers(0, 6, size=17).astype(float)   # small integer range → many ties
    h = rng.integers(0, 6, size=11).astype(float)
    pairwise = ((h[:, None] < f[None, :]).sum() + 0.5 * (h[:, None] == f[None, :]).sum()) / (f.size * h.size)
    assert mia_auc(f, h) == pytest.approx(pairwise)


def test_mia_auc_validation():
    with pytest.raises(ValueError, match="forget_scores is empty"):
        mia_auc([], [1.0])
    with pytest.raises(ValueError, match="holdout_scores"):
        mia_auc([1.0], [np.nan])
    with pytest.raises(ValueError, match="1-D"):
        mia_auc(np.zeros((2, 2)), [1.0])


# ---------------------------------------------------------------- PrivLeak

def test_privleak_signs():
    # memorised target: AUC 0 → (0 − 0.4772)/0.4772·100 = −100
    assert privleak(0.0, AUC_RETRAIN["News"]["forget_holdout_Min-40%"]) == pytest.approx(-100.0)
    # over-unlearned: AUC 0.7 vs 0.5 → +40 %
    assert privleak(0.7, 0.5) == pytest.approx(40.0)
    # like the retrained model → 0
    assert privleak(0.5393, AUC_RETRAIN["Books"]["forget_holdout_Min-40%"]) == pytest.approx(0.0)
    # AUC 0.25 vs 0.5 → −50 %
    assert privleak(0.25, 0.5) == pytest.approx(-50.0)


def test_privleak_guard_and_validation():
    assert math.isnan(privleak(0.3, 0.0))
    with pytest.raises(ValueError, match="auc_model"):
        privleak(1.5, 0.5)
    with pytest.raises(ValueError, match="auc_reference"):
        privleak(0.5, -0.1)


def test_auc_retrain_constants():
    assert AUC_RETRAIN["News"]["forget_holdout_Min-40%"] == 0.4772
    assert AUC_RETRAIN["Books"]["forget_holdout_Min-40%"] == 0.5393


def test_privleak_end_to_end():
    # forget scores all below holdout (memorised) → AUC 0 → PrivLeak −100 against News retrain
    auc_m = mia_auc([min_k_percent(np.array([-0.1, -0.2, -0.3]))], [min_k_percent(np.array([-2.0, -3.0, -4.0]))])
    assert auc_m == 0.0
    assert privleak(auc_m, 0.4772) == pytest.approx(-100.0)


# ---------------------------------------------------------------- bootstrap CI

def test_bootstrap_ci_two_points():
    # resampled means of [0, 1]: 0, ½, 1 with prob ¼, ½, ¼ → 2.5 % / 97.5 % percentiles are 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)


def test_bootstrap_ci_degenerate():
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert bootstrap_ci([0.42]) == (0.42, 0.42)
    lo, hi = bootstrap_ci([])
    assert math.isnan(lo) and math.isnan(hi)


def test_bootstrap_ci_seeded_and_sane():
    v = np.random.default_rng(1).uniform(0, 1, size=40)
    a = bootstrap_ci(v, seed=7)
    assert bootstrap_ci(v, seed=7) == a
    lo, hi = a
    assert v.min() <= lo < v.mean() < hi <= v.max()
    # a lower confidence gives a narrower interval
    lo80, hi80 = bootstrap_ci(v, confidence=0.8, seed=7)
    assert hi80 - lo80 < hi - lo
    # percentile CI of a mean of 40 U(0,1) values: half-width ≈ 1.96·0.289/√40 ≈ 0.09
    assert 0.05 < (hi - lo) / 2 < 0.13


def test_bootstrap_ci_validation():
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.1, np.nan])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([0.1, 0.2], confidence=95)


# ---------------------------------------------------------------- TOFU probability / truth ratio

def test_probability():
    np.testing.assert_allclose(probability(np.array([0.0, np.log(2.0), np.log(4.0)])), [1.0, 0.5, 0.25])
    with pytest.raises(ValueError, match="1-D"):
        probability(np.zeros((2, 2)))


def test_truth_ratio_hand():
    para = np.array([1.0, 2.0])
    pert = np.array([[2.0, 4.0], [1.0, 1.0]])
    # sample 0: p_c = e^−1, p_w = e^−mean(2, 4) = e^−3 → TR = e^−2
    # sample 1: p_c = e^−2, p_w = e^−1 → TR = e^1
    tr = truth_ratio(para, pert)
    np.testing.assert_allclose(tr, [math.exp(-2.0), math.e])
    # averaging the losses (not the probabilities): mean of e^−2, e^−4 would give a different p_w
    assert tr[0] != pytest.approx((math.exp(-2) + math.exp(-4)) / 2 / math.exp(-1))


def test_truth_ratio_log_space_no_underflow():
    # exp(−800) underflows to 0 in float64; the ratio e^(800 − 801) = e^−1 must survive
    tr = truth_ratio(np.array([800.0]), np.array([[801.0, 801.0, 801.0]]))
    np.testing.assert_allclose(tr, [math.exp(-1.0)])


def test_truth_ratio_shapes():
    with pytest.raises(ValueError, match="2-D"):
        truth_ratio(np.array([1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="samples"):
        truth_ratio(np.array([1.0, 2.0]), np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="no perturbations"):
        truth_ratio(np.array([1.0]), np.zeros((1, 0)))
    with pytest.raises(ValueError, match="1-D"):
        truth_ratio(np.array([[1.0]]), np.array([[1.0]]))


def test_truth_ratio_aggregates_hand():
    tr = np.array([math.exp(-2.0), math.e])
    # closer_to_1: min(e^−2, e^2) = e^−2; min(e, e^−1) = e^−1 → mean
    assert truth_ratio_closer_to_1(tr) == pytest.approx((math.exp(-2) + math.exp(-1)) / 2)
    # true_better: max(0, 1 − e^−2), max(0, 1 − e) = 0 → mean
    assert truth_ratio_true_better(tr) == pytest.approx((1 - math.exp(-2)) / 2)
    assert truth_ratio_true_better([0.25, 2.0]) == pytest.approx(0.375)
    assert truth_ratio_closer_to_1([1.0, 1.0]) == pytest.approx(1.0)
    assert truth_ratio_closer_to_1([0.5, 4.0]) == pytest.approx((0.5 + 0.25) / 2)


def test_truth_ratio_aggregates_edges():
    # closer_to_1 is symmetric in TR ↔ 1/TR (the legacy r gives the same number); true_better is not
    tr = np.array([0.2, 3.0, 0.7])
    assert truth_ratio_closer_to_1(tr) == pytest.approx(truth_ratio_closer_to_1(1 / tr))
    assert truth_ratio_true_better(tr) != pytest.approx(truth_ratio_true_better(1 / tr))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert truth_ratio_closer_to_1([0.0, 1.0]) == pytest.approx(0.5)
    assert math.isnan(truth_ratio_closer_to_1([]))
    assert math.isnan(truth_ratio_true_better([]))
    with pytest.raises(ValueError, match=">= 0"):
        truth_ratio_true_better([-0.1])


# ---------------------------------------------------------------- forget quality (KS)

def test_forget_quality_identical_and_disjoint():
    x = [0.1, 0.4, 0.5, 0.9]
    assert forget_quality(x, x) == pytest.approx(1.0)
    assert ks_statistic(x, x) == pytest.approx(0.0)
    # disjoint samples of 5 and 5: D = 1; exact two-sided p = 2 / C(10, 5) = 2/252
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]
    assert ks_statistic(a, b) == pytest.approx(1.0)
    assert forget_quality(a, b) == pytest.approx(2 / 252)


def test_ks_statistic_hand():
    # ECDFs of [1,2,3,4] and [3,4,5,6] differ most at x ∈ [2, 3): 2/4 − 0 = 0.5
    assert ks_statistic([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]) == pytest.approx(0.5)


def test_forget_quality_invariant_to_reciprocal_convention():
    rng = np.random.default_rng(0)
    tr_m, tr_o = rng.lognormal(0, 1, 30), rng.lognormal(0.5, 1, 25)
    # legacy TOFU uses r = 1/TR; KS on a monotone map gives the same p-value
    assert forget_quality(tr_m, tr_o) == pytest.approx(forget_quality(1 / tr_m, 1 / tr_o))
    with pytest.raises(ValueError, match="tr_oracle is empty"):
        forget_quality([0.1], [])


# ---------------------------------------------------------------- model utility

def test_model_utility_hand():
    # hmean(1/2, 1/3, 1/6) = 3 / (2 + 3 + 6) = 3/11
    assert model_utility([1 / 2, 1 / 3, 1 / 6]) == pytest.approx(3 / 11)
    assert model_utility([0.5] * 9) == pytest.approx(0.5)
    # hmean(1, 0.25) = 2 / (1 + 4) = 0.4  (arithmetic mean would be 0.625)
    assert model_utility([1.0, 0.25]) == pytest.approx(0.4)


def test_model_utility_edges():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model_utility([0.0, 0.9, 0.8]) == 0.0
    assert math.isnan(model_utility([]))
    assert math.isnan(model_utility([0.5, np.nan]))
    with pytest.raises(ValueError, match=">= 0"):
        model_utility([0.5, -0.1])


# ---------------------------------------------------------------- extraction strength / exact memorisation

def test_extraction_strength_hand():
    # [1,2,3] vs [9,2,3]: suffix from k = 1 matches → ES = 1 − 1/3 = 2/3
    assert extraction_strength(np.array([1, 2, 3]), np.array([9, 2, 3])) == pytest.approx(2 / 3)
    # all match → k = 0 → 1
    assert extraction_strength(np.array([4, 5, 6, 7]), np.array([4, 5, 6, 7])) == pytest.approx(1.0)
    # last token wrong → no non-empty suffix matches → k = |y| → 0 (OpenUnlearning's loop would give 1/|y|)
    assert extraction_strength(np.array([1, 2, 3]), np.array([1, 2, 0])) == pytest.approx(0.0)
    # a match before a later mismatch does not count: [1,0,3,4] vs [1,2,3,4] → k = 2 → 1 − 2/4
    assert extraction_strength(np.array([1, 0, 3, 4]), np.array([1, 2, 3, 4])) == pytest.approx(0.5)
    # single token
    assert extraction_strength(np.array([7]), np.array([7])) == pytest.approx(1.0)
    assert extraction_strength(np.array([7]), np.array([8])) == pytest.approx(0.0)


def test_exact_memorization_hand():
    # positions 0 and 2 match of 4 → 0.5
    assert exact_memorization(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])) == pytest.approx(0.5)
    # EM counts scattered matches that ES ignores: [1,0,3,4] vs [1,2,3,4] → EM 3/4, ES 1/2
    assert exact_memorization(np.array([1, 0, 3, 4]), np.array([1, 2, 3, 4])) == pytest.approx(0.75)
    assert exact_memorization(np.array([1, 2, 3]), np.array([1, 2, 0])) == pytest.approx(2 / 3)


def test_es_em_empty_and_validation():
    empty = np.array([], dtype=np.int64)
    assert math.isnan(extraction_strength(empty, empty))
    assert math.isnan(exact_memorization(empty, empty))
    with pytest.raises(ValueError, match="differ in length"):
        extraction_strength(np.array([1, 2]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="differ in length"):
        exact_memorization(np.array([1]), np.array([1, 2]))
    with pytest.raises(ValueError, match="1-D"):
        exact_memorization(np.zeros((2, 2)), np.zeros((2, 2)))


# ---------------------------------------------------------------- docstring examples

@pytest.mark.parametrize("module", [muse, tofu], ids=["muse", "tofu"])
def test_docstring_examples(module):
    import doctest
    if module is muse and not HAVE_ROUGE:
        pytest.skip("rouge-score missing")
    res = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0
    assert res.failed == 0
