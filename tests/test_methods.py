"""Every registered unlearning method, through the public API, on small tasks.

The parametrisation is built from ``obliviate.list_methods()``, so a newly added method is covered by
every test here (registry contract, moves-toward-the-oracle, determinism) without editing this file.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import obliviate
import obliviate.methods
from obliviate.config import build_config
from obliviate.methods import Method, MethodConfig

# The same small recipes everywhere (also in test_cli.py), so the session cache trains each original and
# oracle once.
TRAIN = {"classification": {"epochs": 8}, "regression": {"epochs": 10}}
TASK = {"classification": "digits", "regression": "friedman"}
# class:3 on digits: the original knows class 3 (forget_acc ~1), the oracle never saw it (forget_acc ~0).
# target>=20 on friedman: the top of the target range, which the oracle extrapolates badly (forget MAE
# ~1.9 against the original's ~0.8).
FORGET = {"classification": "class:3", "regression": "target>=20"}
FORGET_METRIC = {"classification": "forget_acc", "regression": "forget_mae"}
KINDS = tuple(TASK)

# Stronger-than-default configs, only where the paper defaults are too weak to change a tiny MLP trained
# for a few epochs. Every other method runs with its default config.
STRONGER: dict[tuple[str, str], dict] = {
    # GA.py's lr 1e-4 (tuned for ResNets on CIFAR) leaves digits' forget_acc at exactly 1.0.
    ("gradient_ascent", "classification"): {"lr": 1e-2},
    # same optimiser defaults as GA: forget_acc stays 1.0 at lr 1e-4.
    ("grad_diff", "classification"): {"lr": 1e-2},
    # lr 1e-4 barely moves friedman's forget MAE (0.789 -> 0.792); 3e-3 and above diverge.
    ("gradient_ascent", "regression"): {"lr": 1e-3},
    # lr 1e-4 does not move it at all (0.789 -> 0.788).
    ("grad_diff", "regression"): {"lr": 1e-3},
    # gaussian_finetune's defaults (STS-B notebook: 5 epochs, MSE) overshoot the cohort's forget MAE far past
    # the oracle (0.79 -> 6.1 vs 1.88); the AgeDB notebook's setting (1 epoch, L1, full-set statistics) lands
    # at 1.73 — the method fits N(mu, sigma^2) noise on the cohort, so how far it moves is its epoch budget.
    ("gaussian_finetune", "regression"): {"epochs": 1, "base_loss": "l1", "stats_from": "D"},
    # official Bad Teacher (1 epoch, Adam lr 1e-4) is ~66 steps on CIFAR-Super20 but 3 steps on digits class:3
    # (146 forget + 387 retain rows, batch 256): forget_acc stays exactly 1.0; lr 1e-3 x 3 epochs -> 0.08.
    ("bad_teacher", "classification"): {"lr": 1e-3, "epochs": 3},
}

GUARANTEES = {"exact", "certified", "approximate", "suppression"}
ALL_KINDS = {"classification", "regression", "language"}
NEEDS = {"retain", "labels", "original"}

# classifier and regression methods (language methods: tests/test_lm_methods.py)
METHODS = [m for m in obliviate.list_methods() if {"classification", "regression"} & set(m.kinds)]
METHOD_NAMES = [m.name for m in METHODS]
METHOD_KIND = [pytest.param(m.name, kind, id=f"{m.name}-{TASK[kind]}")
               for m in METHODS for kind in KINDS if kind in m.kinds]


def _unlearn(name: str, kind: str, **extra) -> obliviate.RunResult:
    # sharded methods train in-process here (the executors have their own agreement tests in test_exact.py)
    small = SMALL_SHARDED.get(name, {})
    return obliviate.unlearn(TASK[kind], name, FORGET[kind], seed=0, train=TRAIN[kind], executor="serial",
                             **STRONGER.get((name, kind), {}), **small, **extra)


# sharded methods on a small plan to keep the suite fast (defaults are exercised by benchmarks/exact.py)
SMALL_SHARDED = {"sisa": {"shards": 3, "slices": 2}, "s3t": {"shards": 3, "slices": 2, "budget": 2, "epochs": 4}}


_RESULTS: dict[tuple, obliviate.RunResult] = {}


def _result(name: str, kind: str, **extra) -> obliviate.RunResult:
    """One unlearn per (method, kind, extra config) shared by the tests of this module."""
    key = (name, kind, tuple(sorted(extra.items())))
    if key not in _RESULTS:
        _RESULTS[key] = _unlearn(name, kind, **extra)
    return _RESULTS[key]


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), f"tensor {key} differs"


# -- the registry ---------------------------------------------------------------------------------------

def test_registry_lists_the_builtin_methods():
    assert {"retrain", "finetune", "gradient_ascent", "grad_diff", "npo", "random_label", "scrub",
            "salun"} <= set(METHOD_NAMES)
    assert METHOD_NAMES == sorted(METHOD_NAMES)
    for cls in METHODS:
        assert obliviate.get_method(cls.name, cls.kinds[0]) is cls


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_declaration(name):
    cls = obliviate.get_method(name)
    assert issubclass(cls, Method)
    assert cls.guarantee in GUARANTEES
    assert len(cls.kinds) > 0 and set(cls.kinds) <= ALL_KINDS
    assert set(cls.needs) <= NEEDS
    assert isinstance(cls.summary, str) and cls.summary.strip()
    info = cls.info()
    assert info["name"] == name and info["guarantee"] == cls.guarantee
    assert info["needs"] == sorted(cls.needs) and info["kinds"] == list(cls.kinds)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_method_config_is_a_documented_dataclass(name):
    cfg_cls = obliviate.get_method(name).config_class
    assert dataclasses.is_dataclass(cfg_cls) and isinstance(cfg_cls, type)
    for f in dataclasses.fields(cfg_cls):
        assert (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING), \
            f"{name}.{f.name} has no default"
        help_text = f.metadata.get("help")
        assert isinstance(help_text, str) and help_text.strip(), f"{name}.{f.name} has no help string"
    # the defaults satisfy the field's own declared bounds/choices (build_config checks them)
    cfg = build_config(cfg_cls, {}, prefix=f"{name}.")
    assert cfg == cfg_cls()
    assert obliviate.get_method(name)().config == cfg_cls()


def test_register_rejects_a_bad_declaration():
    class BadGuarantee(Method):
        name = "_test_bad_guarantee"
        guarantee = "probably"  # type: ignore[assignment]

    class BadNeeds(Method):
        name = "_test_bad_needs"
        guarantee = "approximate"
        needs = frozenset({"telepathy"})

    for cls in (BadGuarantee, BadNeeds):
        with pytest.raises(TypeError):
            obliviate.register(cls)
        assert cls.name not in {n for n, _ in obliviate.methods._METHODS}


# -- what a method receives -------------------------------------------------------------------------------

@dataclasses.dataclass
class _ProbeConfig(MethodConfig):
    pass


@pytest.fixture
def probe_method():
    """Register throwaway methods that record their UnlearnContext; unregister them afterwards."""
    registered: list[str] = []

    def make(needs: frozenset[str]) -> tuple[str, dict]:
        seen: dict = {}
        name = "_test_probe_" + ("_".join(sorted(needs)) or "nothing")

        class Probe(Method):
            guarantee = "approximate"
            config_class = _ProbeConfig
            summary = "test probe"

            def unlearn(self, ctx):
                seen.update(x_forget=ctx.x_forget, y_forget=ctx.y_forget, x_retain=ctx.x_retain,
                            y_retain=ctx.y_retain, original=ctx.original, forget_ids=ctx.forget_ids)
                return ctx.model

        Probe.name = name
        Probe.needs = frozenset(needs)
        obliviate.register(Probe)
        registered.append(name)
        return name, seen

    yield make
    for name in registered:
        for key in [k for k in obliviate.methods._METHODS if k[0] == name]:  # keyed by (name, kind)
            obliviate.methods._METHODS.pop(key)


@pytest.mark.parametrize("needs", [frozenset(), frozenset({"retain"}), frozenset({"labels"}),
                                   frozenset({"retain", "original"}),
                                   frozenset({"labels", "retain", "original"})],
                         ids=lambda n: "+".join(sorted(n)) or "nothing")
def test_method_receives_only_what_it_needs(probe_method, needs):
    name, seen = probe_method(needs)
    assert name in [m.name for m in obliviate.list_methods()]
    result = obliviate.unlearn("digits", name, "random:0.1", train=TRAIN["classification"], oracle=False)
    task = obliviate.get_task("digits")
    n_forget = round(0.1 * task.n_train)
    n_retain = task.n_train - n_forget

    assert seen["x_forget"] is not None and seen["x_forget"].shape[0] == n_forget
    if "labels" in needs:
        expected = torch.as_tensor(task.data.y_train[seen["forget_ids"]])
        assert torch.equal(seen["y_forget"], expected)
    else:
        assert seen["y_forget"] is None
    if "retain" in needs:
        assert seen["x_retain"].shape[0] == n_retain
        assert (seen["y_retain"] is not None) == ("labels" in needs)
    else:
        assert seen["x_retain"] is None and seen["y_retain"] is None
    if "original" in needs:
        assert isinstance(seen["original"], torch.nn.Module)
    else:
        assert seen["original"] is None
    # returning the untouched copy of the original gives the original's metrics
    assert result.report["metrics"]["unlearned"] == result.report["metrics"]["original"]
    assert result.report["method"] == name


def test_probe_methods_are_removed_after_use():
    assert not [n for n, _ in obliviate.methods._METHODS if n.startswith("_test_")]


# -- bad requests -----------------------------------------------------------------------------------------

def test_unknown_method_is_an_obliviate_error(tmp_path):
    with pytest.raises(obliviate.ObliviateError, match="unknown method 'no_such_method'"):
        obliviate.unlearn("digits", "no_such_method", "random:0.1", train=TRAIN["classification"],
                          cache_dir=str(tmp_path))
    with pytest.raises(obliviate.ObliviateError, match="no_such_method"):
        obliviate.get_method("no_such_method")
    assert list(tmp_path.iterdir()) == []  # failed before training anything


def test_scrub_does_not_apply_to_regression(tmp_path):
    with pytest.raises(obliviate.ObliviateError, match="does not apply"):
        obliviate.unlearn("friedman", "scrub", "target>=20", train=TRAIN["regression"], cache_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [m.name for m in METHODS if "regression" not in m.kinds])
def test_classification_only_methods_refuse_regression(name, tmp_path):
    with pytest.raises(obliviate.ObliviateError, match="does not apply"):
        obliviate.unlearn("friedman", name, "target>=20", train=TRAIN["regression"], cache_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


# -- every method forgets (moves toward the oracle) --------------------------------------------------------

@pytest.mark.parametrize("name,kind", METHOD_KIND)
def test_method_moves_forget_metric_toward_oracle(name, kind):
    result = _result(name, kind)
    report = result.report
    key = FORGET_METRIC[kind]
    m = report["metrics"]
    original, unlearned, oracle = m["original"][key], m["unlearned"][key], m["oracle"][key]
    # the set-up is meaningful: the original and the oracle disagree clearly on the forget set
    # a training-time method's original is its own sharded ensemble: weaker shards, smaller margin
    sharded = obliviate.get_method(name).trains_original
    if kind == "classification":
        assert original >= (0.8 if sharded else 0.95) and oracle <= 0.05
    else:
        assert oracle > (1.1 if sharded else 1.5) * original
    assert math.isfinite(unlearned)
    if sharded and kind == "regression":
        # an exact sharded method's target is its own scheme retrained without the cohort, not the plain
        # oracle (on friedman target>=20 the retrained SISA ensemble extrapolates worse than the plain
        # MLP): check that instead — the served weights equal a from-scratch retrain of the same plan
        verified = _result(name, kind, verify=True).report["exact"]["verification"]
        assert verified["verified"] and verified["max_abs_diff"] == 0.0 and verified["shards_checked"] >= 1
        assert abs(unlearned - original) > 0.1  # and the deletion did change the model's forget error
        return
    assert abs(unlearned - oracle) < abs(original - oracle), (
        f"{name} on {TASK[kind]}: {key} original {original:.4f}, unlearned {unlearned:.4f}, oracle {oracle:.4f}")
    # the method's report is well formed
    assert report["method"] == name
    assert report["guarantee"] == obliviate.get_method(name).guarantee
    assert report["gap"][key] == pytest.approx(abs(unlearned - oracle))
    assert all(math.isfinite(v) for v in m["unlearned"].values())


# -- retrain is the oracle --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [k for k in KINDS if k in obliviate.get_method("retrain").kinds])
def test_retrain_equals_the_oracle_exactly(kind):
    result = _result("retrain", kind)
    report = result.report
    assert report["guarantee"] == "exact"
    m = report["metrics"]
    assert set(report["gap"]) == set(m["unlearned"])
    assert all(v == 0.0 for v in report["gap"].values()), report["gap"]
    assert report["avg_gap"] == 0.0
    assert m["unlearned"] == m["oracle"]
    assert result.model is not result.oracle
    _assert_same_state(result.model, result.oracle)


@pytest.mark.parametrize("kind", [k for k in KINDS if k in obliviate.get_method("retrain").kinds])
def test_retrain_reports_the_same_sha256_as_the_oracle(kind):
    """Identical weights must get identical hashes in one report (models.*.sha256 identify the weights)."""
    result = _result("retrain", kind)
    models = result.report["models"]
    assert models["unlearned"]["sha256"] != models["original"]["sha256"]
    assert models["unlearned"]["sha256"] == models["oracle"]["sha256"], (
        "retrain's weights equal the oracle's tensor for tensor, but the report gives them different sha256 "
        "(unlearned: state_sha256, metadata-free; oracle: hash of the cache file, which has __metadata__ {})")


# -- determinism ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kind", METHOD_KIND)
def test_same_call_twice_gives_identical_results(name, kind):
    first = _result(name, kind)
    second = _unlearn(name, kind)
    _assert_same_state(first.model, second.model)
    assert second.report["metrics"] == first.report["metrics"]
    assert second.report["gap"] == first.report["gap"]
    assert second.report["avg_gap"] == first.report["avg_gap"]
    assert second.report["models"]["unlearned"]["sha256"] == first.report["models"]["unlearned"]["sha256"]
    assert second.report["forget"] == first.report["forget"]
    # the unlearned model is a new object, not the cached original mutated in place
    assert second.model is not second.original


def test_unlearn_does_not_modify_the_original():
    result = _result("finetune", "classification")
    reloaded = obliviate.unlearn("digits", "finetune", FORGET["classification"], train=TRAIN["classification"],
                                 oracle=False)
    _assert_same_state(result.original, reloaded.original)
    assert result.report["models"]["original"]["sha256"] == reloaded.report["models"]["original"]["sha256"]
    diff = [not torch.equal(a, b) for a, b in zip(result.original.state_dict().values(),
                                                  result.model.state_dict().values())]
    assert any(diff), "finetune returned the original weights unchanged"


def test_evaluate_matches_the_report():
    result = _result("npo", "classification")
    values = obliviate.evaluate("digits", result.model, FORGET["classification"], reference=result.oracle)
    for key, value in result.report["metrics"]["unlearned"].items():
        assert values[key] == pytest.approx(value, abs=1e-12), key
    # without a reference the oracle-relative metrics are simply absent
    plain = obliviate.evaluate("digits", result.model, FORGET["classification"])
    assert "js_to_oracle" not in plain and plain["forget_acc"] == values["forget_acc"]
    assert np.isclose(obliviate.evaluate("digits", result.oracle, FORGET["classification"])["forget_acc"],
                      result.report["metrics"]["oracle"]["forget_acc"])
