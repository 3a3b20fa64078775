"""Helpers shared by the language-model unlearning methods (kept here so each method reads top to bottom).

A language method trains ``ctx.model`` (a Hugging Face causal LM) on the tokenised (prompt, completion) pairs
of the forget and retain records: labels only on the completion and EOS (:mod:`obliviate.lm`). It trains the
full weights, or LoRA adapters through ``peft`` (``lora_r > 0``) that are merged back before returning, so the
result is always a plain model of the input's class.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
import torch.nn.functional as F

from obliviate.errors import ConfigError
from obliviate.lm import collate, encode_all, max_length, mean_nll
from obliviate.methods._common import frozen_copy
from obliviate.methods.base import MethodConfig
from obliviate.training import make_optimizer

Batch = dict[str, torch.Tensor]


@dataclass
class LoRAFields(MethodConfig):
    """Train LoRA adapters instead of the full weights (``--set lora_r=8``); merged into the weights at the end.
    α = 16 is obliviate's choice (2·r at the r = 8 most LLM-unlearning LoRA runs use; peft's own default is α = 8);
    dropout 0 is peft's default."""

    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains the full weights", "min": 0})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling α (update = α/r · BA)", "gt": 0})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input", "min": 0, "max": 1})
    lora_targets: str = field(default="auto", metadata={
        "help": "modules to adapt: auto (GPT-2: c_attn,c_proj,c_fc; other models: peft's default for the model "
                "type, else all-linear), all-linear, or comma-separated module names"})


@dataclass
class LMOptimConfig(LoRAFields):
    """Optimiser fields of the gradient-based language methods. Defaults: the OpenUnlearning reproduction
    (locuslab/open-unlearning ``docs/repro.md``: lr 1e-5, 10 epochs, effective batch 32, AdamW), which MUSE
    shares (swj0419/muse_bench ``baselines/baselines/iterative.py``: AdamW, constant lr 1e-5, 10 epochs,
    4 × 8 GPUs). Weight decay 0 and gradient clipping at norm 1 are the Hugging Face ``Trainer`` defaults
    both use; the learning rate is constant (MUSE)."""

    lr: float = field(default=1e-5, metadata={"help": "learning rate", "gt": 0})
    epochs: int = field(default=10, metadata={"help": "passes over the forget set", "min": 1})
    batch_size: int = field(default=32, metadata={"help": "forget sequences per step (and as many retain ones)",
                                                   "min": 1})
    optimizer: Literal["adamw", "adam", "sgd"] = field(default="adamw", metadata={
        "help": "adamw (torch AdamW), adam or sgd (momentum 0.9)"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay", "min": 0})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 disables", "min": 0})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps; 0 = no cap", "min": 0})


# -- LoRA -------------------------------------------------------------------------------------------------

def _has_conv1d(model) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def _lora_targets(model, spec: str):
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    if spec == "auto":
        kind = getattr(model.config, "model_type", None)
        if kind == "gpt2":
            return ["c_attn", "c_proj", "c_fc"]
        return DEFAULTS.get(kind, "all-linear")
    if spec == "all-linear":
        return spec
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ConfigError("lora_targets: expected auto, all-linear or module names")
    return names


