"""The NeurIPS 2023 Machine Unlearning Challenge metric (its official scoring notebook), as pure functions of arrays.

Given the logit-scaled confidence of every forget example under N models retrained without the forget set and
N models produced by running the unlearning algorithm N times from one original, each example gets an
empirical ε from the best threshold attack that tells the two samples apart; the ε are binned into points
H(s) and averaged into the forgetting quality F; the final score multiplies F by the utility ratios.

This follows the official scoring code (google-deepmind/unlearning_evaluation ``metric.py``, ``main.py``):

- confidence: ``log(p_y + 1e-45) − log(Σ_{c≠y} p_c + 1e-45)``, the max-shift and ``exp`` in the network's float32,
  the normalisation and logs in float64 (``compute_logit_scaled_confidence``);
- per example, "positive" is the sample with the larger median (strictly: retrained iff its median is larger);
- if (smaller range) / (larger range) < 0.01 — one sample very peaky — ε = ``EPSILON_CAP`` = 50 directly;
- decision rules: single thresholds (predict positive iff conf ≥ t; ``ceil(range·100)`` thresholds from
  ``torch.linspace`` over both samples, float32 like the official call) and double thresholds (predict positive
  iff l ≤ conf ≤ r, positive = the peakier sample, ``buffer`` 2.0, window width = the smaller range, 100
  thresholds per unit for r and ``ceil(2·buffer·100)`` = 400 left thresholds per r);
- per rule ε = ``max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR)`` clipped at ≥ 0 (a ``nan`` term —
  log of a negative — is skipped, as ``np.nanmax`` does), FPR = FNR = 0 → ∞, exactly one of them 0 → the rule is
  discarded; ε_s = max over surviving rules, then clipped to [0, 50]; δ = ``DELTA`` = 1e-5;
- points: buckets of width 0.5 from 0 while the bucket end ≤ ``ceil(ln(N − 1))`` (14 buckets for N = 512), the
  k-th (0-based) worth 2^−k; ε beyond the last bucket scores 0; F = mean of the points;
- final score = F × (RA_U / RA_R) × (TA_U / TA_R), the accuracies averaged over each set of N models.

Write-up (Aug 2023 PDF) versus code, and where obliviate departs from the code:

- The write-up bins ε ∈ [0, 6.5) into 13 buckets; the code's bound ``ceil(ln(N − 1))`` gives 14 for N = 512 and
  depends on N: N = 2 → 0 buckets (F ≡ 0), N = 3 → 2, N = 4…8 → 4, N = 9…21 → 6. obliviate follows the code.
- The write-up's sup over attacks uses confidence bounds on FPR/FNR; the code (and obliviate) uses empirical rates.
- The code computes the rates as float32 means and the logs in float32; obliviate counts exactly and takes the logs
  in float64 (differences ~1e-7 in ε).
- The code's ``assert thr_eps`` runs on a NumPy array, which raises for more than one surviving rule; its intent
  (at least one rule must survive) is what obliviate implements. When no rule survives (e.g. both samples the same
  constant) obliviate returns ε = 0 if the two samples are identical (nothing tells them apart) and ``nan`` otherwise
  ("undetermined", 0 points, counted separately in :func:`epsilon_summary`); the code would stop with an error.
- The code evaluates rates on the GPU with one comparison per (model, threshold); obliviate uses sorted samples
  and binary search, which gives the same counts (same thresholds, same ≤ / ≥ comparisons in float64).
- A deterministic unlearning algorithm (same model for every run) gives a zero-range sample, so the peaky rule
  sets ε = 50 for every example and F = 0: the metric scores the distribution of U(A(D)), not one model.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

DELTA = 1e-5
EPSILON_CAP = 50.0
NUM_THRESHOLDS_PER_UNIT = 100
BUFFER = 2.0
PEAKY_RATIO = 0.01
BUCKET_WIDTH = 0.5


# -- confidences ---------------------------------------------------------------------------------------------

def logit_scaled_confidence(logits: np.ndarray, y: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``log(p_y + 1e-45) − log(Σ_{c≠y} p_c + 1e-45)`` per row (the LiRA-style logit scaling of the challenge).

    The max-shift and ``exp`` run in ``dtype`` (float32: the network's own precision, as the official code receives
    it), the softmax normalisation and the logs in float64. Example: logits ``[[2, 0]]``, y ``[0]`` →
    ``log(e²/(e²+1)) − log(1/(e²+1)) = 2``.
    """
    z = np.array(logits, dtype=dtype)
    if z.ndim != 2:
        raise ValueError(f"logits must be [n_examples, n_classes], got shape {z.shape}")
    y = np.asarray(y, dtype=np.int64)
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z).astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(len(z))
    p_correct = probs[rows, y].copy()
    probs[rows, y] = 0.0
    p_wrong = probs.sum(axis=1)
    return np.log(p_correct + 1e-45) - np.log(p_wrong + 1e-45)


