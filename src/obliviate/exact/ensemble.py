"""Serving a sharded model: aggregate the live shards' outputs into one prediction."""
from __future__ import annotations

import torch
from torch import nn


class ShardEnsemble(nn.Module):
    """Classification returns log-probabilities (so a softmax of the output gives the served distribution);
    regression returns the mean prediction.

    ``aggregation``: ``logits`` (mean of logits, S3T), ``softmax`` (mean of probabilities, SISA posterior
    averaging) or ``vote`` (plurality vote, SISA's default; ties broken by the mean probability).
    """

    def __init__(self, members: list[nn.Module], kind: str, aggregation: str = "logits"):
        super().__init__()
        if not members:
            raise ValueError("a sharded model needs at least one live shard")
        self.members = nn.ModuleList(members)
        self.kind = kind
        self.aggregation = aggregation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([m(x) for m in self.members])
        if self.kind != "classification":
            return outs.mean(0)
        if self.aggregation == "logits":
            return torch.log_softmax(outs.mean(0), dim=-1)
        probs = torch.softmax(outs, dim=-1)
        if self.aggregation == "softmax":
            return torch.log(probs.mean(0).clamp_min(1e-12))
        votes = torch.nn.functional.one_hot(outs.argmax(-1), outs.shape[-1]).to(probs.dtype).mean(0)
        blended = votes + 1e-3 * probs.mean(0)
        return torch.log((blended / blended.sum(-1, keepdim=True)).clamp_min(1e-12))
