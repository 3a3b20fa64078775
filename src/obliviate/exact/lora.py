"""LoRA blocks for the small reference nets: one low-rank adapter per S3T slice position.

Every ``nn.Linear`` but the last (the head) is wrapped; adapter ``i`` adds (α/√r)·B_i A_i (rsLoRA
scaling, as ``use_rslora=True`` in the official S3T code) and only the first ``active`` adapters are
applied, so deactivating positions never touches merged weights (methods.md §3 pitfall 2).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / math.sqrt(rank)
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        self.active = 0

    def add_adapter(self, generator: torch.Generator) -> None:
        a = torch.empty(self.rank, self.base.in_features)
        bound = 1.0 / math.sqrt(self.base.in_features)  # kaiming-uniform(a=√5) bound, as peft initialises A
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A.append(nn.Parameter(a.to(self.base.weight.device)))
        self.lora_B.append(nn.Parameter(torch.zeros(self.base.out_features, self.rank, device=self.base.weight.device)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for i in range(self.active):
            y = y + (x @ self.lora_A[i].T) @ self.lora_B[i].T * self.scale
        return y


def linear_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute name, layer) of every nn.Linear in registration order, not counting the frozen
    base layer inside a LoRALinear (so after ``inject`` the last entry is still the head)."""
    out = []
    for parent in model.modules():
        if isinstance(parent, LoRALinear):
            continue
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                out.append((parent, name, child))
    return out


def inject(model: nn.Module, rank: int, alpha: float) -> tuple[list[LoRALinear], nn.Linear]:
    """Wrap every Linear except the last in a LoRALinear; return the wrappers and the head."""
    layers = linear_layers(model)
    if len(layers) < 2:
        raise ValueError("S3T needs a model with at least two Linear layers (a body to adapt and a head)")
    wrappers = []
    for parent, name, layer in layers[:-1]:
        wrapped = LoRALinear(layer, rank, alpha)
        setattr(parent, name, wrapped)
        wrappers.append(wrapped)
    return wrappers, layers[-1][2]
