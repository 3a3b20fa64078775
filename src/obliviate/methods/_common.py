"""Small helpers shared by the gradient-based methods (kept here so each method reads top to bottom)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
import torch.nn.functional as F

from obliviate.methods.base import MethodConfig
from obliviate.training import batches, make_optimizer


@dataclass
class OptimConfig(MethodConfig):
    """Optimiser fields every gradient method has; subclasses redefine the defaults of their paper."""

    lr: float = field(default=1e-3, metadata={"help": "learning rate", "gt": 0})
    epochs: int = field(default=5, metadata={"help": "passes over the method's anchor set", "min": 1})
    batch_size: int = field(default=256, metadata={"help": "mini-batch size", "min": 1})
    optimizer: Literal["sgd", "adam"] = field(default="sgd", metadata={"help": "sgd (with momentum) or adam"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum", "min": 0, "max": 1})
    weight_decay: float = field(default=5e-4, metadata={"help": "L2 weight decay", "min": 0})


def optimizer(model: torch.nn.Module, cfg: OptimConfig):
    return make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)


def loader(x: torch.Tensor, y: torch.Tensor | None, batch_size: int, gen: torch.Generator) -> Iterator:
    """One shuffled pass over ``(x, y)`` in mini-batches."""
    for idx in batches(len(x), batch_size, gen):
        idx = idx.to(x.device)
        yield x[idx], (None if y is None else y[idx])


def sample(x: torch.Tensor, y: torch.Tensor | None, size: int, gen: torch.Generator):
    """A random mini-batch (with replacement across calls) — the retain partner of a forget batch."""
    idx = torch.randint(len(x), (size,), generator=gen).to(x.device)
    return x[idx], (None if y is None else y[idx])


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL_T(teacher ‖ student) · T², batch mean (repdistiller's ``DistillKL``)."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_s, p_t, reduction="batchmean") * temperature ** 2


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin
