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
from obliviate.seeding import numpy_rng
from obliviate.training import predict


@dataclass(frozen=True)
class Metric:
    name: str
    kinds: tuple[str, ...]
    needs: tuple[str, ...]
    fn: Callable[..., float]
    help: str = ""
    target: str = "oracle"  # what a good value is close to
    unit: str = "fraction"  # of the value: "fraction" (in [0, 1]), "percent", "nats", "L2", "target units"


METRICS: dict[tuple[str, str], Metric] = {}  # (kind, name) -> metric


def metrics_for(kind: str) -> dict[str, Metric]:
    return {name: m for (k, name), m in METRICS.items() if k == kind}


#: per-example values kept beside the aggregates, per task kind (the language metrics register theirs)
PER_EXAMPLE: dict[str, Callable[..., dict[str, list]]] = {}


def per_example_for(kind: str):
    def deco(fn):
        PER_EXAMPLE[kind] = fn
        return fn
    return deco


def metric(name: str, kinds: tuple[str, ...], needs: tuple[str, ...], help: str = "", target: str = "oracle",
           unit: str = "fraction"):
    def deco(fn):
        for kind in kinds:
            METRICS[(kind, name)] = Metric(name, kinds, needs, fn, help, target, unit)
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
    reference: Any = None  # the retrain oracle, for metrics measured against it (JS, activation distance, ...)
    _cache: dict[str, Any] = field(default_factory=dict)

    def artifact(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = ARTIFACTS[name](self)
        return self._cache[name]

    def compute(self, names: list[str] | None = None) -> dict[str, float]:
        available = metrics_for(self.task.kind)
        names = names or list(available)
        values = {}
        for n in names:
            inputs = [self.artifact(a) for a in available[n].needs]
            if any(x is None for x in inputs):  # e.g. no reference model: oracle-relative metrics do not apply
                continue
            values[n] = available[n].fn(*inputs)
        return {n: v for n, v in values.items() if v is not None}  # None: not applicable to this forget set

    def per_example(self) -> dict[str, list[float]]:
        if self.task.kind in PER_EXAMPLE:
            return PER_EXAMPLE[self.task.kind](self)
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
    """Members/non-members for the attack, subsampled with the evaluation seed (SalUn's MIA-efficacy protocol)."""
    rng = numpy_rng(ev.seed, 0x111A)
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


def _reference_forget(ev: Evaluation) -> SplitOutputs | None:
    if ev.reference is None:
        return None
    d = ev.task.data
    return SplitOutputs(predict(ev.reference, d.x_train[ev.forget_ids], ev.device), d.y_train[ev.forget_ids],
                        ev.task.kind)


def _incompetent_forget(ev: Evaluation) -> SplitOutputs | None:
    """Outputs of a randomly initialised model of the same architecture (Bad Teacher's incompetent teacher)."""
    import torch

    if not hasattr(ev.task, "make_model"):
        return None
    from obliviate.exact.plan import derive_seed

    state = torch.random.get_rng_state()
    try:
        model = ev.task.make_model(derive_seed(ev.seed, "incompetent-teacher"))
    finally:
        torch.random.set_rng_state(state)
    d = ev.task.data
    return SplitOutputs(predict(model.to(ev.device), d.x_train[ev.forget_ids], ev.device), d.y_train[ev.forget_ids],
                        ev.task.kind)


ARTIFACTS: dict[str, Callable[[Evaluation], Any]] = {
    "forgotten_classes": _forgotten_classes,
    "reference_forget": _reference_forget,
    "incompetent_forget": _incompetent_forget,
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
        "class-wise forgetting only: test accuracy on the forgotten classes")
def _test_acc_forgotten(t, classes):
    mask = np.isin(t.y, classes)
    return C.accuracy(t.pred[mask], t.y[mask]) if classes.size and mask.any() else None


@metric("test_acc_remaining", _CLS, ("test", "forgotten_classes"),
        "class-wise forgetting only: test accuracy excluding the forgotten classes")
def _test_acc_remaining(t, classes):
    mask = ~np.isin(t.y, classes)
    return C.accuracy(t.pred[mask], t.y[mask]) if classes.size and mask.any() else None


@metric("forget_mae", _REG, ("forget",), "mean absolute error on the forget set", unit="target units")
def _forget_mae(f):
    return R.mae(f.pred, f.y)


@metric("retain_mae", _REG, ("retain",), "mean absolute error on the retain set", unit="target units")
def _retain_mae(r):
    return R.mae(r.pred, r.y)


@metric("test_mae", _REG, ("test",), "mean absolute error on the test set", unit="target units")
def _test_mae(t):
    return R.mae(t.pred, t.y)


@metric("mia", _REG, ("mia_shadow", "forget"), "regression MIA: fraction of forget rows called members (SVC on L1)")
def _mia_reg(shadow, f):
    return M.regression_mia(shadow[0], shadow[1], f.abs_err)


# -- measured against the oracle (Bad Teacher's JS / ZRF; Deep Regression Unlearning for regression) ----------------------------------------

@metric("js_to_oracle", _CLS, ("forget", "reference_forget"),
        "mean Jensen–Shannon divergence (nats) between the model's and the oracle's softmax on the forget set", unit="nats")
def _js_to_oracle(f, ref):
    return float(C.js_divergence(f.probs, ref.probs).mean())


@metric("activation_distance", _CLS, ("forget", "reference_forget"),
        "mean L2 distance between the model's and the oracle's softmax on the forget set (Bad Teacher)", unit="L2")
def _activation_distance(f, ref):
    return float(np.linalg.norm(f.probs - ref.probs, axis=1).mean())


@metric("zrf", _CLS, ("forget", "incompetent_forget"),
        "Zero Retrain Forgetting: 1 − mean JS to a randomly initialised model on the forget set (clean batch-mean JS)")
def _zrf(f, incompetent):
    return float(1.0 - C.js_divergence(f.probs, incompetent.probs).mean())


@metric("wasserstein_to_oracle", _REG, ("forget", "reference_forget"),
        "Wasserstein-1 distance between the model's and the oracle's predictions on the forget set (DRU)", unit="target units")
def _wasserstein_to_oracle(f, ref):
    from scipy.stats import wasserstein_distance

    return float(wasserstein_distance(f.pred, ref.pred))
