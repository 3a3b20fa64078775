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

_METHODS: dict[str, type[Method]] = {}
_discovered = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: validate the method's declaration and add it to the registry."""
    if getattr(cls, "guarantee", None) not in GUARANTEES:
        raise TypeError(f"{cls.__name__}.guarantee must be one of {GUARANTEES}")
    unknown = set(cls.needs) - set(NEEDS)
    if unknown:
        raise TypeError(f"{cls.__name__}.needs has unknown entries {sorted(unknown)}; allowed: {NEEDS}")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise TypeError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
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


def get_method(name: str) -> type[Method]:
    _discover()
    if name not in _METHODS:
        raise ObliviateError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[type[Method]]:
    _discover()
    return [_METHODS[k] for k in sorted(_METHODS)]


__all__ = ["Method", "MethodConfig", "UnlearnContext", "register", "get_method", "list_methods"]