# -- per-rule ε ------------------------------------------------------------------------------------------------

def rule_epsilon(fpr, fnr, delta: float = DELTA) -> np.ndarray:
    """ε of decision rules with false-positive rates ``fpr`` and false-negative rates ``fnr``.

    ``max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR)`` clipped at ≥ 0; ∞ when FPR = FNR = 0;
    ``nan`` (rule discarded) when exactly one of them is 0 or when both terms are undefined (FPR = FNR = 1).
    Example: FPR = FNR = 1/4 → ``log(3/4 − δ) − log(1/4) = log(3 − 4δ)``.
    """
    fpr = np.atleast_1d(np.asarray(fpr, dtype=np.float64))
    fnr = np.atleast_1d(np.asarray(fnr, dtype=np.float64))
    out = np.full(np.broadcast(fpr, fnr).shape, np.nan)
    fpr, fnr = np.broadcast_to(fpr, out.shape), np.broadcast_to(fnr, out.shape)
    both_zero = (fpr == 0) & (fnr == 0)
    out[both_zero] = np.inf
    live = (fpr > 0) & (fnr > 0)
    if live.any():
        a, b = fpr[live], fnr[live]
        with np.errstate(invalid="ignore", divide="ignore"):
            t1 = np.log(1.0 - delta - a) - np.log(b)
            t2 = np.log(1.0 - delta - b) - np.log(a)
        best = np.where(np.isnan(t1), t2, np.where(np.isnan(t2), t1, np.maximum(t1, t2)))
        out[live] = np.where(np.isnan(best), np.nan, np.maximum(best, 0.0))
    return out


def _single_counts(pos: np.ndarray, neg: np.ndarray):
    """Sorted samples → (thresholds, #neg ≥ t, #pos < t) for the official single-threshold grid."""
    import torch

    lo, hi = min(pos[0], neg[0]), max(pos[-1], neg[-1])
    n = int(np.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT))
    t = torch.linspace(float(lo), float(hi), n, dtype=torch.float32).numpy().astype(np.float64)
    false_pos = len(neg) - np.searchsorted(neg, t, side="left")
    false_neg = np.searchsorted(pos, t, side="left")
    return t, false_pos, false_neg


def _double_counts(pos: np.ndarray, neg: np.ndarray):
    """Sorted samples → (left, right, positive sample, negative sample, #neg in window, #pos outside window)
    for the official double-threshold grid; positive = the peakier sample (roles swapped on ties too)."""
    pos_diff, neg_diff = pos[-1] - pos[0], neg[-1] - neg[0]
    width = neg_diff if pos_diff > neg_diff else pos_diff
    if pos_diff >= neg_diff:
        pos, neg = neg, pos
    lo = pos[0] + width - BUFFER
    hi = pos[-1] + BUFFER
    right = np.linspace(lo, hi, num=int(np.ceil((hi - lo) * NUM_THRESHOLDS_PER_UNIT)))
    n_left = int(np.ceil(2 * BUFFER * NUM_THRESHOLDS_PER_UNIT))
    left = np.linspace(right - width - BUFFER, right - width + BUFFER, num=n_left, axis=1)  # [n_right, n_left]

    def inside(x):  # how many of sorted x lie in [l, r] (0 when l > r)
        upto_r = np.searchsorted(x, right, side="right")[:, None]
        return np.maximum(upto_r - np.searchsorted(x, left, side="left"), 0).reshape(-1)

    return left.reshape(-1), np.repeat(right, n_left), pos, neg, inside(neg), len(pos) - inside(pos)


