"""SCRUB: a student moves away from the frozen original (teacher) on the forget set and stays close to
it on the retain set, alternating max- and min-steps (methods.md §12)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from obliviate.methods import register
from obliviate.methods._common import OptimConfig, distill_kl, frozen_copy, loader, optimizer
from obliviate.methods.base import Method


@dataclass
class ScrubConfig(OptimConfig):
    """Defaults: meghdadk/SCRUB ``small_scale_unlearning.ipynb`` (Adam lr 5e-4, wd 0.1, γ 1, α 0.5, T 2,
    3 max-step epochs of 10, label smoothing 0.5); batch sizes from the large-scale notebook."""

    optimizer: Literal["sgd", "adam"] = field(default="adam", metadata={"help": "sgd or adam"})
    lr: float = field(default=5e-4, metadata={"help": "learning rate", "gt": 0})
    weight_decay: float = field(default=0.1, metadata={"help": "L2 weight decay", "min": 0})
    epochs: int = field(default=10, metadata={"help": "total epochs (sgda_epochs)", "min": 1})
    msteps: int = field(default=3, metadata={"help": "epochs that include forget max-steps", "min": 0})
    gamma: float = field(default=1.0, metadata={"help": "weight of retain cross-entropy", "min": 0})
    alpha: float = field(default=0.5, metadata={"help": "weight of retain KL to the teacher", "min": 0})
    temperature: float = field(default=2.0, metadata={"help": "distillation temperature kd_T", "gt": 0})
    label_smoothing: float = field(default=0.5, metadata={"help": "label smoothing of the retain CE",
                                                          "min": 0, "max": 1})
    batch_size: int = field(default=128, metadata={"help": "retain mini-batch size", "min": 1})
    forget_batch_size: int = field(default=32, metadata={"help": "forget mini-batch size", "min": 1})


@register
class Scrub(Method):
    name = "scrub"
    guarantee = "approximate"
    needs = frozenset({"labels", "original", "retain"})
    kinds = ("classification",)
    config_class = ScrubConfig
    summary = "teacher-student: diverge from the original on forget, match it on retain"
    reference = "Kurmanji et al., NeurIPS 2023 (arXiv 2302.09880); meghdadk/SCRUB"

    def unlearn(self, ctx):
        cfg, student = self.config, ctx.model.train()
        teacher = frozen_copy(ctx.original)
        opt, gen = optimizer(student, cfg), ctx.generator()
        for epoch in range(1, cfg.epochs + 1):
            if epoch <= cfg.msteps:
                for xf, _ in loader(ctx.x_forget, None, cfg.forget_batch_size, gen):
                    with torch.no_grad():
                        t_out = teacher(xf)
                    loss = -distill_kl(student(xf), t_out, cfg.temperature)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            for xr, yr in loader(ctx.x_retain, ctx.y_retain, cfg.batch_size, gen):
                with torch.no_grad():
                    t_out = teacher(xr)
                s_out = student(xr)
                loss = (cfg.gamma * F.cross_entropy(s_out, yr, label_smoothing=cfg.label_smoothing)
                        + cfg.alpha * distill_kl(s_out, t_out, cfg.temperature))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return student.eval()
