"""MUSE six-way evaluation metrics as pure functions of strings and arrays.

Shi et al., ICLR 2025 (arXiv 2407.06460); official code swj0419/muse_bench (``metrics/``, ``eval.py``). No model code
lives here: the caller generates text / computes token log-probs and passes the results in.

- VerbMem / KnowMem: ROUGE-L F1 from the ``rouge_score`` package, no stemmer, default tokenizer
  (:func:`rouge_l_f1`; KnowMem answers are first cut by :func:`clean_knowmem_answer`), reported as 100 × mean, with a
  95 % percentile-bootstrap CI (:func:`bootstrap_ci`).
- PrivLeak: Min-k% score per text (:func:`min_k_percent`, k = 40 % by default), AUC over forget (label 0) vs holdout
  (label 1) with the score negated (:func:`mia_auc`), then the relative difference to the retrained model's AUC
  (:func:`privleak`). The MUSE constants are ``AUC_RETRAIN["News"]["forget_holdout_Min-40%"] = 0.4772`` and
  ``["Books"][...] = 0.5393`` (:data:`AUC_RETRAIN`; the official ``eval.py`` indexes this dict without the dataset
  level, a ``KeyError``).
"""
from __future__ import annotations

import inspect
from typing import Any, Sequence

import numpy as np

__all__ = ["AUC_RETRAIN", "rouge_l_f1", "rouge_l_recall", "clean_knowmem_answer", "min_k_percent", "mia_auc",
           "privleak", "privleak_ou", "bootstrap_ci"]

#: MUSE ``constants.AUC_RETRAIN``, keyed by dataset first, then by the ``"{A}_{B}_{metric}"`` AUC key.
AUC_RETRAIN: dict[str, dict[str, float]] = {
    "News": {"forget_holdout_Min-40%": 0.4772},
    "Books": {"forget_holdout_Min-40%": 0.5393},
}

_SCORER: Any = None  # the no-stemmer scorer (MUSE's); kept under this name for callers that inspect it
_SCORERS: dict[bool, Any] = {}  # one cached RougeScorer per stemmer setting


def _rouge_l(prediction: str, target: str, stemmer: bool = False):
    """The ``rougeL`` Score tuple (precision, recall, fmeasure); one scorer per stemmer setting, built once."""
    global _SCORER
    if not isinstance(prediction, str) or not isinstance(target, str):
        raise ValueError(f"prediction and target must be str, got {type(prediction).__name__} and "
                         f"{type(target).__name__}")
    stemmer = bool(stemmer)
    scorer = _SCORERS.get(stemmer)
    if scorer is None:
        try:
            from rouge_score import rouge_scorer
        except ImportError as e:  # optional dependency: obliviate[llm]
            raise ImportError("rouge_l_* needs the 'rouge-score' package (pip install 'obliviate[llm]')") from e
        scorer = _SCORERS[stemmer] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stemmer)
        if not stemmer:
            _SCORER = scorer
    return scorer.score(target=target, prediction=prediction)["rougeL"]


def rouge_l_f1(prediction: str, target: str, stemmer: bool = False) -> float:
    """ROUGE-L F1 of ``prediction`` against ``target``: the MUSE VerbMem / KnowMem per-sample score.

    Default follows MUSE exactly: ``rouge_score`` ``RougeScorer(["rougeL"], use_stemmer=False)``, default tokenizer
    (lower-cases, splits on non-alphanumerics), ``score(target=..., prediction=...)``. ``stemmer=True`` is
    OpenUnlearning's ``eval_rouge_recall_batch`` (Porter stemmer, ``rougeL_f1``). MUSE truncates the VerbMem
    ground truth to 128 *model* tokens before scoring; that is the caller's job.
    LCS("the cat sat", "the cat sat down") = 3, P = 3/3, R = 3/4, F = 2PR/(P+R) = 6/7:

    >>> round(rouge_l_f1("the cat sat", "the cat sat down"), 4)
    0.8571
    """
    return float(_rouge_l(prediction, target, stemmer).fmeasure)


def rouge_l_recall(prediction: str, target: str, stemmer: bool = False) -> float:
    """ROUGE-L recall = LCS / len(target tokens), also logged by MUSE (no stemmer, the default). TOFU /
    OpenUnlearning's ``rougeL_recall`` uses the stemmer: pass ``stemmer=True`` ("running cats" then matches
    "run cat").

    >>> rouge_l_recall("the cat sat", "the cat sat down")
    0.75
    >>> rouge_l_recall("running cats", "run cat"), rouge_l_recall("running cats", "run cat", stemmer=True)
    (0.0, 1.0)
    """
    return float(_rouge_l(prediction, target, stemmer).recall)


