"""Method registry. Every module in this package that defines a ``@register``-ed class is discovered,
so adding a method takes one file (and its test); third-party packages can add methods through the
``obliviate.methods`` entry-point group.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from obliviate.errors import ObliviateError
from obliviate.methods.base import (GUARANTEES, NEEDS, REPORT_BLOCKS, FittedSystem, Method, MethodConfig,
                                    UnlearnContext, UnlearnOutput, VerifiableSystem, check_system)

#: (name, task kind) -> implementation, in registration order. One name may have one implementation for
#: classifiers and regressors and another for language models (``npo``); a (name, kind) pair has exactly one.
_METHODS: dict[tuple[str, str], type[Method]] = {}
_discovered = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: validate the method's declaration and add it to the registry."""
    if getattr(cls, "guarantee", None) not in GUARANTEES:
        raise TypeError(f"{cls.__name__}.guarantee must be one of {GUARANTEES}")
    unknown = set(cls.needs) - set(NEEDS)
    if unknown:
        raise TypeError(f"{cls.__name__}.needs has unknown entries {sorted(unknown)}; allowed: {NEEDS}")
    for kind in cls.kinds:
        other = _METHODS.get((cls.name, kind))
        if other is not None and other is not cls:
            raise TypeError(f"method {cls.name!r} registered twice for {kind} tasks")
    for kind in cls.kinds:
        _METHODS[(cls.name, kind)] = cls
    return cls


def _names() -> list[str]:
    return sorted({name for name, _ in _METHODS})


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")
    for ep in entry_points(group="obliviate.methods"):
        ep.load()


def get_method(name: str, kind: str | None = None) -> type[Method]:
    """The method class registered as ``name`` — for task kind ``kind`` when given (one name may have one
    implementation for classifiers and regressors and another for language models, e.g. ``npo``)."""
    _discover()
    if kind is not None and (name, kind) in _METHODS:
        return _METHODS[(name, kind)]
    kinds = [k for n, k in _METHODS if n == name]  # registration order
    if not kinds:
        raise ObliviateError(f"unknown method {name!r}; available: {', '.join(_names())}")
    if kind is None:
        return _METHODS[(name, kinds[0])]
    raise ObliviateError(f"method {name!r} does not apply to {kind} tasks (it applies to: {', '.join(kinds)}); "
                         "see `obliviate methods`")


def list_methods() -> list[type[Method]]:
    """Every registered implementation, sorted by name (a name with several kinds appears once per kind)."""
    _discover()
    by_name: dict[str, list[type[Method]]] = {}
    for (name, _), cls in _METHODS.items():
        impls = by_name.setdefault(name, [])
        if cls not in impls:
            impls.append(cls)
    return [cls for name in sorted(by_name) for cls in by_name[name]]


__all__ = ["Method", "MethodConfig", "UnlearnContext", "UnlearnOutput", "FittedSystem", "VerifiableSystem",
           "REPORT_BLOCKS", "check_system", "register", "get_method", "list_methods"]
