"""RMU: representation misdirection (Li et al. 2024, WMDP, arXiv 2403.03218).

The output of one transformer block on forget text is pushed toward a fixed random direction of large norm,
c·u/‖u‖ with u ~ U[0, 1)^d, and on retain text kept equal to the frozen original's; only a few MLP weights
below that block are trained. L = MSE(h_ℓ(θ; x_f), c·u/‖u‖) + α·MSE(h_ℓ(θ; x_r), h_ℓ(θ_o; x_r)), means over the
real (non-padding) token positions and hidden dimensions, as in the official ``rmu/unlearn.py`` (which also
averages over padding). The block is found by name (``transformer.h``, ``model.layers``, …), never by ``eval``,
and read with a forward hook; u is drawn from the run's seeded generator, so it is fixed by the seed.

The official run has one forget topic per control vector; obliviate's forget set is one topic (one u).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import torch

from obliviate.errors import ConfigError
from obliviate.methods import register
from obliviate.methods._lm import LMRun, LMRunFields, transformer_blocks
from obliviate.methods.base import Method

#: the MLP output projection inside a block: GPT-2 ``mlp.c_proj``; Llama / Qwen2 / Mistral / Gemma / OLMo
#: ``mlp.down_proj``; GPT-NeoX / Falcon / BLOOM ``mlp.dense_4h_to_h``; GPT-J ``mlp.fc_out``; Phi ``mlp.fc2``;
#: OPT ``fc2`` (directly in the block)
_MLP_OUT = r"(mlp\.(c_proj|down_proj|dense_4h_to_h|fc_out|fc2)|fc2)"
_MLP_OUT_NAMES = "mlp.c_proj, mlp.down_proj, mlp.dense_4h_to_h, mlp.fc_out, mlp.fc2, fc2"


@dataclass
class RMUConfig(LMRunFields):
    """Defaults: the official argparse (centerforaisafety/wmdp ``rmu/unlearn.py``): steering coefficient 20,
    α = 100, lr 5e-5 (``transformers.AdamW``, no weight decay), batch 4, 80 batches, layer 7 of Zephyr-7B's 32
    with the MLP output projections of layers 5–7 trained. ``layer`` unset scales that choice to the model's
    depth: ℓ = round(7·L/32) (GPT-2 small: 3; a 2-block model: 0). The official loop stops when the forget data
    run out; obliviate cycles through the forget set (reshuffled each pass) for the full step budget, since a
    small forget set would otherwise give only a handful of steps."""

    layer: int | None = field(default=None, metadata={
        "help": "block whose output is steered (0-based); unset = round(7·L/32) for L blocks", "min": 0})
    steering_coeff: float = field(default=20.0, metadata={"help": "norm c of the control vector", "gt": 0})
    alpha: float = field(default=100.0, metadata={"help": "weight α of the retain activation loss", "min": 0})
    params: str = field(default="auto", metadata={
        "help": "regex (full match) of the trainable parameter names; auto = the MLP output projections of "
                "blocks layer−2..layer (GPT-2: transformer.h.{i}.mlp.c_proj.weight; Llama, Qwen2, Mistral: "
                "model.layers.{i}.mlp.down_proj.weight; GPT-NeoX: gpt_neox.layers.{i}.mlp.dense_4h_to_h.weight; "
                "Phi: model.layers.{i}.mlp.fc2.weight)"})
    lr: float = field(default=5e-5, metadata={"help": "learning rate (AdamW)", "gt": 0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0})
    batch_size: int = field(default=4, metadata={"help": "forget sequences per step (and as many retain ones)",
                                                  "min": 1})
    max_num_batches: int = field(default=80, metadata={"help": "number of update steps", "min": 1})


def default_layer(n_blocks: int) -> int:
    return min(n_blocks - 1, int(7 * n_blocks / 32 + 0.5))


def default_params(prefix: str, layer: int) -> str:
    ids = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
    return rf"{re.escape(prefix)}\.({ids})\.{_MLP_OUT}\.weight"


def layer_and_params(model, cfg: RMUConfig) -> tuple[int, list[str]]:
    """The steered block's index and the names of the trainable parameters (``cfg.params``, full match)."""
    prefix, blocks = transformer_blocks(model)
    layer = default_layer(len(blocks)) if cfg.layer is None else cfg.layer
    if layer >= len(blocks):
        raise ConfigError(f"rmu.layer: the model has {len(blocks)} blocks (0..{len(blocks) - 1}), got {layer}")
    try:
        pattern = re.compile(default_params(prefix, layer) if cfg.params == "auto" else cfg.params)
    except re.error as exc:
        raise ConfigError(f"rmu.params: not a regular expression ({exc}): {cfg.params!r}") from None
    names = [n for n, _ in model.named_parameters() if pattern.fullmatch(n)]
    if not names and cfg.params == "auto":
        raise ConfigError(f"rmu: no MLP output projection in blocks {max(0, layer - 2)}..{layer} of "
                          f"{type(model).__name__} (looked for {prefix}.<i>.<name>.weight, <name> one of "
                          f"{_MLP_OUT_NAMES}); set rmu.params to a regex of the parameter names to train")
    if not names:
        raise ConfigError(f"rmu.params: {pattern.pattern!r} matches no parameter of {type(model).__name__}")
    return layer, names


