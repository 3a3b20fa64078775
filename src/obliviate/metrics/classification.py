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
