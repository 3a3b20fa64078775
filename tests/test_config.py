"""obliviate.config: typed configs built from ``--set key=value`` strings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from obliviate.config import as_dict, build_config, describe, split_overrides
from obliviate.errors import ConfigError, ObliviateError


@dataclass
class Cfg:
    n: int = field(default=3, metadata={"help": "a count", "min": 1, "max": 10})
    lr: float = field(default=0.1, metadata={"help": "a rate", "gt": 0})
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    widths: tuple[int, ...] = (4, 2)
    names: tuple[str, ...] = ("x",)
    maybe: Optional[int] = None
    label: str = "hi"
    colour: str = field(default="red", metadata={"choices": ("red", "green")})
    frac: float = field(default=0.5, metadata={"min": 0, "max": 1})


@dataclass
class Required:
    need: int
    other: int = 1


@dataclass
class Validated:
    lo: int = 0
    hi: int = 1

    def validate(self) -> None:
        if self.lo > self.hi:
            raise ConfigError("lo must not exceed hi")


def test_defaults_when_no_values():
    cfg = build_config(Cfg)
    assert cfg == Cfg()
    assert build_config(Cfg, None) == Cfg()


@pytest.mark.parametrize("raw, expected", [("5", 5), ("  7 ", 7), ("1e1", 10), ("4.0", 4), (6, 6), (2.0, 2)])
def test_int_coercion(raw, expected):
    cfg = build_config(Cfg, {"n": raw})
    assert cfg.n == expected
    assert type(cfg.n) is int


@pytest.mark.parametrize("raw", ["2.5", 2.5, "abc", "", "nan", "inf", True, None, "1,2"])
def test_int_rejects_non_integers(raw):
    with pytest.raises(ConfigError, match="n: expected an integer"):
        build_config(Cfg, {"n": raw})


@pytest.mark.parametrize("raw, expected", [("0.25", 0.25), ("1e-3", 1e-3), (2, 2.0), ("3", 3.0)])
def test_float_coercion(raw, expected):
    cfg = build_config(Cfg, {"lr": raw})
    assert cfg.lr == pytest.approx(expected)
    assert type(cfg.lr) is float


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", float("nan"), float("inf"), "1e400"])
def test_float_rejects_non_finite(raw):
    with pytest.raises(ConfigError, match="finite"):
        build_config(Cfg, {"lr": raw})


@pytest.mark.parametrize("raw", ["fast", "", "0.1.2"])
def test_float_rejects_non_numbers(raw):
    with pytest.raises(ConfigError, match="lr: expected a number"):
        build_config(Cfg, {"lr": raw})


@pytest.mark.parametrize("raw, expected", [
    ("true", True), ("True", True), ("1", True), ("yes", True), ("on", True), (True, True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False), ("off", False), (False, False),
])
def test_bool_coercion(raw, expected):
    assert build_config(Cfg, {"flag": raw}).flag is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "", 1, None])
def test_bool_rejects_other_values(raw):
    with pytest.raises(ConfigError, match="flag: expected true or false"):
        build_config(Cfg, {"flag": raw})


def test_literal_accepts_choice_and_rejects_other():
    assert build_config(Cfg, {"mode": "b"}).mode == "b"
    with pytest.raises(ConfigError) as info:
        build_config(Cfg, {"mode": "c"})
    msg = str(info.value)
    assert "mode" in msg and "a, b" in msg and "'c'" in msg
    with pytest.raises(ConfigError):
        build_config(Cfg, {"mode": "A"})  # case-sensitive


@pytest.mark.parametrize("raw, expected", [
    ("8,4", (8, 4)), ("16", (16,)), (" 8 , 4 ,2", (8, 4, 2)), ("8,,4", (8, 4)), ("", ()),
    ([1, 2], (1, 2)), (("3", "5"), (3, 5)),
])
def test_tuple_of_int_coercion(raw, expected):
    cfg = build_config(Cfg, {"widths": raw})
    assert cfg.widths == expected
    assert isinstance(cfg.widths, tuple)
    assert all(type(v) is int for v in cfg.widths)


def test_tuple_of_int_rejects_bad_item():
    with pytest.raises(ConfigError, match="widths: expected an integer"):
        build_config(Cfg, {"widths": "8,x"})
    with pytest.raises(ConfigError, match="widths: expected an integer"):
        build_config(Cfg, {"widths": "8,2.5"})


def test_tuple_of_str():
    assert build_config(Cfg, {"names": "a, b,c"}).names == ("a", "b", "c")


@pytest.mark.parametrize("raw, expected", [("none", None), ("None", None), ("null", None), (None, None),
                                           ("4", 4), (5, 5)])
def test_optional_int(raw, expected):
    assert build_config(Cfg, {"maybe": raw}).maybe == expected


def test_optional_int_still_checks_inner_type():
    with pytest.raises(ConfigError, match="maybe: expected an integer"):
        build_config(Cfg, {"maybe": "2.5"})


def test_str_field_kept_as_string():
    assert build_config(Cfg, {"label": "123"}).label == "123"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        build_config(Cfg, {"nn": "3"})
    msg = str(info.value)
    assert "'nn'" in msg
    assert "valid keys:" in msg
    for name in ("n", "lr", "flag", "mode", "widths", "maybe", "label", "colour", "frac"):
        assert name in msg


def test_unknown_key_message_uses_prefix():
    with pytest.raises(ConfigError, match=r"unknown train\. key 'bogus'"):
        build_config(Cfg, {"bogus": 1}, prefix="train.")


def test_prefix_appears_in_value_errors():
    with pytest.raises(ConfigError, match=r"train\.n: expected an integer"):
        build_config(Cfg, {"n": "x"}, prefix="train.")


def test_config_error_is_obliviate_error():
    assert issubclass(ConfigError, ObliviateError)


@pytest.mark.parametrize("key, raw, needle", [
    ("n", "0", ">= 1"),
    ("n", "-3", ">= 1"),
    ("n", "11", "<= 10"),
    ("lr", "0", "> 0"),
    ("lr", "-0.1", "> 0"),
    ("frac", "1.5", "<= 1"),
    ("frac", "-0.01", ">= 0"),
    ("colour", "blue", "red, green"),
])
def test_range_and_choice_checks(key, raw, needle):
    with pytest.raises(ConfigError) as info:
        build_config(Cfg, {key: raw})
    assert key in str(info.value)
    assert needle in str(info.value)


@pytest.mark.parametrize("key, raw, expected", [("n", "1", 1), ("n", "10", 10), ("lr", "1e-9", 1e-9),
                                                ("frac", "0", 0.0), ("frac", "1", 1.0), ("colour", "green", "green")])
def test_boundary_values_accepted(key, raw, expected):
    assert getattr(build_config(Cfg, {key: raw}), key) == expected


def test_missing_required_field_is_config_error():
    with pytest.raises(ConfigError, match="need"):
        build_config(Required, {"other": "2"})
    assert build_config(Required, {"need": "4"}).need == 4


def test_validate_hook_runs():
    assert build_config(Validated, {"lo": "1", "hi": "2"}) == Validated(1, 2)
    with pytest.raises(ConfigError, match="lo must not exceed hi"):
        build_config(Validated, {"lo": "3", "hi": "2"})


def test_describe_and_as_dict():
    rows = {r["name"]: r for r in describe(Cfg)}
    assert rows["n"]["default"] == 3 and rows["n"]["help"] == "a count"
    assert rows["flag"]["help"] == ""
    d = as_dict(build_config(Cfg, {"widths": "8,4"}))
    assert d["widths"] == [8, 4]  # tuples become lists for JSON
    assert d["n"] == 3


def test_split_overrides_parses_pairs():
    assert split_overrides(["a=1", " b.c = x ", "d=", "e=x=y"]) == {"a": "1", "b.c": "x", "d": "", "e": "x=y"}
    assert split_overrides([]) == {}


def test_split_overrides_last_wins():
    assert split_overrides(["a=1", "a=2"]) == {"a": "2"}


@pytest.mark.parametrize("pair", ["novalue", "=5", " =5", ""])
def test_split_overrides_rejects_malformed(pair):
    with pytest.raises(ConfigError) as info:
        split_overrides([pair])
    assert "--set expects key=value" in str(info.value)
    assert repr(pair) in str(info.value)


def test_real_recipe_config():
    from obliviate.tasks.base import TrainRecipe

    r = build_config(TrainRecipe, {"epochs": "5", "lr": "0.01", "optimizer": "sgd", "momentum": "0.5"},
                     prefix="train.")
    assert (r.epochs, r.lr, r.optimizer, r.momentum) == (5, 0.01, "sgd", 0.5)
    with pytest.raises(ConfigError, match=r"train\.momentum"):
        build_config(TrainRecipe, {"momentum": "1.5"}, prefix="train.")
    with pytest.raises(ConfigError, match=r"train\.optimizer"):
        build_config(TrainRecipe, {"optimizer": "rmsprop"}, prefix="train.")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        build_config(TrainRecipe, {"epochs": "0"}, prefix="train.")


def test_tuple_field_given_a_scalar_int_is_coerced_or_a_config_error():
    """``get_task("digits", hidden=32)`` through the Python API: a scalar for a tuple field must become a
    one-item tuple or fail as a ConfigError naming the field, never a bare TypeError."""
    try:
        cfg = build_config(Cfg, {"widths": 8})
    except ConfigError as exc:
        assert "widths" in str(exc)
        return
    assert cfg.widths == (8,)


@pytest.mark.parametrize("raw", [None, 2.5])
def test_tuple_field_given_a_bad_scalar_is_a_config_error(raw):
    with pytest.raises(ConfigError, match="widths"):
        build_config(Cfg, {"widths": raw})
