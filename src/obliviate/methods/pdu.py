"""PDU: primal–dual unlearning — a logit-margin flattening loss on the forget answers (drives their next-token
distributions toward uniform) under the constraint L_r ≤ ε on retain, solved by gradient descent on
γ·L_f + α·(L_r − ε) and projected dual ascent on α (Entesari et al. 2025, "Constrained Entropic Unlearning",
arXiv 2506.05314; locuslab/open-unlearning ``src/trainer/unlearn/pdu.py``).

ε has no meaningful universal default — it is a ceiling on the retain loss, which depends on the model and data —
so, as in OpenUnlearning (``retain_loss_eps: ???``), it must be set; the authors' advice
(``community/methods/PDU/README.md``) is "a value appropriately larger than the retain loss of the pretrained
model" (their runs: TOFU 0.3, MUSE News 1.5 / Books 0.1 on Llama-2-7B).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from obliviate import dist
from obliviate.errors import ConfigError
from obliviate.methods import register
from obliviate.methods._lm import LMOptimConfig, LMRun, retain_term
from obliviate.methods._token_losses import dual_update, logits, pdu_token_losses, token_steps
from obliviate.methods.base import Method


@dataclass
class PDUConfig(LMOptimConfig):
    """primal_dual on, dual step 1, per-step dual updates after 5 warm-up epochs: OpenUnlearning
    ``configs/trainer/PDU.yaml`` (read in the PR author's fork, tahaEntesari/open-unlearning); γ = α = 1 and the
    retain NLL from the ``GradDiff.yaml`` it inherits; optimiser from ``finetune.yaml`` (lr 1e-5, 10 epochs,
    batch 32). The paper's TOFU runs (``community/methods/PDU/run.sh``) start from α = 100 with dual step 5 and
    ε = 0.3. ``retain_loss_eps`` is required (module doc)."""

    retain_loss_eps: float | None = field(default=None, metadata={
        "help": "ε, the ceiling on the retain loss (required: a little above the original's retain loss)"})
    gamma: float = field(default=1.0, metadata={"help": "weight γ of the flattening (forget) term", "min": 0})
    alpha: float = field(default=1.0, metadata={
        "help": "starting retain preference α (the dual variable when primal_dual)", "min": 0})
    retain_loss: Literal["nll", "kl"] = field(default="nll", metadata={
        "help": "nll (token-averaged retain NLL per sequence) or kl to the original"})
    primal_dual: bool = field(default=True, metadata={"help": "update α by dual ascent; false keeps α fixed"})
    dual_step_size: float = field(default=1.0, metadata={"help": "dual step η: α ← max(0, α + η·(L_r − ε))",
                                                         "min": 0})
    dual_update_upon: Literal["step", "epoch"] = field(default="step", metadata={
        "help": "step (each step's retain loss) or epoch (the mean retain loss after each epoch)"})
    dual_warmup_epochs: int = field(default=5, metadata={"help": "epochs with α held fixed before dual updates",
                                                         "min": 0})


@register
class PDU(Method):
    name = "pdu"
    guarantee = "approximate"
    needs = frozenset({"retain"})
    kinds = ("language",)
    config_class = PDUConfig
    summary = "flatten the forget answers' logits under a retain-loss ceiling ε, with a dual-ascent multiplier"
    reference = "Entesari et al. 2025, arXiv 2506.05314; open-unlearning src/trainer/unlearn/pdu.py"

    def unlearn(self, ctx):
        cfg = self.config
        if cfg.retain_loss_eps is None:
            raise ConfigError("pdu: set retain_loss_eps, the ceiling ε on the retain loss (a little above the "
                              "original model's retain loss; OpenUnlearning's TOFU runs use 0.3)")
        eps = cfg.retain_loss_eps
        run = LMRun(ctx, cfg, reference="model" if cfg.retain_loss == "kl" else "none")
        if not run.retain:
            raise ConfigError("pdu: needs retain sequences for its constraint")
        alpha, trace = cfg.alpha, [cfg.alpha]
        per_epoch = math.ceil(len(run.forget) / cfg.batch_size)

        def loss(forget, retain, mean, n, seen):
            # OU: flat mean over the positions with labels != -100 (pdu.py), then [γ, α]·[L_f, L_r − ε]
            l_f = mean(pdu_token_losses(logits(run.model, forget), forget["labels"]).sum(), forget)
            l_r = retain_term(cfg.retain_loss, run, retain)
            seen.append(l_r.detach() * retain["input_ids"].shape[0] / n)  # this piece's share of the step's L_r
            return cfg.gamma * l_f + alpha * (l_r - eps)

        for step, (batch, mean) in enumerate(token_steps(run)):
            seen: list[torch.Tensor] = []
            run.step(lambda f, r: loss(f, r, mean, len(batch[0]), seen), batch)
            epoch, last_of_epoch = step // per_epoch, (step + 1) % per_epoch == 0
            if not cfg.primal_dual:
                pass
            elif cfg.dual_update_upon == "step" and epoch >= cfg.dual_warmup_epochs:
                alpha = dual_update(alpha, _global_sum(seen, len(batch[0]), run), eps, cfg.dual_step_size)
            elif cfg.dual_update_upon == "epoch" and last_of_epoch and epoch + 1 >= cfg.dual_warmup_epochs:
                alpha = dual_update(alpha, _epoch_retain_loss(run, cfg, ctx.generator(2 + epoch)), eps,
                                    cfg.dual_step_size)
            trace.append(alpha)
        model = run.finish()
        ctx.report("lm_run", {**run.block, "retain_preference": alpha})  # the dual variable at the end
        ctx.diagnostics["pdu_retain_preference"] = trace  # after every step (tests, diagnostics; not reported)
        return model


def _global_sum(parts: list[torch.Tensor], n: int, run) -> float:
    """The step's retain loss: this process's pieces summed, then summed over the launcher's processes. Under
    FSDP a process without sequences runs a weight-0 stand-in piece (after its real ones): it is left out."""
    mine = np.array_split(np.arange(n), dist.world_size() * run.cfg.grad_accum)
    real = sum(len(p) > 0 for p in mine[dist.rank() * run.cfg.grad_accum:(dist.rank() + 1) * run.cfg.grad_accum])
    parts = parts[:real]
    total = torch.stack(parts).sum() if parts else torch.zeros((), device=run.device)
    if dist.launched():
        import torch.distributed as td

        td.all_reduce(total)
    return float(total)


@torch.no_grad()
def _epoch_retain_loss(run, cfg, gen: torch.Generator) -> float:
    """OU ``post_epoch_dual_param_update``: the retain loss in eval mode averaged over one pass of batches — as
    many random retain sequences as there are forget sequences, in batches of ``batch_size``."""
    was = run.model.training
    run.model.eval()
    picks = torch.randint(len(run.retain), (len(run.forget),), generator=gen).tolist()
    losses = []
    for start in range(0, len(picks), cfg.batch_size):
        batch = run._collate(run.retain, picks[start:start + cfg.batch_size])
        with run.autocast(cache=False):
            losses.append(float(retain_term(cfg.retain_loss, run, batch)))
    run.model.train(was)
    return sum(losses) / len(losses)
