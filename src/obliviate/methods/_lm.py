"""Helpers shared by the language-model unlearning methods (kept here so each method reads top to bottom).

A language method trains ``ctx.model`` (a Hugging Face causal LM) on the tokenised (prompt, completion) pairs
of the forget and retain records: labels only on the completion and EOS (:mod:`obliviate.lm`). It trains the
full weights, or LoRA adapters through ``peft`` (``lora_r > 0``) that are merged back before returning, so the
result is always a plain model of the input's class.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from obliviate import dist
from obliviate.errors import ConfigError
from obliviate.lm import Encoded, collate, encode_all, eval_batch_size, max_length, mean_nll, sequence_nll
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


PRECISIONS = ("fp32", "bf16-mixed", "fp16-mixed", "bf16")


@dataclass
class LMRunFields(LoRAFields):
    """How a language method's training runs — memory and precision, not the algorithm. Defaults reproduce the
    plain fp32 single-device run; a 7B model wants ``precision=bf16-mixed``, ``grad_checkpointing=true`` and a
    ``grad_accum`` that keeps the global ``batch_size`` while cutting activation memory."""

    grad_accum: int = field(default=1, metadata={
        "help": "micro-batches per optimiser step: each step's batch is processed in this many pieces whose "
                "gradients are summed (the same update, a fraction of the activation memory)", "min": 1})
    eval_batch_size: int = field(default=0, metadata={
        "help": "sequences per forward pass when the method scores without gradients (the reference "
                "log-likelihoods); 0 = the task's eval_batch_size (32)", "min": 0})
    grad_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each block's activations in the backward pass (Hugging Face gradient checkpointing): "
                "activations of one block instead of all, for about a third more compute"})
    precision: Literal["fp32", "bf16-mixed", "fp16-mixed", "bf16"] = field(default="fp32", metadata={
        "help": "fp32; bf16-mixed / fp16-mixed (autocast with fp32 master weights, a gradient scaler for fp16); "
                "bf16 (weights and updates in bf16: small updates round away, a warning says so)"})
    max_length: int = field(default=0, metadata={
        "help": "longest training sequence in tokens (longer documents are chunked); 0 = the task's max_length "
                "or the model's context", "min": 0})
    ref_device: str = field(default="", metadata={
        "help": "device of the reference model when it must be a separate copy (full-weight training with a KL "
                "or activation target), e.g. cpu; '' = no separate copy: the trained weights' starting values "
                "are kept and swapped in for reference passes"})
    ref_precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "dtype of a separate reference copy (with ref_device): auto = the weights' dtype"})
    sharding: Literal["auto", "replicate", "fsdp"] = field(default="auto", metadata={
        "help": "under a multi-process launcher: replicate (every process holds the model, gradients summed: "
                "DDP) or fsdp (weights, gradients and optimiser state sharded across the processes with PyTorch "
                "FSDP2, for full-weight training of models whose training state does not fit one device); auto = "
                "fsdp when accelerate was launched with an FSDP config (ACCELERATE_USE_FSDP), else replicate"})


#: The NPO authors' optimiser recipe (licong-lin/negative-preference-optimization ``config/forget.yaml`` and
#: ``TOFU/forget.py``, kept by SimNPO's OPTML-Group/Unlearn-Simple ``TOFU/config/forget.yaml``): weight decay 0.01,
#: ``warmup_steps: steps_per_epoch`` (one epoch of linear warm-up), then the Hugging Face ``Trainer``'s default
#: ``lr_scheduler_type="linear"`` decay to 0 at the last step. ``--set weight_decay=0.01 --set lr_schedule=linear
#: --set warmup_epochs=1`` applies it to any language method.
NPO_REPO_RECIPE = {"weight_decay": 0.01, "lr_schedule": "linear", "warmup_epochs": 1.0}

LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class LMOptimConfig(LMRunFields):
    """Optimiser fields of the gradient-based language methods. Defaults: the OpenUnlearning reproduction
    (locuslab/open-unlearning ``docs/repro.md``: lr 1e-5, 10 epochs, effective batch 32, AdamW), which MUSE
    shares (swj0419/muse_bench ``baselines/baselines/iterative.py``: AdamW, ``lr_scheduler_type="constant"``,
    lr 1e-5, 10 epochs, 4 × 8 GPUs). Weight decay 0 and gradient clipping at norm 1 are the Hugging Face
    ``Trainer`` defaults both use; the learning rate is constant with no warm-up (MUSE). The schedules are the
    ``Trainer``'s (:func:`lr_factor`); :data:`NPO_REPO_RECIPE` is the NPO repository's warm-up + linear decay."""

    lr: float = field(default=1e-5, metadata={"help": "learning rate", "gt": 0})
    epochs: int = field(default=10, metadata={"help": "passes over the forget set", "min": 1})
    batch_size: int = field(default=32, metadata={"help": "forget sequences per step (and as many retain ones)",
                                                   "min": 1})
    optimizer: Literal["adamw", "adam", "sgd"] = field(default="adamw", metadata={
        "help": "adamw (torch AdamW), adam or sgd (momentum 0.9)"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay", "min": 0})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 disables", "min": 0})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps; 0 = no cap", "min": 0})
    lr_schedule: Literal["constant", "linear", "cosine"] = field(default="constant", metadata={
        "help": "learning rate after the warm-up: constant (MUSE, OpenUnlearning), linear or cosine decay to 0 at "
                "the last step (Hugging Face Trainer schedules; linear + warmup_epochs=1 + weight_decay=0.01 is "
                "the NPO repository's recipe)"})
    warmup_steps: int = field(default=0, metadata={
        "help": "optimiser steps of linear warm-up from 0 (Trainer convention: the first step's lr is 0)", "min": 0})
    warmup_epochs: float = field(default=0.0, metadata={
        "help": "warm-up as a number of epochs (rounded to steps; NPO repository: 1); not with warmup_steps",
        "min": 0})

    def validate(self) -> None:
        if self.warmup_steps and self.warmup_epochs:
            raise ConfigError("warmup_steps and warmup_epochs: set one of them, not both")


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (0-based) of ``total``: Hugging Face
    ``transformers.optimization`` ``get_{constant,linear,cosine}_schedule_with_warmup`` (cosine with half a
    cycle), so a ``Trainer`` recipe gives the same lr sequence: step/warmup while warming up, then 1, the linear
    (total − step)/(total − warmup), or ½(1 + cos(π·progress)). Past ``total`` (which the ``Trainer`` never
    reaches) both decays stay at 0 rather than the cosine rising again."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if kind == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ConfigError(f"lr_schedule: expected {', '.join(LR_SCHEDULES)}, got {kind!r}")


# -- the model's layout ----------------------------------------------------------------------------------------

_BLOCK_LISTS = ("transformer.h", "model.layers", "model.decoder.layers", "gpt_neox.layers", "transformer.blocks",
                "transformer.layers")


def transformer_blocks(model) -> tuple[str, torch.nn.ModuleList]:
    """The model's list of transformer blocks and its dotted name: a known name (GPT-2 ``transformer.h``,
    Llama / Qwen2 / Mistral / Phi ``model.layers``, GPT-NeoX ``gpt_neox.layers``, …), else the outermost
    ``ModuleList`` with as many entries as the config's ``num_hidden_layers``."""
    for name in _BLOCK_LISTS:
        try:
            blocks = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(blocks, torch.nn.ModuleList):
            return name, blocks
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth]
    if not lists:
        raise ConfigError(f"rmu: cannot find the transformer blocks of {type(model).__name__}: expected a "
                          f"ModuleList named {', '.join(_BLOCK_LISTS)} or one of num_hidden_layers ({depth}) blocks")
    return min(lists, key=lambda nm: nm[0].count("."))


