"""The typed contracts between a method and the pipeline (obliviate.methods.base): a method returns an
``UnlearnOutput`` (or a bare module, wrapped), training-time methods get a checked ``FittedSystem`` as
``ctx.system``, and the registry is keyed by (name, kind). No built-in method talks through free string keys."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import obliviate
import obliviate.methods
from obliviate import pipeline
from obliviate.errors import ObliviateError
from obliviate.exact.s3t import S3TSystem
from obliviate.exact.sisa import SisaSystem
from obliviate.methods import (FittedSystem, Method, MethodConfig, UnlearnContext, UnlearnOutput, VerifiableSystem,
                               check_system)
from obliviate.methods.base import REPORT_BLOCKS, TrainingTimeMethod
from obliviate.methods.certified import CertifiedSystem
from obliviate.requests import ForgetRequest

METHODS_DIR = Path(__file__).resolve().parents[1] / "src" / "obliviate" / "methods"
TRAIN = {"epochs": 8}


@dataclasses.dataclass
class _Config(MethodConfig):
    pass


@pytest.fixture
def registered():
    """Register throwaway methods; remove every (name, kind) entry of theirs afterwards."""
    names: list[str] = []

    def add(cls):
        obliviate.register(cls)
        names.append(cls.name)
        return cls

    yield add
    for key in [k for k in obliviate.methods._METHODS if k[0] in names]:
        obliviate.methods._METHODS.pop(key)


def _ctx(model=None, system=None) -> UnlearnContext:
    model = model if model is not None else torch.nn.Linear(2, 2)
    return UnlearnContext(task=None, model=model, original=None, x_forget=torch.zeros(1, 2), y_forget=None,
                          x_retain=None, y_retain=None, forget_ids=np.array([0]), retain_ids=np.array([1]),
                          recipe=None, seed=0, device=torch.device("cpu"), system=system)


# -- UnlearnOutput --------------------------------------------------------------------------------------------

def test_a_bare_module_and_a_typed_output_give_the_same_report(registered):
    """The same model and block, once recorded on the context and returned bare (a third-party method, or a
    helper such as LMRun.finish), once returned typed: the two run documents agree field for field."""
    block = {"steps": 3, "precision": "fp32"}

    class Bare(Method):
        name, guarantee, config_class = "_test_bare", "approximate", _Config

        def unlearn(self, ctx):
            ctx.report("lm_run", dict(block))
            return ctx.model

    class Typed(Method):
        name, guarantee, config_class = "_test_typed", "approximate", _Config

        def unlearn(self, ctx):
            return UnlearnOutput(ctx.model, {"lm_run": dict(block)})

    reports = [obliviate.unlearn("digits", registered(cls).name, "random:0.1", train=TRAIN, oracle=False).report
               for cls in (Bare, Typed)]
    for r in reports:
        r.pop("method")
        r["time_s"].pop("unlearn")
        r["models"]["original"].pop("cached")  # the second run finds the original in the cache
    assert reports[0] == reports[1]
    assert reports[0]["lm_run"] == block
    assert reports[0]["metrics"]["unlearned"] == reports[0]["metrics"]["original"]  # the untouched copy
    assert "exact" not in reports[0] and "guard" not in reports[0]


def test_apply_method_wraps_and_merges():
    class Both(Method):
        name, guarantee = "_test_both", "approximate"

        def unlearn(self, ctx):
            ctx.report("lm_run", {"steps": 1})
            ctx.report("guard", {"recorded": True})
            return UnlearnOutput(ctx.model, {"guard": {"returned": True}})

    ctx = _ctx()
    task = obliviate.get_task("digits")
    ctx.task = task
    ctx.model = task.build_model()
    out = pipeline.apply_method(Both(), ctx, ForgetRequest("ids", np.array([0, 1])))
    assert isinstance(out, UnlearnOutput) and out.model is ctx.model and not out.model.training
    assert out.blocks == {"lm_run": {"steps": 1}, "guard": {"returned": True}}  # a returned block wins
    assert out.seconds is not None and out.seconds >= 0.0


def test_bad_outputs_and_blocks_are_clear_errors():
    with pytest.raises(ObliviateError, match=r"unknown block 'cost'.*exact, lm_run, guard, filter"):
        _ctx().report("cost", {})
    with pytest.raises(ObliviateError, match="unknown block 'system'"):
        UnlearnOutput(torch.nn.Linear(1, 1), {"system": {}})
    with pytest.raises(ObliviateError, match="'exact' must be a dict, not list"):
        UnlearnOutput(torch.nn.Linear(1, 1), {"exact": []})
    with pytest.raises(ObliviateError, match="must be a torch.nn.Module"):
        UnlearnOutput("weights")  # type: ignore[arg-type]
    with pytest.raises(ObliviateError, match=r"method 'x' returned dict; unlearn must return a torch.nn.Module"):
        UnlearnOutput.of({"model": 1}, method="x")
    assert REPORT_BLOCKS == ("exact", "lm_run", "guard", "filter")


# -- fitted systems -------------------------------------------------------------------------------------------

class _System:
    """A fitted system with every FittedSystem method and no verify."""

    def __init__(self):
        self.deleted: list[int] = []

    def served_model(self):
        return torch.nn.Linear(2, 2)

    def delete(self, ids, runtime):
        self.deleted += [int(i) for i in ids]
        return {"scheme": "test", "time_s": 0.0}

    def tensors(self):
        return {}

    def meta(self):
        return {}

    def copy(self):
        return _System()


class _NoCopy(_System):
    copy = None  # type: ignore[assignment]


def test_the_built_in_systems_follow_the_protocol():
    for cls in (SisaSystem, S3TSystem, CertifiedSystem):
        assert issubclass(cls, FittedSystem), cls
    assert issubclass(SisaSystem, VerifiableSystem) and issubclass(S3TSystem, VerifiableSystem)
    assert not issubclass(CertifiedSystem, VerifiableSystem)  # certified removal has no from-scratch check


def test_a_system_missing_a_protocol_method_is_rejected():
    assert check_system(_System()) is not None
    with pytest.raises(ObliviateError, match=r"'sisa''s fitted system \(_NoCopy\) lacks copy\(\).*served_model\(\)"):
        check_system(_NoCopy(), "sisa")
    with pytest.raises(ObliviateError, match=r"lacks served_model\(\), delete\(\), tensors\(\), meta\(\), copy\(\)"):
        _ctx(system=object())  # the typed field is checked when the context is made


def test_a_training_time_method_reports_its_cost_as_the_exact_block():
    @dataclasses.dataclass
    class VerifyConfig(MethodConfig):
        verify: bool = False

    class Sharded(TrainingTimeMethod):
        name, guarantee, config_class = "_test_sharded", "exact", VerifyConfig

    system = _System()
    out = Sharded().unlearn(_ctx(system=system))
    assert isinstance(out, UnlearnOutput) and out.blocks == {"exact": {"scheme": "test", "time_s": 0.0}}
    assert system.deleted == [0]
    with pytest.raises(ObliviateError, match="training-time method"):
        Sharded().unlearn(_ctx())
    with pytest.raises(ObliviateError, match=r"verify is set but its fitted system \(_System\) has no verify"):
        Sharded(VerifyConfig(verify=True)).unlearn(_ctx(system=_System()))


def test_a_fit_returning_an_incomplete_system_fails_before_it_is_used(registered, tmp_path):
    class BadFit(TrainingTimeMethod):
        name, guarantee, config_class = "_test_bad_fit", "exact", _Config

        def fit(self, task, train_ids, recipe, seed, runtime):
            return _NoCopy()

    registered(BadFit)
    with pytest.raises(ObliviateError, match=r"'_test_bad_fit''s fitted system \(_NoCopy\) lacks copy\(\)"):
        obliviate.unlearn("digits", "_test_bad_fit", "random:0.1", train=TRAIN, oracle=False,
                          cache_dir=str(tmp_path))


# -- the registry ---------------------------------------------------------------------------------------------

def test_the_registry_is_keyed_by_name_and_kind(registered):
    obliviate.methods._discover()
    keys = list(obliviate.methods._METHODS)
    assert all(isinstance(k, tuple) and len(k) == 2 for k in keys)
    for (name, kind), cls in obliviate.methods._METHODS.items():
        assert cls.name == name and kind in cls.kinds
    ga = "gradient_ascent"
    assert obliviate.get_method(ga, "language") is not obliviate.get_method(ga, "classification")
    assert obliviate.get_method(ga, "classification") is obliviate.get_method(ga, "regression")
    assert obliviate.get_method(ga) is obliviate.get_method(ga, "classification")  # the first registered
    # list_methods: one entry per implementation (a class with two kinds once), sorted by name
    listed = obliviate.list_methods()
    assert len(listed) == len(set(listed)) == len(set(obliviate.methods._METHODS.values()))
    assert [c.name for c in listed] == sorted(c.name for c in listed)

    class Tab(Method):
        name, guarantee, kinds = "_test_keyed", "approximate", ("classification", "regression")

    class Lang(Method):
        name, guarantee, kinds = "_test_keyed", "approximate", ("language",)

    class Clash(Method):
        name, guarantee, kinds = "_test_keyed", "approximate", ("language", "regression")

    registered(Tab)
    registered(Tab)  # the same class again: a no-op
    registered(Lang)
    assert obliviate.get_method("_test_keyed", "regression") is Tab
    assert obliviate.get_method("_test_keyed", "language") is Lang
    with pytest.raises(TypeError, match="method '_test_keyed' registered twice for language tasks"):
        obliviate.register(Clash)
    assert obliviate.get_method("_test_keyed", "language") is Lang  # a rejected class leaves nothing behind
    with pytest.raises(ObliviateError, match="unknown method '_nope'; available: .*npo"):
        obliviate.get_method("_nope")
    with pytest.raises(ObliviateError, match=r"method 'sisa' does not apply to language tasks \(it applies to: "
                                             r"classification, regression\)"):
        obliviate.get_method("sisa", "language")


# -- no free string keys, no citations of documents outside the repository --------------------------------------

def test_no_built_in_method_uses_context_extras():
    assert "extras" not in {f.name for f in dataclasses.fields(UnlearnContext)}
    offenders = []
    for path in sorted(METHODS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "extras":
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders
