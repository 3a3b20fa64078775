"""The pipeline behind the public API and the CLI: task → original → unlearn → oracle → evaluate → report.

Everything a user can get wrong (task, method, forget spec, config keys and values, device) is
validated before any training starts or any file is written.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from obliviate import dist, pipeline
from obliviate.config import as_dict, build_config
from obliviate.distributed import Runtime, run_jobs
from obliviate.errors import ConfigError, ObliviateError
from obliviate.memory import check_fits
from obliviate.methods import Method, check_system, get_method
from obliviate.metrics import challenge as challenge_metric
from obliviate.metrics.relearn import (RelearnConfig, anamnesis_index, forget_metric, relearn_config_summary,
                                       relearn_time, target_value)
from obliviate.models.store import ModelStore, content_key, state_sha256
from obliviate.oracle import STORE_FORMAT, retrain_oracle, train_original
from obliviate.pipeline import RUN_SCHEMA, as_task, oracle_gap, run_report, software_versions  # noqa: F401
from obliviate.requests import ForgetRequest, ids_sha256, resolve
from obliviate.seeding import numpy_rng
from obliviate.tasks import Task, get_task, task_class  # noqa: F401 (api.get_task)
from obliviate.training import predict, resolve_device
from obliviate.verdict import bench_verdict, reference

BENCH_SCHEMA = "obliviate.bench/1"
PER_EXAMPLE_LIMIT = 5000


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


# -- the NeurIPS 2023 challenge: N unlearned runs and N retrained oracles, as executor jobs ------------------

def _challenge_outputs(task, model, forget_ids, retain_ids, device) -> dict[str, Any]:
    """What the challenge needs from one model: forget-set logit-scaled confidences and the accuracies."""
    d = task.data
    yf = d.y_train[forget_ids]
    out_f = predict(model, d.x_train[forget_ids], device)
    out_r = predict(model, d.x_train[retain_ids], device)
    out_t = predict(model, d.x_test, device)
    return {"conf": challenge_metric.logit_scaled_confidence(out_f, yf),
            "forget_acc": float((out_f.argmax(axis=1) == yf).mean()),
            "retain_acc": float((out_r.argmax(axis=1) == d.y_train[retain_ids]).mean()),
            "test_acc": float((out_t.argmax(axis=1) == d.y_test).mean())}


def _challenge_unlearn_job(task, method: Method, original: torch.nn.Module, request: ForgetRequest, recipe,
                           seed: int, device: str, system=None) -> dict[str, Any]:
    """One run of the unlearning algorithm from the (shared) original, with unlearning seed ``seed``."""
    dev = torch.device(device)
    ctx = pipeline.build_context(task, method, original.to(dev), request, recipe, seed, dev,
                                 Runtime(device=dev, executor="serial"), system=system)
    out = pipeline.apply_method(method, ctx, request)
    return _challenge_outputs(task, out.model, request.ids, ctx.retain_ids, dev)


def _challenge_oracle_job(task, retain_ids: np.ndarray, forget_ids: np.ndarray, recipe, seed: int, device: str,
                          store_root: str, store_enabled: bool) -> dict[str, Any]:
    """One retrained model (training seed ``seed``, retain set only), from the model cache when it is there."""
    dev = torch.device(device)
    model, meta = retrain_oracle(task, retain_ids, recipe, seed, dev, ModelStore(store_root, enabled=store_enabled))
    return dict(_challenge_outputs(task, model, forget_ids, retain_ids, dev), cached=bool(meta["cached"]))


def _relearn_config(relearn: bool | dict | RelearnConfig | None) -> RelearnConfig | None:
    if relearn is None or relearn is False:
        return None
    if relearn is True:
        return RelearnConfig()
    if isinstance(relearn, RelearnConfig):
        return relearn
    if isinstance(relearn, dict):
        valid = {f.name for f in dataclasses.fields(RelearnConfig)}
        unknown = sorted(set(relearn) - valid)
        if unknown:
            raise ConfigError(f"unknown relearn key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
        return RelearnConfig(**relearn)
    raise ConfigError(f"relearn must be true/false, a dict or a RelearnConfig, got {relearn!r}")


def _check_relearn(cfg: RelearnConfig | None, task: Task) -> RelearnConfig | None:
    if cfg is not None and task.kind == "language":
        raise ObliviateError("--relearn measures relearn time of classifiers and regressors; for language models "
                             "use the relearn audit (obliviate audit)")
    return cfg


def _check_challenge(n: int, task: Task) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ObliviateError(f"--challenge must be an integer number of models, got {n!r}")
    n = int(n)
    if n == 0:
        return 0
    if n < 3:
        raise ObliviateError(f"--challenge N needs N >= 3 (N retrained and N unlearned models per method; with N = 2 the official buckets are empty and F is always 0), got {n}")
    if task.kind != "classification":
        raise ObliviateError(f"--challenge needs a classification task (it scores logit-scaled confidences); "
                             f"{task.name} is a {task.kind} task")
    return n


class Session:
    """Shared state of one run or bench: the task, the store, the device; originals and oracles computed once."""

    def __init__(self, task: Task, recipe, device: torch.device, store: ModelStore, runtime: Runtime | None = None):
        self.task, self.recipe, self.device, self.store = task, recipe, device, store
        self.runtime = runtime or Runtime(device=device)
        self._originals: dict[int, tuple] = {}
        self._oracles: dict[tuple, tuple] = {}
        self._systems: dict[tuple, tuple] = {}
        self._challenge_oracles: dict[tuple, list[dict[str, Any]]] = {}
        self._relearn: dict[tuple, Any] = {}

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
            retain_ids = np.setdiff1d(np.arange(self.task.n_train), request.ids)
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

    def challenge(self, method: Method, request: ForgetRequest, seed: int, n: int) -> dict[str, Any]:
        """The NeurIPS 2023 challenge block for ``method``: N runs of the method (unlearning seeds 0..N-1) from the
        one original of ``seed``, against N oracles (training seeds 0..N-1 on the retain set, cached like any
        oracle), all fanned out over the runtime's executor (the challenge's official protocol)."""
        task = self.task
        retain_ids = np.setdiff1d(np.arange(task.n_train), request.ids)
        device = str(self.device)
        key = (request.sha256, n)
        if key not in self._challenge_oracles:
            jobs = [(task, retain_ids, request.ids, self.recipe, i, device, str(self.store.root), self.store.enabled)
                    for i in range(n)]
            self._challenge_oracles[key] = run_jobs(_challenge_oracle_job, jobs, self.runtime)
        retrained = self._challenge_oracles[key]
        if method.trains_original:
            system, _ = self.system(method, seed)
            original = system.served_model()
            systems = [self.system(method, seed)[0] for _ in range(n)]  # each run deletes from its own copy
        else:
            original = self.original(seed)[0]
            systems = [None] * n
        original = copy.deepcopy(original).cpu()
        jobs = [(task, method, original, request, self.recipe, i, device, systems[i]) for i in range(n)]
        start = time.perf_counter()
        unlearned = run_jobs(_challenge_unlearn_job, jobs, self.runtime)
        elapsed = time.perf_counter() - start
        block = challenge_metric.challenge_result(
            np.stack([u["conf"] for u in unlearned]), np.stack([r["conf"] for r in retrained]),
            ra_u=[u["retain_acc"] for u in unlearned], ra_r=[r["retain_acc"] for r in retrained],
            ta_u=[u["test_acc"] for u in unlearned], ta_r=[r["test_acc"] for r in retrained])
        block["utility"].update(fa_u=float(np.mean([u["forget_acc"] for u in unlearned])),
                                fa_r=float(np.mean([r["forget_acc"] for r in retrained])))
        block["seeds"] = {"original": seed, "unlearn": list(range(n)), "oracle_train": list(range(n))}
        block["oracles_cached"] = int(sum(r["cached"] for r in retrained))
        block["unlearn_s"] = elapsed
        return block

    def _relearn_cached(self, role: str, sha: str, model, request: ForgetRequest, seed: int, target: float,
                        cfg: RelearnConfig):
        key = (role, sha, request.sha256, seed, target, cfg)
        if key not in self._relearn:
            self._relearn[key] = relearn_time(model, self.task, request.ids, target, config=cfg, seed=seed,
                                              device=self.device)
        return self._relearn[key]

    # -- MUSE C5 scalability and C6 sustainability (Shi et al., ICLR 2025) --------------------------------------
    def _fold_order(self, request: ForgetRequest, seed: int) -> np.ndarray:
        """The request's ids first, then the other training ids in a seeded order: the growing forget sets of
        scalability are prefixes of it, the disjoint folds of sustainability consecutive blocks."""
        rest = np.setdiff1d(np.arange(self.task.n_train), request.ids)
        return np.concatenate([request.ids, numpy_rng(seed, 0x5CA1).permutation(rest)])

    def _check_folds(self, method: Method, request: ForgetRequest, total: int, what: str) -> None:
        if method.trains_original:
            raise ObliviateError(f"{what} applies to post-hoc methods; {method.name} owns its training")
        if total >= self.task.n_train:
            raise ObliviateError(f"{what} needs {total} forget examples ({request.n} per fold) but the task has "
                                 f"{self.task.n_train}; nothing would remain (use a smaller --forget)")

    def check_scal_sust(self, method: Method, request: ForgetRequest, scal: list[int] | None,
                        sust: int | None) -> None:
        """Reject a scalability / sustainability request that cannot be satisfied before any work starts."""
        if scal:
            if min(scal) < 1:
                raise ObliviateError(f"--scal takes positive integers, e.g. 1,2,3,4; got {scal}")
            self._check_folds(method, request, max(scal) * request.n, "--scal")
        if sust is not None and sust != 0:
            if sust < 1:
                raise ObliviateError(f"--sust takes a positive number of folds, got {sust}")
            self._check_folds(method, request, sust * request.n, "--sust")

    def scalability(self, method: Method, request: ForgetRequest, seed: int, factors: list[int],
                    evaluation_cache: dict | None = None) -> dict[str, Any]:
        """Unlearn nested forget sets of ``factor`` × the request's size, each from the original, each against
        its own oracle (MUSE ``scal``)."""
        factors = sorted(set(int(k) for k in factors))
        if not factors or factors[0] < 1:
            raise ObliviateError(f"--scal takes positive integers, e.g. 1,2,3,4; got {factors}")
        self._check_folds(method, request, factors[-1] * request.n, "--scal")
        order = self._fold_order(request, seed)
        points = []
        for k in factors:
            ids = np.sort(order[:k * request.n])
            r = self.run(method, ForgetRequest(f"{request.spec} x{k}", ids), seed,
                         evaluation_cache=evaluation_cache).report
            points.append({"factor": k, "n_forget": int(ids.size), "metrics": r["metrics"], "gap": r["gap"],
                           "avg_gap": r["avg_gap"], "time_s": r["time_s"]})
        return {"base_n": request.n, "order_seed": seed, "points": points}

    def sustainability(self, method: Method, request: ForgetRequest, seed: int, folds: int,
                       evaluation_cache: dict | None = None) -> dict[str, Any]:
        """``folds`` sequential requests of disjoint folds (the first is the request), each applied to the
        previous step's model; after each, metrics on the fold just forgotten and on everything forgotten so
        far, against an oracle trained without all of it (MUSE ``sust``)."""
        if folds < 1:
            raise ObliviateError(f"--sust takes a positive number of folds, got {folds}")
        self._check_folds(method, request, folds * request.n, "--sust")
        order = self._fold_order(request, seed)
        steps, current = [], None
        for j in range(folds):
            fold = np.sort(order[j * request.n:(j + 1) * request.n])
            forgotten = np.sort(order[:(j + 1) * request.n])
            retain = np.setdiff1d(np.arange(self.task.n_train), forgotten)
            result = self.run(method, ForgetRequest(f"{request.spec} fold {j + 1}", fold), seed,
                              evaluation_cache=evaluation_cache, retain_ids=retain, start=current)
            r = result.report
            step = {"step": j + 1, "n_fold": int(fold.size), "n_forgotten": int(forgotten.size),
                    "metrics": r["metrics"], "gap": r["gap"], "avg_gap": r["avg_gap"], "time_s": r["time_s"]}
            if j > 0:
                cumulative = ForgetRequest(f"{request.spec} folds 1-{j + 1}", forgotten)
                oracle_model, _ = self.oracle(seed, cumulative, retain)
                step["cumulative"] = {"unlearned": pipeline.evaluate_model(
                    self.task, result.model, forgotten, retain, seed, self.device, False, oracle_model)[0]}
                if oracle_model is not None:
                    step["cumulative"]["oracle"] = pipeline.evaluate_model(
                        self.task, oracle_model, forgotten, retain, seed, self.device, False, oracle_model)[0]
            steps.append(step)
            current = (result.model, {"sha256": r["models"]["unlearned"]["sha256"]})
        return {"fold_size": request.n, "folds": folds, "order_seed": seed, "steps": steps}

    def run(self, method: Method, request: ForgetRequest, seed: int, with_oracle: bool = True,
            evaluation_cache: dict | None = None, relearn: RelearnConfig | None = None,
            retain_ids: np.ndarray | None = None, start: tuple | None = None) -> RunResult:
        """One method on one request. ``retain_ids`` narrows the retain set (sustainability: earlier folds are
        gone); ``start`` = (model, meta) replaces the original as the model to unlearn from (sequential
        requests), while metrics are still reported for the original too."""
        task = self.task
        if retain_ids is None:
            retain_ids = np.setdiff1d(np.arange(task.n_train), request.ids)
        per_ex = request.n <= PER_EXAMPLE_LIMIT
        system = None
        if method.trains_original:
            system, orig_meta = self.system(method, seed)
            original = system.served_model().to(self.device)
            orig_meta = dict(orig_meta, sha256=state_sha256(original))
        else:
            original, orig_meta = self.original(seed)
        evaluation_cache = evaluation_cache if evaluation_cache is not None else {}

        # a given language model is evaluated first and then unlearned in place: it is never copied in memory
        # (a 7B model and its copy would not fit one GPU), and is loaded again from its directory when needed.
        # Otherwise the oracle comes after the unlearning, so a method that fails leaves no oracle in the cache.
        in_place = task.kind == "language" and start is None and system is None and self.given_model
        metrics, per_example = {}, {}
        oracle_model = oracle_meta = oracle_note = None
        evaluated = {}

        def cached_eval(role, model, sha, reference=None):
            key = (role, sha, oracle_meta["sha256"] if reference is not None else None, seed, request.sha256,
                   ids_sha256(retain_ids))
            if key not in evaluation_cache:
                evaluation_cache[key] = pipeline.evaluate_model(task, model, request.ids, retain_ids, seed,
                                                                self.device, per_ex, reference)
            return evaluation_cache[key]

        def before_unlearned():
            nonlocal oracle_model, oracle_meta, oracle_note, with_oracle
            oracle_model, oracle_meta = (self.oracle(seed, request, retain_ids) if with_oracle else (None, None))
            if with_oracle and oracle_model is None:
                with_oracle = False
                oracle_note = ("not available: the model is given, not trained; pass a model trained without the "
                               "forget data with --set oracle=DIR")
            evaluated["original"] = cached_eval("original", original, orig_meta["sha256"], oracle_model)
            if with_oracle:
                evaluated["oracle"] = cached_eval("oracle", oracle_model, oracle_meta["sha256"], oracle_model)

        if in_place:
            before_unlearned()
            self.release_original(seed)
            if oracle_model is not None and self.device.type != "cpu":
                oracle_model.cpu()  # off the device while the model trains
        source = original if start is None else start[0]
        ctx = pipeline.build_context(task, method, source, request, self.recipe, seed, self.device, self.runtime,
                                     retain_ids, in_place=in_place, system=system)
        output = pipeline.apply_method(method, ctx, request)
        model, unlearn_time = output.model, output.seconds
        if in_place:
            original = lambda: self.original(seed)[0]  # noqa: E731 — loaded again only if something asks
            if oracle_model is not None:
                oracle_model.to(self.device)
        else:
            before_unlearned()
        metrics["original"], per_example["original"] = evaluated["original"]

        metrics["unlearned"], per_example["unlearned"] = pipeline.evaluate_model(
            task, model, request.ids, retain_ids, seed, self.device, per_ex, oracle_model)
        time_s = {"train": orig_meta.get("train_time_s"), "unlearn": unlearn_time}
        models = {"original": {"sha256": orig_meta["sha256"], "cached": orig_meta["cached"]},
                  "unlearned": {"sha256": state_sha256(model)}}
        if with_oracle:
            # the oracle against itself: oracle-relative metrics are 0 there, so their gap is the value itself
            metrics["oracle"], per_example["oracle"] = evaluated["oracle"]
            time_s["oracle"] = oracle_meta.get("train_time_s")
            models["oracle"] = {"sha256": oracle_meta["sha256"], "cached": oracle_meta["cached"]}
        gap, avg = oracle_gap(metrics, task.kind)
        relearn_block = None
        if relearn is not None:
            kind = task.kind
            if not isinstance(original, torch.nn.Module):
                original = original()
            original_value = forget_metric(kind, original, task.data.x_train[request.ids],
                                           task.data.y_train[request.ids], self.device)
            target = target_value(kind, original_value, relearn.alpha)
            rts = {"original": self._relearn_cached("original", orig_meta["sha256"], original, request, seed, target,
                                                    relearn),
                   "unlearned": relearn_time(model, task, request.ids, target, config=relearn, seed=seed,
                                             device=self.device)}
            if with_oracle:
                rts["oracle"] = self._relearn_cached("oracle", oracle_meta["sha256"], oracle_model, request, seed,
                                                     target, relearn)
            metrics = {role: dict(values) for role, values in metrics.items()}  # cached dicts stay untouched
            for role, rt in rts.items():
                metrics[role]["relearn_steps"] = rt.steps
            if with_oracle:
                for role in ("original", "unlearned"):
                    metrics[role]["anamnesis"] = anamnesis_index(rts[role].steps, rts["oracle"].steps)
            relearn_block = {**relearn_config_summary(kind, relearn), "original_value": original_value,
                             "target": target, "saturated": {r: rt.saturated for r, rt in rts.items()},
                             "start": {r: rt.start for r, rt in rts.items()},
                             "final": {r: rt.final for r, rt in rts.items()}}
        if start is not None:
            models["start"] = {"sha256": start[1].get("sha256")}
        cost = output.blocks.get("exact")
        if cost is not None:
            time_s["unlearn"] = cost["time_s"]  # the deletion itself
        report = run_report(
            task, method.name, method.guarantee, request.summary(), seed=seed, device=self.device.type,
            retain_n=len(retain_ids), config=as_dict(method.config), train=as_dict(self.recipe),
            task_options=as_dict(task.options), metrics=metrics, gap=gap, avg_gap=avg, time_s=time_s,
            models=models, executor=self.runtime.executor, versions=software_versions(task.kind),
            oracle=oracle_note or None,
            lm_run=output.blocks.get("lm_run"),  # how a language method trained: precision, micro-batches, memory
            guard=_layer_block(output.blocks.get("guard")), filter=_layer_block(output.blocks.get("filter")),
            relearn=relearn_block, exact=cost,
            per_example=({"forget_ids": request.ids.tolist(), **{k: v for k, v in per_example.items()
                                                                 if v is not None}} if per_ex else None))
        return RunResult(model, report, original, oracle_model)


def _layer_block(live: dict | None) -> dict | None:
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
    relearn_cfg = _check_relearn(_relearn_config(relearn), task_obj)
    request = resolve(forget or task_obj.default_forget, task_obj, seed)
    dev = resolve_device(device)
    check_fits(task_obj, method_obj, dev)  # a given LM whose run cannot fit the device: refused before loading
    runtime = Runtime(device=dev, executor=executor, ray_address=ray_address, workers=workers)
    session = Session(task_obj, recipe, dev, ModelStore(cache_dir, enabled=use_cache), runtime)
    session.check_scal_sust(method_obj, request, scal, sust)
    result = session.run(method_obj, request, seed, with_oracle=oracle, relearn=relearn_cfg)
    _add_scal_sust(session, method_obj, request, seed, result.report, scal, sust)
    return result


def _add_scal_sust(session: Session, method: Method, request: ForgetRequest, seed: int, report: dict,
                   scal: list[int] | None, sust: int | None, cache: dict | None = None) -> None:
    if scal:
        report["scalability"] = session.scalability(method, request, seed, scal, cache)
    if sust:
        report["sustainability"] = session.sustainability(method, request, seed, sust, cache)


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
    original against N retrained oracles (see :meth:`Session.challenge`). ``relearn`` as in :func:`unlearn`.
    """
    if not methods:
        raise ObliviateError("--methods needs at least one method name")
    task_name = task if isinstance(task, str) else task.name
    task_opts, recipe_over, per_method = route_overrides(task_name, methods, overrides or {})
    task_obj = as_task(task, task_opts)
    method_objs = [build_method(m, per_method[m], task_obj) for m in methods]
    recipe = task_obj.recipe(recipe_over)
    n_challenge = _check_challenge(challenge, task_obj)
    relearn_cfg = _check_relearn(_relearn_config(relearn), task_obj)
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
            session.check_scal_sust(m, requests[s], scal, sust)
    for s in seed_list:
        for m in method_objs:
            result = session.run(m, requests[s], s, with_oracle=True, evaluation_cache=evaluations,
                                 relearn=relearn_cfg)
            if n_challenge:
                result.report["challenge"] = session.challenge(m, requests[s], s, n_challenge)
            _add_scal_sust(session, m, requests[s], s, result.report, scal, sust, evaluations)
            runs.append(result.report)
            if on_run is not None:
                on_run(result.report)
    doc = {"schema": BENCH_SCHEMA, "task": task_obj.name, "task_kind": task_obj.kind, "forget": forget,
           "seeds": seed_list, "methods": methods, "runs": runs, "summary": summarize(runs),
           "reference": reference(runs, task_obj.kind)}
    doc["verdict"] = bench_verdict(doc, doc["reference"]["do_nothing_avg_gap"])
    return doc


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: mean and std over seeds of every unlearned metric, gap, avg_gap and time ratio."""
    out = []
    for name in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == name]
        row: dict[str, Any] = {"method": name, "guarantee": rs[0]["guarantee"], "n_seeds": len(rs)}
        for key in rs[0]["metrics"]["unlearned"]:
            vals = np.array([r["metrics"]["unlearned"][key] for r in rs], float)
            row[key] = float(vals.mean())
            row[f"{key}_std"] = float(vals.std())
        for key in ("avg_gap",):
            vals = np.array([r[key] for r in rs if r[key] is not None], float)
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