def wrap_lora(model, cfg: LoRAFields, gen: torch.Generator, targets=None):
    """``model`` itself when ``cfg.lora_r == 0``; otherwise a peft model whose only trainable parameters are
    LoRA adapters on ``targets`` (default: ``cfg.lora_targets``). The adapters' random initialisation is drawn
    from a global RNG seeded from ``gen`` (peft has no generator argument), leaving the global state as it was."""
    if cfg.lora_r == 0:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets if targets is not None else _lora_targets(model, cfg.lora_targets),
                        fan_in_fan_out=_has_conv1d(model), task_type="CAUSAL_LM")
    seed = int(torch.randint(2 ** 62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)  # peft vs transformers 5
        try:
            return get_peft_model(model, config)
        except ValueError as exc:  # no module matched the targets
            raise ConfigError(f"lora_targets: {exc}") from None


def unwrap(model):
    """The plain model again (LoRA adapters merged into the weights), every parameter trainable as it came in,
    in eval mode."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


# -- optimisation ---------------------------------------------------------------------------------------------

def optimizer(model, cfg) -> torch.optim.Optimizer:
    """The optimiser over the trainable parameters (all of them, or the LoRA adapters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return make_optimizer(params, cfg.optimizer, cfg.lr, cfg.weight_decay)


def step(model, opt, loss: torch.Tensor, max_grad_norm: float = 0.0) -> None:
    """One update: backward, optional gradient clipping, optimiser step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    opt.step()


def reference_model(ctx):
    """The frozen original on ``ctx.device``: ``ctx.original`` itself when it is already there in eval mode (it is
    only read, under ``no_grad``), else a frozen copy — of the still-untouched ``ctx.model`` when the pipeline gave
    no original (call this before training). The caller's model is never moved, trained or switched to eval."""
    ref, want = ctx.original, torch.device(ctx.device)
    if ref is not None and not ref.training:
        have = next(ref.parameters()).device
        if have.type == want.type and (have.index == want.index or None in (have.index, want.index)):
            return ref
    return frozen_copy(ref if ref is not None else ctx.model).to(ctx.device)


# -- data -------------------------------------------------------------------------------------------------

def forget_retain_batches(ctx, cfg, gen: torch.Generator, retain: bool = True,
                          epochs: int | None = None) -> Iterator[tuple[Batch, Batch | None]]:
    """Every training step of a run: ``epochs`` (default ``cfg.epochs``) shuffled passes over the forget pairs in
    mini-batches of ``cfg.batch_size``, each paired with a random retain mini-batch of the same size (drawn with
    replacement; OpenUnlearning's ``ForgetRetainDataset`` anchors on forget the same way), or None when
    ``retain`` is false or there is no retain data. Stops after ``cfg.max_steps`` steps when that is set."""
    limit = max_length(ctx.model)
    pad = ctx.tokenizer.pad_token_id
    forget = encode_all(ctx.tokenizer, ctx.forget_pairs, limit)
    kept = encode_all(ctx.tokenizer, ctx.retain_pairs, limit) if retain and ctx.retain_pairs else []
    cap, done = getattr(cfg, "max_steps", 0), 0
    for _ in range(cfg.epochs if epochs is None else epochs):
        order = torch.randperm(len(forget), generator=gen).tolist()
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            r = torch.randint(len(kept), (len(idx),), generator=gen).tolist() if kept else None
            yield (collate([forget[i] for i in idx], pad, ctx.device),
                   collate([kept[i] for i in r], pad, ctx.device) if r else None)
            done += 1
            if cap and done >= cap:
                return


# -- retain terms -----------------------------------------------------------------------------------------------

def kl_to_reference(model, ref, batch: Batch) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) of the next-token distributions, averaged over the completion tokens of the batch, from
    log-softmax of both models' logits. (MUSE's KLR applies ``F.kl_div(logits, ref_logits, log_target=True)`` to
    unnormalised logits, which is not a KL divergence; OpenUnlearning's KL averages over every position, prompt
    and padding included. obliviate uses the true KL on the tokens the forget loss is defined on.)"""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    log_p = F.log_softmax(model(**inputs).logits[:, :-1].float(), -1)
    with torch.no_grad():
        log_ref = F.log_softmax(ref(**inputs).logits[:, :-1].float(), -1)
    mask = batch["labels"][:, 1:] != -100
    kl = (log_ref.exp() * (log_ref - log_p)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def retain_term(kind: str, model, ref, batch: Batch | None) -> torch.Tensor | float:
    """The retain loss: ``nll`` (token-averaged NLL, MUSE GDR) or ``kl`` (KL to the frozen original, MUSE KLR);
    0 for ``none`` or without a retain batch."""
    if kind == "none" or batch is None:
        return 0.0
    if kind == "nll":
        return mean_nll(model, batch)
    if kind == "kl":
        return kl_to_reference(model, ref, batch)
    raise ConfigError(f"retain_loss: expected none, nll or kl, got {kind!r}")


__all__ = ["LoRAFields", "LMOptimConfig", "wrap_lora", "unwrap", "optimizer", "step", "reference_model",
           "forget_retain_batches", "kl_to_reference", "retain_term"]
