"""Population membership-inference attacks used as forgetting metrics (SalUn's MIA-efficacy; Deep Regression
Unlearning's loss-based attack for regression)."""
from __future__ import annotations

import numpy as np
from sklearn.svm import SVC


def _fit_svc(member_feature: np.ndarray, nonmember_feature: np.ndarray) -> SVC:
    x = np.concatenate([member_feature, nonmember_feature]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(member_feature)), np.zeros(len(nonmember_feature))])
    return SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)


def svc_mia_efficacy(member_conf: np.ndarray, nonmember_conf: np.ndarray, target_conf: np.ndarray) -> float:
    """MIA-efficacy: fraction of ``target`` examples an SVC(C=3, rbf) on true-class confidence, trained on
    members (retain) vs non-members (test), calls non-members. Higher = more forgetting; target = oracle.
    """
    clf = _fit_svc(np.asarray(member_conf, float), np.asarray(nonmember_conf, float))
    return float(1.0 - clf.predict(np.asarray(target_conf, float).reshape(-1, 1)).mean())


def regression_mia(member_loss: np.ndarray, nonmember_loss: np.ndarray, target_loss: np.ndarray) -> float:
    """Deep Regression Unlearning MIA: SVC on per-sample L1 loss, trained on training rows (members) vs
    test rows; returns the fraction of ``target`` rows predicted *member*. Lower = more forgetting.
    """
    clf = _fit_svc(np.asarray(member_loss, float), np.asarray(nonmember_loss, float))
    return float(clf.predict(np.asarray(target_loss, float).reshape(-1, 1)).mean())


def balanced_sample(n_available: int, n_wanted: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded subset of ``min(n_available, n_wanted)`` positions, sorted."""
    k = min(n_available, n_wanted)
    return np.sort(rng.choice(n_available, size=k, replace=False))
