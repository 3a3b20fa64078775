"""Regression metrics as pure functions of arrays."""
from __future__ import annotations

import numpy as np


def mae(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute error. Example: ``mae([1.0, 3.0], [2.0, 1.0]) == 1.5``."""
    pred, y = np.asarray(pred, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return float("nan")
    return float(np.abs(pred - y).mean())