def clean_knowmem_answer(text: str) -> str:
    """Cut a greedy KnowMem generation to its first answer, as MUSE ``metrics/knowmem.py`` does.

    The ICL prompt is a chain of ``"Question: …\\nAnswer: …\\n\\n"`` blocks, so the model tends to carry on with the
    next question; MUSE keeps ``text.split("\\n\\n")[0].split("\\nQuestion")[0].split("Question:")[0]``. The final
    ``strip()`` is ours (ROUGE's tokenizer ignores surrounding whitespace, so scores are unchanged).

    >>> clean_knowmem_answer(" Paris\\nQuestion: and Spain?\\nAnswer: Madrid")
    'Paris'
    >>> clean_knowmem_answer("Paris.\\n\\nQuestion: next")
    'Paris.'
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be str, got {type(text).__name__}")
    return text.split("\n\n")[0].split("\nQuestion")[0].split("Question:")[0].strip()


def min_k_percent(token_logprobs: np.ndarray, k: float = 0.4) -> float:
    """Min-k% Prob score of one text (Shi et al., arXiv 2310.16789): −mean of the ``int(len·k)`` smallest token
    log-probs, i.e. the mean NLL of the k-fraction least likely tokens. Lower = more member-like.

    ``k`` is a fraction (MUSE's ``Min-40%`` is ``k=0.4``); the count is ``int(len(lp) * k)`` as in MUSE, truncating.
    Guard: when that count is 0 (very short texts) MUSE takes the mean of an empty slice
    and gets NaN; here the single smallest log-prob is used instead. Empty input → NaN.

    >>> min_k_percent(np.array([-1.0, -2.0, -3.0, -4.0, -5.0]), k=0.4)   # int(5·0.4) = 2 → −mean(−5, −4)
    4.5
    >>> min_k_percent(np.array([-1.0, -2.0]), k=0.2)                     # int(0.4) = 0 → guard: smallest only
    2.0
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be a fraction in (0, 1], got {k} (Min-40% is k=0.4)")
    lp = np.asarray(token_logprobs, dtype=np.float64)
    if lp.ndim != 1:
        raise ValueError(f"token_logprobs must be 1-D (one text), got shape {lp.shape}")
    if lp.size == 0:
        return float("nan")
    n = max(int(lp.size * k), 1)
    return float(-np.sort(lp)[:n].mean())


def _scores_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty: the AUC needs at least one score per split")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values (NaN/inf); e.g. an unguarded Min-k% score")
    return a


def mia_auc(forget_scores, holdout_scores) -> float:
    """MUSE PrivLeak AUC for key ``forget_holdout_<metric>``: forget texts labelled 0, holdout texts labelled 1,
    ``fpr, tpr = roc_curve(y, −score)``; ``auc(fpr, tpr)``.

    Scores are NLL-like (Min-k%, loss): lower = more member-like, hence the negation. The AUC is
    P(a holdout text looks more member-like than a forget text), ties counted ½. A model that memorised the forget
    set gives forget texts the lowest scores, so AUC ≈ 0 (PrivLeak ≈ −100); a model that never saw either split
    gives ≈ 0.5; over-unlearning pushes it above the retrained model's AUC. Note OpenUnlearning's ``mia_auc`` uses
    the un-negated score and reports 1 − this value.

    Pairs (holdout, forget) with holdout score < forget score: forget [1, 2, 3], holdout [2, 4] →
    (2 vs 3) = 1, (2 vs 2) tie = ½, rest 0 → 1.5 / 6:

    >>> mia_auc([1.0, 2.0, 3.0], [2.0, 4.0])
    0.25
    """
    from sklearn.metrics import auc, roc_curve

    f = _scores_1d(forget_scores, "forget_scores")
    h = _scores_1d(holdout_scores, "holdout_scores")
    y = np.concatenate([np.zeros(f.size), np.ones(h.size)])
    score = np.concatenate([f, h])
    fpr, tpr, _ = roc_curve(y, -score)
    return float(auc(fpr, tpr))


