"""WGA: weighted gradient ascent — token-level GA with each answer token's NLL weighted by its own detached
probability to the power β, so tokens already unlikely stop being pushed (Wang et al., ICLR 2025,
arXiv 2502.19301). L = γ·L_WGA + α·L_r, GradDiff's combination.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from obliviate.methods import register
from obliviate.methods._lm import LMOptimConfig, LMRun, retain_term
from obliviate.methods._token_losses import logits, token_steps, wga_token_losses
from obliviate.methods.base import Method


@dataclass
class WGAConfig(LMOptimConfig):
    """β = 1, γ = α = 1, retain NLL, lr 1e-5, 5 epochs: locuslab/open-unlearning ``configs/trainer/WGA.yaml``
    (batch 8 × 4 accumulation = 32 and AdamW from its ``finetune.yaml``; :class:`LMOptimConfig`)."""

    beta: float = field(default=1.0, metadata={"help": "exponent β of the token weight sg(p)^β; 0 = token GA",
                                               "min": 0})
    gamma: float = field(default=1.0, metadata={"help": "weight γ of the forget term", "min": 0})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term", "min": 0})
    retain_loss: Literal["none", "nll", "kl"] = field(default="nll", metadata={
        "help": "none, nll (token-averaged retain NLL per sequence) or kl to the original"})
    epochs: int = field(default=5, metadata={"help": "passes over the forget set", "min": 1})


@register
class WGA(Method):
    name = "wga"
    guarantee = "approximate"
    needs = frozenset({"retain"})  # retain_loss=kl: the starting weights are the reference (LMRun)
    kinds = ("language",)
    config_class = WGAConfig
    summary = "token-level gradient ascent weighted by each token's detached probability^β (+ retain term)"
    reference = ("Wang et al. 2025, arXiv 2502.19301; open-unlearning src/trainer/unlearn/wga.py, "
                 "src/trainer/utils.py::compute_wga_loss")

    def unlearn(self, ctx):
        cfg = self.config
        run = LMRun(ctx, cfg, retain=cfg.retain_loss != "none",
                    reference="model" if cfg.retain_loss == "kl" else "none")

        def loss(forget, retain, mean):
            # one flat mean over the step's answer tokens (OU: [labels != -100].mean() over the batch)
            l_f = mean(wga_token_losses(logits(run.model, forget), forget["labels"], cfg.beta).sum(), forget)
            return cfg.gamma * l_f + cfg.alpha * retain_term(cfg.retain_loss, run, retain)

        for batch, mean in token_steps(run):
            run.step(lambda f, r: loss(f, r, mean), batch)
        return run.finish()
