"""The NeurIPS 2023 unlearning challenge metric (the official write-up "Evaluation for the NeurIPS Machine
Unlearning Competition" and google-deepmind/unlearning_evaluation ``metric.py``; obliviate.metrics.challenge):
per-example ε on hand-built confidence samples with known answers, the code's 14 buckets, F and the final score; a
brute-force re-derivation of the official decision rules; and ``bench --challenge N`` end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from obliviate.metrics import challenge as C

DELTA = 1e-5
LOG3 = math.log(3 - 4 * DELTA)  # ε of a rule with FPR = FNR = 1/4: log(1 - δ - 1/4) - log(1/4)


# -- confidences -------------------------------------------------------------------------------------------------

def test_logit_scaled_confidence_hand_computed():
    # two classes: log(e^2/(e^2+1)) - log(1/(e^2+1)) = 2; three equal logits, y=1: log(1/3) - log(2/3) = -log 2
    conf = C.logit_scaled_confidence(np.array([[2.0, 0.0], [0.0, 0.0]]), np.array([0, 1]))
    assert conf == pytest.approx([2.0, 0.0], abs=1e-6)
    conf = C.logit_scaled_confidence(np.zeros((1, 3)), np.array([1]))
    assert conf == pytest.approx([-math.log(2)], abs=1e-7)


def test_logit_scaled_confidence_saturates_like_the_float32_official_code():
    # exp(-200) underflows in float32: p_wrong = 0, so conf = log(1) - log(1e-45) (and the mirror image)
    conf = C.logit_scaled_confidence(np.array([[200.0, 0.0], [200.0, 0.0]]), np.array([0, 1]))
    assert conf[0] == pytest.approx(-math.log(1e-45))
    assert conf[1] == pytest.approx(math.log(1e-45))


# -- one rule ------------------------------------------------------------------------------------------------------

def test_rule_epsilon_cases():
    eps = C.rule_epsilon([0.25, 0.0, 0.0, 0.3, 1.0, 1.0, 0.5], [0.25, 0.0, 0.4, 0.0, 1.0, 0.5, 0.5])
    assert eps[0] == pytest.approx(LOG3)          # hand-computed
    assert eps[1] == math.inf                     # perfect separation
    assert np.isnan(eps[2]) and np.isnan(eps[3])  # exactly one rate zero: discarded
    assert np.isnan(eps[4])                       # both logs undefined: discarded
    assert eps[5] == 0.0                          # log(1-δ-1) undefined, the other term < 0: clipped to 0
    assert eps[6] == 0.0                          # chance-level rule


def test_single_threshold_rates_hand_computed():
    pos, neg = np.array([1.0, 5, 6, 7]), np.array([0.0, 2, 3, 8])
    fpr, fnr, t = C.single_threshold_rates(pos, neg)
    assert len(t) == math.ceil((8 - 0) * 100)  # 100 thresholds per unit over the pooled range
    assert t[0] == 0 and t[-1] == pytest.approx(8)
    i = int(np.argmin(np.abs(t - 4.0)))  # a threshold between 3 and 5: pos ≥ t = {5, 6, 7}, neg ≥ t = {8}
    assert (fpr[i], fnr[i]) == (0.25, 0.25)
    assert C.rule_epsilon(fpr[i], fnr[i])[0] == pytest.approx(LOG3)


def test_double_threshold_uses_the_peakier_sample_as_positive():
    peaky, wide = np.array([4.0, 4.5, 5.0, 5.5]), np.array([0.0, 3.0, 6.0, 9.0])
    fpr, fnr, thr = C.double_threshold_rates(wide, peaky)  # roles swapped inside: positive = the peakier
    assert thr.shape == (len(fpr), 2) and len(fpr) == 400 * 400
    both = (fpr == 0) & (fnr == 0)  # a window [4, 5.5] holds every peaky value and no wide one
    assert both.any()
    l, r = thr[np.flatnonzero(both)[0]]
    assert l <= 4.0 and r >= 5.5 and not (l <= 3.0) and not (r >= 6.0)


# -- per example ---------------------------------------------------------------------------------------------------

def test_example_epsilon_hand_derived_case():
    # No single or double threshold separates [1,5,6,7] from [0,2,3,8]; the best rule errs once on each side
    # (FPR = FNR = 1/4), and ε decreases in both rates, so ε = log(1 - δ - 1/4) - log(1/4) = log(3 - 4δ).
    pos, neg = [1.0, 5, 6, 7], [0.0, 2, 3, 8]
    assert C.example_epsilon(pos, neg) == pytest.approx(LOG3, abs=1e-12)
    # through the median rule, either way round
    r, u = np.array(pos)[:, None], np.array(neg)[:, None]
    assert C.per_example_epsilons(u, r)[0] == pytest.approx(LOG3, abs=1e-12)
    assert C.per_example_epsilons(r, u)[0] == pytest.approx(LOG3, abs=1e-12)
    # N = 4 → ceil(ln 3) = 2 → buckets [0,.5) [.5,1) [1,1.5) [1.5,2): ε = 1.0986 scores 1/4
    assert C.example_points([LOG3], 4)[0] == 0.25


def test_identical_samples_give_epsilon_zero_and_full_points():
    rng = np.random.default_rng(0)
    confs = rng.normal(0, 2, size=(8, 30))
    f, eps = C.forgetting_quality(confs, confs.copy())
    assert np.all(eps == 0.0)
    assert f == 1.0


def test_perfectly_separated_samples_are_capped_and_score_zero():
    rng = np.random.default_rng(1)
    u, r = rng.normal(0, 1, size=(8, 20)), rng.normal(30, 1, size=(8, 20))
    f, eps = C.forgetting_quality(u, r)
    assert np.all(eps == C.EPSILON_CAP)  # FPR = FNR = 0 → ∞ → clipped to 50
    assert f == 0.0


def test_peaky_rule():
    wide = np.array([0.0, 1, 2, 3, 4, 5, 6, 7])
    # a constant sample inside the other's range: range ratio 0 < 1 % → ε = 50 directly
    assert C.example_epsilon(wide, np.full(8, 3.5)) == C.EPSILON_CAP
    # ratio just under 1 %: capped; just over: measured by the rules — finite here, since the tight sample
    # straddles the wide one's 3.0 and no window or threshold separates them
    assert C.example_epsilon(wide, 2.965 + np.linspace(0, 0.0699, 8)) == C.EPSILON_CAP
    assert C.example_epsilon(wide, 2.965 + np.linspace(0, 0.0701, 8)) < C.EPSILON_CAP
    # both samples constant: the ratio is 0/0 (not peaky); different values are separable → ∞ → 50
    assert C.example_epsilon(np.full(4, 2.0), np.full(4, 1.0)) == C.EPSILON_CAP
    # identical constants: every rule is discarded (one rate is always 0) — no evidence of a difference → 0
    assert C.example_epsilon(np.full(4, 1.0), np.full(4, 1.0)) == 0.0


# -- buckets, F, score -----------------------------------------------------------------------------------------

def test_code_buckets_fourteen_for_512_models():
    b = C.buckets(512)
    assert C.max_epsilon(512) == 7.0 and len(b) == 14
    assert [s for s, _ in b] == [0.5 * k for k in range(14)]
    assert [p for _, p in b] == [2.0 ** -k for k in range(14)]
    assert [len(C.buckets(n)) for n in (2, 3, 4, 8, 9, 21, 22)] == [0, 2, 4, 4, 6, 6, 8]


def test_bucket_boundaries():
    eps = [0.0, 0.4999, 0.5, 0.9999, 1.0, 1.5, 6.4999, 6.5, 6.9999, 7.0, 50.0, float("nan")]
    h = C.example_points(eps, 512)
    assert h.tolist() == [1, 1, 0.5, 0.5, 0.25, 0.125, 2 ** -12, 2 ** -13, 2 ** -13, 0, 0, 0]
    # H(s) = 2 / 2^n(s) with n(s) the 1-based bin
    for e, v in zip(eps[:9], h[:9]):
        assert v == 2 / 2 ** (int(e // 0.5) + 1)
    # with N = 2 the code's bound ceil(ln 1) = 0 holds no bucket: every example scores 0
    assert C.example_points([0.0], 2).tolist() == [0.0]


def test_forgetting_quality_averages_the_points():
    same = np.array([0.0, 1.0, 2.0, 3.0])
    columns_u = [same, np.array([0.0, 1, 2, 3]), np.array([0.0, 2, 3, 8])]
    columns_r = [same, np.array([20.0, 21, 22, 23]), np.array([1.0, 5, 6, 7])]
    f, eps = C.forgetting_quality(np.stack(columns_u, axis=1), np.stack(columns_r, axis=1))
    assert eps == pytest.approx([0.0, 50.0, LOG3])
    assert f == pytest.approx((1 + 0 + 0.25) / 3)


def test_final_score_and_result_block():
    assert C.final_score(0.5, 0.9, 1.0, 0.8, 0.8) == pytest.approx(0.45)
    rng = np.random.default_rng(2)
    confs = rng.normal(size=(4, 10))
    block = C.challenge_result(confs, confs, ra_u=[0.9, 0.8], ra_r=[1.0, 1.0], ta_u=[0.5, 0.7], ta_r=[0.6, 0.6])
    assert block["n"] == 4 and block["forgetting_quality"] == 1.0
    assert block["utility"] == pytest.approx({"ra_u": 0.85, "ra_r": 1.0, "ta_u": 0.6, "ta_r": 0.6})
    assert block["score"] == pytest.approx(1.0 * 0.85 / 1.0 * 0.6 / 0.6)
    e = block["epsilons"]
    assert e["n"] == 10 and e["median"] == 0.0 and e["capped"] == 0 and e["buckets"] == 4
    assert e["points"] == {"1": 10, "0.5": 0, "0.25": 0, "0.125": 0, "0": 0}


def test_epsilon_summary_counts():
    s = C.epsilon_summary(np.array([0.1, 1.2, 3.0, 50.0, np.nan]), 16)  # ceil(ln 15) = 3 → 6 buckets
    assert (s["n"], s["capped"], s["beyond_buckets"], s["undetermined"], s["buckets"]) == (5, 1, 2, 1, 6)
    assert s["median"] == pytest.approx(np.median([0.1, 1.2, 3.0, 50.0]))


def test_shape_errors():
    with pytest.raises(ValueError):
        C.per_example_epsilons(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError):
        C.per_example_epsilons(np.zeros((1, 3)), np.zeros((1, 3)))


# -- against a brute-force re-derivation of the official rules ------------------------------------------------

def _brute_force_epsilon(pos: np.ndarray, neg: np.ndarray) -> float:
    """Every (model, threshold) comparison spelled out, rates as float32 means, as the official code evaluates
    them (google-deepmind/unlearning_evaluation metric.py), written independently of obliviate's counting."""
    import torch

    pr, nr = pos.max() - pos.min(), neg.max() - neg.min()
    if max(pr, nr) > 0 and min(pr, nr) / max(pr, nr) < 0.01:
        return 50.0
    fprs, fnrs = [], []
    lo, hi = np.concatenate([pos, neg]).min(), np.concatenate([pos, neg]).max()
    ts = torch.linspace(float(lo), float(hi), int(np.ceil((hi - lo) * 100))).numpy().astype(np.float64)
    for t in ts:
        fprs.append(np.mean(neg >= t, dtype=np.float32))
        fnrs.append(np.mean(pos < t, dtype=np.float32))
    p, n = (neg, pos) if pr >= nr else (pos, neg)
    w = min(pr, nr)
    a, b = p.min() + w - 2.0, p.max() + 2.0
    for r in np.linspace(a, b, num=int(np.ceil((b - a) * 100))):
        left = np.linspace(r - w - 2.0, r - w + 2.0, num=400)[:, None]  # 400 windows [left, r], one per row
        fprs += list(np.mean((left <= n) & (n <= r), axis=1, dtype=np.float32))
        fnrs += list(np.mean(~((left <= p) & (p <= r)), axis=1, dtype=np.float32))
    best = -np.inf
    for fpr, fnr in set(zip(fprs, fnrs)):
        if fpr == 0 and fnr == 0:
            best = np.inf
        elif fpr > 0 and fnr > 0:
            with np.errstate(invalid="ignore"):
                terms = [np.log(1 - DELTA - fpr) - np.log(fnr), np.log(1 - DELTA - fnr) - np.log(fpr)]
            terms = [x for x in terms if not np.isnan(x)]
            if terms:
                best = max(best, max(max(terms), 0.0))
    return float(min(best, 50.0))


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_official_rules(seed):
    rng = np.random.default_rng(seed)
    n = (3, 4, 6)[seed % 3]
    pos = rng.normal(1.0, rng.uniform(0.3, 3), size=n)
    neg = rng.normal(0.0, rng.uniform(0.3, 3), size=n)
    if np.median(neg) > np.median(pos):
        pos, neg = neg, pos
    assert C.example_epsilon(pos, neg) == pytest.approx(_brute_force_epsilon(pos, neg), abs=1e-5)


