"""Blindspot unlearning (Deep Regression Unlearning, Tarun et al., ICML 2023, arXiv 2210.08196).

A *blindspot* model of the same architecture is trained from a fresh initialisation for a few epochs on the
retain set only, so it never sees the forget rows and is weak there. The original model is then fine-tuned
on shuffled mixed batches of the whole training set: retain rows fit their labels; forget rows match the
blindspot model's outputs and the attention maps of its hidden activations. The two terms are weighted by
the batch's forget fraction λ::

    L = λ·L_f + (1 − λ)·L_r,        λ = #forget rows in the batch / batch size
    L_f = ℓ(ŷ_f, ŷ_s,f) + β Σ_k AT(A_k,f, S_k,f),    L_r = ℓ(ŷ_r, y_r)

Official code (ayu987/deep-regression-unlearning; the stored copy is ayushkumartarun/deep-regression-unlearning):
``unlearn.py`` ``attention`` (L48-53), ``attention_diff`` (L56-62), ``forget_loss`` with ``AT_beta = 50``
(L66-78), ``fit_one_forget_cycle`` (L82-; Adam L87, λ = ``ulabels.sum()/len(ulabels)``); the blindspot model is
trained with ``utils.py`` ``fit_one_cycle`` (L70, Adam ``lr=0.01`` L75).

Where obliviate differs (each a documented choice, not from the paper):

* The official models return ``(prediction, act_1, ..., act_K)``; here every hidden activation module of the
  model's body (``nn.ReLU`` and friends — the MLP's ReLU outputs, the SmallCNN's conv feature maps) is read
  with a forward hook.
* The official attention map averages the squared activation over dim 1 (channels), which is degenerate for
  a 2-D ``(batch, features)`` activation: one value per row, normalised to 1, so AT ≡ 0 on an MLP. With
  ``vector_attention="features"`` (default) a 2-D activation is read as one channel over ``features``
  positions, ``Q(a) = normalize(a²)``; ``"channel_mean"`` applies the official formula verbatim
  (AT contributes nothing on an MLP). Maps of ≥ 3 dimensions use the official formula either way.
* ``base_loss="task"`` uses the task's training loss for both terms (squared error in standardised target
  units, as the STS-B notebook's ``F.mse_loss``; cross-entropy on retain labels and KL to the blindspot's
  softmax for classification). ``"l1"`` is the AgeDB code's ``F.l1_loss`` (in standardised units).
* The blindspot model gets its own seed (derived from the run seed, never the original's init), its input /
  target standardisation is fitted on the retain rows, and it is frozen explicitly (pitfall 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from obliviate.errors import ObliviateError
from obliviate.methods import register
from obliviate.methods._common import OptimConfig, distill_kl, loader, optimizer
from obliviate.methods.base import Method
from obliviate.training import batches, make_optimizer, per_example_loss, task_loss

#: modules whose outputs are the "hidden activations" read for attention transfer
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.ReLU6)


@dataclass
class BlindspotConfig(OptimConfig):
    """Defaults from ayu987/deep-regression-unlearning (stored as ayushkumartarun/deep-regression-unlearning),
    STS-B notebook ``STSB_LSTM_Unlearn_0_to_2.ipynb`` — the official regression trained with MSE, the loss
    obliviate's regression tasks use: unlearning Adam lr 1e-3 for 5 epochs, batch 256, β = 50 (``In[36]``:
    ``AT_beta = 50``, ``fit_one_forget_cycle(5, ..., lr=0.001)``; ``unlearn.py`` L66, L87); blindspot model
    10 epochs of ``fit_one_cycle`` with Adam lr 0.01 (``In[33]``; ``utils.py`` L70, L75). The AgeDB image notebook
    (L1 loss) uses 1 unlearning and 2 blindspot epochs (``In[31]``, ``In[30]``): ``--set epochs=1
    blindspot_epochs=2``."""

    optimizer: Literal["sgd", "adam"] = field(default="adam", metadata={"help": "sgd or adam (official: adam)"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of the unlearning fine-tune", "gt": 0,
                                          "tune": (1e-4, 1e-2, "log")})
    epochs: int = field(default=5, metadata={"help": "passes over the mixed retain+forget set (AgeDB: 1)",
                                             "min": 1, "tune": (1, 10)})
    batch_size: int = field(default=256, metadata={"help": "mixed mini-batch size", "min": 1})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay (official: none)", "min": 0})
    beta: float = field(default=50.0, metadata={"help": "weight of the attention-transfer terms (AT_beta)",
                                                "min": 0, "tune": (0.0, 100.0)})
    blindspot_epochs: int = field(default=10, metadata={
        "help": "epochs of blindspot-model training on the retain set (AgeDB: 2)", "min": 1})
    blindspot_lr: float = field(default=0.01, metadata={"help": "Adam learning rate of the blindspot model",
                                                        "gt": 0})
    blindspot_batch_size: int = field(default=256, metadata={"help": "blindspot-model mini-batch size", "min": 1})
    base_loss: Literal["task", "l1"] = field(default="task", metadata={
        "help": "task: the task's training loss for both terms (squared error in standardised units; "
                "CE + KL for classification); l1: the AgeDB code's L1 (regression only)"})
    vector_attention: Literal["features", "channel_mean"] = field(default="features", metadata={
        "help": "attention map of a 2-D activation: features = normalize(a^2) over its units; "
                "channel_mean = the official formula verbatim (always 1, so AT = 0 on an MLP)"})
    min_retain: int = field(default=10, metadata={
        "help": "fewest retain rows accepted: the blindspot model is trained on them alone", "min": 1})


# -- the pieces (pure functions, tested by hand) -----------------------------------------------------------

def attention_map(a: torch.Tensor, vector_attention: str = "features") -> torch.Tensor:
    """Zagoruyko-Komodakis attention map as in ``unlearn.py`` ``attention``: the squared activation averaged
    over dim 1 (channels), flattened per example and L2-normalised. A 2-D activation is read as one channel
    over its units when ``vector_attention == "features"``."""
    if a.dim() == 2 and vector_attention == "features":
        a = a.unsqueeze(1)
    return F.normalize(a.pow(2).mean(1).reshape(a.size(0), -1))


def attention_transfer(a: torch.Tensor, s: torch.Tensor, vector_attention: str = "features") -> torch.Tensor:
    """``attention_diff``: mean over batch and positions of (Q(a) − Q(s))²."""
    return (attention_map(a, vector_attention) - attention_map(s, vector_attention)).pow(2).mean()


def forget_fraction(forget_mask: torch.Tensor) -> torch.Tensor:
    """λ of a batch: the fraction of its rows that belong to the forget set (``ulabels.sum()/len(ulabels)``)."""
    return forget_mask.float().mean()


def _base(kind: str, base_loss: str, model, out: torch.Tensor, target: torch.Tensor, soft: bool) -> torch.Tensor:
    if kind == "classification":
        return distill_kl(out, target, 1.0) if soft else F.cross_entropy(out, target)
    if base_loss == "l1":
        scale = getattr(model, "y_std", None)
        return ((out - target) / (scale if scale is not None else 1.0)).abs().mean()
    return per_example_loss(kind, model, out, target).mean()


def mixed_loss(kind: str, model, out: torch.Tensor, out_s: torch.Tensor, acts: list[torch.Tensor],
               acts_s: list[torch.Tensor], y: torch.Tensor, forget_mask: torch.Tensor, *, beta: float,
               base_loss: str = "task", vector_attention: str = "features") -> torch.Tensor:
    """``fit_one_forget_cycle``'s batch loss: λ·L_f + (1 − λ)·L_r; a term is 0 when its rows are absent.

    ``y`` is read on retain rows only (forget rows' labels are never used); ``model`` supplies the target
    scale (``y_std``) of the regression loss.
    """
    keep = ~forget_mask
    lam = forget_fraction(forget_mask)
    l_r = out.new_zeros(())
    if keep.any():
        l_r = _base(kind, base_loss, model, out[keep], y[keep], soft=False)
    l_f = out.new_zeros(())
    if forget_mask.any():
        l_f = _base(kind, base_loss, model, out[forget_mask], out_s[forget_mask], soft=True)
        if beta > 0:
            for a, s in zip(acts, acts_s):
                l_f = l_f + beta * attention_transfer(a[forget_mask], s[forget_mask], vector_attention)
    return lam * l_f + (1 - lam) * l_r


def activation_modules(model: nn.Module) -> list[nn.Module]:
    """The hidden activation modules of ``model``'s body (or of the model), in forward-definition order."""
    root = getattr(model, "body", model)
    return [m for m in root.modules() if isinstance(m, ACTIVATIONS)]


class _Recorder:
    """Forward hooks that collect the outputs of ``modules`` during one forward pass."""

    def __init__(self, modules: list[nn.Module]):
        self.outputs: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, inputs, output):
        self.outputs.append(output)

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def fit_blindspot(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, cfg: BlindspotConfig,
                  gen: torch.Generator) -> nn.Module:
    """``fit_one_cycle`` on the retain rows ``(x, y)`` only: Adam(blindspot_lr), blindspot_epochs passes.

    The standardisation buffers are fitted on the same rows, so the blindspot model is a function of the
    retain set alone. Returned frozen (eval mode, no gradients).
    """
    if hasattr(model, "fit_normalizer"):
        model.fit_normalizer(x.detach().cpu().numpy(), y.detach().cpu().numpy())
    model.train()
    opt = make_optimizer(model.parameters(), "adam", cfg.blindspot_lr)
    for _ in range(cfg.blindspot_epochs):
        for xb, yb in loader(x, y, cfg.blindspot_batch_size, gen):
            loss = task_loss(kind, model, model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@register
class Blindspot(Method):
    name = "blindspot"
    guarantee = "approximate"
    needs = frozenset({"retain", "labels", "original"})
    kinds = ("classification", "regression")
    config_class = BlindspotConfig
    summary = "match a retain-only 'blindspot' model (outputs + attention maps) on forget rows, fit labels on retain"
    reference = "Tarun et al., Deep Regression Unlearning, ICML 2023 (arXiv 2210.08196); ayu987/deep-regression-unlearning"

    def check_request(self, kind: str, n_retain: int) -> None:
        """Refuse what this method cannot do; needs only the task kind and the retain-set size, so a pipeline
        can call it before training anything."""
        cfg = self.config
        if n_retain < cfg.min_retain:
            raise ObliviateError(
                f"blindspot needs retain data to train its blindspot model: the forget set leaves {n_retain} retain "
                f"row(s), fewer than min_retain={cfg.min_retain}; forget fewer rows or lower --set blindspot.min_retain")
        if cfg.base_loss == "l1" and kind != "regression":
            raise ObliviateError("blindspot base_loss=l1 applies to regression tasks only; use base_loss=task")

    def blindspot_model(self, ctx) -> nn.Module:
        """A fresh model of the task's architecture (own seed) trained on the retain set only, frozen."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator(1)))
        fresh = ctx.task.make_model(seed).to(ctx.device)
        return fit_blindspot(fresh, ctx.x_retain, ctx.y_retain, ctx.kind, self.config, ctx.generator(2))

    def unlearn(self, ctx):
        cfg = self.config
        self.check_request(ctx.kind, 0 if ctx.x_retain is None else int(len(ctx.x_retain)))
        blind = self.blindspot_model(ctx)
        model = ctx.model.train()
        n_f, n_r = len(ctx.x_forget), len(ctx.x_retain)
        x = torch.cat([ctx.x_forget, ctx.x_retain])
        # forget rows' labels are never read: a placeholder of the retain labels' dtype stands in for them
        y = torch.cat([ctx.y_retain.new_zeros((n_f,) + tuple(ctx.y_retain.shape[1:])), ctx.y_retain])
        u = torch.cat([torch.ones(n_f, dtype=torch.bool), torch.zeros(n_r, dtype=torch.bool)]).to(x.device)
        mods, mods_s = activation_modules(model), activation_modules(blind)
        if len(mods) != len(mods_s):
            raise ObliviateError("blindspot: the blindspot model's activations do not match the original's")
        rec, rec_s = _Recorder(mods), _Recorder(mods_s)
        opt, gen = optimizer(model, cfg), ctx.generator(3)
        try:
            for _ in range(cfg.epochs):
                for idx in batches(len(x), cfg.batch_size, gen):
                    idx = idx.to(x.device)
                    rec.take()
                    out = model(x[idx])
                    acts = rec.take()
                    with torch.no_grad():
                        out_s = blind(x[idx])
                    acts_s = rec_s.take()
                    loss = mixed_loss(ctx.kind, model, out, out_s, acts, acts_s, y[idx], u[idx], beta=cfg.beta,
                                      base_loss=cfg.base_loss, vector_attention=cfg.vector_attention)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        finally:
            rec.close()
            rec_s.close()
        return model.eval()
