"""Gradient ascent (NegGrad): maximise the task loss on the forget set (the GA baseline of
OPTML-Group/Unlearn-Sparse ``Classification/unlearn/GA.py``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from obliviate.methods import register
from obliviate.methods._common import OptimConfig, loader, optimizer
from obliviate.methods.base import Method
from obliviate.training import task_loss


@dataclass
class GradientAscentConfig(OptimConfig):
    """Defaults: OPTML-Group/Unlearn-Sparse ``GA.py`` (SGD lr 1e-4, momentum 0.9, wd 5e-4, 5 epochs, batch 256).

    The objective is unbounded: too many steps collapse the model. Tune ``lr``/``epochs`` per task.
    """

    lr: float = field(default=1e-4, metadata={"help": "learning rate", "gt": 0, "tune": (1e-5, 1e-1, "log")})
    epochs: int = field(default=5, metadata={"help": "passes over the forget set", "min": 1, "tune": (1, 20)})


@register
class GradientAscent(Method):
    name = "gradient_ascent"
    guarantee = "approximate"
    needs = frozenset({"labels"})
    config_class = GradientAscentConfig
    summary = "ascend the loss on the forget set"
    reference = "OPTML-Group/Unlearn-Sparse Classification/unlearn/GA.py"

    def unlearn(self, ctx):
        cfg, model = self.config, ctx.model.train()
        opt, gen = optimizer(model, cfg), ctx.generator()
        for _ in range(cfg.epochs):
            for xb, yb in loader(ctx.x_forget, ctx.y_forget, cfg.batch_size, gen):
                loss = -task_loss(ctx.kind, model, model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return model.eval()
