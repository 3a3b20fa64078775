"""The contract of an unlearning method: a typed config plus one class, registered by (name, task kind).

A method receives an :class:`UnlearnContext` — a copy of the original model to change, a frozen
original, the forget and retain data (labels only if it declares it needs them) — and returns the
unlearned model. A method never evaluates; metrics are computed elsewhere.

What flows between a method and the pipeline is typed, never string keys in a free dict:

- **In**: training-time methods (SISA, S3T, certified removal) get the system their ``fit`` trained as
  ``ctx.system``, a :class:`FittedSystem` (checked when the context is made: a system lacking one of the
  protocol's methods is a clear error, not an ``AttributeError`` mid-run).
- **Out**: ``unlearn`` returns an :class:`UnlearnOutput` — the model plus named report blocks — or, for
  third-party methods, a bare ``nn.Module`` (the pipeline wraps it: ``UnlearnOutput(model, {})``). Helpers
  deep inside a method that keep returning a model (``LMRun.finish``, the in-context filter layer) record
  their block with ``ctx.report(name, block)``; :func:`obliviate.pipeline.apply_method` merges those with
  the returned ones (a returned block wins over a recorded one of the same name).

The block names are fixed (:data:`REPORT_BLOCKS`); each becomes the ``obliviate.run/1`` block of the same
name (README "Metrics and report"):

- ``exact``: the deletion's cost of a training-time method (what was retrained, seconds, the plan; with
  ``verification`` when its ``verify`` config field is set);
- ``lm_run``: how a language method trained (precision, micro-batches, LoRA, reference, steps, memory);
- ``guard`` / ``filter``: a suppression layer's live statistics (generation counts fill in during evaluation).

``ctx.diagnostics`` holds values a method exposes for tests and tools only (PDU's dual variable after every
step); the pipeline never reads it and it is never in a report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from obliviate.config import Validated
from obliviate.seeding import torch_generator

Guarantee = Literal["exact", "certified", "approximate", "suppression"]
GUARANTEES = ("exact", "certified", "approximate", "suppression")
NEEDS = ("retain", "labels", "original")


#: The report blocks a method may return or record, each the ``obliviate.run/1`` block of that name.
REPORT_BLOCKS = ("exact", "lm_run", "guard", "filter")


@runtime_checkable
class FittedSystem(Protocol):
    """What a training-time method's ``fit`` returns (``SisaSystem``, ``S3TSystem``, ``CertifiedSystem``): a
    served model, a deletion that is the unlearning, and persistence. ``verify(runtime)`` — a from-scratch check
    of the last deletion — is optional (:class:`VerifiableSystem`); SISA and S3T have it, certified removal
    (approximate by design, bounded by its certificate) does not."""

    def served_model(self) -> torch.nn.Module: ...

    def delete(self, ids: np.ndarray, runtime: Any) -> dict[str, Any]: ...

    def tensors(self) -> dict[str, torch.Tensor]: ...

    def meta(self) -> dict[str, Any]: ...

    def copy(self) -> "FittedSystem": ...


@runtime_checkable
class VerifiableSystem(FittedSystem, Protocol):
    def verify(self, runtime: Any) -> dict[str, Any]: ...


SYSTEM_METHODS = ("served_model", "delete", "tensors", "meta", "copy")


def check_system(system: Any, method: str = "") -> FittedSystem:
    """``system`` if it offers every :class:`FittedSystem` method, else a clear error naming what is missing."""
    missing = [m for m in SYSTEM_METHODS if not callable(getattr(system, m, None))]
    if missing:
        from obliviate.errors import ObliviateError

        owner = f"{method!r}'s fitted system" if method else "the fitted system"
        raise ObliviateError(f"{owner} ({type(system).__name__}) lacks {', '.join(m + '()' for m in missing)}: "
                             f"a training-time method's fit must return a system with "
                             f"{', '.join(m + '()' for m in SYSTEM_METHODS)} (obliviate.methods.base.FittedSystem)")
    return system


def check_blocks(blocks: dict[str, Any], where: str = "") -> None:
    from obliviate.errors import ObliviateError

    for name, block in blocks.items():
        if name not in REPORT_BLOCKS:
            raise ObliviateError(f"{where or 'a method'} reported an unknown block {name!r}; "
                                 f"report blocks are: {', '.join(REPORT_BLOCKS)}")
        if not isinstance(block, dict):
            raise ObliviateError(f"{where or 'a method'}: report block {name!r} must be a dict, "
                                 f"not {type(block).__name__}")


@dataclass
class UnlearnOutput:
    """What ``unlearn`` returns: the unlearned model and named report blocks (:data:`REPORT_BLOCKS`).
    ``seconds`` is filled by :func:`obliviate.pipeline.apply_method` (the time ``unlearn`` took)."""

    model: torch.nn.Module
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float | None = None

    def __post_init__(self):
        if not isinstance(self.model, torch.nn.Module):
            from obliviate.errors import ObliviateError

            raise ObliviateError(f"UnlearnOutput.model must be a torch.nn.Module, not {type(self.model).__name__}")
        check_blocks(self.blocks, "UnlearnOutput")

    @classmethod
    def of(cls, result: Any, recorded: dict[str, dict[str, Any]] | None = None,
           method: str = "") -> "UnlearnOutput":
        """A method's result as an output: a bare module is wrapped; blocks recorded on the context
        (``ctx.report``) come first, returned ones win."""
        if isinstance(result, UnlearnOutput):
            return cls(result.model, {**(recorded or {}), **result.blocks}, result.seconds)
        if isinstance(result, torch.nn.Module):
            return cls(result, dict(recorded or {}))
        from obliviate.errors import ObliviateError

        raise ObliviateError(f"method {method!r} returned {type(result).__name__}; unlearn must return a "
                             "torch.nn.Module or an obliviate.methods.UnlearnOutput")


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
    system: FittedSystem | None = None  # training-time methods: the system their ``fit`` trained
    # language tasks: x_*/y_* are None; the data are (prompt, completion) pairs of the records' sequences
    tokenizer: Any = None
    forget_pairs: list[tuple[str, str]] | None = None
    retain_pairs: list[tuple[str, str]] | None = None   # None unless the method needs "retain"
    #: report blocks recorded with :meth:`report` (the pipeline merges them into the output)
    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: off-report values for tests and tools (never read by the pipeline, never in a report)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.system is not None:
            check_system(self.system)

    def report(self, name: str, block: dict[str, Any]) -> None:
        """Record report block ``name`` (one of :data:`REPORT_BLOCKS`) for this run."""
        check_blocks({name: block}, "ctx.report")
        self.blocks[name] = block

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
    #: original and passes the fitted system to ``unlearn`` as ``ctx.system``.
    trains_original: ClassVar[bool] = False

    def __init__(self, config: Any | None = None):
        self.config = config if config is not None else self.config_class()

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutput | torch.nn.Module:
        raise NotImplementedError

    def fit(self, task, train_ids: np.ndarray, recipe, seed: int, runtime):
        """Training-time methods only: train the system on ``train_ids``, a :class:`FittedSystem`."""
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
    """Base of methods that own the original (SISA, S3T, certified removal): ``fit`` trains a
    :class:`FittedSystem` whose ``delete`` is the unlearning. The deletion's cost dict is the output's ``exact``
    block; with a ``verify`` config field set, a from-scratch check (``verification``) is added outside the
    timing."""

    trains_original: ClassVar[bool] = True

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutput:
        from obliviate.errors import ObliviateError

        system = ctx.system
        if system is None:
            raise ObliviateError(f"{self.name} is a training-time method: its original must be trained by the "
                                 "method (run it through obliviate.unlearn / obliviate run)")
        check_system(system, self.name)
        verify = getattr(self.config, "verify", False)
        if verify and not callable(getattr(system, "verify", None)):
            raise ObliviateError(f"{self.name}: verify is set but its fitted system ({type(system).__name__}) "
                                 "has no verify(runtime)")
        cost = system.delete(ctx.forget_ids, ctx.runtime)
        served = system.served_model().to(ctx.device)
        if verify:
            cost["verification"] = system.verify(ctx.runtime)
        return UnlearnOutput(served, {"exact": cost})
