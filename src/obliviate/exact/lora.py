"""LoRA blocks for S3T: low-rank adapters owned by slice positions.

Which Linears are wrapped: a model with ``lora_sites()`` (a pretrained transformer, e.g. MiniLM) names its
own targets — query and value of every layer, as the official code — and its ``head``; any other model
(the small reference nets) has every ``nn.Linear`` but the last (the head) wrapped.

Which position owns which wrapper (``owners``): ``full`` — every position adds an adapter to every wrapper
(the full-depth layout used for the small nets); ``blocks`` — the paper's layout, k = N // L layers per
position, top-down as ``get_layers`` in the official ``src/s3t_vit.py``: position p owns layers
N−1−(p·k+i), i < k (position 0 the top k layers).

Adapter ``i`` of a wrapper adds (α/√r)·B_i A_i dropout(x) (rsLoRA scaling, ``use_rslora=True`` in the
official code; LoRA dropout on the adapter input, active in training mode only, as peft's ``lora_dropout``);
only the first ``active`` adapters are applied, so deactivating positions never touches merged weights
(S3T, arXiv 2406.16257: a deactivated position must not leave its update in the weights).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from obliviate.errors import ConfigError

LAYOUTS = ("auto", "full", "blocks")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, layer: int | None = None):
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / math.sqrt(rank)
        self.dropout = dropout
        self.layer = layer  # transformer layer index (None: a small net's Linear)
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
        if self.active and self.dropout > 0 and self.training:
            x = F.dropout(x, self.dropout, training=True)  # seeded by the training loop (exactness)
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


def inject(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> tuple[list[LoRALinear], nn.Linear]:
    """Wrap the model's LoRA sites (or every Linear except the last) in LoRALinears; return them and the head."""
    if hasattr(model, "lora_sites"):
        wrappers = []
        for layer, parent, name in model.lora_sites():
            wrapped = LoRALinear(getattr(parent, name), rank, alpha, dropout, layer)
            setattr(parent, name, wrapped)
            wrappers.append(wrapped)
        return wrappers, model.head
    layers = linear_layers(model)
    if len(layers) < 2:
        raise ValueError("S3T needs a model with at least two Linear layers (a body to adapt and a head)")
    wrappers = []
    for parent, name, layer in layers[:-1]:
        wrapped = LoRALinear(layer, rank, alpha, dropout)
        setattr(parent, name, wrapped)
        wrappers.append(wrapped)
    return wrappers, layers[-1][2]


def resolve_layout(model: nn.Module, layout: str) -> str:
    """``auto``: the paper's ``blocks`` for a model with transformer layers (``lora_sites``), else ``full``."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown S3T layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        return "blocks" if hasattr(model, "lora_sites") else "full"
    if layout == "blocks" and not hasattr(model, "lora_sites"):
        raise ConfigError("s3t layout=blocks needs a transformer backbone (a model with lora_sites)")
    return layout


def block_layers(n_layers: int, slices: int, position: int) -> list[int]:
    """Layers owned by ``position``: k = N // L of them, top-down (official ``get_layers``)."""
    k = n_layers // slices
    if k == 0:
        raise ConfigError(f"s3t layout=blocks needs slices <= layers ({slices} slices, {n_layers} layers)")
    return [n_layers - 1 - (position * k + i) for i in range(k)]


def owners(wrappers: list[LoRALinear], layout: str, slices: int, position: int) -> list[int]:
    """Indices of the wrappers that ``position`` adds an adapter to (and trains)."""
    if layout == "full":
        return list(range(len(wrappers)))
    n_layers = 1 + max(w.layer for w in wrappers)
    mine = set(block_layers(n_layers, slices, position))
    return [i for i, w in enumerate(wrappers) if w.layer in mine]
