"""CE-U: cross-entropy unlearning — cross-entropy of the model against its own (detached) next-token
distribution with the answer token removed, so the gradient on the logits is p − q: the answer's probability is
pushed to 0 while the rest of the distribution keeps its shape; bounded, unlike gradient ascent (Yang, arXiv
2503.01224). Forget term only (OU ``CEU`` derives from ``UnlearnTrainer``, no retain term).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from obliviate.methods import register
from obliviate.methods._lm import LMOptimConfig, LMRun
from obliviate.methods._token_losses import ceu_token_losses, logits, token_steps
from obliviate.methods.base import Method


@dataclass
class CEUConfig(LMOptimConfig):
    """n = 1 ignored answer token: locuslab/open-unlearning ``configs/trainer/CEU.yaml`` and
    ``src/trainer/unlearn/ceu.py`` (the footnote in the paper's Training Settings); optimiser from its
    ``finetune.yaml`` (lr 1e-5, 10 epochs, batch 8 × 4 = 32; :class:`LMOptimConfig`)."""

    ignore_first_n_answer_tokens: int = field(default=1, metadata={
        "help": "answer tokens at the start of each completion left out of the loss", "min": 0})


@register
class CEU(Method):
    name = "ce_u"
    guarantee = "approximate"
    needs = frozenset()
    kinds = ("language",)
    config_class = CEUConfig
    summary = "cross-entropy to the model's own detached distribution with the answer token at −∞"
    reference = "Yang 2025, arXiv 2503.01224; open-unlearning src/trainer/unlearn/ceu.py"

    def unlearn(self, ctx):
        cfg = self.config
        skip = cfg.ignore_first_n_answer_tokens
        run = LMRun(ctx, cfg, retain=False)

        def loss(forget, mean):
            # F.cross_entropy's default mean = one flat mean over the batch's scored tokens (OU ceu.py)
            return mean(ceu_token_losses(logits(run.model, forget), forget["labels"], skip).sum(), forget)

        for batch, mean in token_steps(run, skip_first=skip):
            run.step(lambda f, _: loss(f, mean), batch)
        return run.finish()
