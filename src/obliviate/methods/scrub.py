"""SCRUB: a student moves away from the frozen original (teacher) on the forget set and stays close to
it on the retain set, alternating max- and min-steps (Kurmanji et al., NeurIPS 2023, arXiv 2302.09880)."""
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
    """Defaults: meghdadk/SCRUB ``small_scale_unlearning.ipynb`` (commit 812dd5d), cell "SCRUB Forgetting":
    ``optim='adam'``, ``sgda_learning_rate=0.0005``, ``sgda_weight_decay=0.1``, ``gamma=1``, ``alpha=0.5``,
    ``beta=0`` (its ``kd`` term is 0, so it is left out), ``kd_T=2``, ``msteps=3``, ``sgda_epochs=10``,
    ``lr_decay_epochs=[5,8,9]``, ``lr_decay_rate=0.1``; the cell "Data Loader": ``retain_bs=32``,
    ``forget_bs=64``. The retain cross-entropy is the plain ``nn.CrossEntropyLoss()``: the notebook's
    ``args.smoothing=0.5`` is not label smoothing but the SGDA/SWA smoothing factor, read only by a
    commented-out ``param_dist`` term in ``thirdparty/repdistiller/helper/loops.py``; ``label_smoothing``
    stays as an option, default 0. The lr schedule is ``helper/util.py::adjust_learning_rate``: in epoch
    e (1-based) lr = lr₀ · rate^#{m ∈ lr_decay_epochs : e > m}, i.e. ×0.1 from epoch 6, ×0.01 in epoch 9,
    ×0.001 in epoch 10. The large-scale notebook (CIFAR) differs: SGD, γ 0.99, α 0.001, kd_T 4, msteps 2,
    3 epochs, decay at [3, 5, 9]."""

    optimizer: Literal["sgd", "adam"] = field(default="adam", metadata={"help": "sgd or adam"})
    lr: float = field(default=5e-4, metadata={"help": "initial learning rate (sgda_learning_rate)", "gt": 0,
                                                   "tune": (1e-5, 1e-2, "log")})
    weight_decay: float = field(default=0.1, metadata={"help": "L2 weight decay", "min": 0})
    epochs: int = field(default=10, metadata={"help": "total epochs (sgda_epochs)", "min": 1, "tune": (1, 20)})
    msteps: int = field(default=3, metadata={"help": "the first msteps epochs include forget max-steps", "min": 0})
    gamma: float = field(default=1.0, metadata={"help": "weight of retain cross-entropy", "min": 0})
    alpha: float = field(default=0.5, metadata={"help": "weight of retain KL to the teacher", "min": 0})
    temperature: float = field(default=2.0, metadata={"help": "distillation temperature kd_T", "gt": 0})
    lr_decay_epochs: tuple[int, ...] = field(
        default=(5, 8, 9), metadata={"help": "lr is multiplied by lr_decay_rate after each of these epochs "
                                             "(comma-separated; empty: constant lr)", "min": 0})
    lr_decay_rate: float = field(default=0.1, metadata={"help": "factor of each lr decay", "gt": 0, "max": 1})
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the retain CE (official: none)",
                                                          "min": 0, "max": 1})
    batch_size: int = field(default=32, metadata={"help": "retain mini-batch size (retain_bs)", "min": 1})
    forget_batch_size: int = field(default=64, metadata={"help": "forget mini-batch size (forget_bs)", "min": 1})


def scheduled_lr(cfg: ScrubConfig, epoch: int) -> float:
    """lr of 1-based ``epoch``: one decay for every milestone the epoch is past (``adjust_learning_rate``)."""
    return cfg.lr * cfg.lr_decay_rate ** sum(epoch > m for m in cfg.lr_decay_epochs)


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
            for group in opt.param_groups:
                group["lr"] = scheduled_lr(cfg, epoch)
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