def privleak(auc_model: float, auc_reference: float) -> float:
    """PrivLeak in percent: (AUC_model − AUC_retrain) / AUC_retrain × 100, AUCs from :func:`mia_auc`.

    Signed: ≈ −100 for a model that still memorises the forget set (AUC ≈ 0, under-unlearning); > 0 for
    over-unlearning (forget texts less likely than holdout); ideal 0. ``auc_reference`` == 0 → NaN (undefined;
    OpenUnlearning adds 1e-10 to the denominator instead, which gives a huge finite number).

    >>> privleak(0.0, 0.4772)
    -100.0
    >>> privleak(0.75, 0.5)
    50.0
    """
    auc_model, auc_reference = float(auc_model), float(auc_reference)
    for name, v in (("auc_model", auc_model), ("auc_reference", auc_reference)):
        if not (0.0 <= v <= 1.0):
            raise ValueError(f"{name} must be an AUC in [0, 1], got {v}")
    if auc_reference == 0.0:
        return float("nan")
    return (auc_model - auc_reference) / auc_reference * 100.0


def privleak_ou(auc_ou_model: float, auc_ou_reference: float | None = None) -> float:
    """PrivLeak as OpenUnlearning computes it (``privacy.py::privleak``), from AUCs in *its* orientation.

    Two conventions for the same forget-vs-holdout AUC:

    - MUSE (:func:`mia_auc`): ``roc_curve(y, −score)``; AUC_MUSE ≈ 0 when the forget set is memorised.
    - OpenUnlearning (:func:`obliviate.metrics.lm_mia.auc_ou`): ``roc_auc_score(y, score)`` on the un-negated
      loss-like score; AUC_OU = 1 − AUC_MUSE, ≈ 1 when memorised.

    OpenUnlearning flips back, score = 1 − AUC_OU(model), ref = 1 − AUC_OU(reference) (its ``retain_logs``), or
    ``ref_value`` 0.5 when ``auc_ou_reference`` is None, and returns (score − ref)/(ref + 1e-10) × 100. That is
    ``privleak(1 − a, 1 − r)`` up to the 1e-10 in the denominator (which makes ref = 0 give a huge finite number,
    not NaN).

    A memorising model (AUC_OU = 1) against the no-reference 0.5 → (0 − 0.5)/0.5 = −100:

    >>> round(privleak_ou(1.0), 6)
    -100.0
    >>> round(privleak_ou(0.25, 0.5), 6)   # score 0.75, ref 0.5 → +50
    50.0
    """
    a = float(auc_ou_model)
    r = 0.5 if auc_ou_reference is None else 1.0 - float(auc_ou_reference)
    if not (0.0 <= a <= 1.0):
        raise ValueError(f"auc_ou_model must be an AUC in [0, 1], got {a}")
    if auc_ou_reference is not None and not (0.0 <= float(auc_ou_reference) <= 1.0):
        raise ValueError(f"auc_ou_reference must be an AUC in [0, 1] or None, got {auc_ou_reference}")
    score = 1.0 - a
    return (score - r) / (r + 1e-10) * 100.0


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean (``scipy.stats.bootstrap``, ``method="percentile"``, 9999 resamples):
    the interval MUSE's logger reports for ROUGE means. Seeded so reports are reproducible.

    Degenerate inputs — fewer than 2 values, or all values equal — return ``(mean, mean)`` (scipy would warn and
    give NaN); an empty input gives ``(nan, nan)``.
    With values [0, 1] the resampled means are 0, ½, 1 with probability ¼, ½, ¼, so the 2.5 % / 97.5 %
    percentiles are 0 and 1:

    >>> bootstrap_ci([0.0, 1.0])
    (0.0, 1.0)
    >>> bootstrap_ci([0.3, 0.3, 0.3])
    (0.3, 0.3)
    """
    from scipy.stats import bootstrap

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError("values contain NaN")
    if v.size == 0:
        return (float("nan"), float("nan"))
    if v.size < 2 or np.all(v == v[0]):
        m = float(v[0])  # the mean, exactly (summing equal floats can round)
        return (m, m)
    # scipy >= 1.15 takes ``rng``; older releases only ``random_state``
    rng_kw = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
    res = bootstrap((v,), np.mean, confidence_level=confidence, method="percentile",
                    **{rng_kw: np.random.default_rng(seed)})
    ci = res.confidence_interval
    return (float(ci.low), float(ci.high))
