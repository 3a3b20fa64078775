"""Configs validate themselves (issue 15): every registered method config, task options class and the training
recipe rejects, when constructed from Python, each value its own declaration forbids — generated here from the
fields' types and metadata, so a new config is covered without a new test."""
from __future__ import annotations

import dataclasses
import typing

import pytest

import obliviate
from obliviate.config import Validated, build_config
from obliviate.errors import ConfigError, ObliviateError
from obliviate.tasks import list_tasks
from obliviate.tasks.base import TrainRecipe

# the required values of the task options that have some (checked by their validate())
REQUIRED = {"csv": {"data": "x.csv", "target": "y"}, "hf": {"model": "m", "forget": "f", "retain": "r"},
            "muse": {"model": "m", "data": "d"}, "tofu": {"model": "m", "data": "d"}}


def _configs():
    out = {f"method:{m.name}:{'/'.join(m.kinds)}": (m.config_class, {}) for m in obliviate.list_methods()}
    out.update({f"task:{t.name}": (t.options_class, REQUIRED.get(t.name, {})) for t in list_tasks()})
    out["recipe"] = (TrainRecipe, {})
    return out


CONFIGS = _configs()


def _bad_values(cls) -> list[tuple[str, object]]:
    """(field, value) pairs the field's declaration forbids."""
    hints = typing.get_type_hints(cls)
    bad = []
    for f in dataclasses.fields(cls):
        tp, meta = hints[f.name], f.metadata
        if typing.get_origin(tp) is typing.Literal:
            bad.append((f.name, "__not_a_choice__"))
        if tp is int:
            bad += [(f.name, 2.5), (f.name, "3")]
        if tp is float:
            bad += [(f.name, "abc"), (f.name, float("nan"))]
        if tp is bool:
            bad.append((f.name, "yes"))
        scalar = tp in (int, float)
        element = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
        for kind, wrap in ((scalar, lambda v: v), (element in (int, float), lambda v: (v,))):
            if not kind:
                continue
            step = 1 if (tp is int or element is int) else 0.5
            if "min" in meta:
                bad.append((f.name, wrap(meta["min"] - step)))
            if "gt" in meta:
                bad.append((f.name, wrap(meta["gt"])))
            if "max" in meta:
                bad.append((f.name, wrap(meta["max"] + step)))
    return bad


@pytest.mark.parametrize("key", list(CONFIGS))
def test_every_config_is_validated_and_rejects_what_it_declares(key):
    cls, required = CONFIGS[key]
    assert issubclass(cls, Validated), f"{cls.__name__} does not validate itself"
    cls(**required)  # the defaults pass their own checks
    assert build_config(cls, required) == cls(**required)
    bad = _bad_values(cls)
    for name, value in bad:
        with pytest.raises((ConfigError, ObliviateError), match=name):
            cls(**{**required, name: value})


def test_the_bad_values_are_many():
    """The generated cases are not vacuous: every config with numeric fields gets some."""
    total = sum(len(_bad_values(cls)) for cls, _ in CONFIGS.values())
    assert total > 500, total
    assert len(CONFIGS) > 50


def test_the_issue_example():
    from obliviate.methods.finetune import Finetune, FinetuneConfig

    with pytest.raises(ConfigError, match="lr: expected a value > 0, got -1.0"):
        Finetune(FinetuneConfig(lr=-1.0, epochs=0))
    with pytest.raises(ConfigError, match="epochs: expected a value >= 1, got 0"):
        FinetuneConfig(epochs=0)
    with pytest.raises(ConfigError, match="train.epochs: expected at most 1,000,000"):
        build_config(TrainRecipe, {"epochs": "1e12"}, prefix="train.")  # --set messages keep their prefix
