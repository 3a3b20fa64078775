"""SatImp: token-weighted gradient ascent whose weight sg(p)^β1 · (1 − sg(p))^β2 favours tokens that are likely
but not yet saturated (Yang et al. 2025, "Exploring criteria of loss reweighting to enhance LLM
unlearning", arXiv 2505.11953). L = γ·L_SatImp + α·L_r, GradDiff's combination.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from obliviate.methods import register
from obliviate.methods._lm import LMOptimConfig, LMRun, retain_term
from obliviate.methods._token_losses import logits, satimp_token_losses, token_steps
from obliviate.methods.base import Method


@dataclass
class SatImpConfig(LMOptimConfig):
    """β1 = 5, β2 = 1, γ = 0.1, α = 1, retain NLL, lr 1e-5, 5 epochs: locuslab/open-unlearning
    ``configs/trainer/SatImp.yaml`` (its values override the class defaults γ = 1, α = 0.1 of
    ``src/trainer/unlearn/satimp.py``); batch 32 and AdamW from ``finetune.yaml`` (:class:`LMOptimConfig`)."""

    beta1: float = field(default=5.0, metadata={"help": "exponent β1 of sg(p) in the token weight", "min": 0})
    beta2: float = field(default=1.0, metadata={"help": "exponent β2 of (1 − sg(p)) in the token weight",
                                                "min": 0})
    gamma: float = field(default=0.1, metadata={"help": "weight γ of the forget term", "min": 0})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term", "min": 0})
    retain_loss: Literal["none", "nll", "kl"] = field(default="nll", metadata={
        "help": "none, nll (token-averaged retain NLL per sequence) or kl to the original"})
    epochs: int = field(default=5, metadata={"help": "passes over the forget set", "min": 1})


@register
class SatImp(Method):
    name = "satimp"
    guarantee = "approximate"
    needs = frozenset({"retain"})
    kinds = ("language",)
    config_class = SatImpConfig
    summary = "token-level gradient ascent weighted by sg(p)^β1·(1−sg(p))^β2 (+ retain term)"
    reference = ("Yang et al. 2025, arXiv 2505.11953; open-unlearning src/trainer/unlearn/satimp.py, "
                 "src/trainer/utils.py::compute_satimp_loss")

    def unlearn(self, ctx):
        cfg = self.config
        run = LMRun(ctx, cfg, retain=cfg.retain_loss != "none",
                    reference="model" if cfg.retain_loss == "kl" else "none")

        def loss(forget, retain, mean):
            values = satimp_token_losses(logits(run.model, forget), forget["labels"], cfg.beta1, cfg.beta2)
            return cfg.gamma * mean(values.sum(), forget) + cfg.alpha * retain_term(cfg.retain_loss, run, retain)

        for batch, mean in token_steps(run):
            run.step(lambda f, r: loss(f, r, mean), batch)
        return run.finish()
