"""Metrics: pure functions (classification, regression, mia, gap) and their composition (core)."""
from obliviate.metrics.classification import accuracy, js_divergence, softmax, true_class_confidence
from obliviate.metrics.core import METRICS, Evaluation, Metric, metrics_for
from obliviate.metrics import language as _language  # noqa: E402,F401  (registers the language metrics)
from obliviate.metrics.gap import HEADLINE, avg_gap, gaps
from obliviate.metrics.mia import regression_mia, svc_mia_efficacy
from obliviate.metrics.regression import mae

__all__ = ["accuracy", "js_divergence", "softmax", "true_class_confidence", "mae", "svc_mia_efficacy", "regression_mia",
           "gaps", "avg_gap", "HEADLINE", "Evaluation", "Metric", "METRICS", "metrics_for"]
