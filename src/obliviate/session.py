"""One run of a method on a forget request, with the models it is compared against computed once.

A :class:`Session` owns what several runs share: the task, the recipe, the device, the model store and the
originals, oracles and fitted systems already trained. :meth:`Session.run` is the whole run — the model to unlearn
from → the method → the references (original, oracle) → the unlearned model's metrics → the ``obliviate.run/1``
document — composed from :mod:`obliviate.pipeline`'s steps. The protocols that repeat runs (the challenge,
scalability and sustainability, relearn time: :mod:`obliviate.protocols`) are built on top of it.

Layer: above the pipeline; below the protocols and the api.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from obliviate import dist, pipeline
from obliviate.config import as_dict
from obliviate.distributed import Runtime
from obliviate.methods import Method, UnlearnOutput, check_system
from obliviate.models.store import ModelStore, content_key, state_sha256
from obliviate.oracle import STORE_FORMAT, retrain_oracle, train_original
from obliviate.requests import ForgetRequest, ids_sha256

#: per-example values are kept in the report up to this many forget examples
PER_EXAMPLE_LIMIT = 5000

NO_GIVEN_ORACLE = ("not available: the model is given, not trained; pass a model trained without the forget data "
                   "with --set oracle=DIR")


@dataclass
class RunResult:
    model: torch.nn.Module
    report: dict[str, Any]
    #: the original, or a function that loads it again (a given model is unlearned in place, not copied)
    _original: Any = None
    oracle: torch.nn.Module | None = None

    @property
    def original(self) -> torch.nn.Module | None:
        if self._original is not None and not isinstance(self._original, torch.nn.Module):
            self._original = self._original()
        return self._original


@dataclass
class References:
    """The models a run is measured against, with their metrics: the original always, the oracle when there is
    one (``note`` says why not, for a given model without a given oracle)."""
    metrics: dict[str, tuple] = field(default_factory=dict)  # role -> (metrics, per-example values or None)
    oracle: torch.nn.Module | None = None
    oracle_meta: dict[str, Any] | None = None
    note: str | None = None


class Session:
    """Shared state of one run or bench: the task, the store, the device; originals and oracles computed once."""

    def __init__(self, task, recipe, device: torch.device, store: ModelStore, runtime: Runtime | None = None):
        self.task, self.recipe, self.device, self.store = task, recipe, device, store
        self.runtime = runtime or Runtime(device=device)
        self._originals: dict[int, tuple] = {}
        self._oracles: dict[tuple, tuple] = {}
        self._systems: dict[tuple, tuple] = {}
        self._memo: dict[tuple, Any] = {}

    # -- the models, each trained (or loaded from the store) once -----------------------------------------------
    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key`` for this session (the protocols' retrained oracles, relearn times)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def retain_ids(self, request: ForgetRequest) -> np.ndarray:
        return np.setdiff1d(np.arange(self.task.n_train), request.ids)

    def system(self, method: Method, seed: int):
        """A training-time method's fitted system on the full training set (cached like any original)."""
        key_parts = {"format": STORE_FORMAT, "task": self.task.fingerprint(), "seed": seed, "device": "cpu",
                     "ids": ids_sha256(np.arange(self.task.n_train)), "recipe": dataclasses.asdict(self.recipe),
                     "method": method.name, "config": as_dict(method.config)}
        key = content_key(key_parts)
        if key not in self._systems:
            hit = self.store.get_tensors(key)
            if hit is not None:
                tensors, meta = hit
                system = check_system(method.restore(self.task, self.recipe, seed, tensors, meta["system"]),
                                      method.name)
                meta = dict(meta, cached=True)
            else:
                start = time.perf_counter()
                system = check_system(method.fit(self.task, np.arange(self.task.n_train), self.recipe, seed,
                                                 self.runtime), method.name)
                elapsed = time.perf_counter() - start
                meta = self.store.put_tensors(key, system.tensors(), {"role": f"original ({method.name})",
                                                                     "train_time_s": elapsed, "system": system.meta()})
                meta = dict(meta, cached=False)
            self._systems[key] = (system, meta)
        system, meta = self._systems[key]
        return system.copy(), meta

    @property
    def given_model(self) -> bool:
        """The task's original is given (a user's HF model), not trained: its oracle is given or absent."""
        return getattr(self.task, "provided_original", lambda: None)() is not None

    def original(self, seed: int):
        if seed not in self._originals:
            given = getattr(self.task, "provided_original", lambda: None)()
            if given is not None:
                model, meta = given
                self._originals[seed] = (model.to(self.device).eval(), meta)
            else:
                self._originals[seed] = train_original(self.task, self.recipe, seed, self.device, self.store)
        return self._originals[seed]

    def release_original(self, seed: int) -> None:
        """Forget the loaded given model (it is about to be trained in place); :meth:`original` loads it again."""
        self._originals.pop(seed, None)
        release = getattr(self.task, "release_original", None)
        if release is not None:
            release()

    def oracle(self, seed: int, request: ForgetRequest, retain_ids: np.ndarray | None = None):
        """The retrain oracle without ``request``'s ids (trained on ``retain_ids`` when given); ``(None, None)``
        for a given model without a given oracle."""
        if retain_ids is None:
            retain_ids = self.retain_ids(request)
        key = (seed, request.sha256, ids_sha256(retain_ids))
        if key not in self._oracles:
            if self.given_model:
                given = self.task.provided_oracle()
                self._oracles[key] = ((given[0].to(self.device).eval(), given[1]) if given is not None
                                      else (None, None))
            else:
                self._oracles[key] = retrain_oracle(self.task, retain_ids, self.recipe, seed, self.device,
                                                    self.store)
        return self._oracles[key]

    def starting_point(self, method: Method, seed: int):
        """``(original, meta, system)``: the model a post-hoc method unlearns from, or a training-time method's
        fitted system and the model it serves."""
        if not method.trains_original:
            return (*self.original(seed), None)
        system, meta = self.system(method, seed)
        original = system.served_model().to(self.device)
        return original, dict(meta, sha256=state_sha256(original)), system

    # -- one run ------------------------------------------------------------------------------------------------
    def run(self, method: Method, request: ForgetRequest, seed: int, with_oracle: bool = True,
            evaluation_cache: dict | None = None, retain_ids: np.ndarray | None = None,
            start: tuple | None = None) -> RunResult:
        """One method on one request. ``retain_ids`` narrows the retain set (sustainability: earlier folds are
        gone); ``start`` = (model, meta) replaces the original as the model to unlearn from (sequential
        requests), while metrics are still reported for the original too.

        A given language model is evaluated first and then unlearned in place: it is never copied in memory (a 7B
        model and its copy would not fit one GPU) and is loaded again from its directory when asked for.
        Otherwise the oracle comes after the unlearning, so a method that fails leaves no oracle in the cache."""
        retain_ids = self.retain_ids(request) if retain_ids is None else retain_ids
        cache = evaluation_cache if evaluation_cache is not None else {}
        original, orig_meta, system = self.starting_point(method, seed)
        in_place = self.task.kind == "language" and start is None and system is None and self.given_model
        source = original if start is None else start[0]
        if in_place:
            refs = self.references(request, seed, retain_ids, original, orig_meta, with_oracle, cache)
            self.release_original(seed)
            original = lambda: self.original(seed)[0]  # noqa: E731 — loaded again only if something asks
            _park(refs.oracle, torch.device("cpu"))  # off the device while the model trains
        ctx = pipeline.build_context(self.task, method, source, request, self.recipe, seed, self.device,
                                     self.runtime, retain_ids, in_place=in_place, system=system)
        output = pipeline.apply_method(method, ctx, request)
        if in_place:
            _park(refs.oracle, self.device)
        else:
            refs = self.references(request, seed, retain_ids, original, orig_meta, with_oracle, cache)
        unlearned = pipeline.evaluate_model(self.task, output.model, request.ids, retain_ids, seed, self.device,
                                            request.n <= PER_EXAMPLE_LIMIT, refs.oracle)
        report = self.report(method, request, seed, retain_ids, orig_meta, refs, output, unlearned, start)
        return RunResult(output.model, report, original, refs.oracle)

    def references(self, request: ForgetRequest, seed: int, retain_ids: np.ndarray, original, orig_meta,
                   with_oracle: bool, cache: dict) -> References:
        """The original's and (``with_oracle``) the oracle's metrics, each computed once per ``cache`` (a bench
        shares one cache across its methods)."""
        per_ex = request.n <= PER_EXAMPLE_LIMIT
        refs = References()
        if with_oracle:
            refs.oracle, refs.oracle_meta = self.oracle(seed, request, retain_ids)
            refs.note = NO_GIVEN_ORACLE if refs.oracle is None else None
        against = refs.oracle_meta["sha256"] if refs.oracle is not None else None
        roles = [("original", original, orig_meta)] + ([("oracle", refs.oracle, refs.oracle_meta)]
                                                       if refs.oracle is not None else [])
        for role, model, meta in roles:
            key = (role, meta["sha256"], against, seed, request.sha256, ids_sha256(retain_ids))
            if key not in cache:
                cache[key] = pipeline.evaluate_model(self.task, model, request.ids, retain_ids, seed, self.device,
                                                     per_ex, refs.oracle)
            refs.metrics[role] = cache[key]
        return refs

    def report(self, method: Method, request: ForgetRequest, seed: int, retain_ids: np.ndarray, orig_meta,
               refs: References, output: UnlearnOutput, unlearned: tuple, start: tuple | None) -> dict[str, Any]:
        """The run's ``obliviate.run/1`` document. The oracle is reported against itself: oracle-relative metrics
        are 0 there, so their gap is the value itself."""
        roles = {"original": refs.metrics["original"], "unlearned": unlearned}
        if "oracle" in refs.metrics:
            roles["oracle"] = refs.metrics["oracle"]
        metrics = {role: values for role, (values, _) in roles.items()}
        gap, avg = pipeline.oracle_gap(metrics, self.task.kind)
        cost = output.blocks.get("exact")  # an exact method's deletion time is the deletion itself
        time_s = {"train": orig_meta.get("train_time_s"),
                  "unlearn": cost["time_s"] if cost is not None else output.seconds}
        models = {"original": {"sha256": orig_meta["sha256"], "cached": orig_meta["cached"]},
                  "unlearned": {"sha256": state_sha256(output.model)}}
        if refs.oracle is not None:
            time_s["oracle"] = refs.oracle_meta.get("train_time_s")
            models["oracle"] = {"sha256": refs.oracle_meta["sha256"], "cached": refs.oracle_meta["cached"]}
        if start is not None:
            models["start"] = {"sha256": start[1].get("sha256")}
        per_example = None
        if request.n <= PER_EXAMPLE_LIMIT:
            per_example = {"forget_ids": request.ids.tolist(),
                           **{role: values for role, (_, values) in roles.items() if values is not None}}
        task = self.task
        return pipeline.run_report(
            task, method.name, method.guarantee, request.summary(), seed=seed, device=self.device.type,
            retain_n=len(retain_ids), config=as_dict(method.config), train=as_dict(self.recipe),
            task_options=as_dict(task.options), metrics=metrics, gap=gap, avg_gap=avg, time_s=time_s,
            models=models, executor=self.runtime.executor, versions=pipeline.software_versions(task.kind),
            oracle=refs.note,
            lm_run=output.blocks.get("lm_run"),  # how a language method trained: precision, micro-batches, memory
            guard=layer_block(output.blocks.get("guard")), filter=layer_block(output.blocks.get("filter")),
            exact=cost, per_example=per_example)


def _park(model: torch.nn.Module | None, device: torch.device) -> None:
    if model is not None and device.type != model_device(model).type:
        model.to(device)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def layer_block(live: dict | None) -> dict | None:
    """A suppression layer's block (guard, filter: detector quality, generation counts), copied from its live
    dict; under a multi-process launch each process generated its share, so the counts are summed."""
    if live is None:
        return None
    block = copy.deepcopy(live)
    counts = block.get("generation")
    if dist.launched() and isinstance(counts, dict):
        parts = dist.gather([(dist.rank(), counts)])
        block["generation"] = {k: sum(c[k] for _, c in parts) for k in counts}
    return block
