"""Method registry. Every module in this package that defines a ``@register``-ed class is discovered,
so adding a method takes one file (and its test); third-party packages can add methods through the
``obliviate.methods`` entry-point group.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from obliviate.errors import ObliviateError
from obliviate.methods.base import GUARANTEES, NEEDS, Method, MethodConfig, UnlearnContext

_METHODS: dict[str, list[type[Method]]] = {}  # name -> implementations, each for its own task kinds
_discovered = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: validate the method's declaration and add it to the registry."""
    if getattr(cls, "guarantee", None) not in GUARANTEES:
        raise TypeError(f"{cls.__name__}.guarantee must be one of {GUARANTEES}")
    unknown = set(cls.needs) - set(NEEDS)
    if unknown:
        raise TypeError(f"{cls.__name__}.needs has unknown entries {sorted(unknown)}; allowed: {NEEDS}")
    impls = _METHODS.setdefault(cls.name, [])
    if cls not in impls:
        clash = [k for other in impls for k in other.kinds if k in cls.kinds]
        if clash:
            raise TypeError(f"method {cls.name!r} registered twice for {clash[0]} tasks")
        impls.append(cls)
    return cls


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
    if name not in _METHODS:
        raise ObliviateError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    impls = _METHODS[name]
    if kind is None:
        return impls[0]
    for cls in impls:
        if kind in cls.kinds:
            return cls
    kinds = [k for c in impls for k in c.kinds]
    raise ObliviateError(f"method {name!r} does not apply to {kind} tasks (it applies to: {', '.join(kinds)}); "
                         "see `obliviate methods`")


def list_methods() -> list[type[Method]]:
    """Every registered implementation, sorted by name (a name with several kinds appears once per kind)."""
    _discover()
    return [cls for k in sorted(_METHODS) for cls in _METHODS[k]]


__all__ = ["Method", "MethodConfig", "UnlearnContext", "register", "get_method", "list_methods"]
