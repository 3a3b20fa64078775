"""Metrics: pure functions (classification, regression, mia, gap) and their composition (core)."""
from typing import Any

from obliviate.metrics.classification import accuracy, js_divergence, softmax, true_class_confidence
from obliviate.metrics.core import METRICS, Evaluation, Metric, metrics_for
from obliviate.metrics import language as _language  # noqa: E402,F401  (registers the language metrics)
from obliviate.metrics.gap import HEADLINE, avg_gap, gaps
from obliviate.metrics.mia import regression_mia, svc_mia_efficacy
from obliviate.metrics.regression import mae

KINDS = tuple(HEADLINE)  # the task kinds, in the order listings show them

#: what a value closer to ``target`` means, in words (a metric's ``target`` field)
TARGETS = {"oracle": "the retrain oracle's value", "original": "the original's value (utility to keep)",
           "max": "as high as possible (a p-value: 1 = indistinguishable from the oracle)"}


def list_metrics(kind: str | None = None) -> list[dict[str, Any]]:
    """Every registered metric of ``kind`` (all kinds when ``None``), headline metrics first: what the report's
    ``metrics`` blocks hold and ``avg_gap`` averages.

    >>> [m["name"] for m in list_metrics("classification") if m["headline"]]
    ['forget_acc', 'retain_acc', 'test_acc', 'mia']
    """
    if kind is not None and kind not in KINDS:
        from obliviate.errors import ObliviateError

        raise ObliviateError(f"unknown task kind {kind!r}; expected one of {', '.join(KINDS)}")
    rows = []
    for k in KINDS if kind is None else (kind,):
        registered = metrics_for(k)
        order = [n for n in HEADLINE[k] if n in registered] + [n for n in registered if n not in HEADLINE[k]]
        for name in order:
            m = registered[name]
            rows.append({"name": name, "kind": k, "headline": name in HEADLINE[k], "target": m.target,
                         "unit": m.unit, "needs": list(m.needs), "help": m.help})
    return rows


__all__ = ["accuracy", "js_divergence", "softmax", "true_class_confidence", "mae", "svc_mia_efficacy", "regression_mia",
           "gaps", "avg_gap", "HEADLINE", "Evaluation", "Metric", "METRICS", "metrics_for", "list_metrics", "KINDS",
           "TARGETS"]
