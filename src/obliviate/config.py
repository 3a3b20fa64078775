"""Typed configs: dataclasses whose fields carry documented defaults, filled from ``--set key=value``.

A config field may declare ``metadata={"help": ..., "choices": (...), "min": x, "max": y, "gt": x}``;
values given as strings are coerced to the field's type and checked, so a typo or a bad value fails
at the boundary with a message that says what was expected.
"""
from __future__ import annotations

import contextvars
import dataclasses
import math
import re
import types
import typing
from typing import Any, Mapping

from obliviate.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            return None
        return _coerce(name, value, args[0])
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(tp) or (str,)
        if value is None:
            raise ConfigError(f"{name}: expected a comma-separated list, got None")
        if isinstance(value, str):
            items = value.split(",")
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]  # a scalar is a one-item list
        out = [_coerce(name, v.strip() if isinstance(v, str) else v, inner) for v in items if v != ""]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        return out
    if tp is str:
        return str(value)
    return value


#: passes and steps of a loop (epochs, *_epochs, steps, max_steps, max_num_batches) are bounded by this unless
#: the field declares its own "max": `--set epochs=1e12` is a typo, not a run of 10¹² epochs
ITERATION_CAP = 1_000_000
_ITERATION_FIELD = re.compile(r"(^|_)(epochs|steps|num_batches)$")


def _check(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    leaf = name.rpartition(".")[2]
    if ("max" not in meta and isinstance(value, int) and not isinstance(value, bool)
            and _ITERATION_FIELD.search(leaf) and value > ITERATION_CAP):
        raise ConfigError(f"{name}: expected at most {ITERATION_CAP:,} (a bound on passes and steps), got {value:,}")
    if isinstance(value, tuple):  # bounds apply to each element (MLP widths, priors)
        for item in value:
            _check(name, item, meta)
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name}: expected one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{name}: expected a value >= {meta['min']}, got {value!r}")
    if "gt" in meta and value <= meta["gt"]:
        raise ConfigError(f"{name}: expected a value > {meta['gt']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{name}: expected a value <= {meta['max']}, got {value!r}")


_deferred = contextvars.ContextVar("obliviate_config_deferred", default=False)
_HINTS: dict[type, dict[str, Any]] = {}


def check_config(cfg: Any, prefix: str = "") -> None:
    """Every constraint of a config dataclass instance: its Literal choices, numbers where numbers are declared,
    the fields' metadata bounds ("min", "gt", "max", "choices"; each element of a tuple), the bound on passes and
    steps, then the class's own ``validate()``. Raises :class:`ConfigError` naming the field."""
    cls = type(cfg)
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls, include_extras=False)
    for f in dataclasses.fields(cfg):
        name, value, tp = f"{prefix}{f.name}", getattr(cfg, f.name), hints.get(f.name)
        if typing.get_origin(tp) is typing.Literal and value not in typing.get_args(tp):
            raise ConfigError(f"{name}: expected one of {', '.join(map(str, typing.get_args(tp)))}, got {value!r}")
        if tp in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{name}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
        if tp is int and isinstance(value, float):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if tp is float and isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        if tp is bool and not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        _check(name, value, f.metadata)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()


class Validated:
    """Mixin of config dataclasses (scikit-learn style): the constraints are checked when an instance is made, from
    Python (``FinetuneConfig(lr=-1.0)`` raises) as from ``--set`` strings (:func:`build_config`)."""

    def __post_init__(self) -> None:
        if not _deferred.get():  # build_config checks after construction, with the key's prefix in messages
            check_config(self)


def build_config(cls: type, values: Mapping[str, Any] | None = None, *, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``values`` (strings or typed), rejecting unknown keys."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls, include_extras=False)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"unknown {prefix or 'config'} key {unknown[0]!r}; valid keys: {known}")
    kwargs = {}
    for key, raw in values.items():
        kwargs[key] = _coerce(f"{prefix}{key}", raw, hints[key])
    token = _deferred.set(True)
    try:
        cfg = cls(**kwargs)
    except TypeError as exc:  # a required field without a value
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None
    finally:
        _deferred.reset(token)
    check_config(cfg, prefix)
    return cfg


def describe(cls: type) -> list[dict[str, Any]]:
    """Fields, types, defaults and help of a config class (for ``obliviate methods --json``)."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out.append({"name": f.name, "type": str(f.type), "default": default,
                    "help": f.metadata.get("help", "")})
    return out


def as_dict(cfg: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def split_overrides(pairs: list[str]) -> dict[str, str]:
    """Parse ``["a=1", "b.c=x"]`` into a dict; a pair without ``=`` is an error. ``@file.json`` inserts the
    pairs of a JSON file (see :func:`load_overrides_file`) at its place: later pairs override earlier ones."""
    out: dict[str, str] = {}
    for pair in pairs:
        if pair.startswith("@"):
            out.update(load_overrides_file(pair[1:]))
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _override_text(where: str, key: str, value: Any) -> str:
    """A JSON value as the string ``--set key=value`` would give (so both spellings coerce the same way)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float, str)):
        return str(value) if not isinstance(value, float) else repr(value)
    if isinstance(value, list) and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
        return ",".join(_override_text(where, key, v) for v in value)
    raise ConfigError(f"{where}: value of {key!r} must be a number, string, boolean or flat list, got {value!r}")


def load_overrides_file(path: str) -> dict[str, str]:
    """The ``--set`` pairs of ``@path``: a JSON object ``{"key": value, ...}``, or an ``obliviate tune``
    result (``obliviate.tune/1``), whose ``set`` holds the fixed pairs and the best ``method.key`` values."""
    import json

    where = f"--set @{path}"
    if not path:
        raise ConfigError("--set @FILE needs a file name, e.g. --set @tuned.json")
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory, not a JSON file") from None
    except (UnicodeDecodeError, ValueError) as exc:
        msg = f"{exc.msg} at line {exc.lineno}" if hasattr(exc, "lineno") else "not UTF-8 text"
        raise ConfigError(f"{where}: not valid JSON ({msg})") from None
    if isinstance(doc, dict) and doc.get("schema") == "obliviate.tune/1":
        doc = doc.get("set")
        if doc is None:
            raise ConfigError(f"{where}: the tune result has no best parameters (no trial was within the budget)")
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a JSON object of key: value pairs, got {type(doc).__name__}")
    out = {}
    for key, value in doc.items():
        if not str(key).strip():
            raise ConfigError(f"{where}: empty key")
        out[str(key).strip()] = _override_text(where, key, value)
    return out
