"""MUSE's scalability and sustainability (Shi et al., ICLR 2025, criteria C5 and C6), for any post-hoc method.

Both draw their forget sets from one seeded order — the request's ids first, then the other training ids — so
scalability's growing forget sets are its prefixes and sustainability's disjoint folds its consecutive blocks.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from obliviate import pipeline
from obliviate.errors import ObliviateError
from obliviate.methods import Method
from obliviate.requests import ForgetRequest
from obliviate.seeding import numpy_rng


def check_folds(session, method: Method, request: ForgetRequest, scal: list[int] | None,
                sust: int | None) -> None:
    """Refuse a scalability / sustainability request that cannot be satisfied, before any work starts."""
    if scal:
        if min(scal) < 1:
            raise ObliviateError(f"--scal takes positive integers, e.g. 1,2,3,4; got {scal}")
        _check_total(session, method, request, max(scal) * request.n, "--scal")
    if sust is not None and sust != 0:
        if sust < 1:
            raise ObliviateError(f"--sust takes a positive number of folds, got {sust}")
        _check_total(session, method, request, sust * request.n, "--sust")


def add_folds(session, method: Method, request: ForgetRequest, seed: int, report: dict[str, Any],
              scal: list[int] | None, sust: int | None, evaluation_cache: dict | None = None) -> None:
    """Add the ``scalability`` (``scal`` factors) and ``sustainability`` (``sust`` folds) blocks to ``report``."""
    if scal:
        pipeline.add_block(report, "scalability", scalability(session, method, request, seed, scal,
                                                              evaluation_cache))
    if sust:
        pipeline.add_block(report, "sustainability", sustainability(session, method, request, seed, sust,
                                                                    evaluation_cache))


def scalability(session, method: Method, request: ForgetRequest, seed: int, factors: list[int],
                evaluation_cache: dict | None = None) -> dict[str, Any]:
    """Unlearn nested forget sets of ``factor`` × the request's size, each from the original, each against its
    own oracle (MUSE ``scal``)."""
    factors = sorted(set(int(k) for k in factors))
    if not factors or factors[0] < 1:
        raise ObliviateError(f"--scal takes positive integers, e.g. 1,2,3,4; got {factors}")
    check_folds(session, method, request, factors, None)
    order = fold_order(session.task, request, seed)
    points = []
    for k in factors:
        ids = np.sort(order[:k * request.n])
        r = session.run(method, ForgetRequest(f"{request.spec} x{k}", ids), seed,
                        evaluation_cache=evaluation_cache).report
        points.append({"factor": k, "n_forget": int(ids.size), **_summary(r)})
    return {"base_n": request.n, "order_seed": seed, "points": points}


def sustainability(session, method: Method, request: ForgetRequest, seed: int, folds: int,
                   evaluation_cache: dict | None = None) -> dict[str, Any]:
    """``folds`` sequential requests of disjoint folds (the first is the request), each applied to the previous
    step's model; after each, metrics on the fold just forgotten and on everything forgotten so far, against an
    oracle trained without all of it (MUSE ``sust``)."""
    if folds < 1:
        raise ObliviateError(f"--sust takes a positive number of folds, got {folds}")
    check_folds(session, method, request, None, folds)
    task, device = session.task, session.device
    order = fold_order(task, request, seed)
    steps, current = [], None
    for j in range(folds):
        fold = np.sort(order[j * request.n:(j + 1) * request.n])
        forgotten = np.sort(order[:(j + 1) * request.n])
        retain = np.setdiff1d(np.arange(task.n_train), forgotten)
        result = session.run(method, ForgetRequest(f"{request.spec} fold {j + 1}", fold), seed,
                             evaluation_cache=evaluation_cache, retain_ids=retain, start=current)
        r = result.report
        step = {"step": j + 1, "n_fold": int(fold.size), "n_forgotten": int(forgotten.size), **_summary(r)}
        if j > 0:
            oracle, _ = session.oracle(seed, ForgetRequest(f"{request.spec} folds 1-{j + 1}", forgotten), retain)
            cumulative = {"unlearned": result.model}
            if oracle is not None:
                cumulative["oracle"] = oracle
            step["cumulative"] = {role: pipeline.evaluate_model(task, model, forgotten, retain, seed, device, False,
                                                                oracle)[0] for role, model in cumulative.items()}
        steps.append(step)
        current = (result.model, {"sha256": r["models"]["unlearned"]["sha256"]})
    return {"fold_size": request.n, "folds": folds, "order_seed": seed, "steps": steps}


def fold_order(task, request: ForgetRequest, seed: int) -> np.ndarray:
    """The request's ids first, then the other training ids in a seeded order."""
    rest = np.setdiff1d(np.arange(task.n_train), request.ids)
    return np.concatenate([request.ids, numpy_rng(seed, 0x5CA1).permutation(rest)])


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("metrics", "gap", "avg_gap", "time_s")}


def _check_total(session, method: Method, request: ForgetRequest, total: int, what: str) -> None:
    if method.trains_original:
        raise ObliviateError(f"{what} applies to post-hoc methods; {method.name} owns its training")
    if total >= session.task.n_train:
        raise ObliviateError(f"{what} needs {total} forget examples ({request.n} per fold) but the task has "
                             f"{session.task.n_train}; nothing would remain (use a smaller --forget)")
