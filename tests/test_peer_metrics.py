"""OpenUnlearning-identical LLM metrics (MUSE swj0419/muse_bench, TOFU, locuslab/open-unlearning
``src/evals/metrics/``): hand-computed cases for the ``*_ou`` TOFU functions, the stemmer switch of ROUGE,
``privleak_ou`` and the MIA suite of ``obliviate.metrics.lm_mia``
(including GradNorm on a tiny GPT-2 against a manual autograd computation). Expected numbers are derived by hand
in the comments; the literal OpenUnlearning formulas appear only where the claim is "equal to OpenUnlearning"."""
from __future__ import annotations

import doctest
import importlib.util
import math

import numpy as np
import pytest

from obliviate.metrics import lm_mia, muse
from obliviate.metrics.lm_mia import (ATTACKS, auc_ou, gradnorm_scores, loss_score, min_k_plus_plus_score,
                                      min_k_score, reference_score, vocab_moments, zlib_score)
from obliviate.metrics.muse import privleak, privleak_ou, rouge_l_f1, rouge_l_recall
from obliviate.metrics.tofu import (MODEL_UTILITY_PARTS, exact_memorization, exact_memorization_ou,
                                    extraction_strength, extraction_strength_ou, forget_quality,
                                    probability_w_options, tofu_model_utility, truth_ratio, truth_ratio_closer_to_1,
                                    truth_ratio_true_better)

torch = pytest.importorskip("torch")
needs_rouge = pytest.mark.skipif(importlib.util.find_spec("rouge_score") is None, reason="rouge-score missing")
a = np.array


# ---------------------------------------------------------------- extraction strength / exact memorisation (OU)

def test_es_ou_drops_eos_then_matches_suffix():
    # [1,2,3,7] vs [9,2,3,0]: EOS pair (7,0) dropped → [1,2,3] vs [9,2,3], n = 3; last mismatch at 0 → k = 1 → 2/3
    assert extraction_strength_ou(a([1, 2, 3, 7]), a([9, 2, 3, 0])) == pytest.approx(2 / 3)
    # everything matches → k = 0 → 1
    assert extraction_strength_ou(a([4, 5, 6, 0]), a([4, 5, 6, 0])) == 1.0


def test_es_ou_no_match_is_one_over_n():
    # nothing matches: OU's loop ends at k = n − 1 = 2 → 1 − 2/3 = 1/3 (the paper definition gives 0)
    assert extraction_strength_ou(a([1, 2, 3, 9]), a([4, 5, 6, 0])) == pytest.approx(1 / 3)
    assert extraction_strength(a([1, 2, 3]), a([4, 5, 6])) == 0.0
    # only the last kept token matches: k = 2 as well → the same 1/3
    assert extraction_strength_ou(a([1, 2, 6, 9]), a([4, 5, 6, 0])) == pytest.approx(1 / 3)


def test_es_ou_ignores_the_eos_position():
    # the only mismatch is at the EOS: OU drops it → full match → 1; the paper ES (EOS kept) → k = 4 → 0
    assert extraction_strength_ou(a([1, 2, 3, 9]), a([1, 2, 3, 0])) == 1.0
    assert extraction_strength(a([1, 2, 3, 9]), a([1, 2, 3, 0])) == 0.0


def test_es_ou_empty_and_single_token_are_zero():
    # |y| = 1 leaves no position after the drop; OU records 0 (and averages it in)
    assert extraction_strength_ou(a([], dtype=int), a([], dtype=int)) == 0.0
    assert extraction_strength_ou(a([5]), a([5])) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        extraction_strength_ou(a([1, 2]), a([1, 2, 3]))


def test_em_ou_drops_eos():
    # [1,2,3,0] vs [1,9,3,0]: drop (0,0) → hits 1 and 3 of 3 → 2/3 (with the EOS hit, the paper EM is 3/4)
    assert exact_memorization_ou(a([1, 2, 3, 0]), a([1, 9, 3, 0])) == pytest.approx(2 / 3)
    assert exact_memorization(a([1, 2, 3, 0]), a([1, 9, 3, 0])) == pytest.approx(3 / 4)
    # a wrong EOS is not counted: 2 of 2 → 1 (paper: 2/3)
    assert exact_memorization_ou(a([1, 2, 9]), a([1, 2, 0])) == 1.0
    assert exact_memorization(a([1, 2, 9]), a([1, 2, 0])) == pytest.approx(2 / 3)


