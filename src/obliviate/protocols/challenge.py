"""The NeurIPS 2023 machine-unlearning challenge (Triantafillou et al., 2024): N runs of the method from one
original (unlearning seeds 0..N-1) against N oracles (training seeds 0..N-1 on the retain set, cached like any
oracle), all fanned out over the runtime's executor, scored by :mod:`obliviate.metrics.challenge`."""
from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from obliviate import pipeline
from obliviate.distributed import Runtime, run_jobs
from obliviate.errors import ObliviateError
from obliviate.methods import Method
from obliviate.metrics import challenge as challenge_metric
from obliviate.models.store import ModelStore
from obliviate.oracle import retrain_oracle
from obliviate.requests import ForgetRequest
from obliviate.training import predict


def check_challenge(n: int, task) -> int:
    """``n`` as an int, 0 for no challenge; a one-line error for a count or a task the challenge cannot take."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ObliviateError(f"--challenge must be an integer number of models, got {n!r}")
    n = int(n)
    if n == 0:
        return 0
    if n < 3:
        raise ObliviateError(f"--challenge N needs N >= 3 (N retrained and N unlearned models per method; with "
                             f"N = 2 the official buckets are empty and F is always 0), got {n}")
    if task.kind != "classification":
        raise ObliviateError(f"--challenge needs a classification task (it scores logit-scaled confidences); "
                             f"{task.name} is a {task.kind} task")
    return n


def challenge(session, method: Method, request: ForgetRequest, seed: int, n: int) -> dict[str, Any]:
    """The challenge block for ``method`` on ``request``, from the original of ``seed``."""
    task, device = session.task, str(session.device)
    retain_ids = session.retain_ids(request)
    retrained = session.memo(("challenge-oracles", request.sha256, n), lambda: run_jobs(
        _oracle_job, [(task, retain_ids, request.ids, session.recipe, i, device, str(session.store.root),
                       session.store.enabled) for i in range(n)], session.runtime))
    if method.trains_original:
        system, _ = session.system(method, seed)
        original = system.served_model()
        systems = [session.system(method, seed)[0] for _ in range(n)]  # each run deletes from its own copy
    else:
        original = session.original(seed)[0]
        systems = [None] * n
    original = copy.deepcopy(original).cpu()
    jobs = [(task, method, original, request, session.recipe, i, device, systems[i]) for i in range(n)]
    start = time.perf_counter()
    unlearned = run_jobs(_unlearn_job, jobs, session.runtime)
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


# -- executor jobs (module-level functions: Ray pickles them by reference) ------------------------------------

def _outputs(task, model, forget_ids, retain_ids, device) -> dict[str, Any]:
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


def _unlearn_job(task, method: Method, original: torch.nn.Module, request: ForgetRequest, recipe, seed: int,
                 device: str, system=None) -> dict[str, Any]:
    """One run of the unlearning algorithm from the (shared) original, with unlearning seed ``seed``."""
    dev = torch.device(device)
    ctx = pipeline.build_context(task, method, original.to(dev), request, recipe, seed, dev,
                                 Runtime(device=dev, executor="serial"), system=system)
    out = pipeline.apply_method(method, ctx, request)
    return _outputs(task, out.model, request.ids, ctx.retain_ids, dev)


def _oracle_job(task, retain_ids: np.ndarray, forget_ids: np.ndarray, recipe, seed: int, device: str,
                store_root: str, store_enabled: bool) -> dict[str, Any]:
    """One retrained model (training seed ``seed``, retain set only), from the model cache when it is there."""
    dev = torch.device(device)
    model, meta = retrain_oracle(task, retain_ids, recipe, seed, dev, ModelStore(store_root, enabled=store_enabled))
    return dict(_outputs(task, model, forget_ids, retain_ids, dev), cached=bool(meta["cached"]))
