"""Gradient-based unlearning of causal language models (methods.md §5–§8): gradient ascent, GradDiff, NPO and
SimNPO on the forget records' (prompt, completion) sequences, plus MUSE's named presets ``ga_gdr``, ``ga_klr``,
``npo_gdr`` and ``npo_klr``.

They share the names of the classifier implementations (``obliviate.get_method(name, "language")``). NLLs are
over completion tokens only (labels on the completion and EOS); "token-averaged" = HF ``outputs.loss`` per
sequence. Every method trains the full weights or LoRA adapters (``--set lora_r=8``), merged back at the end.

NPO uses the paper's loss on sequence log-likelihood ratios (Zhang et al. 2024, as OpenUnlearning). MUSE's
``npo`` (swj0419/muse_bench ``baselines/baselines/iterative.py``) instead applies −(2/β)·log σ(β·(ref_logits −
logits)) element-wise to the raw logits over the vocabulary, which is not the NPO objective (OpenUnlearning
``docs/repro.md``, "NPO inconsistency"); obliviate does not implement that variant, so ``npo``/``npo_gdr``/
``npo_klr`` numbers are the paper's NPO, not MUSE's. Likewise the ``kl`` retain term is a true KL divergence
(see :func:`obliviate.methods._lm.kl_to_reference`), not MUSE's KLR on unnormalised logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from obliviate.lm import mean_nll, sequence_nll
from obliviate.methods import register
from obliviate.methods._lm import LMOptimConfig, LMRun, retain_term
from obliviate.methods.base import Method
# the classifier implementations register first, so get_method(name) without a kind stays the classifier's
from obliviate.methods import grad_diff, gradient_ascent  # noqa: F401
from obliviate.methods.npo import npo_loss  # −(2/β)·mean log σ(β·(NLL_θ − NLL_ref)), shared with the classifier

LANGUAGE = ("language",)


def simnpo_loss(nll_sum: torch.Tensor, n_tokens: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(β·(NLL_θ/|y| − δ)), |y| = completion tokens (OpenUnlearning ``simnpo.py``)."""
    return -(2.0 / beta) * F.logsigmoid(beta * (nll_sum / n_tokens.clamp_min(1) - delta)).mean()


# -- gradient ascent ----------------------------------------------------------------------------------------------

@dataclass
class GradientAscentLMConfig(LMOptimConfig):
    """OpenUnlearning ``GradAscent`` / MUSE ``ga``: AdamW lr 1e-5, 10 epochs, batch 32 (:class:`LMOptimConfig`).
    Unbounded: at these settings it collapses the model (open-unlearning issue #167); tune lr / epochs / max_steps."""


@register
class GradientAscentLM(Method):
    name = "gradient_ascent"
    guarantee = "approximate"
    needs = frozenset()
    kinds = LANGUAGE
    config_class = GradientAscentLMConfig
    summary = "ascend the token-averaged NLL of the forget sequences"
    reference = "open-unlearning src/trainer/unlearn/grad_ascent.py; MUSE baselines/baselines/iterative.py (ga)"

    def unlearn(self, ctx):
        run = LMRun(ctx, self.config, retain=False)
        for batch in run.batches():
            run.step(lambda forget, _: -mean_nll(run.model, forget), batch)
        return run.finish()


# -- GradDiff (MUSE ga_gdr / ga_klr) ---------------------------------------------------------------------------------

@dataclass
class GradDiffLMConfig(LMOptimConfig):
    """γ = α = 1, retain NLL: OpenUnlearning ``configs/trainer/GradDiff.yaml`` (MUSE ``ga_gdr``; ``kl`` is ``ga_klr``).
    Optimiser: :class:`LMOptimConfig`."""

    gamma: float = field(default=1.0, metadata={"help": "weight γ of the forget (ascent) term", "min": 0})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term", "min": 0})
    retain_loss: Literal["nll", "kl"] = field(default="nll", metadata={
        "help": "nll (descent on retain, GDR) or kl (KL(p_original ‖ p_θ) on retain completions, KLR)"})


@register
class GradDiffLM(Method):
    name = "grad_diff"
    guarantee = "approximate"
    needs = frozenset({"retain"})  # retain_loss=kl without ctx.original: a frozen copy of the untouched ctx.model
    kinds = LANGUAGE
    config_class = GradDiffLMConfig
    summary = "ascent on the forget NLL + NLL or KL-to-original on retain"
    reference = "open-unlearning src/trainer/unlearn/grad_diff.py; MUSE iterative.py (ga_gdr, ga_klr)"

    def unlearn(self, ctx):
        cfg = self.config
        run = LMRun(ctx, cfg, reference="model" if cfg.retain_loss == "kl" else "none")

        def loss(forget, retain):
            return -cfg.gamma * mean_nll(run.model, forget) + cfg.alpha * retain_term(cfg.retain_loss, run, retain)

        for batch in run.batches():
            run.step(loss, batch)
        return run.finish()


@dataclass
class GAGDRConfig(GradDiffLMConfig):
    """MUSE ``ga_gdr``: GradDiff with the retain NLL (γ = α = 1, lr 1e-5, 10 epochs; muse_bench ``unlearn_news.sh``)."""

    retain_loss: Literal["nll", "kl"] = field(default="nll", metadata={"help": "retain term: nll (GDR) or kl"})


@dataclass
class GAKLRConfig(GradDiffLMConfig):
    """MUSE ``ga_klr``: GradDiff with KL to the original on retain (γ = α = 1, lr 1e-5, 10 epochs)."""

    retain_loss: Literal["nll", "kl"] = field(default="kl", metadata={"help": "retain term: kl (KLR) or nll"})