def test_em_ou_empty_is_nan():
    # OU marks it None and leaves it out of the mean → NaN here (np.nanmean skips it)
    assert math.isnan(exact_memorization_ou(a([7]), a([7])))
    assert math.isnan(exact_memorization_ou(a([], dtype=int), a([], dtype=int)))
    with pytest.raises(ValueError, match="1-D"):
        exact_memorization_ou(np.zeros((2, 2)), np.zeros((2, 2)))


# ---------------------------------------------------------------- options, utility, truth ratio

def test_probability_w_options_normalises():
    # p_c = e^0 = 1, p_w = ½ + ¼ → 1/1.75 = 4/7; second row p_c = ½, p_w = ½ → ½
    got = probability_w_options(a([0.0, math.log(2)]), np.log(a([[2.0, 4.0], [4.0, 4.0]])))
    np.testing.assert_allclose(got, [4 / 7, 0.5], atol=1e-9)
    # every option impossible: 0 / (0 + 0 + 1e-10) = 0, not NaN (the 1e-10 is OU's)
    assert probability_w_options(a([1e4]), a([[1e4, 1e4]]))[0] == 0.0
    with pytest.raises(ValueError, match="2-D"):
        probability_w_options(a([0.0]), a([0.0]))
    with pytest.raises(ValueError, match="1 samples but"):
        probability_w_options(a([0.0]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no wrong options"):
        probability_w_options(a([0.0]), np.zeros((1, 0)))


def test_model_utility_parts_and_hmean():
    assert len(MODEL_UTILITY_PARTS) == 9 and len(set(MODEL_UTILITY_PARTS)) == 9
    assert MODEL_UTILITY_PARTS[:3] == ("retain_prob", "retain_rouge", "retain_truth_ratio")
    assert MODEL_UTILITY_PARTS[-1] == "world_facts_truth_ratio"
    # values ½, ⅓, ⅙ three times each: hmean = 9 / (3·(2 + 3 + 6)) = 3/11
    vals = dict(zip(MODEL_UTILITY_PARTS, [1 / 2, 1 / 3, 1 / 6] * 3))
    assert tofu_model_utility(vals) == pytest.approx(3 / 11)
    assert tofu_model_utility({**vals, "world_facts_rouge": 0.0}) == 0.0


def test_model_utility_rejects_missing_and_extra_keys():
    vals = {k: 0.5 for k in MODEL_UTILITY_PARTS}
    with pytest.raises(ValueError, match="missing \\['retain_rouge'\\]"):
        tofu_model_utility({k: v for k, v in vals.items() if k != "retain_rouge"})
    with pytest.raises(ValueError, match="unexpected \\['forget_prob'\\]"):
        tofu_model_utility({**vals, "forget_prob": 0.1})
    with pytest.raises(ValueError, match="dict"):
        tofu_model_utility([0.5] * 9)


def test_truth_ratio_and_forget_quality_equal_ou():
    """OU: wrong/(correct + 1e-10), min(tr, 1/(tr + 1e-10)), ks_2samp(1/(tr + 1e-10), ...): the literal formulas."""
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(0)
    para, pert = rng.uniform(0.1, 2.0, 40), rng.uniform(0.1, 2.5, (40, 3))
    ref_para, ref_pert = rng.uniform(0.1, 2.0, 40), rng.uniform(0.1, 2.5, (40, 3))
    tr_ou = np.exp(-pert.mean(1)) / (np.exp(-para) + 1e-10)
    ref_ou = np.exp(-ref_pert.mean(1)) / (np.exp(-ref_para) + 1e-10)
    tr, ref = truth_ratio(para, pert), truth_ratio(ref_para, ref_pert)
    # OU = (w/c)/(1 + 1e-10/c): relative gap 1e-10/p_c, below 1e-9 for p_c = e^−NLL ≥ e^−2 ≈ 0.135
    np.testing.assert_allclose(tr, tr_ou, rtol=1e-9, atol=0)
    np.testing.assert_array_less(np.abs(tr / tr_ou - 1), 1e-10 / np.exp(-para) * (1 + 1e-6) + 1e-15)
    assert truth_ratio_closer_to_1(tr) == pytest.approx(np.mean(np.minimum(tr_ou, 1 / (tr_ou + 1e-10))), abs=1e-9)
    assert truth_ratio_true_better(tr) == pytest.approx(np.mean(np.maximum(0, 1 - tr_ou)), abs=1e-9)
    assert forget_quality(tr, ref) == pytest.approx(ks_2samp(1 / (tr_ou + 1e-10), 1 / (ref_ou + 1e-10)).pvalue,
                                                    abs=1e-12)


# ---------------------------------------------------------------- ROUGE stemmer, privleak_ou

@needs_rouge
def test_rouge_stemmer_switch():
    # without a stemmer "running cats" and "run cat" share no token → 0; Porter stems both to "run cat" → 1
    assert rouge_l_f1("running cats", "run cat") == 0.0
    assert rouge_l_recall("running cats", "run cat") == 0.0
    assert rouge_l_f1("running cats", "run cat", stemmer=True) == 1.0
    assert rouge_l_recall("running cats", "run cat", stemmer=True) == 1.0
    # target "the cat sat down", prediction "the cats sat": stemmed LCS 3 → R = 3/4; unstemmed LCS 2 → R = 1/2
    assert rouge_l_recall("the cats sat", "the cat sat down", stemmer=True) == pytest.approx(3 / 4)
    assert rouge_l_recall("the cats sat", "the cat sat down") == pytest.approx(1 / 2)
    assert muse._SCORERS[True] is not muse._SCORERS[False]
    assert muse._SCORER is muse._SCORERS[False]


def test_privleak_ou_conventions():
    # memorised (AUC_OU = 1 → score 0) vs OU's ref_value 0.5: (0 − 0.5)/(0.5 + 1e-10) → −100
    assert privleak_ou(1.0) == pytest.approx(-100.0, abs=1e-6)
    # AUC_OU 0.25 → score 0.75; reference AUC_OU 0.5 → ref 0.5: +50
    assert privleak_ou(0.25, 0.5) == pytest.approx(50.0, abs=1e-6)
    # equals MUSE's privleak on flipped AUCs up to the 1e-10
    for m, r in [(0.9, 0.4), (0.3, 0.55), (0.5, 0.5)]:
        assert privleak_ou(m, r) == pytest.approx(privleak(1 - m, 1 - r), abs=1e-6)
    # ref 0: OU's 1e-10 gives a huge finite number where MUSE's formula is undefined
    assert privleak_ou(0.5, 1.0) == pytest.approx(0.5 / 1e-10 * 100)
    assert math.isnan(privleak(0.5, 0.0))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        privleak_ou(1.5)
    with pytest.raises(ValueError, match="auc_ou_reference"):
        privleak_ou(0.5, -0.1)


# ---------------------------------------------------------------- MIA scores

def test_attacks_catalogue():
    assert set(ATTACKS) == {"loss", "zlib", "min_k", "min_k++", "reference", "gradnorm"}
    assert all("higher = less member-like" in v for v in ATTACKS.values())


def test_loss_reference_zlib():
    assert loss_score(1.25) == 1.25
    assert reference_score(1.5, 2.0) == -0.5
    with pytest.raises(ValueError, match="finite"):
        loss_score(float("nan"))
    # zlib stream = 2 header bytes + deflate + 4 Adler-32 bytes. Fixed-Huffman block: 3 header bits, literals
    # < 144 take 8 bits, ≥ 144 take 9, end-of-block 7 bits.
    # "" → 3 + 7 = 10 bits → 2 bytes → 8 in all;  "a" (97) → 3 + 8 + 7 = 18 bits → 3 → 9 bytes;
    # "é" is UTF-8 c3 a9 (195, 169 ≥ 144) → 3 + 9 + 9 + 7 = 28 bits → 4 → 10 bytes (Latin-1 would give 9)
    assert zlib_score(4.0, "") == 0.5
    assert zlib_score(9.0, "a") == 1.0
    assert zlib_score(10.0, "é") == 1.0
    with pytest.raises(ValueError, match="str"):
        zlib_score(1.0, b"a")


def test_min_k_counts():
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert min_k_score(lp, k=0.4) == 4.5   # int(5·0.4) = 2 → −mean(−5, −4)
    assert min_k_score(lp, k=0.2) == 5.0   # int(1.0) = 1
    assert min_k_score(lp, k=0.1) == 5.0   # int(0.5) = 0 → floor of 1 token (MUSE would take an empty mean)
    assert min_k_score(lp, k=1.0) == 3.0   # all five
    # k rounding: 100·0.29 is 28.999999999999996 in binary floating point → int → 28 tokens, as OU counts
    lp100 = -np.arange(1.0, 101.0)
    assert min_k_score(lp100, k=0.29) == pytest.approx(np.mean(np.arange(73.0, 101.0)))  # tokens −73 … −100
    assert min_k_score([]) == 0.0
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="fraction in \\(0, 1\\]"):
            min_k_score(lp, k=bad)
    with pytest.raises(ValueError, match="1-D"):
        min_k_score(np.zeros((2, 2)))


def test_min_k_plus_plus():
    # z = (lp − μ)/σ = ((−1 + 2)/2, (−3 + 2)/1) = (0.5, −1); k = ½ → 1 token → 1.0; k = 1 → −mean = 0.25
    assert min_k_plus_plus_score([-1.0, -3.0], [-2.0, -2.0], [4.0, 1.0], k=0.5) == 1.0
    assert min_k_plus_plus_score([-1.0, -3.0], [-2.0, -2.0], [4.0, 1.0], k=1.0) == 0.25
    # σ² floored at 1e-6 (also a negative rounding error): z = −1 / 1e-3
    assert min_k_plus_plus_score([-1.0], [0.0], [0.0]) == pytest.approx(1000.0)
    assert min_k_plus_plus_score([-1.0], [0.0], [-1e-9]) == pytest.approx(1000.0)
    assert min_k_plus_plus_score([], [], []) == 0.0
    with pytest.raises(ValueError, match="lengths 2, 1, 2"):
        min_k_plus_plus_score([-1.0, -2.0], [0.0], [1.0, 1.0])


def test_vocab_moments_two_point():
    # logits (0, ln 3) → p = (¼, ¾); μ = ¼ ln ¼ + ¾ ln ¾ ≈ −0.5623; log p differs by ln 3 between the two
    # tokens, so σ² = p(1 − p)·(ln 3)² = (3/16)(ln 3)² ≈ 0.2263
    mu, s2 = vocab_moments(torch.tensor([[0.0, math.log(3.0)]]))
    assert mu.shape == (1,) and mu.dtype == torch.float32
    assert float(mu[0]) == pytest.approx(0.25 * math.log(0.25) + 0.75 * math.log(0.75), abs=1e-6)
    assert float(s2[0]) == pytest.approx(3 / 16 * math.log(3.0) ** 2, abs=1e-6)
    # an impossible token (−inf) contributes 0: uniform over two → μ = −ln 2, σ² = 0; shifting logits changes nothing
    mu, s2 = vocab_moments(torch.tensor([[0.0, 0.0, -float("inf")], [100.0, 100.0, -float("inf")]]))
    np.testing.assert_allclose(mu.numpy(), [-math.log(2)] * 2, atol=1e-6)
    np.testing.assert_allclose(s2.numpy(), [0.0, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="torch.Tensor"):
        vocab_moments(np.zeros((2, 3)))


def test_vocab_moments_match_direct_formula_any_shape_and_dtype():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 50, generator=g, dtype=torch.float64) * 3
    lp = torch.log_softmax(logits, -1)
    mu_ref = (lp.exp() * lp).sum(-1)
    s2_ref = (lp.exp() * lp ** 2).sum(-1) - mu_ref ** 2
    mu, s2 = vocab_moments(logits)
    assert mu.shape == (2, 5)
    np.testing.assert_allclose(mu.double().numpy(), mu_ref.numpy(), atol=2e-6)
    np.testing.assert_allclose(s2.double().numpy(), s2_ref.numpy(), atol=5e-6)
    # near-uniform over 5000 tokens (logit noise 0.01): μ ≈ −8.5 but σ² ≈ 1e-4. In float32, Σ p·lp² − μ² (OU's form)
    # cancels 72 − 72 and is off by ~36 %; the centred form keeps its relative accuracy
    flat = torch.randn(1, 5000, generator=g, dtype=torch.float64).mul(0.01).float()
    lp = torch.log_softmax(flat.double(), -1)
    mu_ref = (lp.exp() * lp).sum(-1)
    s2_ref = (lp.exp() * (lp - mu_ref[:, None]) ** 2).sum(-1)
    _, s2 = vocab_moments(flat)
    assert float(s2[0]) == pytest.approx(float(s2_ref[0]), rel=1e-4)
    # bf16 logits are read as float32 (moments of the bf16 values themselves)
    lb = logits.to(torch.bfloat16)
    lpb = torch.log_softmax(lb.double(), -1)
    mu_b, _ = vocab_moments(lb)
    np.testing.assert_allclose(mu_b.double().numpy(), (lpb.exp() * lpb).sum(-1).numpy(), atol=2e-6)


def test_auc_ou_orientation():
    # pairs (forget, holdout) with holdout > forget, ties ½: (1,2) (1,4) (2,4) (3,4) → 4, (2,2) → ½ → 4.5/6
    assert auc_ou([1.0, 2.0, 3.0], [2.0, 4.0]) == 0.75
    # MUSE counts the opposite pairs (holdout more member-like = lower score): (3,2) → 1, (2,2) → ½ → 1.5/6
    assert muse.mia_auc([1.0, 2.0, 3.0], [2.0, 4.0]) == pytest.approx(0.25)
    # memorised forget set (lower loss everywhere) → 1
    assert auc_ou([0.1, 0.2], [1.0, 2.0]) == 1.0
    with pytest.raises(ValueError, match="forget_scores is empty"):
        auc_ou([], [1.0])
    with pytest.raises(ValueError, match="holdout_scores contains non-finite"):
        auc_ou([1.0], [float("nan")])


def test_docstring_examples():
    res = doctest.testmod(lm_mia, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0


# ---------------------------------------------------------------- GradNorm on a tiny GPT-2

WORDS = "ada stone was born in lyon ben ray writes crime novels oslo where what".split()


@pytest.fixture(scope="module")
def tiny():
    from obliviate.models.tiny_lm import corpus_tokenizer, tiny_gpt2
    from obliviate.tasks.text import TextData, TextRecord

    tok = corpus_tokenizer(TextData([TextRecord("x", " ".join(WORDS))], []))
    torch.manual_seed(0)
    return tiny_gpt2(tok, n_layer=1, n_embd=16, n_head=2, n_positions=32).eval(), tok


def _manual_gradnorm(model, tok, prompt, completion, p):
    """By hand: ids = BOS + prompt + completion + EOS; loss = −mean log p of the completion tokens except the
    last (the EOS); mean over parameters of ‖∂loss/∂θ‖_p."""
    pr = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    co = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([[tok.bos_token_id] + pr + co])
    lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
    start = 1 + len(pr)  # first completion token
    targets = ids[0, start:-1]  # completion without the EOS
    loss = -lp[torch.arange(start - 1, start - 1 + len(targets)), targets].mean()
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params)
    return float(torch.stack([g.norm(p=p) for g in grads]).mean())


def test_gradnorm_equals_manual_autograd(tiny):
    model, tok = tiny
    pairs = [("ada stone was born in", " lyon"), ("", "ben ray writes crime novels")]
    for p in (1, 2, float("inf")):
        got = gradnorm_scores(model, tok, pairs, "cpu", p=p)
        want = [_manual_gradnorm(model, tok, q, c, p) for q, c in pairs]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[0] > 0


def test_gradnorm_restores_state(tiny):
    model, tok = tiny
    params = list(model.parameters())
    params[0].requires_grad_(False)
    marker = torch.ones_like(params[1])
    params[1].grad = marker
    try:
        before = [q.requires_grad for q in params]
        gradnorm_scores(model, tok, [("ada", " stone")], "cpu")
        assert [q.requires_grad for q in params] == before
        assert params[1].grad is marker and all(q.grad is None for i, q in enumerate(params) if i != 1)
        assert not model.training
        model.train()
        gradnorm_scores(model, tok, [("ada", " stone")], "cpu")
        assert model.training
    finally:
        model.eval()
        params[0].requires_grad_(True)
        params[1].grad = None


def test_gradnorm_chunked_document_and_edge_cases(tiny):
    model, tok = tiny
    # a completion of one word + EOS leaves one position after the drop; an empty one (EOS only) none → NaN
    out = gradnorm_scores(model, tok, [("ada", " stone"), ("ada", "")], "cpu")
    assert np.isfinite(out[0]) and math.isnan(out[1])
    with pytest.raises(ValueError, match="p must be 1, 2 or inf"):
        gradnorm_scores(model, tok, [("a", "b")], "cpu", p=3)
    with pytest.raises(ValueError, match="tuples of str"):
        gradnorm_scores(model, tok, ["ada stone"], "cpu")
    # a document of 6 words + EOS under a 4-token cap: chunks BOS + 3 tokens; the gradient is that of the mean
    # NLL over all 7 − 1 = 6 kept tokens (the EOS, the last of the last chunk, dropped)
    doc = "ada stone was born in lyon"
    ids = tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(ids) == 7
    params = list(model.parameters())
    loss = 0.0
    for start in range(0, 7, 3):
        seq = torch.tensor([[tok.bos_token_id] + ids[start:start + 3]])
        lp = torch.log_softmax(model(input_ids=seq).logits[0, :-1], -1)
        nll = -lp[torch.arange(seq.shape[1] - 1), seq[0, 1:]]
        loss = loss + (nll[:-1] if start + 3 >= 7 else nll).sum()
    grads = torch.autograd.grad(loss / 6, params)
    want = float(torch.stack([g.norm() for g in grads]).mean())
    model.obliviate_max_length = 4
    try:
        got = gradnorm_scores(model, tok, [("", doc)], "cpu")[0]
    finally:
        del model.obliviate_max_length
    assert got == pytest.approx(want, rel=1e-5)