class _Stop(Exception):
    """Raised before the block after the steered one: the rest of the forward pass is never computed."""


def block_output(model, block: torch.nn.Module, batch, next_block: torch.nn.Module | None = None) -> torch.Tensor:
    """The output hidden states of ``block`` [B, T, d] for ``batch``, read by a hook. With ``next_block`` the
    forward pass stops where that block would start (a pre-hook raises), so the blocks above the steered one,
    the head and their activations cost nothing — RMU at layer 7 of a 32-block model runs 8 of them. The
    following block never ran, so a gradient-checkpointing recomputation never meets the raising hook."""
    seen = {}

    def hook(_module, _inputs, output):
        seen["h"] = output[0] if isinstance(output, tuple) else output

    def stop(_module, _inputs):
        raise _Stop

    handles = [block.register_forward_hook(hook)]
    if next_block is not None:
        handles.append(next_block.register_forward_pre_hook(stop))
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen["h"]


def masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real token positions (``mask`` [B, T]) and the hidden dimensions."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return ((h.float() - target.float()) ** 2 * m).sum() / (m.sum() * h.shape[-1]).clamp_min(1)


@register
class RMU(Method):
    name = "rmu"
    guarantee = "approximate"
    needs = frozenset({"original", "retain"})
    kinds = ("language",)
    config_class = RMUConfig
    summary = "steer one block's forget activations to a random vector, keep retain activations"
    reference = "Li et al. 2024 (WMDP), arXiv 2403.03218; centerforaisafety/wmdp rmu/unlearn.py"

    def unlearn(self, ctx):
        cfg, gen = self.config, ctx.generator()
        layer, trained = layer_and_params(ctx.model, cfg)
        u = torch.rand(1, 1, ctx.model.config.hidden_size, generator=gen)  # fixed for the run, from the seed
        control = (u / u.norm() * cfg.steering_coeff).to(ctx.device)
        for n, p in ctx.model.named_parameters():
            p.requires_grad_(n in trained)
        modules = sorted({n.rsplit(".", 1)[0] for n in trained})  # LoRA only on the modules the regex selects
        # the frozen original's retain activations: the trained matrices' starting values swapped in (or LoRA
        # adapters disabled), so no second model is held
        run = LMRun(ctx, cfg, reference="model", targets=modules)
        def pair(model):  # the steered block and, unless it is the last (or FSDP runs the passes), the next one
            blocks = transformer_blocks(model)[1]
            return blocks[layer], (blocks[layer + 1] if layer + 1 < len(blocks) and not run.fsdp else None)

        mine = pair(ctx.model)
        pairs = {id(run.model): mine, id(ctx.model): mine}

        def steered(model, batch):
            target = pairs.get(id(model)) or pair(model)  # a separate copy's own blocks
            return block_output(model, target[0], batch, next_block=target[1])

        def loss(forget, retain):
            value = masked_mse(steered(run.model, forget), control, forget["attention_mask"])
            if retain is not None:
                frozen = run.reference(steered, retain)
                value = value + cfg.alpha * masked_mse(steered(run.model, retain), frozen, retain["attention_mask"])
            return value

        for batch in itertools.islice(run.batches(gen, epochs=cfg.max_num_batches), cfg.max_num_batches):
            run.step(loss, batch)
        return run.finish()