def single_threshold_rates(pos, neg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, FNR, thresholds) of the rules "positive iff conf ≥ t" over the official threshold grid:
    ``ceil((max − min)·100)`` thresholds spread by ``torch.linspace`` (float32, as the official call produces) over
    the pooled range of both samples."""
    pos, neg = np.sort(np.asarray(pos, np.float64)), np.sort(np.asarray(neg, np.float64))
    t, fp, fn = _single_counts(pos, neg)
    return fp / len(neg), fn / len(pos), t


def double_threshold_rates(pos, neg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FPR, FNR, thresholds [n, 2]) of the rules "positive iff l ≤ conf ≤ r", positive = the peakier sample.

    As the official ``_get_double_threshold_rates``: width = the smaller range; r over
    ``[min_p + width − 2, max_p + 2]`` with 100 per unit; for each r, 400 values of l over
    ``[r − width − 2, r − width + 2]``. The roles are swapped when the given positive is not the peakier one
    (ties included), so the rates are those of the peakier sample as positive.
    """
    pos, neg = np.sort(np.asarray(pos, np.float64)), np.sort(np.asarray(neg, np.float64))
    left, right, p, n, fp, fn = _double_counts(pos, neg)
    return fp / len(n), fn / len(p), np.stack([left, right], axis=1)


