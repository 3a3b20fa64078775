"""Retrain from scratch on the retain set with the original recipe and seed: the exact reference."""
from __future__ import annotations

from dataclasses import dataclass

from obliviate.methods import register
from obliviate.methods.base import Method, MethodConfig
from obliviate.training import train


@dataclass
class RetrainConfig(MethodConfig):
    """No hyperparameters: the task's training recipe (``--set train.*``) is used as is."""


@register
class Retrain(Method):
    name = "retrain"
    guarantee = "exact"
    needs = frozenset({"retain", "labels"})
    config_class = RetrainConfig
    summary = "train a fresh model on the retain set with the original recipe and seed"
    reference = "gold standard; SalUn/SCRUB protocol 'retrain'"
    kinds = ("classification", "regression", "language")

    def unlearn(self, ctx):
        model = ctx.task.make_model(ctx.seed)  # fresh initialisation, not the original's weights
        if ctx.kind == "language":  # the task's own loop (a given HF model cannot be retrained: it says so)
            return ctx.task.train_model(model, ctx.retain_ids, ctx.recipe, ctx.seed, ctx.device, "retrain")
        x = ctx.task.data.x_train[ctx.retain_ids]
        y = ctx.task.data.y_train[ctx.retain_ids]
        return train(model, x, y, ctx.recipe, ctx.kind, ctx.seed, ctx.device, description="retrain")
