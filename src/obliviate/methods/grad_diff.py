"""GradDiff: gradient ascent on the forget set plus a retain-set descent term
(Liu et al., CoLLAs 2022, arXiv 2203.12817; locuslab/open-unlearning ``src/trainer/unlearn/grad_diff.py``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from obliviate.methods import register
from obliviate.methods._common import OptimConfig, loader, optimizer, sample
from obliviate.methods.base import Method
from obliviate.training import task_loss


@dataclass
class GradDiffConfig(OptimConfig):
    """γ = α = 1 as in OpenUnlearning ``GradDiff.yaml``; anchored on forget batches, each paired with a random
    retain batch of the same size. The classifier optimiser defaults follow GA (SGD, lr 1e-4, 5 epochs)."""

    gamma: float = field(default=1.0, metadata={"help": "weight of the forget (ascent) term", "min": 0,
                                            "tune": (0.1, 10.0, "log")})
    alpha: float = field(default=1.0, metadata={"help": "weight of the retain (descent) term", "min": 0})
    lr: float = field(default=1e-4, metadata={"help": "learning rate", "gt": 0, "tune": (1e-5, 1e-1, "log")})
    epochs: int = field(default=5, metadata={"help": "passes over the forget set", "min": 1, "tune": (1, 20)})


@register
class GradDiff(Method):
    name = "grad_diff"
    guarantee = "approximate"
    needs = frozenset({"labels", "retain"})
    config_class = GradDiffConfig
    summary = "ascent on forget + descent on retain"
    reference = "locuslab/open-unlearning src/trainer/unlearn/grad_diff.py"

    def unlearn(self, ctx):
        cfg, model = self.config, ctx.model.train()
        opt, gen = optimizer(model, cfg), ctx.generator()
        for _ in range(cfg.epochs):
            for xf, yf in loader(ctx.x_forget, ctx.y_forget, cfg.batch_size, gen):
                xr, yr = sample(ctx.x_retain, ctx.y_retain, len(xf), gen)
                loss = (-cfg.gamma * task_loss(ctx.kind, model, model(xf), yf)
                        + cfg.alpha * task_loss(ctx.kind, model, model(xr), yr))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return model.eval()
