"""Hyperparameter search of an unlearning method against the retrain oracle (``obliviate tune``).

A method declares what may be searched on its config fields: ``metadata={"tune": (low, high)}``,
``(low, high, "log")`` or ``("choice", [a, b, ...])``; an int field gets integer values. Only declared fields
are searched, within their declared ranges; fields the user fixes with ``--set`` are left out of the search.

Protocol (why it is honest): trials are scored on a *validation* seed only — its own original, forget sample
and oracle — and the best parameters are then run, untouched, on separate *test* seeds, whose mean ± std is
what is reported. The objective is the run's ``avg_gap`` (mean |unlearned − oracle| over the headline metrics)
under a time budget: a trial whose ``unlearn time / oracle retrain time`` exceeds ``budget`` scores
``avg_gap + 1`` (avg_gap lies in [0, 1], so it ranks after every trial within budget) and is never chosen as
best; a trial that fails (the method diverges, or the values contradict each other) scores 3 and the search
goes on. The first trial is the method's defaults when they lie inside the declared ranges, so the tuned result is
never worse than the defaults on the validation seed. The TPE sampler is seeded with ``seed``: the same
command gives the same trials, as long as no trial's time ratio sits at the budget's edge (times vary).

The original and oracle of each seed are trained once (and cached on disk) by :class:`obliviate.session.Session`;
each trial only runs the method. The retrain time in the ratio is the one recorded when the oracle was trained
(a cached oracle keeps it), so compare budgets on one machine under one thread setting.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, Iterable

import numpy as np

from obliviate.errors import ConfigError, ObliviateError

TUNE_SCHEMA = "obliviate.tune/1"
#: added to the objective of a trial over the time budget (avg_gap is at most 1)
OVER_BUDGET_PENALTY = 1.0
#: the objective of a trial that failed (diverged, or an invalid combination of values): worse than any other
FAILED_VALUE = 3.0


@dataclasses.dataclass(frozen=True)
class Range:
    """One declared search range of a config field."""

    name: str
    kind: str                   # "float", "int" or "choice"
    low: Any = None
    high: Any = None
    log: bool = False
    choices: tuple = ()

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (int, float)) and self.low <= value <= self.high

    def suggest(self, trial) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"choice": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "type": self.kind}


def declared_space(config_class: type) -> dict[str, Range]:
    """The ``"tune"`` ranges declared on ``config_class``'s fields. A malformed declaration is a bug of the
    method (``ValueError``), not a user error."""
    hints = typing.get_type_hints(config_class)
    out: dict[str, Range] = {}
    for f in dataclasses.fields(config_class):
        spec = f.metadata.get("tune")
        if spec is None:
            continue
        where = f"{config_class.__name__}.{f.name}"
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise ValueError(f"{where}: tune must be (low, high[, 'log']) or ('choice', [...]), got {spec!r}")
        if spec[0] == "choice":
            if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or len(spec[1]) < 2:
                raise ValueError(f"{where}: ('choice', [...]) needs at least two values, got {spec!r}")
            out[f.name] = Range(f.name, "choice", choices=tuple(spec[1]))
            continue
        low, high, *rest = spec
        log = bool(rest) and rest[0] == "log"
        if rest and not log:
            raise ValueError(f"{where}: the third item of tune must be 'log', got {rest[0]!r}")
        tp = hints[f.name]
        if tp not in (int, float):
            raise ValueError(f"{where}: a (low, high) range needs an int or float field, not {tp}")
        if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and low < high):
            raise ValueError(f"{where}: tune range needs numbers low < high, got {spec!r}")
        if log and low <= 0:
            raise ValueError(f"{where}: a log range needs low > 0, got {low!r}")
        meta = f.metadata
        if ("min" in meta and low < meta["min"]) or ("gt" in meta and low <= meta["gt"]) or \
                ("max" in meta and high > meta["max"]):
            raise ValueError(f"{where}: tune range {spec!r} leaves the field's allowed values")
        if tp is int:
            if int(low) != low or int(high) != high:
                raise ValueError(f"{where}: an int field needs integer bounds, got {spec!r}")
            low, high = int(low), int(high)
        else:
            low, high = float(low), float(high)
        out[f.name] = Range(f.name, "int" if tp is int else "float", low, high, log)
    return out


def _check_args(trials: int, budget: float, test_seeds: Iterable[int]) -> list[int]:
    if isinstance(trials, bool) or not isinstance(trials, (int, np.integer)) or trials < 1:
        raise ConfigError(f"--trials must be a positive integer, got {trials!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ConfigError(f"--budget must be a positive number (unlearn time / retrain time), got {budget!r}")
    seeds = [int(s) for s in test_seeds]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--test-seeds must be distinct, got {seeds}")
    return seeds


def tune(task: str, method: str, forget: str | None = None, *, trials: int = 20, budget: float = 0.1,
         seed: int = 0, test_seeds: Iterable[int] = (1, 2, 3), overrides: dict[str, Any] | None = None,
         device: str = "cpu", cache_dir: str | None = None, use_cache: bool = True,
         on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search ``method``'s declared ranges on validation seed ``seed``; run the best on ``test_seeds``.

    ``overrides`` are ``--set`` pairs (task options, ``train.*``, method keys) held fixed during the search.
    Returns an ``obliviate.tune/1`` document: ``trials`` (params, avg_gap, time_ratio, within_budget),
    ``best`` (params and validation avg_gap; ``None`` when no trial was within budget), ``test`` (per seed and
    mean ± std of the best, the defaults and the untouched original — "do nothing"), and ``set``: the
    pairs to pass back as ``--set @file.json`` (the fixed overrides plus ``method.key`` best values).

    >>> from obliviate.tune import tune
    >>> doc = tune("digits", "finetune", "random:0.1", trials=3, test_seeds=[1])       # doctest: +SKIP
    >>> sorted(doc["best"]["params"]), doc["test"]["tuned"]["avg_gap_mean"] < 0.05      # doctest: +SKIP
    (['epochs', 'lr'], True)
    """
    from obliviate import api
    from obliviate.metrics import avg_gap, gaps
    from obliviate.methods import get_method
    from obliviate.models.store import ModelStore
    from obliviate.session import Session
    from obliviate.requests import resolve
    from obliviate.tasks import get_task
    from obliviate.training import resolve_device

    test_seeds = _check_args(trials, budget, test_seeds)
    if seed in test_seeds:
        raise ConfigError(f"--seed {seed} (validation) is also a test seed; the test seeds must be unseen")
    overrides = dict(overrides or {})
    task_opts, recipe_over, per_method = api.route_overrides(task, [method], overrides)
    task_obj = get_task(task, **task_opts)
    cls = get_method(method, task_obj.kind)
    fixed = per_method[method]
    space = {k: r for k, r in declared_space(cls.config_class).items() if k not in fixed}
    if not space:
        declared = declared_space(cls.config_class)
        why = ("every declared range is fixed by --set" if declared else
               "it declares no tunable ranges (metadata 'tune' on its config fields)")
        raise ConfigError(f"cannot tune {method!r}: {why}")
    try:
        import optuna
    except ImportError:
        raise ObliviateError("obliviate tune needs optuna: pip install 'obliviate[tune]'") from None
    default_method = api.build_method(method, fixed, task_obj)  # validates the fixed values before training
    recipe = task_obj.recipe(recipe_over)
    forget = forget or task_obj.default_forget
    requests = {s: resolve(forget, task_obj, s) for s in [seed, *test_seeds]}
    dev = resolve_device(device)
    session = Session(task_obj, recipe, dev, ModelStore(cache_dir, enabled=use_cache))
    evaluations: dict = {}

    done: dict[tuple, dict[str, Any]] = {}

    def run(params: dict[str, Any], s: int) -> dict[str, Any]:
        m = api.build_method(method, {**fixed, **params}, task_obj) if params else default_method
        key = (repr(sorted(dataclasses.asdict(m.config).items())), s)
        if key not in done:  # same config and seed, same result: e.g. the best trial is the defaults
            r = session.run(m, requests[s], s, with_oracle=True, evaluation_cache=evaluations).report
            ratio = r["time_s"]["unlearn"] / r["time_s"]["oracle"] if r["time_s"].get("oracle") else None
            done[key] = {"seed": s, "avg_gap": r["avg_gap"], "time_ratio": ratio,
                         "metrics": r["metrics"]["unlearned"],
                         "noop_avg_gap": avg_gap(gaps(r["metrics"]["original"], r["metrics"]["oracle"]),
                                                 task_obj.kind)}
        return done[key]

    records: list[dict[str, Any]] = []

    def objective(trial) -> float:
        params = {name: r.suggest(trial) for name, r in space.items()}
        try:
            out = run(params, seed)
        except ObliviateError as exc:  # a diverged run or an invalid combination of values: worst score, go on
            out = {"avg_gap": None, "time_ratio": None, "error": str(exc)}
        within = out["time_ratio"] is not None and out["time_ratio"] <= budget
        value = FAILED_VALUE if out["avg_gap"] is None else out["avg_gap"] + (0.0 if within else OVER_BUDGET_PENALTY)
        rec = {"number": trial.number, "params": params, "avg_gap": out["avg_gap"],
               "time_ratio": out["time_ratio"], "within_budget": within and out["avg_gap"] is not None,
               "value": value, **({"error": out["error"]} if "error" in out else {})}
        records.append(rec)
        if on_trial is not None:
            on_trial(rec)
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    defaults = {k: getattr(default_method.config, k) for k in space}
    enqueued = all(space[k].contains(v) for k, v in defaults.items())
    if enqueued:
        study.enqueue_trial(defaults)
    study.optimize(objective, n_trials=trials)

    fine = [r for r in records if r["within_budget"]]
    best = min(fine, key=lambda r: (r["avg_gap"], r["number"])) if fine else None
    doc: dict[str, Any] = {
        "schema": TUNE_SCHEMA, "task": task_obj.name, "method": method, "forget": forget,
        "budget": budget, "validation_seed": seed, "test_seeds": test_seeds, "n_trials": trials,
        "sampler": {"name": "TPESampler", "seed": seed},
        "space": {k: r.describe() for k, r in space.items()}, "fixed": overrides,
        "defaults_enqueued": enqueued,
        "trials": records, "best": None, "test": None, "set": None,
    }
    if best is None:
        return doc
    doc["best"] = {"number": best["number"], "params": best["params"], "avg_gap": best["avg_gap"],
                   "time_ratio": best["time_ratio"]}
    per_seed = {"tuned": [run(best["params"], s) for s in test_seeds],
                "defaults": [run({}, s) for s in test_seeds]}
    doc["test"] = {name: _summary(rows) for name, rows in per_seed.items()}
    noop = [r["noop_avg_gap"] for r in per_seed["tuned"]]
    doc["test"]["noop"] = {"avg_gap_mean": float(np.mean(noop)), "avg_gap_std": float(np.std(noop)),
                           "per_seed": noop}
    doc["set"] = {**{k: v for k, v in overrides.items()},
                  **{f"{method}.{k}": v for k, v in best["params"].items()}}
    return doc


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    gaps_ = np.array([r["avg_gap"] for r in rows], float)
    ratios = np.array([r["time_ratio"] for r in rows if r["time_ratio"] is not None], float)
    return {"avg_gap_mean": float(gaps_.mean()), "avg_gap_std": float(gaps_.std()),
            "time_ratio_mean": float(ratios.mean()) if ratios.size else None,
            "per_seed": [{k: r[k] for k in ("seed", "avg_gap", "time_ratio", "metrics")} for r in rows]}