# -- LoRA -------------------------------------------------------------------------------------------------

def _has_conv1d(model) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def lora_targets(model, spec: str):
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
                        target_modules=targets if targets is not None else lora_targets(model, cfg.lora_targets),
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


# -- the training run -----------------------------------------------------------------------------------------

def optimizer(model, cfg) -> torch.optim.Optimizer:
    """The optimiser over the trainable parameters (all of them, or the LoRA adapters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    name = getattr(cfg, "optimizer", "adamw")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return make_optimizer(params, name, cfg.lr, cfg.weight_decay)


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_AUTOCAST = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}
BF16_WARNING = ("warning: precision=bf16 keeps the weights in bf16, where an update smaller than about 0.4 % of a "
                "weight rounds away (at lr 1e-5 most of them); bf16-mixed keeps fp32 master weights")


def _rebuild(cls, config, state: dict, source, device, dtype: torch.dtype | None = None):
    """A plain ``cls`` model built on the meta device and filled with ``state`` (moved to ``device``, floating
    tensors in ``dtype``), with ``source``'s non-persistent buffers (rotary frequencies) and obliviate attributes."""
    with torch.device("meta"):
        twin = cls(copy.deepcopy(config))
    twin.load_state_dict({k: v.detach().to(device=device, dtype=dtype if dtype and v.is_floating_point() else None,
                                           copy=True) for k, v in state.items()}, assign=True)
    for name, buf in source.named_buffers():
        if name not in state:
            owner, _, leaf = name.rpartition(".")
            twin.get_submodule(owner)._buffers[leaf] = buf.detach().to(device, copy=True)
    if getattr(config, "tie_word_embeddings", False):
        twin.tie_weights()
    for key in ("obliviate_max_length", "obliviate_eval_batch_size"):
        if hasattr(source, key):
            setattr(twin, key, getattr(source, key))
    return twin


