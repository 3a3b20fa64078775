"""Composable metrics: each declares the artifacts it depends on (model outputs per split, attack
features); an :class:`Evaluation` computes each artifact once per model and keeps per-example values
beside the aggregates (the OpenUnlearning pattern)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from obliviate.metrics import classification as C
from obliviate.metrics import mia as M
from obliviate.metrics import regression as R
from obliviate.training import predict


@dataclass(frozen=True)
class Metric:
    name: str
    kinds: tuple[str, ...]
    needs: tuple[str, ...]
    fn: Callable[..., float]
    help: str = ""
    target: str = "oracle"  # what a good value is close to


METRICS: dict[tuple[str, str], Metric] = {}  # (kind, name) -> metric


def metrics_for(kind: str) -> dict[str, Metric]:
    return {name: m for (k, name), m in METRICS.items() if k == kind}


def metric(name: str, kinds: tuple[str, ...], needs: tuple[str, ...], help: str = "", target: str = "oracle"):
    def deco(fn):
        for kind in kinds:
            METRICS[(kind, name)] = Metric(name, kinds, needs, fn, help, target)
        return fn
    return deco


@dataclass
class SplitOutputs:
    raw: np.ndarray   # logits (classification) or predictions in target units (regression)
    y: np.ndarray
    kind: str

    @property
    def probs(self) -> np.ndarray:
        return C.softmax(self.raw)

    @property
    def pred(self) -> np.ndarray:
        return self.raw.argmax(axis=1) if self.kind == "classification" else self.raw

    @property
    def confidence(self) -> np.ndarray:
        return C.true_class_confidence(self.probs, self.y)

    @property
    def abs_err(self) -> np.ndarray:
        return np.abs(self.raw - self.y)


@dataclass
class Evaluation:
    """One model on one task and forget/retain split. ``seed`` fixes the attack's subsampling."""

    task: Any
    model: Any
    forget_ids: np.ndarray
    retain_ids: np.ndarray
    seed: int = 0
    device: Any = "cpu"
    _cache: dict[str, Any] = field(default_factory=dict)

    def artifact(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = ARTIFACTS[name](self)
        return self._cache[name]

    def compute(self, names: list[str] | None = None) -> dict[str, float]:
        available = metrics_for(self.task.kind)
        names = names or list(available)
        values = {n: available[n].fn(*(self.artifact(a) for a in available[n].needs)) for n in names}
        return {n: v for n, v in values.items() if v is not None}  # None: not applicable to this forget set

    def per_example(self) -> dict[str, list[float]]:
        f = self.artifact("forget")
        if self.task.kind == "classification":
            return {"forget_confidence": np.round(f.confidence, 6).tolist(),
                    "forget_correct": (f.pred == f.y).astype(int).tolist()}
        return {"forget_abs_err": np.round(f.abs_err, 6).tolist()}


def _outputs(ids_attr: str | None):
    def build(ev: Evaluation) -> SplitOutputs:
        d = ev.task.data
        if ids_attr is None:
            x, y = d.x_test, d.y_test
        else:
            ids = getattr(ev, ids_attr)
            x, y = d.x_train[ids], d.y_train[ids]
        raw = predict(ev.model, x, ev.device)
        return SplitOutputs(raw, y, ev.task.kind)
    return build


def _mia_shadow(ev: Evaluation):
    """Members/non-members for the attack, subsampled with the evaluation seed (evaluation.md §0.3)."""
    rng = np.random.default_rng([ev.seed, 0x111A])
    retain, test = ev.artifact("retain"), ev.artifact("test")
    if ev.task.kind == "classification":
        pos = M.balanced_sample(len(retain.y), len(test.y), rng)
        return retain.confidence[pos], test.confidence
    # DRU: members drawn from the whole training set (forget and retain), 2000 of each side at most
    forget = ev.artifact("forget")
    train_err = np.empty(len(retain.y) + len(forget.y))
    train_err[ev.retain_ids] = retain.abs_err
    train_err[ev.forget_ids] = forget.abs_err
    members = train_err[M.balanced_sample(len(train_err), 2000, rng)]
    nonmembers = test.abs_err[M.balanced_sample(len(test.y), 2000, rng)]
    return members, nonmembers


def _forgotten_classes(ev: Evaluation) -> np.ndarray:
    """Classes whose every training example is in the forget set (class-wise forgetting)."""
    y = ev.task.data.y_train
    forgotten = np.unique(y[ev.forget_ids])
    return np.array([c for c in forgotten if not np.any(y[ev.retain_ids] == c)], dtype=np.int64)


ARTIFACTS: dict[str, Callable[[Evaluation], Any]] = {
    "forgotten_classes": _forgotten_classes,
    "forget": _outputs("forget_ids"),
    "retain": _outputs("retain_ids"),
    "test": _outputs(None),
    "mia_shadow": _mia_shadow,
}

_CLS, _REG = ("classification",), ("regression",)


@metric("forget_acc", _CLS, ("forget",), "accuracy on the forget set")
def _forget_acc(f):
    return C.accuracy(f.pred, f.y)


@metric("retain_acc", _CLS, ("retain",), "accuracy on the retain set")
def _retain_acc(r):
    return C.accuracy(r.pred, r.y)


@metric("test_acc", _CLS, ("test",), "accuracy on the test set")
def _test_acc(t):
    return C.accuracy(t.pred, t.y)


@metric("mia", _CLS, ("mia_shadow", "forget"), "SVC MIA-efficacy: fraction of forget examples called non-members")
def _mia_cls(shadow, f):
    return M.svc_mia_efficacy(shadow[0], shadow[1], f.confidence)


@metric("test_acc_forgotten", _CLS, ("test", "forgotten_classes"),
        "class-wise forgetting only: test accuracy on the forgotten classes (evaluation.md §1)")
def _test_acc_forgotten(t, classes):
    mask = np.isin(t.y, classes)
    return C.accuracy(t.pred[mask], t.y[mask]) if classes.size and mask.any() else None


@metric("test_acc_remaining", _CLS, ("test", "forgotten_classes"),
        "class-wise forgetting only: test accuracy excluding the forgotten classes")
def _test_acc_remaining(t, classes):
    mask = ~np.isin(t.y, classes)
    return C.accuracy(t.pred[mask], t.y[mask]) if classes.size and mask.any() else None


@metric("forget_mae", _REG, ("forget",), "mean absolute error on the forget set")
def _forget_mae(f):
    return R.mae(f.pred, f.y)


@metric("retain_mae", _REG, ("retain",), "mean absolute error on the retain set")
def _retain_mae(r):
    return R.mae(r.pred, r.y)


@metric("test_mae", _REG, ("test",), "mean absolute error on the test set")
def _test_mae(t):
    return R.mae(t.pred, t.y)


@metric("mia", _REG, ("mia_shadow", "forget"), "regression MIA: fraction of forget rows called members (SVC on L1)")
def _mia_reg(shadow, f):
    return M.regression_mia(shadow[0], shadow[1], f.abs_err)
