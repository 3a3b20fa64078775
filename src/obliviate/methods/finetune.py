"""Fine-tune on the retain set only and rely on catastrophic forgetting (the FT baseline
of OPTML-Group/Unlearn-Sparse ``Classification/unlearn/FT.py``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from obliviate.methods import register
from obliviate.methods._common import OptimConfig, loader, optimizer
from obliviate.methods.base import Method
from obliviate.training import task_loss


@dataclass
class FinetuneConfig(OptimConfig):
    """Defaults: SalUn / l1-sparse protocol (OPTML-Group/Unlearn-Sparse ``FT.py``): SGD lr 0.01, 10 epochs."""

    lr: float = field(default=0.01, metadata={"help": "learning rate", "gt": 0, "tune": (1e-4, 1e-1, "log")})
    epochs: int = field(default=10, metadata={"help": "passes over the retain set", "min": 1, "tune": (1, 20)})


@register
class Finetune(Method):
    name = "finetune"
    guarantee = "approximate"
    needs = frozenset({"retain", "labels"})
    config_class = FinetuneConfig
    summary = "continue training on the retain set only"
    reference = "OPTML-Group/Unlearn-Sparse Classification/unlearn/FT.py"

    def unlearn(self, ctx):
        cfg, model = self.config, ctx.model.train()
        opt, gen = optimizer(model, cfg), ctx.generator()
        for _ in range(cfg.epochs):
            for xb, yb in loader(ctx.x_retain, ctx.y_retain, cfg.batch_size, gen):
                loss = task_loss(ctx.kind, model, model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return model.eval()