@register
class GAGDR(GradDiffLM):
    name = "ga_gdr"
    config_class = GAGDRConfig
    summary = "MUSE's ga_gdr: GradDiff with the retain NLL"


@register
class GAKLR(GradDiffLM):
    name = "ga_klr"
    needs = frozenset({"retain", "original"})
    config_class = GAKLRConfig
    summary = "MUSE's ga_klr: GradDiff with KL to the original on retain"


# -- NPO (MUSE npo / npo_gdr / npo_klr, with the paper's loss) ---------------------------------------------------------

@dataclass
class NPOLMConfig(LMOptimConfig):
    """β = 0.1, γ = α = 1: OpenUnlearning ``configs/trainer/NPO.yaml`` (inherits GradDiff), MUSE ``iterative.py``.
    The loss is the paper's on sequence-summed completion NLLs, not MUSE's logit-level variant (module doc)."""

    beta: float = field(default=0.1, metadata={"help": "inverse temperature β of the NPO loss", "gt": 0})
    gamma: float = field(default=1.0, metadata={"help": "weight γ of the NPO (forget) term", "min": 0})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term", "min": 0})
    retain_loss: Literal["none", "nll", "kl"] = field(default="none", metadata={
        "help": "none (NPO), nll (NPO_GDR) or kl to the original (NPO_KLR)"})


@register
class NPOLM(Method):
    name = "npo"
    guarantee = "approximate"
    needs = frozenset({"original", "retain"})
    kinds = LANGUAGE
    config_class = NPOLMConfig
    summary = "negative preference optimisation on the forget sequences (paper loss; retain term optional)"
    reference = "Zhang et al. 2024, arXiv 2404.05868; open-unlearning src/trainer/unlearn/npo.py"

    def unlearn(self, ctx):
        cfg = self.config
        # the reference NLLs of the forget sequences are computed once, before the first update: no second model
        # unless the KL retain term needs the reference's whole distributions
        run = LMRun(ctx, cfg, retain=cfg.retain_loss != "none",
                    reference="nll+model" if cfg.retain_loss == "kl" else "nll")

        def loss(forget, retain):
            nll, _ = sequence_nll(run.model, forget)
            return (cfg.gamma * npo_loss(nll, run.ref_nll[forget["index"]], cfg.beta)
                    + cfg.alpha * retain_term(cfg.retain_loss, run, retain))

        for batch in run.batches():
            run.step(loss, batch)
        return run.finish()


@dataclass
class NPOGDRConfig(NPOLMConfig):
    """MUSE ``npo_gdr``: NPO + retain NLL (β = 0.1, γ = α = 1, lr 1e-5, 10 epochs; muse_bench ``unlearn_news.sh``)."""

    retain_loss: Literal["none", "nll", "kl"] = field(default="nll", metadata={"help": "retain term: nll (GDR)"})


@dataclass
class NPOKLRConfig(NPOLMConfig):
    """MUSE ``npo_klr``: NPO + KL to the original on retain (β = 0.1, γ = α = 1, lr 1e-5, 10 epochs)."""

    retain_loss: Literal["none", "nll", "kl"] = field(default="kl", metadata={"help": "retain term: kl (KLR)"})


@register
class NPOGDR(NPOLM):
    name = "npo_gdr"
    config_class = NPOGDRConfig
    summary = "MUSE's npo_gdr: NPO (paper loss) + retain NLL"


@register
class NPOKLR(NPOLM):
    name = "npo_klr"
    config_class = NPOKLRConfig
    summary = "MUSE's npo_klr: NPO (paper loss) + KL to the original on retain"


# -- SimNPO ------------------------------------------------------------------------------------------------------------

@dataclass
class SimNPOLMConfig(LMOptimConfig):
    """δ = 0, β = 4.5, γ = 0.125: OpenUnlearning ``configs/trainer/SimNPO.yaml`` (after OPTML-Group/Unlearn-Simple's
    TOFU config); α = 1 with the retain NLL from GradDiff. γ is the forget-term weight, not the paper's margin
    (the paper's margin γ_m is β·δ)."""

    delta: float = field(default=0.0, metadata={"help": "margin δ subtracted from the length-normalised NLL"})
    beta: float = field(default=4.5, metadata={"help": "inverse temperature β", "gt": 0})
    gamma: float = field(default=0.125, metadata={"help": "weight γ of the SimNPO (forget) term", "min": 0})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term", "min": 0})
    retain_loss: Literal["none", "nll", "kl"] = field(default="nll", metadata={
        "help": "none, nll (default) or kl to the original"})


@register
class SimNPOLM(Method):
    name = "simnpo"
    guarantee = "approximate"
    needs = frozenset({"retain"})  # reference-free; retain_loss=kl uses a frozen copy of the untouched ctx.model
    kinds = LANGUAGE
    config_class = SimNPOLMConfig
    summary = "reference-free NPO on the length-normalised forget NLL (+ retain NLL)"
    reference = "Fan et al. 2024, arXiv 2410.07163; open-unlearning src/trainer/unlearn/simnpo.py"

    def unlearn(self, ctx):
        cfg = self.config
        run = LMRun(ctx, cfg, retain=cfg.retain_loss != "none",
                    reference="model" if cfg.retain_loss == "kl" else "none")

        def loss(forget, retain):
            nll, n_tokens = sequence_nll(run.model, forget)
            return (cfg.gamma * simnpo_loss(nll, n_tokens, cfg.beta, cfg.delta)
                    + cfg.alpha * retain_term(cfg.retain_loss, run, retain))

        for batch in run.batches():
            run.step(loss, batch)
        return run.finish()
