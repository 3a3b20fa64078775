"""SISA (Bourtoule et al. 2021): shards trained in isolation over cumulative slices, one checkpoint per
slice; a deletion retrains only its shard from the checkpoint before the affected slice (arXiv 1912.03817;
official code cleverhans-lab/machine-unlearning).

Exactness rests on three rules: a shard's initialisation, data order and dropout at slice ``r`` are seeded
by (seed, shard, r) only; the optimiser is fresh at every slice (so a checkpoint is the whole training
state); the input normaliser is fitted on the first non-empty slice and then frozen.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from obliviate.distributed import Runtime, run_jobs
from obliviate.exact.ensemble import ShardEnsemble
from obliviate.exact.plan import ShardPlan, derive_seed
from obliviate.training import train


def slice_epochs(total_epochs: int, slices: int) -> list[int]:
    """Official schedule (``sisa.py``): avg = 2R/(R+1)·e/R epochs per slice, later slices get more."""
    avg = 2 * slices / (slices + 1) * total_epochs / slices
    return [int((r + 1) * avg) - int(r * avg) for r in range(slices)]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def train_shard(task, slice_ids: list[np.ndarray], recipe, seed: int, shard: int, start_slice: int = 0,
                start_state: dict[str, torch.Tensor] | None = None, device: str = "cpu") -> list[dict]:
    """Train shard ``shard`` from slice ``start_slice`` (resuming from ``start_state``, the checkpoint after
    ``start_slice - 1``); return the checkpoints after each slice from ``start_slice`` on."""
    model = task.make_model(derive_seed(seed, "sisa", shard, "init"))
    if start_state is not None:
        model.load_state_dict(start_state)
    model.to(device)
    sizes = np.cumsum([len(p) for p in slice_ids])
    first_data = int(np.argmax(sizes > 0)) if sizes[-1] > 0 else len(slice_ids)
    x_all, y_all = task.data.x_train, task.data.y_train
    out = []
    for r, epochs in enumerate(slice_epochs(recipe.epochs, len(slice_ids))):
        if r < start_slice:
            continue
        ids = np.concatenate(slice_ids[: r + 1])
        train(model, x_all[ids], y_all[ids], recipe, task.kind, derive_seed(seed, "sisa", shard, r), device,
              description=f"sisa shard {shard} slice {r}", epochs=epochs, fit_normalizer=(r == first_data))
        out.append(_state(model))
    return out


class SisaSystem:
    """A trained SISA ensemble: its plan, every shard's per-slice checkpoints, and deletion."""

    def __init__(self, task, plan: ShardPlan, recipe, seed: int, aggregation: str,
                 checkpoints: list[list[dict]], retrained: list[int] | None = None):
        self.task, self.plan, self.recipe, self.seed = task, plan, recipe, seed
        self.aggregation = aggregation
        self.checkpoints = checkpoints  # [shard][slice] -> state dict
        self.retrain_count = retrained or [0] * plan.shards

    @classmethod
    def fit(cls, task, ids: np.ndarray, shards: int, slices: int, recipe, seed: int, aggregation: str,
            runtime: Runtime) -> "SisaSystem":
        plan = ShardPlan.build(ids, shards, slices, seed)
        jobs = [(task, plan.assignment[s], recipe, seed, s, 0, None, "cpu") for s in range(shards)]
        checkpoints = run_jobs(train_shard, jobs, runtime)
        return cls(task, plan, recipe, seed, aggregation, checkpoints)

    def shard_model(self, shard: int) -> torch.nn.Module:
        model = self.task.make_model(derive_seed(self.seed, "sisa", shard, "init"))
        model.load_state_dict(self.checkpoints[shard][-1])
        return model.eval()

    def live_shards(self) -> list[int]:
        return [s for s in range(self.plan.shards) if sum(len(p) for p in self.plan.assignment[s]) > 0]

    def served_model(self) -> torch.nn.Module:
        return ShardEnsemble([self.shard_model(s) for s in self.live_shards()], self.task.kind, self.aggregation).eval()

    def delete(self, ids: np.ndarray, runtime: Runtime) -> dict[str, Any]:
        """Remove ``ids``: per affected shard reload the checkpoint before the first hit slice and retrain the
        remaining slices of that shard only. Returns the cost accounting for the report."""
        start = time.perf_counter()
        by_shard, already = self.plan.locate(ids)
        jobs, resume = [], {}
        for s, hits in sorted(by_shard.items()):
            first = min(l for l, _ in hits)
            self.plan.remove(s, [i for _, i in hits])
            state = self.checkpoints[s][first - 1] if first > 0 else None
            resume[s] = first
            jobs.append((self.task, self.plan.assignment[s], self.recipe, self.seed, s, first, state, "cpu"))
        results = run_jobs(train_shard, jobs, runtime)
        reprocessed = 0
        for (s, first), new in zip(resume.items(), results):
            self.checkpoints[s] = self.checkpoints[s][:first] + new
            self.retrain_count[s] += 1
            reprocessed += sum(len(p) for p in self.plan.assignment[s])
        n_total = self.plan.n_alive + len(self.plan.deleted)
        return {"scheme": "sisa", "deleted": int(sum(len(h) for h in by_shard.values())),
                "already_deleted": already, "shards_touched": sorted(int(s) for s in by_shard),
                "slices_retrained": {int(s): self.plan.slices - f for s, f in resume.items()},
                "models_retrained": len(resume), "models_deactivated": 0,
                "examples_reprocessed": int(reprocessed), "fraction_reprocessed": reprocessed / max(1, n_total),
                "retrained_shards": sorted(int(s) for s in resume), "time_s": time.perf_counter() - start,
                "plan": self.plan.summary()}

    def verify(self, runtime: Runtime) -> dict[str, Any]:
        """Retrain every live shard from scratch on its surviving data (same plan, recipe and seeds) and compare
        with the served checkpoints, tensor for tensor: the evidence that this deletion was exact."""
        start = time.perf_counter()
        live = self.live_shards()
        jobs = [(self.task, self.plan.assignment[s], self.recipe, self.seed, s, 0, None, "cpu") for s in live]
        worst = 0.0
        for s, fresh in zip(live, run_jobs(train_shard, jobs, runtime)):
            for k, v in fresh[-1].items():
                diff = (v.double() - self.checkpoints[s][-1][k].double()).abs().max().item() if v.numel() else 0.0
                worst = max(worst, diff)
        return {"verified": worst == 0.0, "max_abs_diff": worst, "shards_checked": len(live),
                "time_s": time.perf_counter() - start}

    # -- persistence ----------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"s{s}/r{r}/{k}": v for s, row in enumerate(self.checkpoints) for r, st in enumerate(row)
                for k, v in st.items()}

    def meta(self) -> dict[str, Any]:
        return {"scheme": "sisa", "plan": self.plan.to_json(), "aggregation": self.aggregation,
                "retrain_count": self.retrain_count}

    @classmethod
    def restore(cls, task, recipe, seed: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "SisaSystem":
        plan = ShardPlan.from_json(meta["plan"])
        checkpoints: list[list[dict]] = [[{} for _ in range(plan.slices)] for _ in range(plan.shards)]
        for key, v in tensors.items():
            s, r, name = key.split("/", 2)
            checkpoints[int(s[1:])][int(r[1:])][name] = v
        return cls(task, plan, recipe, seed, meta["aggregation"], checkpoints, meta.get("retrain_count"))

    def copy(self) -> "SisaSystem":
        return SisaSystem(self.task, copy.deepcopy(self.plan), self.recipe, self.seed, self.aggregation,
                          [list(row) for row in self.checkpoints], list(self.retrain_count))
