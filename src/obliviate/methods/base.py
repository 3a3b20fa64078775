"""The contract of an unlearning method: a typed config plus one class, registered by name.

A method receives an :class:`UnlearnContext` — a copy of the original model to change, a frozen
original, the forget and retain data (labels only if it declares it needs them) — and returns the
unlearned model. A method never evaluates; metrics are computed elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from obliviate.config import Validated
from obliviate.seeding import torch_generator

Guarantee = Literal["exact", "certified", "approximate", "suppression"]
GUARANTEES = ("exact", "certified", "approximate", "suppression")
NEEDS = ("retain", "labels", "original")


@dataclass
class MethodConfig(Validated):
    """Base of every method config; fields hold the paper's defaults and are overridable by ``--set``. Values are
    checked when the config is made (:class:`obliviate.config.Validated`)."""


@dataclass
class UnlearnContext:
    task: Any
    model: torch.nn.Module            # a trainable copy of the original; the method may change it in place
    original: torch.nn.Module | None  # frozen original (present if the method needs "original")
    x_forget: torch.Tensor
    y_forget: torch.Tensor | None     # None unless the method needs "labels"
    x_retain: torch.Tensor | None     # None unless the method needs "retain"
    y_retain: torch.Tensor | None
    forget_ids: np.ndarray
    retain_ids: np.ndarray
    recipe: Any                       # the task's training recipe (for retraining-style methods)
    seed: int
    device: torch.device
    runtime: Any = None               # obliviate.distributed.Runtime: executor for parallel jobs
    extras: dict[str, Any] = field(default_factory=dict)  # sharded methods: "system" in, "cost" out
    # language tasks: x_*/y_* are None; the data are (prompt, completion) pairs of the records' sequences
    tokenizer: Any = None
    forget_pairs: list[tuple[str, str]] | None = None
    retain_pairs: list[tuple[str, str]] | None = None   # None unless the method needs "retain"

    @property
    def kind(self) -> str:
        return self.task.kind

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run seed: every random choice of a method goes through one."""
        return torch_generator(self.seed, 17 + offset)


class Method:
    """Base class. Subclasses set the class attributes and implement :meth:`unlearn`."""

    name: ClassVar[str]
    guarantee: ClassVar[Guarantee]
    needs: ClassVar[frozenset[str]] = frozenset()
    kinds: ClassVar[tuple[str, ...]] = ("classification", "regression")
    config_class: ClassVar[type] = MethodConfig
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    #: Training-time methods (SISA, S3T) own how the original is trained: the pipeline calls ``fit`` for the
    #: original and passes the fitted system to ``unlearn`` as ``ctx.extras["system"]``.
    trains_original: ClassVar[bool] = False

    def __init__(self, config: Any | None = None):
        self.config = config if config is not None else self.config_class()

    def unlearn(self, ctx: UnlearnContext) -> torch.nn.Module:
        raise NotImplementedError

    def fit(self, task, train_ids: np.ndarray, recipe, seed: int, runtime):
        """Training-time methods only: train the system on ``train_ids``; it must offer ``served_model()``,
        ``delete(ids, runtime)``, ``tensors()``, ``meta()`` and ``copy()``."""
        raise NotImplementedError

    def restore(self, task, recipe, seed: int, tensors: dict, meta: dict):
        """Training-time methods only: rebuild a fitted system from ``tensors()`` and ``meta()``."""
        raise NotImplementedError

    @classmethod
    def info(cls) -> dict[str, Any]:
        from obliviate.config import describe

        return {"name": cls.name, "guarantee": cls.guarantee, "needs": sorted(cls.needs), "kinds": list(cls.kinds),
                "trains_original": cls.trains_original, "summary": cls.summary, "reference": cls.reference, "config": describe(cls.config_class)}


class TrainingTimeMethod(Method):
    """Base of methods that own the original (SISA, S3T, certified removal): ``fit`` trains a system whose
    ``delete`` is the unlearning. The deletion's cost dict goes to ``ctx.extras["cost"]`` (the report's
    ``exact`` block); with a ``verify`` config field set, a from-scratch check is added outside the timing."""

    trains_original: ClassVar[bool] = True

    def unlearn(self, ctx: UnlearnContext) -> torch.nn.Module:
        from obliviate.errors import ObliviateError

        system = ctx.extras.get("system")
        if system is None:
            raise ObliviateError(f"{self.name} is a training-time method: its original must be trained by the "
                                 "method (run it through obliviate.unlearn / obliviate run)")
        ctx.extras["cost"] = system.delete(ctx.forget_ids, ctx.runtime)
        served = system.served_model().to(ctx.device)
        if getattr(self.config, "verify", False):
            ctx.extras["cost"]["verification"] = system.verify(ctx.runtime)
        return served
