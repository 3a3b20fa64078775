"""Classification metrics as pure functions of arrays."""
from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``pred == y``. Example: ``accuracy([1, 0, 2], [1, 1, 2]) == 2/3``."""
    pred, y = np.asarray(pred), np.asarray(y)
    if y.size == 0:
        return float("nan")
    return float((pred == y).mean())


def true_class_confidence(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """softmax(f(x))[y] per example: the SVC MIA's feature (SalUn ``SVC_MIA.py``)."""
    return probs[np.arange(len(y)), np.asarray(y, dtype=np.int64)]


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row Jensen–Shannon divergence in nats: ½KL(p‖m) + ½KL(q‖m), m = (p+q)/2; 0 ≤ JS ≤ ln 2.

    Example: ``js_divergence([[1, 0]], [[0, 1]]) == [ln 2]``.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.where(p > 0, p * np.log(p / m), 0.0).sum(axis=-1)
        kl_qm = np.where(q > 0, q * np.log(q / m), 0.0).sum(axis=-1)
    return 0.5 * kl_pm + 0.5 * kl_qm