def clone_to(model, device, dtype: torch.dtype | None = None):
    """A frozen copy of ``model`` built directly on ``device`` (in ``dtype`` for its floating-point tensors): the
    skeleton is made on the meta device and the tensors are copied over one by one, so no second full copy
    ever exists where ``model`` is."""
    return _rebuild(type(model), model.config, model.state_dict(), model, device, dtype).eval().requires_grad_(False)


def shard(model):
    """``model`` with its weights sharded across the launcher's processes (PyTorch FSDP2 ``fully_shard``): every
    transformer block is one unit, the rest (embeddings, final norm, head) the root's."""
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(model)[1]:
        fully_shard(block)
    fully_shard(model)
    return model


class LMRun:
    """One language method's training run: its sequences, the model as trained (precision, LoRA, gradient
    checkpointing), the optimiser, micro-batching across ``grad_accum`` pieces and launcher processes, and the
    reference the loss compares with — without a second model wherever one can be avoided:

    - ``reference="nll"``: the starting model's sequence NLLs of every forget sequence, computed once before the
      first update (NPO's reference term); no model is kept.
    - ``reference="model"`` (or ``"nll+model"``): a frozen reference for passes during training (KL to the original, RMU's retain
      activations): with LoRA the same model with its adapters disabled; otherwise the trained parameters'
      starting values, swapped in for the reference pass (no second module: for RMU three matrices); a separate
      frozen copy only when ``ref_device`` / ``ref_precision`` ask for one.

    A method's loop reads ``for batch in run.batches(): run.step(loss, batch)`` then ``return run.finish()``.
    """

    def __init__(self, ctx, cfg, *, retain: bool = True, reference: str = "none", targets=None):
        dist.init()
        self.ctx, self.cfg, self.device = ctx, cfg, torch.device(ctx.device)
        base = ctx.model
        self.dtype_in = next(base.parameters()).dtype
        self.warnings: list[str] = []
        self.block: dict[str, Any] | None = None  # the report's ``lm_run`` block, once ``finish`` has run
        self.fsdp = dist.launched() and (cfg.sharding == "fsdp" or (
            cfg.sharding == "auto" and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"))
        # the training dtype: bf16, or fp32 (master) weights unless LoRA leaves the frozen base as loaded;
        # under FSDP the cast waits until the weights are sharded (never a full fp32 copy per process)
        self.train_dtype = (torch.bfloat16 if cfg.precision == "bf16" else
                            torch.float32 if cfg.lora_r == 0 or cfg.precision == "fp32" else None)
        if cfg.precision == "bf16":
            self.warnings.append(BF16_WARNING)
            if not os.environ.get("OBLIVIATE_QUIET"):
                print(BF16_WARNING, file=sys.stderr)
        if self.train_dtype is not None and not self.fsdp:
            base.to(self.train_dtype)  # a no-op when the model is already in it
        self.autocast_dtype = _AUTOCAST.get(cfg.precision)
        if self.fsdp and cfg.lora_r > 0:
            raise ConfigError("sharding=fsdp shards full-weight training; LoRA's trainable state is small, so "
                              "run it with sharding=replicate")
        if self.fsdp and cfg.precision == "fp16-mixed":
            raise ConfigError("sharding=fsdp: fp16-mixed's gradient scaler is not sharded here; use bf16-mixed")
        tok = ctx.tokenizer
        self.pad = tok.pad_token_id
        limit = cfg.max_length or max_length(base)
        self.forget = encode_all(tok, ctx.forget_pairs, limit)
        self.retain = encode_all(tok, ctx.retain_pairs, limit) if retain and ctx.retain_pairs else []
        wants = set(reference.split("+")) - {"none"}
        if wants - {"nll", "model"}:
            raise ValueError(f"reference: expected none, nll, model or nll+model, got {reference!r}")
        self.ref_nll = self._reference_nll(base) if "nll" in wants and not self.fsdp else None
        self.ref_kind, self._ref, self._stash = "none", None, None
        if "model" in wants:
            self._setup_reference(base)
        self.base = base
        self.model = wrap_lora(base, cfg, ctx.generator(1), targets).train()
        if "model" in wants and cfg.lora_r > 0 and self.ref_kind == "none":
            self.ref_kind = "adapters disabled"
        if cfg.grad_checkpointing:
            if not getattr(base, "supports_gradient_checkpointing", False):
                raise ConfigError(f"grad_checkpointing: {type(base).__name__} does not support gradient "
                                  f"checkpointing")
            self._use_cache = getattr(base.config, "use_cache", None)
            base.config.use_cache = False
            kwargs = {"use_reentrant": False}  # non-reentrant: works with frozen inputs (LoRA) and forward hooks
            if hasattr(base, "activation_checkpointing_enable"):  # transformers 5's name
                base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if self.fsdp:
            if "model" in wants and self.ref_kind == "none":  # sharded parameters cannot be swapped: a sharded copy
                self._ref = shard(clone_to(base, self.device))
                self.ref_kind = "separate copy, sharded"
            self._plain = (type(base), copy.deepcopy(base.config))
            shard(base)
            for m in (base, self._ref):
                if m is not None and self.train_dtype is not None:
                    m.to(self.train_dtype)  # the shards only
            if "nll" in wants:  # the starting model's NLLs, through the sharded model (every process, same batches)
                self.ref_nll = self._reference_nll(base)
                base.reshard()  # FSDP leaves the root unsharded after a forward without backward: the optimiser
                # must get the sharded parameters
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if "model" in wants and self.ref_kind == "none":  # full or partial weights: keep their start values
            self._stash = [(p, p.detach().clone()) for p in self.params]
            self.ref_kind = "starting weights swapped in"
        self.opt = optimizer(self.model, cfg)
        self.total_steps = self._planned_steps(getattr(cfg, "epochs", 1))
        self.scheduler = self._scheduler()
        if self.device.type == "cuda":  # the report's peak is this training run's, not the evaluation's before it
            torch.cuda.reset_peak_memory_stats(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16-mixed" else None
        self.steps = self.skipped = 0

    # -- learning-rate schedule ----------------------------------------------------------------------------------
    def _planned_steps(self, epochs: int) -> int:
        """Optimiser steps :meth:`batches` yields over ``epochs`` passes (``max_steps`` caps it)."""
        per_epoch = -(-len(self.forget) // max(1, getattr(self.cfg, "batch_size", 1)))
        cap = getattr(self.cfg, "max_steps", 0)
        return min(epochs * per_epoch, cap) if cap else epochs * per_epoch

    def _scheduler(self):
        """A ``LambdaLR`` stepped once per optimiser step, or None for a constant lr without warm-up (the
        default: the optimiser is then exactly what it was before schedules existed)."""
        cfg = self.cfg
        kind = getattr(cfg, "lr_schedule", "constant")
        per_epoch = -(-len(self.forget) // max(1, getattr(cfg, "batch_size", 1)))
        self.warmup_steps = (getattr(cfg, "warmup_steps", 0)
                             or int(round(getattr(cfg, "warmup_epochs", 0.0) * per_epoch)))
        if kind == "constant" and self.warmup_steps == 0:
            return None
        lr_factor(0, 1, 0, kind)  # an unknown kind fails here, not at the first step
        # total_steps is read at every step: batches(epochs=...) may re-plan it before the first one
        return torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: lr_factor(step, self.total_steps, self.warmup_steps, kind))

    def lr(self) -> float:
        """The learning rate the next optimiser step uses."""
        return float(self.opt.param_groups[0]["lr"])

    # -- data ---------------------------------------------------------------------------------------------------
    def batches(self, gen: torch.Generator | None = None, epochs: int | None = None):
        """Every optimiser step's (forget indices, retain indices or None): ``epochs`` (default ``cfg.epochs``)
        shuffled passes over the forget sequences in batches of ``cfg.batch_size``, each paired with a random
        retain batch of the same size (drawn with replacement; OpenUnlearning's ``ForgetRetainDataset`` anchors on
        forget the same way). Stops after ``cfg.max_steps`` steps when that is set. Every process draws the same
        global batches."""
        cfg = self.cfg
        gen = gen if gen is not None else self.ctx.generator()
        if epochs is not None and self.steps == 0:  # the schedule's horizon is these passes
            self.total_steps = self._planned_steps(epochs)
        cap, done = getattr(cfg, "max_steps", 0), 0
        for _ in range(cfg.epochs if epochs is None else epochs):
            order = torch.randperm(len(self.forget), generator=gen).tolist()
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                r = torch.randint(len(self.retain), (len(idx),), generator=gen).tolist() if self.retain else None
                yield idx, r
                done += 1
                if cap and done >= cap:
                    return

    def _collate(self, items: list[Encoded], idx: list[int]) -> Batch:
        batch = collate([items[i] for i in idx], self.pad, self.device)
        batch["index"] = torch.tensor(idx, dtype=torch.long, device=self.device)
        return batch

    def autocast(self, device_type: str | None = None, cache: bool = True):
        """The run's autocast region. ``cache=False`` for passes without gradients: autocast otherwise keeps a
        16-bit copy of every weight that requires grad until the region exits (half the model again)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type or self.device.type, dtype=self.autocast_dtype,
                              cache_enabled=cache)

    # -- reference ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _reference_nll(self, base) -> torch.Tensor:
        """Summed completion NLL of every forget sequence under the starting model, in length-sorted batches."""
        was = base.training
        base.eval()
        out = torch.empty(len(self.forget), dtype=torch.float32)
        size = self.cfg.eval_batch_size or eval_batch_size(base)
        order = sorted(range(len(self.forget)), key=lambda i: -len(self.forget[i].ids))
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            with self.autocast(cache=False):
                nll, _ = sequence_nll(base, collate([self.forget[i] for i in idx], self.pad, self.device))
            out[idx] = nll.float().cpu()
        base.train(was)
        return out.to(self.device)

    def _setup_reference(self, base) -> None:
        cfg = self.cfg
        ref_device = torch.device(cfg.ref_device) if cfg.ref_device else self.device
        if ref_device == self.device and cfg.ref_precision == "auto":
            return  # LoRA: adapters disabled; otherwise the starting weights are stashed after wrapping
        dtype = _DTYPES.get(cfg.ref_precision)
        self._ref = clone_to(base, ref_device, dtype)
        self.ref_kind = f"separate copy on {ref_device}" + (f" in {cfg.ref_precision}" if dtype else "")

    @torch.no_grad()
    def reference(self, fn, batch: Batch):
        """``fn(model, batch)`` evaluated on the frozen reference (eval mode, the run's autocast); the result comes
        back on the training device."""
        if self._ref is not None:
            where = next(self._ref.parameters()).device
            moved = {k: v.to(where) for k, v in batch.items()}
            with self.autocast(where.type, cache=False):
                out = fn(self._ref, moved).to(self.device)
            if self.fsdp:
                self._ref.reshard()  # a forward without backward leaves FSDP's root unsharded
            return out
        was = self.model.training
        self.model.eval()
        try:
            with self.autocast(cache=False):
                if self.ref_kind == "adapters disabled":
                    with self.model.disable_adapter():
                        return fn(self.model, batch)
                swapped = [(p, p.data) for p, _ in self._stash]
                for p, start in self._stash:
                    p.data = start
                try:
                    return fn(self.model, batch)
                finally:
                    for p, current in swapped:
                        p.data = current
        finally:
            self.model.train(was)

    # -- optimisation -------------------------------------------------------------------------------------------------
    def step(self, loss_fn, batch) -> None:
        """One optimiser update on the global batch ``(forget indices, retain indices)``: split into
        world size × ``grad_accum`` pieces, this process's pieces run forward/backward with
        ``loss_fn(forget_batch, retain_batch or None)`` weighted by their share of the batch (exact for losses
        that are means over sequences), gradients summed across processes, clipped, applied."""
        f_idx, r_idx = batch
        n, accum = len(f_idx), self.cfg.grad_accum
        pieces = np.array_split(np.arange(n), dist.world_size() * accum)
        # FSDP averages the gradients over the processes (hence × world size) and needs every process to run as many
        # passes: an empty piece runs the batch's first sequence with weight 0
        scale = dist.world_size() if self.fsdp else 1
        for piece in pieces[dist.rank() * accum:(dist.rank() + 1) * accum]:
            weight = len(piece) / n * scale
            if len(piece) == 0:
                if not self.fsdp:
                    continue
                piece = np.zeros(1, dtype=int)
            forget = self._collate(self.forget, [f_idx[i] for i in piece])
            retain = self._collate(self.retain, [r_idx[i] for i in piece]) if r_idx is not None else None
            with self.autocast():
                loss = loss_fn(forget, retain) * weight
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if not self.fsdp:
            dist.sum_gradients(self.params)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        clip = getattr(self.cfg, "max_grad_norm", 0.0)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.opt)  # skipped when a gradient overflowed; the scale then halves
            self.scaler.update()
            self.skipped += self.scaler.get_scale() < scale
        else:
            self.opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.opt.zero_grad(set_to_none=True)
        self.steps += 1

    def finish(self):
        """The trained model: adapters merged, checkpointing off, in the dtype it came in, eval mode. What the run
        did (precision, micro-batches, reference, peak memory) goes to the report's ``lm_run`` block."""
        cfg = self.cfg
        if cfg.grad_checkpointing:
            (getattr(self.base, "activation_checkpointing_disable", None) or self.base.gradient_checkpointing_disable)()
            self.base.config.use_cache = self._use_cache
        if self.fsdp:  # every process gathers the full weights into a plain model for evaluation and saving,
            # one tensor at a time, each cast to the dtype the model came in (never the whole model in fp32)
            self.opt = self._ref = None
            state = {}
            for name, tensor in self.base.state_dict().items():
                full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
                state[name] = full.to(self.dtype_in) if full.is_floating_point() else full
            cls, config = self._plain
            self.model = _rebuild(cls, config, state, self.base, self.device)
        model = unwrap(self.model)
        if next(model.parameters()).dtype != self.dtype_in:
            model.to(self.dtype_in)
        self._ref = self._stash = None
        block = {"precision": cfg.precision, "grad_accum": cfg.grad_accum, "processes": dist.world_size(),
                 "sharding": "fsdp" if self.fsdp else "replicate",
                 "batch_size": getattr(cfg, "batch_size", None), "grad_checkpointing": cfg.grad_checkpointing,
                 "lora_r": cfg.lora_r, "reference": "; ".join(
                     ["precomputed NLLs"] * (self.ref_nll is not None) + [self.ref_kind] * (self.ref_kind != "none"))
                 or "none", "steps": self.steps,
                 "trainable_parameters": int(sum(p.numel() for p in self.params))}
        if self.scheduler is not None:
            block["lr_schedule"] = {"kind": getattr(cfg, "lr_schedule", "constant"), "warmup_steps": self.warmup_steps,
                                    "total_steps": self.total_steps}
        if self.scaler is not None:
            block["skipped_steps"] = int(self.skipped)  # fp16 overflow: the gradient scaler skipped the update
        if self.device.type == "cuda":
            block["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
        if self.warnings:
            block["warnings"] = list(self.warnings)
        self.block = block
        self.ctx.report("lm_run", block)
        return model


# -- retain terms -----------------------------------------------------------------------------------------------

def _logits(model, batch: Batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def kl_to_reference(run: LMRun, batch: Batch) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) of the next-token distributions, averaged over each sequence's completion tokens and then
    over the sequences — the reduction of the NLL terms, so a batch split into micro-batches or processes gives the
    same loss. (MUSE's KLR applies ``F.kl_div(logits, ref_logits, log_target=True)`` to unnormalised logits, which
    is not a KL divergence; OpenUnlearning's KL averages over every position, prompt and padding included.
    obliviate uses the true KL on the tokens the forget loss is defined on.) Only the completion rows are
    upcast to fp32."""
    mask = batch["labels"][:, 1:] != -100
    ref = run.reference(lambda m, b: _logits(m, b)[:, :-1][b["labels"][:, 1:] != -100], batch)
    log_p = F.log_softmax(_logits(run.model, batch)[:, :-1][mask].float(), -1)
    log_ref = F.log_softmax(ref.float(), -1)
    kl = (log_ref.exp() * (log_ref - log_p)).sum(-1)  # one value per completion token, row-major over the batch
    per_sequence = torch.zeros(mask.shape[0], dtype=kl.dtype, device=kl.device).index_add_(
        0, mask.nonzero()[:, 0], kl)
    return (per_sequence / mask.sum(1).clamp_min(1)).mean()


def retain_term(kind: str, run: LMRun, batch: Batch | None) -> torch.Tensor | float:
    """The retain loss: ``nll`` (token-averaged NLL, MUSE GDR) or ``kl`` (KL to the frozen original, MUSE KLR);
    0 for ``none`` or without a retain batch."""
    if kind == "none" or batch is None:
        return 0.0
    if kind == "nll":
        return mean_nll(run.model, batch)
    if kind == "kl":
        return kl_to_reference(run, batch)
    raise ConfigError(f"retain_loss: expected none, nll or kl, got {kind!r}")


__all__ = ["LoRAFields", "LMRunFields", "transformer_blocks", "clone_to", "shard", "LMOptimConfig", "PRECISIONS", "LMRun", "wrap_lora", "unwrap",
           "optimizer", "kl_to_reference", "retain_term", "lr_factor", "LR_SCHEDULES", "NPO_REPO_RECIPE"]
