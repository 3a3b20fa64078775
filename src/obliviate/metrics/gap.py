"""Gap to the retrain oracle (SalUn's Avg. Gap: Fan et al., ICLR 2024, arXiv 2310.12508)."""
from __future__ import annotations

import math

HEADLINE = {
    "classification": ("forget_acc", "retain_acc", "test_acc", "mia"),
    "regression": ("forget_mae", "retain_mae", "test_mae", "mia"),
    "language": ("verbmem_f", "knowmem_f", "knowmem_r", "privleak", "forget_quality", "utility"),
}


def gaps(unlearned: dict[str, float], oracle: dict[str, float]) -> dict[str, float]:
    """``|unlearned[k] - oracle[k]|`` for every key both have with finite values."""
    out = {}
    for k, v in unlearned.items():
        o = oracle.get(k)
        if isinstance(v, (int, float)) and isinstance(o, (int, float)) and math.isfinite(v) and math.isfinite(o):
            out[k] = abs(float(v) - float(o))
    return out


#: headline keys not in [0, 1]: PrivLeak is a percentage, so its gap enters the average divided by 100
SCALE = {"privleak": 0.01}


def avg_gap(gap: dict[str, float], kind: str) -> float:
    """Mean gap over the task kind's headline keys (PrivLeak's in units of 100 %).
    Example: gaps 0.02, 0, 0.01, 0.01 → 0.01."""
    keys = [k for k in HEADLINE[kind] if k in gap]
    if not keys:
        return float("nan")
    return sum(gap[k] * SCALE.get(k, 1.0) for k in keys) / len(keys)