# -- bench --challenge end to end ------------------------------------------------------------------------------

TINY = ("--task", "digits", "--set", "train.epochs=4", "--set", "train.batch_size=128", "--set", "finetune.epochs=1")


def test_bench_challenge_end_to_end(cli, tmp_path):
    out_json, out_html = tmp_path / "b.json", tmp_path / "b.html"
    rc, stdout, stderr = cli("bench", *TINY, "--methods", "retrain,finetune", "--forget", "random:40",
                             "--challenge", "4", "--executor", "serial", "--json", out_json, "--html", out_html)
    assert rc == 0, stderr
    assert "challenge F" in stdout and "challenge score" in stdout
    doc = json.loads(out_json.read_text())
    runs = {r["method"]: r for r in doc["runs"]}
    for r in runs.values():
        c = r["challenge"]
        assert {"n", "forgetting_quality", "score", "epsilons", "utility"} <= set(c)
        assert c["n"] == 4 and 0.0 <= c["forgetting_quality"] <= 1.0
        assert set(c["utility"]) >= {"ra_u", "ra_r", "ta_u", "ta_r"}
        assert c["epsilons"]["n"] == r["forget"]["n"] == 40
        assert c["epsilons"]["buckets"] == 4  # N = 4: ceil(ln 3) = 2
        u = c["utility"]
        assert c["score"] == pytest.approx(c["forgetting_quality"] * u["ra_u"] / u["ra_r"] * u["ta_u"] / u["ta_r"])
        assert c["seeds"] == {"original": 0, "unlearn": [0, 1, 2, 3], "oracle_train": [0, 1, 2, 3]}
    # retrain's N runs are the N oracles' own computation (same recipe, retain set and seeds 0..3): the two
    # samples coincide, every ε is 0 and F = score = 1 (up to float noise between processes/threads)
    rt = runs["retrain"]["challenge"]
    assert rt["forgetting_quality"] >= 0.99 and rt["epsilons"]["median"] == 0.0
    assert rt["utility"]["ra_u"] == pytest.approx(rt["utility"]["ra_r"], abs=1e-3)
    assert rt["score"] >= 0.98
    # one epoch of fine-tuning from one original gives N nearly identical models: a far tighter sample than
    # retraining gives, which the metric tells apart (many examples hit the peaky rule)
    assert runs["finetune"]["challenge"]["forgetting_quality"] < rt["forgetting_quality"]
    summary = {s["method"]: s for s in doc["summary"]}
    assert summary["retrain"]["challenge_score"] == pytest.approx(rt["score"])
    assert summary["finetune"]["challenge_n"] == 4
    html = out_html.read_text()
    assert "challenge F" in html and "NeurIPS 2023 unlearning challenge metric" in html


@pytest.mark.parametrize("args,names", [
    (("--task", "digits", "--challenge", "2"), "N >= 3"),
    (("--task", "digits", "--challenge", "0"), "N >= 3"),
    (("--task", "friedman", "--challenge", "4"), "classification"),
])
def test_bench_challenge_bad_input(cli, tmp_path, args, names):
    rc, _, stderr = cli("bench", *args, "--methods", "finetune", "--json", tmp_path / "b.json",
                        "--cache-dir", tmp_path / "cache")
    assert rc == 2
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error:") and names in stderr, stderr
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "cache").exists()
