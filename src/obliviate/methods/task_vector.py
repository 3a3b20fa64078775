"""Task-vector negation (Ilharco et al., ICLR 2023, arXiv 2212.04089; a MUSE baseline).

Fine-tune the model further on the forget sequences (θ_ft), then subtract the "forget task vector":
τ = θ_ft − θ_o, θ_u = θ_o − α·τ, over every floating-point parameter — embeddings and norms included, as MUSE —
computed in fp32 and cast back to each parameter's dtype. The fine-tune may train LoRA adapters (merged before
the subtraction, so τ is then low-rank on the adapted modules and zero elsewhere).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from obliviate.lm import mean_nll
from obliviate.methods import register
from obliviate.methods._lm import LMOptimConfig, LMRun
from obliviate.methods.base import Method


@dataclass
class TaskVectorConfig(LMOptimConfig):
    """MUSE ``--algo tv`` (swj0419/muse_bench ``baselines/baselines/task_vector.py``, ``scripts/unlearn_news.sh``):
    the reinforced model is fine-tuned 10 epochs at lr 1e-5 (AdamW, batch 32: :class:`LMOptimConfig`), α = 5.
    The fine-tune's learning rate follows a cosine decay to 0 without warm-up: MUSE's ``baselines/finetune.py``
    (which ``unlearn.py --algo tv`` calls) sets ``lr_scheduler_type='cosine'`` and leaves the ``Trainer``'s
    warm-up at 0 — unlike its unlearning runs, which are constant. θ_o is kept in fp32 on ``ref_device``
    (default: the training device; ``cpu`` keeps it in host memory)."""

    alpha: float = field(default=5.0, metadata={"help": "scale α of the subtracted task vector", "min": 0})
    lr_schedule: Literal["constant", "linear", "cosine"] = field(default="cosine", metadata={
        "help": "learning rate of the fine-tune: cosine decay to 0 (MUSE's finetune.py), constant or linear"})


def fine_tune(ctx, cfg: LMOptimConfig):
    """θ_ft: ``ctx.model`` (changed in place) trained on the forget sequences by descent on the token-averaged NLL;
    LoRA adapters, if any, merged. Uses the same seeded generators as :class:`TaskVector`."""
    run = LMRun(ctx, cfg, retain=False)
    for batch in run.batches():
        run.step(lambda forget, _: mean_nll(run.model, forget), batch)
    return run.finish()


@register
class TaskVector(Method):
    name = "task_vector"
    guarantee = "approximate"
    needs = frozenset()
    kinds = ("language",)
    config_class = TaskVectorConfig
    summary = "fine-tune on the forget set, subtract α × the weight change"
    reference = "Ilharco et al. 2023, arXiv 2212.04089; MUSE baselines/baselines/task_vector.py"

    def unlearn(self, ctx):
        cfg = self.config
        keep = torch.device(cfg.ref_device) if cfg.ref_device else torch.device(ctx.device)  # θ_o off the GPU
        theta_o = {n: p.detach().to(keep, torch.float32, copy=True) for n, p in ctx.model.named_parameters()
                   if p.is_floating_point()}
        model = fine_tune(ctx, cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in theta_o:
                    start = theta_o.pop(n).to(p.device)
                    p.copy_(start - cfg.alpha * (p.float() - start))
        return model.eval()
