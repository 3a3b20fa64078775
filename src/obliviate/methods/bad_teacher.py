"""Bad Teacher: distil a student from a competent and an incompetent teacher.

Chundawat et al., AAAI 2023, "Can bad teaching induce forgetting?" (vikram2000b/bad-teaching-unlearning
``unlearn.py``, ``dataset.py::UnLearningData``, notebook ``CIFARSuper20_Rocket_Unlearn.ipynb``). The student
starts from the original; the competent teacher is the frozen original, the incompetent teacher a frozen,
randomly initialised model of the same architecture. The data are the forget set (u = 1) and a random 30 %
of the retain set (u = 0); labels are never read, only u:

    p_T = u·softmax(bad(x)/T) + (1 − u)·softmax(good(x)/T),     L = KL(p_T ‖ softmax(s(x)/T))

``reduction="mean"`` is the official ``F.kl_div`` default: the element-wise KL averaged over N·C entries, i.e.
the batch-mean KL divided by the number of classes C. ``"batchmean"`` is the textbook KL per example. Under
Adam (the official optimiser) the two differ only through Adam's ε (Adam is invariant to a constant loss
scale), so the default keeps the official quirk; with SGD ``mean`` is a C-times smaller step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from obliviate.methods import register
from obliviate.methods._common import OptimConfig, frozen_copy, optimizer
from obliviate.methods.base import Method
from obliviate.training import batches


@dataclass
class BadTeacherConfig(OptimConfig):
    """Defaults: the official notebook (T = 1, Adam lr 1e-4, 1 epoch, batch 256, retain subset 30 %, torch's
    ``kl_div`` default reduction ``mean``); Adam without weight decay as in ``torch.optim.Adam(lr=...)``."""

    optimizer: Literal["sgd", "adam"] = field(default="adam", metadata={"help": "sgd or adam (official: adam)"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate", "gt": 0, "tune": (1e-5, 1e-2, "log")})
    epochs: int = field(default=1, metadata={"help": "passes over forget ∪ retain subset", "min": 1, "tune": (1, 10)})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay", "min": 0})
    temperature: float = field(default=1.0, metadata={"help": "distillation temperature T (KL_temperature)",
                                                      "gt": 0, "tune": (0.5, 4.0)})
    retain_fraction: float = field(default=0.3, metadata={
        "help": "fraction of the retain set distilled from the competent teacher", "min": 0, "max": 1})
    reduction: Literal["mean", "batchmean"] = field(default="mean", metadata={
        "help": "kl_div reduction: mean (official; also divides by the number of classes) or batchmean"})


def bad_teacher_loss(student_logits: torch.Tensor, good_logits: torch.Tensor, bad_logits: torch.Tensor,
                     is_forget: torch.Tensor, temperature: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """The official ``UnlearnerLoss``: KL(p_T ‖ softmax(s/T)) with p_T mixing the teachers by the forget flag."""
    u = is_forget.to(student_logits.dtype).unsqueeze(1)
    p_t = u * F.softmax(bad_logits / temperature, dim=1) + (1 - u) * F.softmax(good_logits / temperature, dim=1)
    # element-wise KL reduced by hand: "mean" is torch's deprecated default (warns), same value as sum/(N·C)
    kl = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), p_t, reduction="none")
    return kl.mean() if reduction == "mean" else kl.sum() / student_logits.shape[0]


def retain_subset(n_retain: int, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Sorted positions of a seeded random ``int(fraction · n)`` subset (the notebook's ``random.sample``)."""
    k = int(fraction * n_retain)
    return torch.randperm(n_retain, generator=gen)[:k].sort().values


def incompetent_teacher(ctx) -> torch.nn.Module:
    """A frozen, randomly initialised model of the task's architecture, seeded from the run seed.

    Its buffers (input standardisation) are the original's, so both teachers see the same inputs; its
    weights are a fresh draw with a seed distinct from the one the original was initialised with.
    """
    seed = int(ctx.generator(1).initial_seed())
    with torch.random.fork_rng(devices=[]):  # make_model reseeds the global RNG; keep the caller's stream
        bad = ctx.task.make_model(seed)
    buffers = dict(ctx.original.named_buffers())
    with torch.no_grad():
        for name, buf in bad.named_buffers():
            if name in buffers and buffers[name].shape == buf.shape:
                buf.copy_(buffers[name])
    return frozen_copy(bad.to(ctx.device))


@register
class BadTeacher(Method):
    name = "bad_teacher"
    guarantee = "approximate"
    needs = frozenset({"retain", "original"})
    kinds = ("classification",)
    config_class = BadTeacherConfig
    summary = "distil from the original on retain data and from a random network on the forget set"
    reference = "Chundawat et al., AAAI 2023 (arXiv 2205.08096); vikram2000b/bad-teaching-unlearning unlearn.py"

    def unlearn(self, ctx):
        cfg, student = self.config, ctx.model.train()
        good = frozen_copy(ctx.original)
        bad = incompetent_teacher(ctx)
        keep = retain_subset(len(ctx.x_retain), cfg.retain_fraction, ctx.generator(2)).to(ctx.x_retain.device)
        x = torch.cat([ctx.x_forget, ctx.x_retain[keep]])
        u = torch.cat([torch.ones(len(ctx.x_forget)), torch.zeros(len(keep))]).to(x.device)
        opt, gen = optimizer(student, cfg), ctx.generator()
        for _ in range(cfg.epochs):
            for idx in batches(len(x), cfg.batch_size, gen):
                idx = idx.to(x.device)
                xb = x[idx]
                with torch.no_grad():
                    good_out, bad_out = good(xb), bad(xb)
                loss = bad_teacher_loss(student(xb), good_out, bad_out, u[idx], cfg.temperature, cfg.reduction)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return student.eval()
