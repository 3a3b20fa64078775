"""Relearn time of a finished run (Golatkar et al., CVPR 2020; the anamnesis index of Chundawat et al., AAAI
2023): how many fine-tuning steps on the forget set bring the original, the unlearned model and the oracle back to
the original's forget metric, measured by :mod:`obliviate.metrics.relearn`."""
from __future__ import annotations

import dataclasses

import torch

from obliviate import pipeline
from obliviate.errors import ConfigError, ObliviateError
from obliviate.metrics.relearn import (RelearnConfig, anamnesis_index, forget_metric, relearn_config_summary,
                                       relearn_time, target_value)
from obliviate.requests import ForgetRequest


def relearn_config(relearn: bool | dict | RelearnConfig | None, task) -> RelearnConfig | None:
    """The relearn settings ``relearn`` asks for (``True``: the defaults), ``None`` for none; a one-line error for
    an unknown key or a language task."""
    cfg = _as_config(relearn)
    if cfg is not None and task.kind == "language":
        raise ObliviateError("--relearn measures relearn time of classifiers and regressors; for language models "
                             "use the relearn audit (obliviate audit)")
    return cfg


def add_relearn(session, result, request: ForgetRequest, seed: int, cfg: RelearnConfig) -> None:
    """Add ``relearn_steps`` to each role's metrics of ``result.report`` (and the ``anamnesis`` index, unlearned
    and original ÷ oracle steps, when there is an oracle) and its ``relearn`` block. The original's and the
    oracle's times are computed once per session."""
    report, kind, task = result.report, session.task.kind, session.task
    original = result.original
    original_value = forget_metric(kind, original, task.data.x_train[request.ids], task.data.y_train[request.ids],
                                   session.device)
    target = target_value(kind, original_value, cfg.alpha)

    def measure(model: torch.nn.Module):
        return relearn_time(model, task, request.ids, target, config=cfg, seed=seed, device=session.device)

    shas = report["models"]
    rts = {"original": session.memo(("relearn", "original", shas["original"]["sha256"], request.sha256, seed,
                                     target, cfg), lambda: measure(original)),
           "unlearned": measure(result.model)}
    if "oracle" in report["metrics"]:
        rts["oracle"] = session.memo(("relearn", "oracle", shas["oracle"]["sha256"], request.sha256, seed, target,
                                      cfg), lambda: measure(result.oracle))
    metrics = {role: dict(values) for role, values in report["metrics"].items()}  # cached dicts stay untouched
    for role, rt in rts.items():
        metrics[role]["relearn_steps"] = rt.steps
    if "oracle" in rts:
        for role in ("original", "unlearned"):
            metrics[role]["anamnesis"] = anamnesis_index(rts[role].steps, rts["oracle"].steps)
    report["metrics"] = metrics
    pipeline.add_block(report, "relearn", {
        **relearn_config_summary(kind, cfg), "original_value": original_value, "target": target,
        "saturated": {r: rt.saturated for r, rt in rts.items()}, "start": {r: rt.start for r, rt in rts.items()},
        "final": {r: rt.final for r, rt in rts.items()}})


def _as_config(relearn: bool | dict | RelearnConfig | None) -> RelearnConfig | None:
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
