"""Task registry: built-in tasks register themselves; ``get_task`` builds one from ``--set`` options."""
from __future__ import annotations

from typing import Any

from obliviate.config import build_config
from obliviate.errors import ObliviateError
from obliviate.tasks.base import TabularData, Task, TrainRecipe

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} registered twice")
    _TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    _load_builtins()
    if name not in _TASKS:
        raise ObliviateError(f"unknown task {name!r}; available: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def get_task(name: str, **options: Any) -> Task:
    """Build task ``name`` with its options (e.g. ``get_task("csv", data="x.csv", target="y")``)."""
    cls = task_class(name)
    return cls(build_config(cls.options_class, options, prefix=""))


def list_tasks() -> list[type[Task]]:
    _load_builtins()
    return [_TASKS[k] for k in sorted(_TASKS)]


def _load_builtins() -> None:
    """Import every module of this package: a task is one file that calls ``register_task``."""
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


__all__ = ["Task", "TabularData", "TrainRecipe", "register_task", "get_task", "task_class", "list_tasks"]
