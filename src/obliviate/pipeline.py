"""The steps every path through the library shares: build a method's context → apply the method → evaluate a
model → build the ``obliviate.run/1`` document. :mod:`obliviate.api` (run, bench, the challenge),
:mod:`obliviate.audit` and the deletion service (:mod:`obliviate.ledger`) compose these; none builds a run
document by hand.

Layer: above tasks, training, methods and metrics; below the api, the audit, the ledger and the CLI.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from obliviate.errors import ConfigError, ObliviateError
from obliviate.methods import Method, UnlearnContext, UnlearnOutput, check_system
from obliviate.metrics import Evaluation, avg_gap, gaps
from obliviate.requests import ForgetRequest
from obliviate.seeding import seed_everything
from obliviate.tasks import Task, get_task
from obliviate.training import predict, to_tensors

RUN_SCHEMA = "obliviate.run/1"


def as_task(task: str | Task, options: dict[str, Any]) -> Task:
    """A task by name (built with ``options``) or an already built one (then ``options`` must be empty)."""
    if isinstance(task, Task):
        if options:
            raise ConfigError("task options given for an already built task")
        return task
    return get_task(task, **options)


# -- build context ----------------------------------------------------------------------------------------------

def build_context(task: Task, method: Method, original: torch.nn.Module, request: ForgetRequest,
                  recipe, seed: int, device: torch.device, runtime,
                  retain_ids: np.ndarray | None = None, in_place: bool = False, system=None) -> UnlearnContext:
    """What ``method`` gets to see: a trainable copy of ``original`` and only the data its ``needs`` name;
    ``system``: a training-time method's fitted system (a :class:`obliviate.methods.FittedSystem`)."""
    forget_ids = request.ids
    if retain_ids is None:
        retain_ids = np.setdiff1d(np.arange(task.n_train), forget_ids)
    if system is not None:
        check_system(system, method.name)
    if task.kind == "language":
        return _language_context(task, method, original, forget_ids, retain_ids, recipe, seed, device, runtime,
                                 in_place, system)
    d = task.data
    xf, yf = to_tensors(d.x_train[forget_ids], d.y_train[forget_ids], device)
    xr, yr = to_tensors(d.x_train[retain_ids], d.y_train[retain_ids], device)
    needs = method.needs
    model = copy.deepcopy(original).to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    return UnlearnContext(
        task=task, model=model, original=original if "original" in needs else None,
        x_forget=xf, y_forget=yf if "labels" in needs else None,
        x_retain=xr if "retain" in needs else None,
        y_retain=yr if ("retain" in needs and "labels" in needs) else None,
        forget_ids=forget_ids, retain_ids=retain_ids, recipe=recipe, seed=seed, device=device, runtime=runtime,
        system=system)


def _language_context(task, method, original, forget_ids, retain_ids, recipe, seed, device, runtime,
                      in_place: bool = False, system=None):
    """A language method's data: the (prompt, completion) sequences of the forget and retain records.
    ``in_place``: the method trains ``original`` itself and gets no separate original (a given model, already
    evaluated and reloadable from its directory; the methods keep their reference without a second copy)."""
    needs = method.needs
    model = original.to(device) if in_place else copy.deepcopy(original).to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    return UnlearnContext(
        task=task, model=model, original=original.to(device) if "original" in needs and not in_place else None,
        x_forget=None, y_forget=None, x_retain=None, y_retain=None, forget_ids=forget_ids, retain_ids=retain_ids,
        recipe=recipe, seed=seed, device=device, runtime=runtime, system=system, tokenizer=task.tokenizer(),
        forget_pairs=[s for i in forget_ids for s in task.sequences(int(i))],
        retain_pairs=[s for i in retain_ids for s in task.sequences(int(i))] if "retain" in needs else None)


# -- apply ------------------------------------------------------------------------------------------------------

def apply_method(method: Method, ctx: UnlearnContext, request: ForgetRequest) -> UnlearnOutput:
    """Run the method under the run seed; return its output: the checked, eval-mode model, its report blocks
    (returned, or recorded on the context with ``ctx.report``; a bare ``nn.Module`` is wrapped) and the seconds
    ``unlearn`` took."""
    seed_everything(ctx.seed)
    start = time.perf_counter()
    result = method.unlearn(ctx)
    seconds = time.perf_counter() - start
    out = UnlearnOutput.of(result, ctx.blocks, method.name)
    out.seconds = seconds
    out.model.eval()
    check_finite(out.model, ctx.task, request, method)
    return out


