"""obliviate.metrics: hand-computed values of the pure functions and of an Evaluation on a fake model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import obliviate.metrics.core as core
from obliviate.metrics import (HEADLINE, Evaluation, accuracy, avg_gap, gaps, mae, metrics_for, regression_mia,
                               softmax, svc_mia_efficacy, true_class_confidence)
from obliviate.metrics.mia import balanced_sample
from obliviate.tasks.base import TabularData

# -- accuracy / mae / softmax / confidence ------------------------------------------------------------------


@pytest.mark.parametrize("pred, y, expected", [
    ([1, 0, 2], [1, 1, 2], 2 / 3),
    ([0, 0, 0, 0], [0, 0, 0, 0], 1.0),
    ([1, 1], [0, 0], 0.0),
    (np.array([3, 1, 4, 1, 5]), np.array([3, 1, 4, 1, 9]), 0.8),
])
def test_accuracy(pred, y, expected):
    out = accuracy(pred, y)
    assert isinstance(out, float)
    assert out == pytest.approx(expected)


def test_accuracy_empty_is_nan():
    assert math.isnan(accuracy([], []))


@pytest.mark.parametrize("pred, y, expected", [
    ([1.0, 3.0], [2.0, 1.0], 1.5),
    ([0.0, 0.0, 0.0], [1.0, -2.0, 3.0], 2.0),
    ([5.0], [5.0], 0.0),
    (np.array([1, 2, 3], dtype=np.float32), np.array([1.5, 2.5, 2.0], dtype=np.float32), 2 / 3),
])
def test_mae(pred, y, expected):
    out = mae(pred, y)
    assert isinstance(out, float)
    assert out == pytest.approx(expected)


def test_mae_empty_is_nan():
    assert math.isnan(mae([], []))


def test_softmax_hand_computed():
    p = softmax(np.array([[0.0, 0.0], [0.0, math.log(3.0)], [1.0, 1.0]]))
    np.testing.assert_allclose(p, [[0.5, 0.5], [0.25, 0.75], [0.5, 0.5]])
    e = math.e
    np.testing.assert_allclose(softmax(np.array([[1.0, 0.0, 0.0]]))[0], [e / (e + 2), 1 / (e + 2), 1 / (e + 2)])


def test_softmax_rows_sum_to_one_and_are_stable_for_large_logits():
    logits = np.array([[1000.0, 1000.0, -1000.0], [-5e3, 0.0, 5e3], [1.0, 2.0, 3.0]])
    p = softmax(logits)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(p[1], [0.0, 0.0, 1.0], atol=1e-12)
    assert p[2].argmax() == 2


def test_softmax_shift_invariant():
    logits = np.array([[0.3, -1.2, 2.0]])
    np.testing.assert_allclose(softmax(logits), softmax(logits + 17.0))


def test_true_class_confidence():
    probs = np.array([[0.1, 0.9], [0.7, 0.3], [0.25, 0.75]])
    np.testing.assert_allclose(true_class_confidence(probs, np.array([1, 1, 0])), [0.9, 0.3, 0.25])
    np.testing.assert_allclose(true_class_confidence(probs, [0, 0, 1]), [0.1, 0.7, 0.75])


# -- gaps ---------------------------------------------------------------------------------------------------


def test_gaps_absolute_difference_over_shared_keys():
    u = {"forget_acc": 0.90, "retain_acc": 0.97, "test_acc": 0.95, "mia": 0.20, "only_u": 1.0}
    o = {"forget_acc": 0.92, "retain_acc": 0.97, "test_acc": 0.94, "mia": 0.21, "only_o": 2.0}
    g = gaps(u, o)
    assert set(g) == {"forget_acc", "retain_acc", "test_acc", "mia"}
    assert g["forget_acc"] == pytest.approx(0.02)
    assert g["retain_acc"] == 0.0
    assert g["test_acc"] == pytest.approx(0.01)
    assert g["mia"] == pytest.approx(0.01)
    assert all(v >= 0 for v in g.values())


def test_gaps_skip_non_finite_and_non_numbers():
    u = {"a": float("nan"), "b": 1.0, "c": float("inf"), "d": "x", "e": 3, "f": None, "g": 0.5}
    o = {"a": 1.0, "b": float("nan"), "c": 1.0, "d": "y", "e": 1.5, "f": 1.0, "g": float("-inf")}
    assert gaps(u, o) == {"e": 1.5}


def test_gaps_symmetric_and_empty():
    assert gaps({"x": 1.0}, {"x": 3.0}) == gaps({"x": 3.0}, {"x": 1.0}) == {"x": 2.0}
    assert gaps({}, {"x": 1.0}) == {}
    assert gaps({"x": 1.0}, {}) == {}


def test_avg_gap_docstring_example():
    g = {"forget_acc": 0.02, "retain_acc": 0.0, "test_acc": 0.01, "mia": 0.01}
    assert avg_gap(g, "classification") == pytest.approx(0.01)


def test_avg_gap_ignores_non_headline_keys():
    g = {"forget_acc": 0.04, "retain_acc": 0.0, "test_acc": 0.0, "mia": 0.0, "extra": 100.0, "forget_mae": 50.0}
    assert avg_gap(g, "classification") == pytest.approx(0.01)


def test_avg_gap_regression_headline():
    g = {"forget_mae": 1.0, "retain_mae": 0.5, "test_mae": 0.5, "mia": 0.0, "forget_acc": 99.0}
    assert avg_gap(g, "regression") == pytest.approx(0.5)


def test_avg_gap_mean_over_present_headline_keys():
    # mia missing (e.g. a non-finite value dropped by gaps): mean over the three that are there
    assert avg_gap({"forget_acc": 0.3, "retain_acc": 0.0, "test_acc": 0.0}, "classification") == pytest.approx(0.1)


def test_avg_gap_without_headline_keys_is_nan():
    assert math.isnan(avg_gap({}, "classification"))
    assert math.isnan(avg_gap({"other": 1.0}, "regression"))


def test_avg_gap_language_kind():
    keys = HEADLINE["language"]
    g = {k: float(i) for i, k in enumerate(keys)}
    # privleak is a percentage: its gap counts in units of 100 %
    expected = sum(i / 100 if k == "privleak" else i for i, k in enumerate(keys)) / len(keys)
    assert avg_gap(g, "language") == pytest.approx(expected)


def test_headline_matches_registered_metrics():
    assert HEADLINE["classification"] == ("forget_acc", "retain_acc", "test_acc", "mia")
    assert HEADLINE["regression"] == ("forget_mae", "retain_mae", "test_mae", "mia")
    for kind in ("classification", "regression"):
        assert set(HEADLINE[kind]) <= set(metrics_for(kind))  # every headline key is a registered metric


def test_gap_and_avg_gap_end_to_end():
    u = {"forget_mae": 3.0, "retain_mae": 1.0, "test_mae": 2.0, "mia": 0.5}
    o = {"forget_mae": 5.0, "retain_mae": 1.5, "test_mae": 2.5, "mia": 0.3}
    assert avg_gap(gaps(u, o), "regression") == pytest.approx((2.0 + 0.5 + 0.5 + 0.2) / 4)


# -- MIA ----------------------------------------------------------------------------------------------------

MEMBER_CONF = np.linspace(0.98, 1.0, 50)     # members: confident
NONMEMBER_CONF = np.linspace(0.28, 0.32, 50)  # non-members: about 0.3


@pytest.mark.parametrize("targets, expected", [
    (np.full(10, 1.0), 0.0),                                   # all look like members: nothing forgotten
    (np.full(10, 0.3), 1.0),                                   # all look like non-members
    (np.r_[np.full(5, 1.0), np.full(5, 0.3)], 0.5),
    (np.r_[np.full(1, 0.99), np.full(3, 0.29)], 0.75),
])
def test_svc_mia_efficacy_separable(targets, expected):
    """Classification direction: the fraction of targets called NON-member (higher = more forgetting)."""
    assert svc_mia_efficacy(MEMBER_CONF, NONMEMBER_CONF, targets) == pytest.approx(expected)


def test_svc_mia_efficacy_accepts_lists_and_returns_float():
    out = svc_mia_efficacy(list(MEMBER_CONF), list(NONMEMBER_CONF), [0.3, 0.31])
    assert isinstance(out, float) and out == 1.0


MEMBER_LOSS = np.linspace(0.0, 0.2, 50)      # training rows: small L1 loss
NONMEMBER_LOSS = np.linspace(1.9, 2.1, 50)   # test rows: large L1 loss


@pytest.mark.parametrize("targets, expected", [
    (np.full(8, 0.1), 1.0),                                    # low loss: called member
    (np.full(8, 2.0), 0.0),                                    # high loss: called non-member
    (np.r_[np.full(4, 0.1), np.full(4, 2.0)], 0.5),
    (np.r_[np.full(3, 0.05), np.full(1, 2.05)], 0.75),
])
def test_regression_mia_separable(targets, expected):
    """Regression direction: the fraction of targets called MEMBER (lower = more forgetting)."""
    assert regression_mia(MEMBER_LOSS, NONMEMBER_LOSS, targets) == pytest.approx(expected)


def test_mia_directions_are_opposite():
    # The same "looks like a member" targets give 0 for the classification metric and 1 for the regression one.
    assert svc_mia_efficacy(MEMBER_CONF, NONMEMBER_CONF, np.full(5, 0.99)) == 0.0
    assert regression_mia(MEMBER_LOSS, NONMEMBER_LOSS, np.full(5, 0.1)) == 1.0


def test_balanced_sample_seeded_sorted_and_capped():
    a = balanced_sample(100, 10, np.random.default_rng(0))
    b = balanced_sample(100, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert a.size == 10 and np.all(np.diff(a) > 0) and a.max() < 100
    c = balanced_sample(5, 10, np.random.default_rng(0))
    np.testing.assert_array_equal(c, np.arange(5))


# -- Evaluation on a fake task and model --------------------------------------------------------------------


class EchoClassifier(nn.Module):
    """Predicts class ``int(x[:, 0])`` with logit 5 on it and 0 elsewhere; counts forward calls."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.n_classes = n_classes
        self.calls = 0
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return nn.functional.one_hot(x[:, 0].long(), self.n_classes).float() * 5.0 + self.dummy


