"""Gradient-based unlearning of causal language models (open-unlearning src/trainer/unlearn/; MUSE
baselines/baselines/iterative.py): gradient ascent, GradDiff, NPO and SimNPO on the forget records' (prompt,
completion) sequences, plus MUSE's named presets ``ga_gdr``, ``ga_klr``, ``npo_gdr`` and ``npo_klr``, and MUSE's own losses under their own names: ``npo_muse``, ``ga_klr_muse``,
``npo_klr_muse``.

They share the names of the classifier implementations (``obliviate.get_method(name, "language")``). NLLs are
over completion tokens only (labels on the completion and EOS); "token-averaged" = HF ``outputs.loss`` per
sequence. Every method trains the full weights or LoRA adapters (``--set lora_r=8``), merged back at the end.

Two families, because MUSE's code does not compute what its method names say:

- ``npo``/``npo_gdr``/``npo_klr`` use the paper's loss on sequence log-likelihood ratios (Zhang et al. 2024, as
  OpenUnlearning), and the ``kl`` retain term of ``ga_klr``/``npo_klr`` is a true KL divergence of the next-token
  distributions (:func:`obliviate.methods._lm.kl_to_reference`).
- the ``*_muse`` variants reproduce swj0419/muse_bench ``baselines/baselines/iterative.py``
  (``IterativeUnlearner.compute_loss``): NPO as −(2/β)·log σ(β·(ref_logits − logits)) element-wise over the raw
  logits of every position and every vocabulary entry, averaged (``.mean() * 2 / beta``), and KLR as
  ``F.kl_div(logits, ref_logits, reduction="batchmean", log_target=True)`` on the raw logits, i.e.
  Σ exp(ref_logits)·(ref_logits − logits) over positions and vocabulary, divided by the number of sequences.
  Neither is the NPO objective nor a KL (OpenUnlearning ``docs/repro.md``, "NPO inconsistency"; jaechan-repo/
  muse_bench issue #2); they are here so MUSE's published rows can be compared like with like.

MUSE's sequences are unpadded blocks of ``max_len`` tokens (``baselines/baselines/dataset.py``: BOS + max_len − 1
tokens, the last block rotated to full length, attention mask all ones), so its reductions run over every
position. Here batches are padded: the variants reduce per sequence over its own positions, then average over the
sequences — on equal-length unpadded sequences exactly MUSE's global mean (NPO) and batchmean (KLR), and a batch
split into micro-batches gives the same loss. ``positions=all`` (default) takes every attended position, BOS and
the last one included, as MUSE does (on a document, obliviate's prompt is empty); ``positions=completion`` only the
rows that predict completion tokens. The loss is computed in fp32 (MUSE: bf16 logits). MUSE's GA and GDR terms
are HF ``outputs.loss`` with labels on every token, i.e. the token-averaged NLL already used here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from obliviate.errors import ConfigError
from obliviate.lm import mean_nll, sequence_nll
from obliviate.methods import register
from obliviate.methods._lm import LMOptimConfig, LMRun, _logits, retain_term
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


# -- MUSE's own losses (npo_muse, ga_klr_muse, npo_klr_muse) ------------------------------------------------------------

def muse_positions(batch, positions: str) -> torch.Tensor:
    """[B, T] mask of the logit rows MUSE's losses reduce over: ``all`` = every attended position; ``completion``
    = the rows whose next token is a completion label."""
    if positions == "all":
        return batch["attention_mask"].bool()
    if positions == "completion":
        mask = torch.zeros_like(batch["labels"], dtype=torch.bool)
        mask[:, :-1] = batch["labels"][:, 1:] != -100
        return mask
    raise ConfigError(f"positions: expected all or completion, got {positions!r}")


def _per_sequence(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One total per sequence of the per-row ``values`` of ``mask``'s rows (row-major, as ``tensor[mask]``)."""
    return torch.zeros(mask.shape[0], dtype=values.dtype, device=values.device).index_add_(
        0, mask.nonzero()[:, 0], values)


