"""Random labels: fine-tune on the forget set with uniformly random labels, interleaved with retain
batches (the CIFAR-10 branch of OPTML-Group/Unlearn-Saliency ``RL.py``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from obliviate.methods import register
from obliviate.methods._common import OptimConfig, loader, optimizer
from obliviate.methods.base import Method


@dataclass
class RandomLabelConfig(OptimConfig):
    """Defaults: Unlearn-Saliency ``arg_parser.py``: SGD lr 0.01, momentum 0.9, wd 5e-4, batch 256, 10 epochs."""

    lr: float = field(default=0.01, metadata={"help": "learning rate", "gt": 0, "tune": (1e-4, 1e-1, "log")})
    epochs: int = field(default=10, metadata={"help": "passes over forget then retain", "min": 1, "tune": (1, 20)})


def random_label_epoch(model, ctx, cfg, opt, gen, after_step=None) -> None:
    """One RL epoch: forget batches with fresh random labels, then retain batches with true labels."""
    n_classes = ctx.task.data.n_classes
    for xb, _ in loader(ctx.x_forget, None, cfg.batch_size, gen):
        fake = torch.randint(n_classes, (len(xb),), generator=gen).to(xb.device)
        _step(model, opt, F.cross_entropy(model(xb), fake), after_step)
    for xb, yb in loader(ctx.x_retain, ctx.y_retain, cfg.batch_size, gen):
        _step(model, opt, F.cross_entropy(model(xb), yb), after_step)


def _step(model, opt, loss, after_step) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if after_step is not None:
        after_step("grad")
    opt.step()
    if after_step is not None:
        after_step("param")


@register
class RandomLabel(Method):
    name = "random_label"
    guarantee = "approximate"
    needs = frozenset({"labels", "retain"})
    kinds = ("classification",)
    config_class = RandomLabelConfig
    summary = "relabel the forget set at random and fine-tune (with retain batches)"
    reference = "OPTML-Group/Unlearn-Saliency Classification/unlearn/RL.py"

    def unlearn(self, ctx):
        cfg, model = self.config, ctx.model.train()
        opt, gen = optimizer(model, cfg), ctx.generator()
        for _ in range(cfg.epochs):
            random_label_epoch(model, ctx, cfg, opt, gen)
        return model.eval()