def _max_rule_epsilon(fp: np.ndarray, fn: np.ndarray, n_neg: int, n_pos: int, delta: float) -> float:
    """nan-max of :func:`rule_epsilon` over rules given as counts, each distinct (FP, FN) pair evaluated once."""
    if fp.size == 0:
        return float("nan")
    present = np.flatnonzero(np.bincount(fp * (n_pos + 1) + fn, minlength=(n_neg + 1) * (n_pos + 1)))
    eps = rule_epsilon((present // (n_pos + 1)) / n_neg, (present % (n_pos + 1)) / n_pos, delta)
    return float(np.nanmax(eps)) if not np.isnan(eps).all() else float("nan")


def example_epsilon(pos, neg, delta: float = DELTA) -> float:
    """ε of one forget example from its ``pos`` and ``neg`` confidence samples (``pos`` = larger median).

    The peaky rule first (smaller range / larger range < 0.01 → ``EPSILON_CAP``), then the nan-max over the
    double- and single-threshold rules, clipped to [0, ``EPSILON_CAP``]. When no rule survives: 0 if the two
    samples are identical, else ``nan`` (see the module notes).
    """
    pos = np.sort(np.asarray(pos, np.float64).reshape(-1))
    neg = np.sort(np.asarray(neg, np.float64).reshape(-1))
    if pos.size == 0 or neg.size == 0:
        raise ValueError("both confidence samples must be non-empty")
    pos_diff, neg_diff = pos[-1] - pos[0], neg[-1] - neg[0]
    largest, smallest = (pos_diff, neg_diff) if pos_diff > neg_diff else (neg_diff, pos_diff)
    if largest > 0 and smallest / largest < PEAKY_RATIO:  # 0/0 is nan in the official code: not peaky
        return EPSILON_CAP
    _, _, p, n, fp_d, fn_d = _double_counts(pos, neg)
    _, fp_s, fn_s = _single_counts(pos, neg)
    eps = np.nanmax([_max_rule_epsilon(fp_d, fn_d, len(n), len(p), delta),
                     _max_rule_epsilon(fp_s, fn_s, len(neg), len(pos), delta), -np.inf])
    if eps == -np.inf:  # every rule discarded
        same = pos.size == neg.size and np.array_equal(pos, neg)
        return 0.0 if same else float("nan")
    return float(min(max(eps, 0.0), EPSILON_CAP))


def per_example_epsilons(unlearned_confs, retrained_confs, delta: float = DELTA) -> np.ndarray:
    """ε per forget example from ``[n_models, n_examples]`` confidences of unlearned and retrained models."""
    u = np.asarray(unlearned_confs, dtype=np.float64)
    r = np.asarray(retrained_confs, dtype=np.float64)
    if u.ndim != 2 or u.shape != r.shape:
        raise ValueError(f"unlearned and retrained confidences must both be [n_models, n_examples] of one shape, "
                         f"got {u.shape} and {r.shape}")
    if u.shape[0] < 2:
        raise ValueError(f"the challenge metric needs at least 2 models of each kind, got {u.shape[0]}")
    retrain_is_positive = np.median(r, axis=0) > np.median(u, axis=0)
    eps = np.empty(u.shape[1])
    for i in range(u.shape[1]):
        pos, neg = (r[:, i], u[:, i]) if retrain_is_positive[i] else (u[:, i], r[:, i])
        eps[i] = example_epsilon(pos, neg, delta)
    return np.clip(eps, 0.0, EPSILON_CAP)


# -- binning and scores ---------------------------------------------------------------------------------------

def max_epsilon(n_models: int) -> float:
    """The code's bound on a measurable ε from N samples: ``ceil(ln(N − 1))`` (7 for N = 512)."""
    if n_models < 2:
        raise ValueError(f"n_models must be at least 2, got {n_models}")
    return float(math.ceil(math.log(n_models - 1)))


def buckets(n_models: int) -> list[tuple[float, float]]:
    """``[(bucket start, points)]``: width 0.5 from 0 while the end ≤ :func:`max_epsilon`; points 1, ½, ¼, …"""
    top = max_epsilon(n_models)
    out, start, points = [], 0.0, 1.0
    while start + BUCKET_WIDTH <= top:
        out.append((start, points))
        points /= 2
        start += BUCKET_WIDTH
    return out


def example_points(eps, n_models: int) -> np.ndarray:
    """H(s) per example: the points of the first bucket with ε < its end; 0 beyond the last bucket or for nan."""
    eps = np.asarray(eps, dtype=np.float64)
    h = np.zeros_like(eps)
    for start, points in reversed(buckets(n_models)):
        h = np.where(eps < start + BUCKET_WIDTH, points, h)
    return h


def forgetting_quality(unlearned_confs, retrained_confs, delta: float = DELTA) -> tuple[float, np.ndarray]:
    """(F, per-example ε): F = mean over forget examples of H(ε_s) (``compute_forget_score_from_confs``)."""
    eps = per_example_epsilons(unlearned_confs, retrained_confs, delta)
    n_models = np.asarray(unlearned_confs).shape[0]
    return float(example_points(eps, n_models).mean()) if eps.size else float("nan"), eps


def final_score(forgetting_quality: float, ra_u: float, ra_r: float, ta_u: float, ta_r: float) -> float:
    """F × (RA_U / RA_R) × (TA_U / TA_R) (``main.py``). Example: 0.5 × (0.9/1.0) × (0.8/0.8) = 0.45."""
    return float(forgetting_quality * (ra_u / ra_r) * (ta_u / ta_r))


def epsilon_summary(eps, n_models: int) -> dict[str, Any]:
    """Summary of the per-example ε for a report: quantiles over the determined ε (capped ones included), how
    many hit the cap, lie beyond the last bucket (0 points) or are undetermined, and the count per H value."""
    eps = np.asarray(eps, dtype=np.float64)
    det = eps[~np.isnan(eps)]
    h = example_points(eps, n_models)

    def q(p):
        return float(np.quantile(det, p)) if det.size else None

    return {
        "n": int(eps.size), "mean": float(det.mean()) if det.size else None, "median": q(0.5),
        "q10": q(0.1), "q25": q(0.25), "q75": q(0.75), "q90": q(0.9), "max": float(det.max()) if det.size else None,
        "capped": int((det >= EPSILON_CAP).sum()), "beyond_buckets": int((det >= max_epsilon(n_models)).sum()),
        "undetermined": int(np.isnan(eps).sum()), "max_epsilon": max_epsilon(n_models),
        "buckets": len(buckets(n_models)),
        "points": {f"{p:g}": int((h == p).sum()) for p in [b[1] for b in buckets(n_models)] + [0.0]},
    }


def challenge_result(unlearned_confs, retrained_confs, ra_u, ra_r, ta_u, ta_r) -> dict[str, Any]:
    """The report block: ``{"n", "forgetting_quality", "score", "epsilons", "utility"}`` from confidences
    ``[N, n_forget]`` and the per-model retain/test accuracies of the N unlearned and N retrained models."""
    n = int(np.asarray(unlearned_confs).shape[0])
    f, eps = forgetting_quality(unlearned_confs, retrained_confs)
    util = {"ra_u": float(np.mean(ra_u)), "ra_r": float(np.mean(ra_r)),
            "ta_u": float(np.mean(ta_u)), "ta_r": float(np.mean(ta_r))}
    return {"n": n, "forgetting_quality": f,
            "score": final_score(f, util["ra_u"], util["ra_r"], util["ta_u"], util["ta_r"]),
            "epsilons": epsilon_summary(eps, n), "utility": util}
