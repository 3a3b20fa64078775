"""SalUn: random-label unlearning restricted to the weights most salient for the forget loss
(Fan et al., ICLR 2024, arXiv 2310.12508).

The mask (OPTML-Group/Unlearn-Saliency ``Classification/generate_mask.py::save_gradient_ratio``, commit
ac880a2) keeps the top ``mask_ratio`` of weights ranked globally by |Σ_batches ∇(−CE)| over the forget
batches at the original weights, with the model in **eval mode** (``model.eval()`` before the loop: no
dropout noise, BatchNorm running statistics), exactly ``int(ratio · #weights)`` of them (``ranks <
threshold_index``). Masked-out weights then get no gradient, their momentum is zeroed and they are reset
after every step (the official "Fix weight decay (#33)" behaviour); the unlearning itself runs in train
mode, as ``unlearn/RL.py`` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from obliviate.methods import register
from obliviate.methods._common import OptimConfig, loader, optimizer
from obliviate.methods.base import Method
from obliviate.methods.random_label import random_label_epoch


@dataclass
class SalUnConfig(OptimConfig):
    """Defaults: Unlearn-Saliency README (CIFAR-10 random 10 %): mask ``with_0.5``, lr 0.013, 10 epochs,
    SGD momentum 0.9, wd 5e-4, batch 256."""

    mask_ratio: float = field(default=0.5, metadata={"help": "fraction of weights updated (top saliency)",
                                                     "gt": 0, "max": 1, "tune": (0.1, 0.9)})
    lr: float = field(default=0.013, metadata={"help": "learning rate", "gt": 0, "tune": (1e-4, 1e-1, "log")})
    epochs: int = field(default=10, metadata={"help": "passes over forget then retain", "min": 1,
                                                   "tune": (1, 20)})


def saliency_mask(model, x_forget, y_forget, batch_size: int, ratio: float) -> dict[str, torch.Tensor]:
    """1 for the top ``ratio`` of parameters by |Σ_batches ∇(−CE)|, ranked over the whole model.

    The gradients are taken in eval mode (``generate_mask.py`` calls ``model.eval()``), so the mask does not
    depend on dropout draws or batch statistics; the model's mode is restored afterwards. Ties are broken
    by position (a stable sort), so exactly ``int(ratio · n)`` weights are kept (at least one). Batches are
    taken in order (official: a shuffled loader, the same sum except for which rows make the short last batch).
    """
    was_training = model.training
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = {n: torch.zeros_like(p) for n, p in named}
    for start in range(0, len(x_forget), batch_size):
        model.zero_grad(set_to_none=True)
        loss = -F.cross_entropy(model(x_forget[start:start + batch_size]), y_forget[start:start + batch_size])
        loss.backward()
        for n, p in named:
            if p.grad is not None:
                grads[n] += p.grad.detach()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    keep = max(1, int(ratio * flat.numel()))
    chosen = torch.zeros_like(flat)
    chosen[torch.argsort(flat, descending=True, stable=True)[:keep]] = 1
    masks, start = {}, 0
    for n, g in grads.items():
        masks[n] = chosen[start:start + g.numel()].view_as(g)
        start += g.numel()
    return masks


@register
class SalUn(Method):
    name = "salun"
    guarantee = "approximate"
    needs = frozenset({"labels", "retain"})
    kinds = ("classification",)
    config_class = SalUnConfig
    summary = "random labels on the weights most salient for the forget set"
    reference = "Fan et al., ICLR 2024 (arXiv 2310.12508); OPTML-Group/Unlearn-Saliency"

    def unlearn(self, ctx):
        cfg, model = self.config, ctx.model
        mask = saliency_mask(model, ctx.x_forget, ctx.y_forget, cfg.batch_size, cfg.mask_ratio)
        model.train()
        params = dict(model.named_parameters())
        opt, gen = optimizer(model, cfg), ctx.generator()

        for _ in range(cfg.epochs):
            start = {n: p.detach().clone() for n, p in params.items()}

            def after_step(phase: str) -> None:
                with torch.no_grad():
                    for n, p in params.items():
                        m = mask[n]
                        if phase == "grad" and p.grad is not None:
                            p.grad.mul_(m)
                        elif phase == "param":
                            p.copy_(m * p + (1 - m) * start[n])
                            buf = opt.state.get(p, {}).get("momentum_buffer")
                            if buf is not None:
                                buf.mul_(m)

            random_label_epoch(model, ctx, cfg, opt, gen, after_step)
        return model.eval()