def muse_npo_loss(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """MUSE's ``npo``: −(2/β)·log σ(β·(ref_logits − logits)) on every vocabulary entry of every ``mask`` row,
    averaged over a sequence's elements, then over the sequences (= MUSE's ``.mean()`` on equal-length blocks)."""
    diff = ref_logits[mask].float() - logits[mask].float()
    per_row = -F.logsigmoid(beta * diff).mean(-1)
    per_sequence = _per_sequence(per_row, mask) / mask.sum(1).clamp_min(1)
    return (2.0 / beta) * per_sequence.mean()


def muse_klr_loss(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MUSE's ``klr``: ``F.kl_div(logits, ref_logits, reduction="batchmean", log_target=True)`` on raw logits =
    Σ exp(ref_logits)·(ref_logits − logits) over a sequence's ``mask`` rows and the vocabulary, averaged over the
    sequences. Not a divergence: logits shifted by a constant c (the same distribution) give −c·Σ exp(ref_logits),
    so it is unbounded below and falls as every retain logit rises."""
    ref = ref_logits[mask].float()
    per_row = (ref.exp() * (ref - logits[mask].float())).sum(-1)
    return _per_sequence(per_row, mask).mean()


def _klr_term(run: LMRun, retain, positions: str) -> torch.Tensor:
    mask = muse_positions(retain, positions)
    return muse_klr_loss(_logits(run.model, retain), run.reference(_logits, retain), mask)


@dataclass
class NPOMuseConfig(LMOptimConfig):
    """MUSE ``npo``: β = 0.1 (``IterativeUnlearner(beta=0.1)``), forget and retain terms added with weight 1
    (γ = α = 1), AdamW constant lr 1e-5, 10 epochs (``scripts/unlearn_news.sh``; :class:`LMOptimConfig`)."""

    beta: float = field(default=0.1, metadata={"help": "inverse temperature β of MUSE's logit-level NPO", "gt": 0})
    gamma: float = field(default=1.0, metadata={"help": "weight γ of the NPO (forget) term", "min": 0})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term", "min": 0})
    retain_loss: Literal["none", "nll", "klr"] = field(default="none", metadata={
        "help": "none (MUSE npo), nll (npo_gdr) or klr (MUSE's KLR on raw logits, npo_klr)"})
    positions: Literal["all", "completion"] = field(default="all", metadata={
        "help": "logit rows the MUSE losses reduce over: all attended positions (MUSE) or the completion rows"})


@register
class NPOMuse(Method):
    name = "npo_muse"
    guarantee = "approximate"
    needs = frozenset({"original", "retain"})
    kinds = LANGUAGE
    config_class = NPOMuseConfig
    summary = "MUSE's npo as its code runs it: logit-level −(2/β)·log σ(β·(ref − logits)) over the vocabulary"
    reference = "swj0419/muse_bench baselines/baselines/iterative.py (npo, npo_gdr, npo_klr)"

    def unlearn(self, ctx):
        cfg = self.config
        # the reference's whole logits on every forget batch: the starting weights (or adapters off) swapped in
        run = LMRun(ctx, cfg, retain=cfg.retain_loss != "none", reference="model")

        def loss(forget, retain):
            mask = muse_positions(forget, cfg.positions)
            total = cfg.gamma * muse_npo_loss(_logits(run.model, forget), run.reference(_logits, forget), mask,
                                              cfg.beta)
            if retain is not None and cfg.retain_loss == "nll":
                total = total + cfg.alpha * mean_nll(run.model, retain)
            elif retain is not None and cfg.retain_loss == "klr":
                total = total + cfg.alpha * _klr_term(run, retain, cfg.positions)
            return total

        for batch in run.batches():
            run.step(loss, batch)
        return run.finish()


@dataclass
class NPOKLRMuseConfig(NPOMuseConfig):
    """MUSE ``npo_klr``: logit-level NPO + MUSE's KLR (β = 0.1, weights 1, lr 1e-5, 10 epochs)."""

    retain_loss: Literal["none", "nll", "klr"] = field(default="klr", metadata={
        "help": "retain term: klr (MUSE's KLR on raw logits), nll or none"})


@register
class NPOKLRMuse(NPOMuse):
    name = "npo_klr_muse"
    config_class = NPOKLRMuseConfig
    summary = "MUSE's npo_klr as its code runs it: logit-level NPO + kl_div on raw retain logits"


@dataclass
class GAKLRMuseConfig(LMOptimConfig):
    """MUSE ``ga_klr``: −(forget NLL) + MUSE's KLR on raw retain logits, weights 1 (γ = α = 1), AdamW constant lr
    1e-5, 10 epochs (``scripts/unlearn_news.sh``; :class:`LMOptimConfig`)."""

    gamma: float = field(default=1.0, metadata={"help": "weight γ of the forget (ascent) term", "min": 0})
    alpha: float = field(default=1.0, metadata={"help": "weight α of MUSE's KLR retain term", "min": 0})
    positions: Literal["all", "completion"] = field(default="all", metadata={
        "help": "retain logit rows the KLR sums over: all attended positions (MUSE) or the completion rows"})


@register
class GAKLRMuse(Method):
    name = "ga_klr_muse"
    guarantee = "approximate"
    needs = frozenset({"retain", "original"})
    kinds = LANGUAGE
    config_class = GAKLRMuseConfig
    summary = "MUSE's ga_klr as its code runs it: ascent on the forget NLL + kl_div on raw retain logits"
    reference = "swj0419/muse_bench baselines/baselines/iterative.py (ga_klr)"

    def unlearn(self, ctx):
        cfg = self.config
        run = LMRun(ctx, cfg, reference="model")

        def loss(forget, retain):
            total = -cfg.gamma * mean_nll(run.model, forget)
            if retain is not None:
                total = total + cfg.alpha * _klr_term(run, retain, cfg.positions)
            return total

        for batch in run.batches():
            run.step(loss, batch)
        return run.finish()