class EchoRegressor(nn.Module):
    """Predicts ``x[:, 0]``; counts forward calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x[:, 0].clone()


class FakeTask:
    def __init__(self, kind, data, name="fake"):
        self.kind = kind
        self.data = data
        self.name = name

    @property
    def n_train(self):
        return self.data.n_train


def _cls_task(pred_train, y_train, pred_test, y_test, n_classes=3):
    col = lambda a: np.asarray(a, dtype=np.float32)[:, None]  # noqa: E731
    data = TabularData(col(pred_train), np.asarray(y_train, dtype=np.int64), col(pred_test),
                       np.asarray(y_test, dtype=np.int64), ["p"], [str(c) for c in range(n_classes)])
    return FakeTask("classification", data)


@pytest.fixture
def cls_case():
    # train rows 0..9: forget = 0..3 (2 of 4 correct), retain = 4..9 (5 of 6 correct)
    pred_train = [0, 1, 2, 2, 0, 1, 2, 0, 1, 0]
    y_train = [0, 1, 0, 1, 0, 1, 2, 0, 1, 2]
    # test: 4 of 5 correct
    pred_test = [0, 1, 2, 0, 1]
    y_test = [0, 1, 2, 0, 2]
    task = _cls_task(pred_train, y_train, pred_test, y_test)
    model = EchoClassifier(3)
    forget = np.array([0, 1, 2, 3], dtype=np.int64)
    retain = np.arange(4, 10, dtype=np.int64)
    return task, model, forget, retain


def test_evaluation_classification_accuracies(cls_case):
    task, model, forget, retain = cls_case
    out = Evaluation(task, model, forget, retain).compute()
    assert set(HEADLINE["classification"]) <= set(out)
    assert out["forget_acc"] == pytest.approx(2 / 4)
    assert out["retain_acc"] == pytest.approx(5 / 6)
    assert out["test_acc"] == pytest.approx(4 / 5)
    assert 0.0 <= out["mia"] <= 1.0


def test_evaluation_computes_each_artifact_once(cls_case):
    task, model, forget, retain = cls_case
    ev = Evaluation(task, model, forget, retain)
    ev.compute()
    assert model.calls == 3  # forget, retain, test: one forward each (the MIA reuses them)
    ev.compute()
    ev.compute(["mia", "forget_acc"])
    ev.per_example()
    assert model.calls == 3


def test_evaluation_predict_called_once_per_split(cls_case, monkeypatch):
    task, model, forget, retain = cls_case
    seen = []
    real = core.predict

    def counting(m, x, device="cpu"):
        seen.append(len(x))
        return real(m, x, device)

    monkeypatch.setattr(core, "predict", counting)
    ev = Evaluation(task, model, forget, retain)
    ev.compute()
    ev.compute()
    assert sorted(seen) == [4, 5, 6]  # forget (4 rows), test (5), retain (6), each once


def test_evaluation_is_lazy(cls_case):
    task, model, forget, retain = cls_case
    ev = Evaluation(task, model, forget, retain)
    assert ev.compute(["forget_acc"]) == {"forget_acc": 0.5}
    assert model.calls == 1
    assert set(ev._cache) == {"forget"}


def test_evaluation_unknown_metric_name(cls_case):
    task, model, forget, retain = cls_case
    with pytest.raises(KeyError):
        Evaluation(task, model, forget, retain).compute(["forget_mae"])


def test_evaluation_per_example_classification(cls_case):
    task, model, forget, retain = cls_case
    pe = Evaluation(task, model, forget, retain).per_example()
    assert pe["forget_correct"] == [1, 1, 0, 0]
    hi = math.exp(5) / (math.exp(5) + 2)  # softmax of [5, 0, 0] at the true class
    lo = 1 / (math.exp(5) + 2)
    np.testing.assert_allclose(pe["forget_confidence"], [hi, hi, lo, lo], atol=1e-6)


def test_evaluation_mia_by_construction():
    """Retain rows all correct (confident), test rows all wrong (unconfident): the attack separates them, so
    a forget row is called non-member exactly when the model gets it wrong."""
    n_retain, n_test = 20, 20
    pred_forget = [0, 1, 2, 0, 1, 2, 0, 1]
    y_forget = [0, 1, 2, 1, 2, 0, 1, 2]  # 3 correct, 5 wrong
    y_retain = [i % 3 for i in range(n_retain)]
    y_test = [i % 3 for i in range(n_test)]
    pred_test = [(c + 1) % 3 for c in y_test]
    task = _cls_task(pred_forget + y_retain, y_forget + y_retain, pred_test, y_test)
    forget = np.arange(8, dtype=np.int64)
    retain = np.arange(8, 8 + n_retain, dtype=np.int64)
    out = Evaluation(task, EchoClassifier(3), forget, retain, seed=0).compute()
    assert out["forget_acc"] == pytest.approx(3 / 8)
    assert out["retain_acc"] == 1.0
    assert out["test_acc"] == 0.0
    assert out["mia"] == pytest.approx(5 / 8)


def test_evaluation_mia_seeded():
    rng = np.random.default_rng(0)
    y_train = rng.integers(0, 3, 60)
    pred_train = np.where(rng.random(60) < 0.7, y_train, (y_train + 1) % 3)
    y_test = rng.integers(0, 3, 20)
    pred_test = np.where(rng.random(20) < 0.5, y_test, (y_test + 1) % 3)
    task = _cls_task(pred_train, y_train, pred_test, y_test)
    forget, retain = np.arange(10, dtype=np.int64), np.arange(10, 60, dtype=np.int64)
    a = Evaluation(task, EchoClassifier(3), forget, retain, seed=4).compute(["mia"])
    b = Evaluation(task, EchoClassifier(3), forget, retain, seed=4).compute(["mia"])
    assert a == b


def _reg_task(pred_train, y_train, pred_test, y_test):
    col = lambda a: np.asarray(a, dtype=np.float32)[:, None]  # noqa: E731
    data = TabularData(col(pred_train), np.asarray(y_train, dtype=np.float32), col(pred_test),
                       np.asarray(y_test, dtype=np.float32), ["p"], None)
    return FakeTask("regression", data)


def test_evaluation_regression_maes_and_single_forward_per_split():
    # forget rows 0..2: errors 1, 2, 3 -> 2.0; retain rows 3..6: errors 0, 0, 1, 1 -> 0.5; test: 4, 0 -> 2.0
    pred_train = [1.0, 2.0, 3.0, 5.0, 6.0, 7.0, 8.0]
    y_train = [0.0, 0.0, 0.0, 5.0, 6.0, 8.0, 9.0]
    task = _reg_task(pred_train, y_train, [4.0, 1.0], [0.0, 1.0])
    model = EchoRegressor()
    ev = Evaluation(task, model, np.array([0, 1, 2], dtype=np.int64), np.array([3, 4, 5, 6], dtype=np.int64))
    out = ev.compute()
    assert set(HEADLINE["regression"]) <= set(out)
    assert out["forget_mae"] == pytest.approx(2.0)
    assert out["retain_mae"] == pytest.approx(0.5)
    assert out["test_mae"] == pytest.approx(2.0)
    assert 0.0 <= out["mia"] <= 1.0
    assert model.calls == 3
    assert ev.per_example() == {"forget_abs_err": [1.0, 2.0, 3.0]}
    assert model.calls == 3


def test_evaluation_regression_mia_by_construction():
    """Training rows predicted exactly, test rows off by 5: forget rows that are predicted exactly are called
    members (regression MIA counts members), so forgetting none of them gives 1."""
    n = 30
    y_train = np.arange(n, dtype=np.float32)
    task = _reg_task(y_train, y_train, np.arange(20, dtype=np.float32) + 5.0, np.arange(20, dtype=np.float32))
    forget = np.arange(5, dtype=np.int64)
    retain = np.arange(5, n, dtype=np.int64)
    out = Evaluation(task, EchoRegressor(), forget, retain).compute()
    assert out["forget_mae"] == 0.0 and out["test_mae"] == pytest.approx(5.0)
    assert out["mia"] == 1.0


def test_evaluation_regression_mia_forgotten_rows_look_like_test():
    n_retain, n_forget, n_test = 40, 4, 40
    y_train = np.arange(n_forget + n_retain, dtype=np.float32)
    pred_train = y_train.copy()
    pred_train[:n_forget] += 5.0  # forget rows now err like test rows
    y_test = np.arange(n_test, dtype=np.float32)
    task = _reg_task(pred_train, y_train, y_test + 5.0, y_test)
    forget = np.arange(n_forget, dtype=np.int64)
    retain = np.arange(n_forget, n_forget + n_retain, dtype=np.int64)
    out = Evaluation(task, EchoRegressor(), forget, retain).compute()
    assert out["forget_mae"] == pytest.approx(5.0)
    assert out["mia"] == 0.0


# -- oracle-relative metrics ------------------------------------------------------------------------------

def test_js_divergence_hand_computed():
    from obliviate.metrics import js_divergence

    # disjoint supports: JS = ln 2; identical: 0; symmetric
    assert js_divergence(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))[0] == pytest.approx(np.log(2))
    assert js_divergence(np.array([[0.3, 0.7]]), np.array([[0.3, 0.7]]))[0] == pytest.approx(0.0)
    p, q = np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]])
    # m = (0.75, 0.25): ½[0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25)] + ½[1 ln(1/0.75)]
    expected = 0.5 * (0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(2.0)) + 0.5 * np.log(1 / 0.75)
    assert js_divergence(p, q)[0] == pytest.approx(expected)
    assert js_divergence(q, p)[0] == pytest.approx(expected)


def test_oracle_relative_metrics_on_controlled_outputs():
    """js_to_oracle / activation_distance are 0 against itself and hand-computable against a known model."""
    import torch

    from obliviate.metrics.core import Evaluation
    from obliviate.tasks.base import TabularData

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits, dtype=torch.float32)

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    class FakeTask:
        kind = "classification"
        n_train = 4
        data = TabularData(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]), np.zeros((2, 2), np.float32),
                           np.array([0, 1]), ["a", "b"], ["0", "1"])

        def make_model(self, seed):
            return Fixed([0.0, 0.0])  # the "incompetent teacher": uniform

    big = 50.0
    model, oracle = Fixed([big, 0.0]), Fixed([0.0, big])  # one-hot on opposite classes
    ev = Evaluation(FakeTask(), model, np.array([0, 1]), np.array([2, 3]), reference=oracle)
    values = ev.compute(["js_to_oracle", "activation_distance", "zrf"])
    assert values["js_to_oracle"] == pytest.approx(np.log(2), abs=1e-6)
    assert values["activation_distance"] == pytest.approx(np.sqrt(2), abs=1e-6)
    # JS(one-hot, uniform) = ½[ln(1/0.75)] + ½[0.5 ln(0.5/0.75)·… ] computed directly:
    from obliviate.metrics import js_divergence
    assert values["zrf"] == pytest.approx(1 - js_divergence(np.array([[1.0, 0.0]]), np.array([[0.5, 0.5]]))[0], abs=1e-6)
    same = Evaluation(FakeTask(), oracle, np.array([0, 1]), np.array([2, 3]), reference=oracle)
    assert same.compute(["js_to_oracle", "activation_distance"]) == {"js_to_oracle": 0.0, "activation_distance": 0.0}
    assert "js_to_oracle" not in Evaluation(FakeTask(), model, np.array([0, 1]), np.array([2, 3])).compute()


def test_wasserstein_to_oracle_hand_computed():
    import torch

    from obliviate.metrics.core import Evaluation
    from obliviate.tasks.base import TabularData

    class Shift(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x):
            return x[:, 0] + self.c

    class FakeReg:
        kind = "regression"
        n_train = 4
        data = TabularData(np.array([[0.0], [1.0], [2.0], [3.0]], np.float32), np.zeros(4, np.float32),
                           np.array([[0.0], [1.0]], np.float32), np.zeros(2, np.float32), ["x"], None)

    ev = Evaluation(FakeReg(), Shift(2.0), np.array([0, 1]), np.array([2, 3]), reference=Shift(0.5))
    # predictions {2, 3} vs {0.5, 1.5}: every quantile shifted by 1.5
    assert ev.compute(["wasserstein_to_oracle"])["wasserstein_to_oracle"] == pytest.approx(1.5)
