"""The public API behind the CLI: :func:`unlearn`, :func:`bench`, :func:`evaluate`.

Each validates everything a user can get wrong (task, method, forget spec, config keys and values, device,
what a protocol asks for) before any training starts or any file is written, then composes a
:class:`~obliviate.session.Session` run with the protocols asked for (:mod:`obliviate.protocols`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np
import torch

from obliviate import pipeline
from obliviate.config import build_config
from obliviate.distributed import Runtime
from obliviate.errors import ConfigError, ObliviateError
from obliviate.memory import check_fits
from obliviate.methods import Method, get_method
from obliviate.metrics.relearn import RelearnConfig
from obliviate.models.store import ModelStore
from obliviate.pipeline import as_task
from obliviate.protocols.challenge import challenge as challenge_block
from obliviate.protocols.challenge import check_challenge
from obliviate.protocols.folds import add_folds, check_folds
from obliviate.protocols.relearn import add_relearn, relearn_config
from obliviate.requests import ForgetRequest, resolve
from obliviate.session import RunResult, Session
from obliviate.tasks import Task, get_task, task_class  # noqa: F401 (api.get_task)
from obliviate.training import resolve_device
from obliviate.verdict import bench_verdict, reference

BENCH_SCHEMA = "obliviate.bench/1"


# -- validation and routing of --set keys ---------------------------------------------------------------

def route_overrides(task_name: str, method_names: Iterable[str], overrides: dict[str, Any]):
    """Split ``--set`` pairs into task options, ``train.*`` recipe keys and per-method config values.

    ``method.key=v`` targets one method; an unprefixed key goes to every method that has it. A key that
    nothing accepts is an error naming the valid keys.
    """
    method_names = list(method_names)
    tcls = task_class(task_name)
    task_keys = {f.name for f in dataclasses.fields(tcls.options_class)}
    kind = "language" if getattr(tcls, "kind", None) == "language" else None
    from obliviate.methods.filter import config_fields

    method_keys = {m: config_fields(m, kind) for m in method_names}
    task_opts: dict[str, Any] = {}
    recipe: dict[str, Any] = {}
    per_method: dict[str, dict[str, Any]] = {m: {} for m in method_names}
    for key, value in overrides.items():
        key = _lora_key(key)
        head, _, rest = key.partition(".")
        if head == "train" and rest:
            recipe[rest] = value
        elif rest and head in per_method:
            if rest not in method_keys[head]:
                raise ConfigError(f"unknown {head} key {rest!r}; valid keys: {', '.join(sorted(method_keys[head])) or 'none'}")
            per_method[head][rest] = value
        elif key in task_keys:
            task_opts[key] = value
        else:
            takers = [m for m in method_names if key in method_keys[m]]
            if not takers:
                valid = sorted(task_keys | set().union(*method_keys.values())) + ["train.<recipe key>"]
                raise ConfigError(f"unknown --set key {key!r}; valid keys: {', '.join(valid)}")
            for m in takers:
                per_method[m][key] = value
    return task_opts, recipe, per_method


def _lora_key(key: str) -> str:
    """``lora.r=8`` (and ``npo.lora.r=8``) are the config fields ``lora_r`` of the language methods."""
    parts = key.split(".")
    if "lora" in parts[:-1] and parts.index("lora") == len(parts) - 2:
        return ".".join(parts[:-2] + [f"lora_{parts[-1]}"])
    return key


def build_method(name: str, values: dict[str, Any], task: Task) -> Method:
    """The method for ``task``'s kind, its config = the task's suggested values (``method_defaults``, e.g. a
    learning rate suited to the authors task's tiny GPT-2) overridden by the user's.

    ``"<method>+filter"`` (language tasks) builds ``<method>`` and puts the in-context filter in front of its
    unlearned model (:mod:`obliviate.methods.filter`): the guarantee stays the base's; a value goes to the base
    when its config has the key, else to the filter (``action=redact``, ``filter.tau_ngram=0.3``)."""
    from obliviate.methods.filter import compose, split_composite, split_values

    base_name, composite = split_composite(name)
    if composite:
        if task.kind != "language":
            raise ObliviateError(f"{name!r}: the in-context filter applies to language tasks; {task.name} is a "
                                 f"{task.kind} task")
        base_cls = get_method(base_name, task.kind)
        base_values, filter_values = split_values(values, {f.name for f in dataclasses.fields(base_cls.config_class)})
        return compose(build_method(base_name, base_values, task), filter_values)
    cls = get_method(name, task.kind)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    suggested = {k: v for k, v in getattr(task, "method_defaults", {}).get(name, {}).items() if k in fields}
    return cls(build_config(cls.config_class, {**suggested, **values}, prefix=f"{name}."))


def unlearn(task: str | Task, method: str | Method, forget: str | None = None, *, seed: int = 0,
            device: str = "cpu", oracle: bool = True, task_options: dict[str, Any] | None = None,
            train: dict[str, Any] | None = None, cache_dir: str | None = None, use_cache: bool = True,
            executor: str = "local", ray_address: str | None = None, workers: int | None = None,
            relearn: bool | dict | RelearnConfig = False, scal: list[int] | None = None,
            sust: int | None = None, **config: Any) -> RunResult:
    """Unlearn ``forget`` from ``task``'s model with ``method``; return the model and the run report.

    ``relearn=True`` (or a dict of :class:`~obliviate.metrics.relearn.RelearnConfig` fields) also measures the
    relearn time of the original, unlearned and oracle models (``metrics.*.relearn_steps``) and the anamnesis
    index (``metrics.unlearned.anamnesis`` = unlearned ÷ oracle steps); details in ``report["relearn"]``.

    >>> import obliviate
    >>> result = obliviate.unlearn("digits", "finetune", "random:0.1", epochs=1)  # doctest: +SKIP
    >>> result.report["guarantee"], round(result.report["avg_gap"], 3)              # doctest: +SKIP
    ('approximate', 0.012)
    """
    task_obj = as_task(task, task_options or {})
    if isinstance(method, Method):
        if config:
            raise ConfigError("config values given for an already built method; build it with them instead")
        method_obj = method
        if task_obj.kind not in method_obj.kinds:
            build_method(method_obj.name, {}, task_obj)  # raises the applicability error
    else:
        method_obj = build_method(method, config, task_obj)
    recipe = task_obj.recipe(train)
    relearn_cfg = relearn_config(relearn, task_obj)
    request = resolve(forget or task_obj.default_forget, task_obj, seed)
    dev = resolve_device(device)
    check_fits(task_obj, method_obj, dev)  # a given LM whose run cannot fit the device: refused before loading
    runtime = Runtime(device=dev, executor=executor, ray_address=ray_address, workers=workers)
    session = Session(task_obj, recipe, dev, ModelStore(cache_dir, enabled=use_cache), runtime)
    check_folds(session, method_obj, request, scal, sust)
    result = session.run(method_obj, request, seed, with_oracle=oracle)
    if relearn_cfg is not None:
        add_relearn(session, result, request, seed, relearn_cfg)
    add_folds(session, method_obj, request, seed, result.report, scal, sust)
    return result


def evaluate(task: str | Task, model: torch.nn.Module, forget: str | ForgetRequest | None = None, *,
             seed: int = 0, device: str = "cpu", task_options: dict[str, Any] | None = None,
             reference: torch.nn.Module | None = None) -> dict[str, float]:
    """The task kind's metrics of ``model`` for the forget set ``forget`` (no training involved); with
    ``reference`` (e.g. a retrain oracle) also the metrics measured against it (``js_to_oracle``, ...).

    >>> import obliviate
    >>> r = obliviate.unlearn("digits", "retrain", "class:3")                 # doctest: +SKIP
    >>> obliviate.evaluate("digits", r.model, "class:3")["forget_acc"]       # doctest: +SKIP
    0.0
    """
    task_obj = as_task(task, task_options or {})
    request = (forget if isinstance(forget, ForgetRequest)
               else resolve(forget or task_obj.default_forget, task_obj, seed))
    retain_ids = np.setdiff1d(np.arange(task_obj.n_train), request.ids)
    dev = resolve_device(device)
    ref = reference.to(dev) if reference is not None else None
    return pipeline.evaluate_model(task_obj, model.to(dev), request.ids, retain_ids, seed, dev, False, ref)[0]


def bench(task: str | Task, methods: list[str], forget: str | None = None, *, seeds: int | list[int] = 1,
          device: str = "cpu", overrides: dict[str, Any] | None = None, cache_dir: str | None = None,
          use_cache: bool = True, on_run=None, executor: str = "local", ray_address: str | None = None,
          workers: int | None = None, challenge: int = 0,
          relearn: bool | dict | RelearnConfig = False, scal: list[int] | None = None,
          sust: int | None = None) -> dict[str, Any]:
    """Run several methods on the same forget request(s), the original and oracle computed once per seed.

    ``challenge=N`` (N >= 3, classification) adds to each run the NeurIPS 2023 challenge block
    ``{"n", "forgetting_quality", "score", "epsilons", "utility", ...}``: N runs of the method from the seed's
    original against N retrained oracles (see :func:`obliviate.protocols.challenge.challenge`). ``relearn`` as in :func:`unlearn`.
    """
    if not methods:
        raise ObliviateError("--methods needs at least one method name")
    task_name = task if isinstance(task, str) else task.name
    task_opts, recipe_over, per_method = route_overrides(task_name, methods, overrides or {})
    task_obj = as_task(task, task_opts)
    method_objs = [build_method(m, per_method[m], task_obj) for m in methods]
    recipe = task_obj.recipe(recipe_over)
    n_challenge = check_challenge(challenge, task_obj)
    relearn_cfg = relearn_config(relearn, task_obj)
    forget = forget or task_obj.default_forget
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ObliviateError("--seeds must be at least 1")
    requests = {s: resolve(forget, task_obj, s) for s in seed_list}
    dev = resolve_device(device)
    for m in method_objs:  # a given LM whose run cannot fit the device: refused before loading
        check_fits(task_obj, m, dev)
    runtime = Runtime(device=dev, executor=executor, ray_address=ray_address, workers=workers)
    session = Session(task_obj, recipe, dev, ModelStore(cache_dir, enabled=use_cache), runtime)
    runs, evaluations = [], {}
    for s in seed_list:
        for m in method_objs:
            check_folds(session, m, requests[s], scal, sust)
    for s in seed_list:
        for m in method_objs:
            result = session.run(m, requests[s], s, with_oracle=True, evaluation_cache=evaluations)
            if relearn_cfg is not None:
                add_relearn(session, result, requests[s], s, relearn_cfg)
            if n_challenge:
                pipeline.add_block(result.report, "challenge", challenge_block(session, m, requests[s], s,
                                                                               n_challenge))
            add_folds(session, m, requests[s], s, result.report, scal, sust, evaluations)
            runs.append(result.report)
            if on_run is not None:
                on_run(result.report)
    doc = {"schema": BENCH_SCHEMA, "task": task_obj.name, "task_kind": task_obj.kind, "forget": forget,
           "seeds": seed_list, "methods": methods, "runs": runs, "summary": summarize(runs),
           "reference": reference(runs, task_obj.kind)}
    doc["verdict"] = bench_verdict(doc, doc["reference"]["do_nothing_avg_gap"])
    suggested = {name: {k: v for k, v in getattr(task_obj, "method_defaults", {}).get(name, {}).items()
                        if hasattr(m.config, k) and k not in per_method[name]}
                 for name, m in zip(methods, method_objs)}
    doc["settings"] = {"set": dict(overrides or {}), "task_suggested": {m: v for m, v in suggested.items() if v}}
    return doc


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: mean and std over seeds of every unlearned metric and avg_gap; mean unlearning time and ratio."""
    out = []
    for name in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == name]
        row: dict[str, Any] = {"method": name, "guarantee": rs[0]["guarantee"], "n_seeds": len(rs)}
        # a value a run could not define (None: the anamnesis index when the oracle relearns in 0 steps) is left
        # out of the mean; a key no run defines is None, never NaN
        columns = [(key, [r["metrics"]["unlearned"].get(key) for r in rs]) for key in rs[0]["metrics"]["unlearned"]]
        for key, values in columns + [("avg_gap", [r["avg_gap"] for r in rs])]:
            vals = np.array([v for v in values if v is not None], float)
            row[key] = float(vals.mean()) if vals.size else None
            row[f"{key}_std"] = float(vals.std()) if vals.size else None
        if all("challenge" in r for r in rs):
            for key, field in (("challenge_forgetting_quality", "forgetting_quality"), ("challenge_score", "score")):
                vals = np.array([r["challenge"][field] for r in rs], float)
                row[key] = float(vals.mean())
                row[f"{key}_std"] = float(vals.std())
            row["challenge_n"] = rs[0]["challenge"]["n"]
        ratios = [r["time_s"]["unlearn"] / r["time_s"]["oracle"] for r in rs if r["time_s"].get("oracle")]
        row["unlearn_s"] = float(np.mean([r["time_s"]["unlearn"] for r in rs]))
        row["time_ratio"] = float(np.mean(ratios)) if ratios else None
        out.append(row)
    return out