def check_finite(model: torch.nn.Module, task: Task, request: ForgetRequest, method: Method) -> None:
    """A diverged update (NaN/inf weights or outputs) is a clear error, never a report of garbage."""
    bad = [n for n, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if not bad:
        dev = next(model.parameters()).device
        if task.kind == "language":
            from obliviate.lm import score

            pairs = [s for i in request.ids[:8] for s in task.sequences(int(i))][:16]
            out = score(model, task.tokenizer(), pairs, dev).nll_sum
        else:
            out = predict(model, task.data.x_train[request.ids[:256]], dev)
        if np.isfinite(out).all():
            return
    where = f"weights ({bad[0]})" if bad else "outputs"
    raise ObliviateError(f"method {method.name!r} diverged: the unlearned model has non-finite {where}; "
                         "lower its lr or epochs (--set lr=..., --set epochs=...)")


# -- evaluate ---------------------------------------------------------------------------------------------------

def evaluate_model(task, model, forget_ids, retain_ids, seed, device, per_example: bool, reference=None):
    """``(metrics, per-example values or None)`` of ``model``; ``reference`` (the oracle) for the metrics
    measured against it."""
    ev = Evaluation(task, model, forget_ids, retain_ids, seed=seed, device=device, reference=reference)
    values = ev.compute()
    return values, (ev.per_example() if per_example else None)


def oracle_gap(metrics: dict[str, dict[str, float]], kind: str) -> tuple[dict[str, float], float | None]:
    """``(gap, avg_gap)`` of the unlearned model to the oracle; ``({}, None)`` when there is no oracle."""
    if "oracle" not in metrics:
        return {}, None
    gap = gaps(metrics["unlearned"], metrics["oracle"])
    return gap, avg_gap(gap, kind)


# -- the report -------------------------------------------------------------------------------------------------

def software_versions(kind: str | None = None) -> dict[str, str]:
    import sklearn

    from obliviate import __version__

    out = {"obliviate": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "scikit-learn": sklearn.__version__}
    if kind == "language":
        import transformers

        out["transformers"] = transformers.__version__
    return out


def run_report(task: Task, method: str, guarantee: str, forget: dict[str, Any], *,
               metrics: dict[str, Any], gap: dict[str, float], avg_gap: float | None,
               seed: int | None = None, device: str | None = None, retain_n: int | None = None,
               config: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
               task_options: dict[str, Any] | None = None, time_s: dict[str, Any] | None = None,
               models: dict[str, Any] | None = None, executor: str | None = None,
               versions: dict[str, str] | None = None, **blocks: Any) -> dict[str, Any]:
    """The ``obliviate.run/1`` document, fields in the contract's order (README "Metrics and report"; the
    JSON schema in ``tests/test_cli.py`` checks it).

    A field left out (``None``) is absent from the document: a service report of a failed request has no seed
    or models. ``blocks`` are the optional blocks after the core fields (``oracle``, ``lm_run``, ``guard``,
    ``relearn``, ``exact``, ``service``, ``per_example``, ...), written in the order given; a ``None`` block is
    left out. The contract is extended, never renamed: a new block is a new keyword here.
    """
    doc: dict[str, Any] = {"schema": RUN_SCHEMA, "task": task.name, "task_kind": task.kind, "method": method,
                           "guarantee": guarantee}
    _put(doc, "seed", seed)
    _put(doc, "device", device)
    doc["forget"] = forget
    _put(doc, "retain", None if retain_n is None else {"n": int(retain_n)})
    for key, value in (("config", config), ("train", train), ("task_options", task_options)):
        _put(doc, key, value)
    doc.update(metrics=metrics, gap=gap, avg_gap=avg_gap)
    for key, value in (("time_s", time_s), ("models", models), ("executor", executor), ("versions", versions)):
        _put(doc, key, value)
    for key, value in blocks.items():
        _put(doc, key, value)
    return doc


def _put(doc: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        doc[key] = value


#: where a block a protocol measures after the run goes: before these (per-example values stay last)
_LATER_THAN = {"relearn": ("exact", "per_example")}


def add_block(doc: dict[str, Any], key: str, value: Any) -> None:
    """Put a block a protocol measured after the run into the run document ``doc`` (in place): ``relearn`` in
    its contract position (before ``exact``), any other block before ``per_example``, which stays last."""
    before = _LATER_THAN.get(key, ("per_example",))
    keys = list(doc)
    cut = next((i for i, k in enumerate(keys) if k in before), len(keys))
    tail = {k: doc.pop(k) for k in keys[cut:]}
    doc[key] = value
    doc.update(tail)


__all__ = ["RUN_SCHEMA", "as_task", "build_context", "apply_method", "check_finite", "evaluate_model",
           "oracle_gap", "software_versions", "run_report", "add_block"]
