"""UNDIAL: self-distillation toward the original model's next-token distribution with the answer token's logit
lowered by β — a bounded target (unlike gradient ascent's), so the forget loss cannot run away (Dong et al.,
NAACL 2025, arXiv 2402.10052). L = γ·L_UNDIAL + α·L_r with α = 0 by default.

The teacher is the frozen starting model (OU: ``ref_model = _prepare_ref_model(model)``), reached through
``LMRun(reference="model")``: with LoRA the adapters are disabled, otherwise the starting weights are swapped in —
no second model unless ``ref_device`` asks for one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from obliviate.methods import register
from obliviate.methods._lm import LMOptimConfig, LMRun, retain_term
from obliviate.methods._token_losses import answer_mask, logits, token_steps, undial_token_losses
from obliviate.methods.base import Method


@dataclass
class UNDIALConfig(LMOptimConfig):
    """β = 10, γ = 1, α = 0, retain NLL, lr 1e-4, 10 epochs, batch 2 × 8 accumulation = 16:
    locuslab/open-unlearning ``configs/trainer/UNDIAL.yaml``. Unlike OU (``utils.py::compute_undial_loss``, which
    averages over every position, prompt and padding included, with a −100 label lowering vocabulary id V−100),
    the loss is the flat mean over the batch's answer tokens only (the reduction of the other token losses here)."""

    beta: float = field(default=10.0, metadata={"help": "how far the answer token's teacher logit is lowered",
                                                "min": 0})
    gamma: float = field(default=1.0, metadata={"help": "weight γ of the distillation (forget) term", "min": 0})
    alpha: float = field(default=0.0, metadata={"help": "weight α of the retain term (0: none)", "min": 0})
    retain_loss: Literal["nll", "kl"] = field(default="nll", metadata={
        "help": "retain term when alpha > 0: nll (token-averaged per sequence) or kl to the original"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate", "gt": 0})
    batch_size: int = field(default=16, metadata={"help": "forget sequences per step (and as many retain ones)",
                                                  "min": 1})


def _answer_logits(model, batch):
    """The logits of the positions that predict answer tokens (what the teacher contributes)."""
    return logits(model, batch)[:, :-1][answer_mask(batch["labels"])]


@register
class UNDIAL(Method):
    name = "undial"
    guarantee = "approximate"
    needs = frozenset({"retain"})  # the teacher is the starting weights; retain only when alpha > 0
    kinds = ("language",)
    config_class = UNDIALConfig
    summary = "self-distil toward the original with the answer token's logit lowered by β (+ retain term)"
    reference = ("Dong et al. 2025, arXiv 2402.10052; open-unlearning src/trainer/unlearn/undial.py, "
                 "src/trainer/utils.py::compute_undial_loss")

    def unlearn(self, ctx):
        cfg = self.config
        retain = cfg.alpha > 0
        run = LMRun(ctx, cfg, retain=retain, reference="model")

        def loss(forget, retain_batch, mean):
            teacher = run.reference(_answer_logits, forget)
            values = undial_token_losses(logits(run.model, forget), teacher, forget["labels"], cfg.beta)
            out = cfg.gamma * mean(values.sum(), forget)
            return out + cfg.alpha * retain_term(cfg.retain_loss, run, retain_batch) if retain else out

        for batch, mean in token_steps(run):
            run.step(lambda f, r: loss(f, r, mean), batch)
        return run.finish()
