"""Gaussian fine-tuning ("Gaussian amnesiac"), the regression baseline of Deep Regression Unlearning
(Tarun et al., ICML 2023, arXiv 2210.08196).

Every forget target is replaced, once, by a draw from N(μ, σ²) fitted to the training targets; the original
is then fine-tuned on the retain rows and the relabelled forget rows, shuffled together. It is the regression
counterpart of random labels; the paper defines it for regression only, so it applies to regression tasks.

Official code (ayu987/deep-regression-unlearning; stored copy ayushkumartarun/deep-regression-unlearning):
AgeDB notebook ``In[22]``: ``mean = df_train['age'].mean()``, ``sd = df_train['age'].std()`` (the full
training set, pandas' ddof=1), ``np.random.normal(loc=mean, scale=sd, size=n_forget)`` (one fixed draw per
forget row, unseeded there), the forget rows of ``df_train`` relabelled; ``In[24]``: ``fit_one_cycle`` on that
relabelled ``df_train`` (retain + forget mixed, shuffled, batch 256, L1 loss) for 1 epoch with Adam lr 1e-3.
The STS-B notebook does the same with MSE (``In[27]``: ``train_df['score'].mean()/.std()``; ``In[28]``:
``fit_one_finetune_cycle(5, ..., 0.001)``) for 5 epochs — obliviate's defaults, since its regression loss is
the squared error too.

Choice of μ, σ (``stats_from``): the official notebooks use the whole training set D, forget cohort included.
obliviate defaults to the retain set D_r (label statistics derived from D carry
information about D_f into the unlearned model); ``stats_from="D"`` reproduces the notebooks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from obliviate.errors import ObliviateError
from obliviate.methods import register
from obliviate.methods._common import OptimConfig, loader, optimizer
from obliviate.methods.base import Method
from obliviate.training import task_loss


@dataclass
class GaussianFinetuneConfig(OptimConfig):
    """Defaults: STS-B notebook ``In[27]``-``In[28]`` (the official regression trained with MSE, like
    obliviate's; the same notebook gives Blindspot's defaults): Adam lr 1e-3, 5 epochs, batch 256, no weight
    decay, fine-tuning on D_r ∪ relabelled D_f. The AgeDB notebook (``In[22]``-``In[24]``, L1 loss) runs 1 epoch."""

    optimizer: Literal["sgd", "adam"] = field(default="adam", metadata={"help": "sgd or adam (official: adam)"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate", "gt": 0})
    epochs: int = field(default=5, metadata={"help": "passes over retain + relabelled forget (AgeDB: 1)",
                                             "min": 1})
    batch_size: int = field(default=256, metadata={"help": "mini-batch size", "min": 1})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay (official: none)", "min": 0})
    stats_from: Literal["D_r", "D"] = field(default="D_r", metadata={
        "help": "targets whose mean/std define the Gaussian: D_r = retain set (default: statistics of D leak D_f); "
                "D = whole training set (the official notebooks)"})
    base_loss: Literal["task", "l1"] = field(default="task", metadata={
        "help": "task: the task's squared error in standardised units (STS-B's MSE); l1: AgeDB's L1"})


def target_stats(y: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1, as pandas' ``Series.std``) of the targets ``y``."""
    y64 = np.asarray(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y, dtype=np.float64).ravel()
    if y64.size == 0:
        raise ObliviateError("gaussian_finetune: no training targets to fit the Gaussian to")
    sd = float(y64.std(ddof=1)) if y64.size > 1 else 0.0
    return float(y64.mean()), sd


def gaussian_targets(n: int, mu: float, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` draws from N(mu, sigma²) (float32), reproducible from the CPU generator ``gen``."""
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    return (mu + sigma * z).float()


@register
class GaussianFinetune(Method):
    name = "gaussian_finetune"
    guarantee = "approximate"
    needs = frozenset({"retain", "labels"})
    kinds = ("regression",)
    config_class = GaussianFinetuneConfig
    summary = "replace forget targets by draws from N(mean, std^2) of the training targets and fine-tune"
    reference = "Tarun et al., Deep Regression Unlearning, ICML 2023 (arXiv 2210.08196); ayu987/deep-regression-unlearning"

    def stats(self, ctx) -> tuple[float, float]:
        if self.config.stats_from == "D":
            return target_stats(ctx.task.data.y_train)
        return target_stats(ctx.y_retain)

    def unlearn(self, ctx):
        cfg, model = self.config, ctx.model.train()
        mu, sigma = self.stats(ctx)
        y_fake = gaussian_targets(len(ctx.x_forget), mu, sigma, ctx.generator(1)).to(ctx.x_forget.device)
        x = torch.cat([ctx.x_forget, ctx.x_retain])
        y = torch.cat([y_fake.to(ctx.y_retain.dtype), ctx.y_retain])
        scale = getattr(model, "y_std", None)
        opt, gen = optimizer(model, cfg), ctx.generator()
        for _ in range(cfg.epochs):
            for xb, yb in loader(x, y, cfg.batch_size, gen):
                out = model(xb)
                if cfg.base_loss == "l1":
                    loss = ((out - yb) / (scale if scale is not None else 1.0)).abs().mean()
                else:
                    loss = task_loss(ctx.kind, model, out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return model.eval()
