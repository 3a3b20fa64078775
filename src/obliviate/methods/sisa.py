"""SISA as a registered method: the original is the sharded ensemble; unlearning is its deletion."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from obliviate.exact.sisa import SisaSystem
from obliviate.methods import register
from obliviate.methods.base import MethodConfig, TrainingTimeMethod


@dataclass
class SisaConfig(MethodConfig):
    """Shards and slices of the plan, and the serving aggregation. Each constituent uses the task's training
    recipe, its epochs spread over the cumulative slices with the official schedule (``sisa.py``).
    The official example scripts use one slice; obliviate defaults to 4 so a deletion resumes mid-shard."""

    shards: int = field(default=5, metadata={"help": "number of isolated shards (constituent models)", "min": 1})
    slices: int = field(default=4, metadata={"help": "cumulative slices per shard (one checkpoint each)", "min": 1})
    aggregation: Literal["vote", "softmax"] = field(
        default="vote", metadata={"help": "vote (official default 'argmax') or softmax (posterior averaging)"})
    verify: bool = field(default=False, metadata={"help": "after the deletion, retrain the live shards from scratch "
                                                          "and check the served weights are identical (costly)"})


@register
class Sisa(TrainingTimeMethod):
    name = "sisa"
    guarantee = "exact"
    needs = frozenset({"labels"})
    config_class = SisaConfig
    summary = "sharded, sliced training; a deletion retrains one shard from the checkpoint before its slice"
    reference = "Bourtoule et al., IEEE S&P 2021 (arXiv 1912.03817); cleverhans-lab/machine-unlearning"

    def fit(self, task, train_ids, recipe, seed, runtime):
        c = self.config
        return SisaSystem.fit(task, train_ids, c.shards, c.slices, recipe, seed, c.aggregation, runtime)

    def restore(self, task, recipe, seed, tensors, meta):
        return SisaSystem.restore(task, recipe, seed, tensors, meta)
