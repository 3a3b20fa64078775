"""LAF (Label-Agnostic Forgetting, Shen et al., ICLR 2024) and LAF+R (arXiv 2404.00506).

LAF unlearns a classifier with **no labels**: the model is split into an extractor f (everything up to the
representation fed to the last ``nn.Linear``) and that linear head g. Then

1. two VAEs are trained on frozen representations of the original model — ``s_vae`` on the training data
   (all of D, as the official notebook does; ``s_vae_data="retain"`` follows the paper text) and ``u_vae``
   on the forget data;
2. alternating per mini-batch pair (forget batch, retain batch):
   - extractor unlearning (UE): L_UE = mean_r φ(ŝ_r, e_r) − mean_f φ(û_f, e_f), with
     φ(ê, e) = exp(s / (s + 1)), s = ‖ê − e‖², ŝ_r the s_vae reconstruction of a retain representation
     and û_f the u_vae reconstruction of a forget representation: retain representations stay easy to
     reconstruct, forget representations leave the region the forget VAE knows;
   - representation alignment (RA), a contrastive loss against the frozen original f_T:
     L_RA = mean_i d(e_r,i, f_T(x_r,i)) − log mean_j exp(d(e_f,j, f_T(x_f,j)) / τ), d = 1 − cos;
3. LAF+R then repairs the head only with cross-entropy on the labelled retain data.

Official code: ShaofeiShen768/LAF (stored copy at commit 4fd4e87): ``VUnlearning.py``
(``extractor_loss_functionnmse``, ``extractor_loss_functioncosine``, ``extractor_unlearning``,
``classifier_unlearning``), ``Train.py`` (``vae_loss_function``, ``vae_train``), ``Model.py``
(``CNN_VAE_Encoder``/``CNN_VAE_Decoder``), ``Data.py`` (``construct_data``, batch 32), ``hyperparameter.md``.

Deviations from the official code (each a fix of a defect of the official code, or forced by obliviate's models):

- the VAEs and the teacher are frozen (``requires_grad_(False)``; official: only ``eval()``, pitfall 5). The
  VAEs stay differentiable in their input, as L_UE needs. The teacher's representations of D_r and D_f are
  computed once, under ``no_grad``, and serve both the VAE training (official: recomputed each VAE epoch
  through the eval-mode model — the same values) and every RA step (official: two teacher forwards per step
  with autograd on).
- Φ and the RA terms are batch means instead of batch sums (pitfall 8). With equal batch sizes this is the
  official loss divided by the batch size, which Adam's scale invariance makes (almost) the same update;
  with a short last forget batch the two terms keep their intended weights. The RA negative term is a
  log-*mean*-exp (official: log-sum-exp), a constant shift of log |B_f| with the same gradient.
- the model is kept in eval mode while it is unlearned (no dropout noise, no BatchNorm statistics of forget
  batches; pitfall 6). This is also what the official notebook does in effect: ``Train.test`` and
  ``Train.vae_train`` call ``.eval()`` on the very model later passed to ``extractor_unlearning``.
- ``epoch_steps="zip"`` (default) keeps the official epoch of min(|D_f|, |D_r|)/batch pairs, which is tiny
  for a small forget set (pitfall 3: 5 pairs an epoch for one digits class); ``"retain"`` makes an epoch one
  pass over D_r. The repair of LAF+R iterates the same pairs, as ``classifier_unlearning`` does.
- every random draw (data order, VAE initialisation, reparameterisation noise) comes from the run's seeded
  generators, so the same call twice gives the same weights.
- the representation is the input of the model's last ``nn.Linear`` (official: the 256-d ``fc1`` output of
  its CNN, with ``fc2`` = two linear layers as the head); the VAE input width follows the model.

Why the official defaults barely move a small forget set, and the class-removal setting for one. The official
epoch is ``zip(unlearn, remain)``: ⌈|D_f| / 32⌉ UE+RA step pairs. On MNIST class removal (|D_f| ≈ 6,000) that is
188 pairs an epoch, 3,760 in 20 epochs; on digits ``class:3`` (146 forget rows) it is 5 pairs an epoch, 100 in
all. Both optimisers are Adam, whose steps have a size of about lr whatever the loss scale, so 100 steps at lr
5e-5 / 1e-4 leave the extractor (almost) where it was: nothing is wrong with the losses, the step budget is 37×
smaller than the paper's. Giving the same losses more steps removes the class, either way (digits class:3, seed
0, default recipe; forget / retain / test accuracy, oracle 0.0000 / 1.0000 / 0.8778):

    defaults (zip, 20 epochs = 100 steps)                     0.9932 / 1.0000 / 0.9722   (seeds 1, 2: 1.0000, 0.9863)
    zip, epochs=180 (900 steps)                               0.0000 / 0.9985 / 0.8750
    epoch_steps=retain (20 passes over D_r = 820 steps)      0.0000 / 0.9992 / 0.8722   (seeds 1, 2: 0.0000 / 1.0000 /
                                                              0.8694, 0.0000 / 0.9992 / 0.8778)

``--set epoch_steps=retain`` is therefore the documented setting for class removal with a small forget set
(every official lr, τ and VAE setting unchanged); the defaults stay the official code's. On digits random:0.1,
where the oracle itself keeps a forget accuracy of 0.965 / 0.972 / 0.993 (seeds 0-2), it gives 0.9931 / 1.0000 /
0.9931 (defaults: 1.0 at every seed) with retain and test accuracy unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from obliviate.errors import ConfigError, ObliviateError
from obliviate.methods import register
from obliviate.methods._common import frozen_copy
from obliviate.methods.base import Method, MethodConfig
from obliviate.training import batches

# -- splitting a classifier into (extractor, head) ---------------------------------------------------------


class _Stop(Exception):
    """Raised by the head's pre-hook to end a forward pass once the representation is captured."""


class Extractor(nn.Module):
    """``model``'s forward pass up to the input of ``head`` (parameters shared with ``model``, not copied)."""

    def __init__(self, model: nn.Module, head: nn.Linear):
        super().__init__()
        self.model = model
        self._head = (head,)  # a tuple, so the head is not registered as a submodule twice

    @property
    def head(self) -> nn.Linear:
        return self._head[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box: list[torch.Tensor] = []

        def grab(_module, inputs):
            box.append(inputs[0])
            raise _Stop

        handle = self.head.register_forward_pre_hook(grab)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not box:
            raise ObliviateError("LAF needs a representation: the model's forward pass never reached its last "
                                 "linear layer")
        return box[0]


def split_model(model: nn.Module, probe: torch.Tensor | None = None) -> tuple[Extractor, nn.Linear]:
    """Split a classifier into (extractor, head): the head is the model's last ``nn.Linear``, the extractor
    everything before it (for a ``TabularNet`` the input standardisation and the MLP's hidden layers, or
    the CNN's convolutions and hidden linear layer).

    With ``probe`` inputs, check that the model's output *is* the head applied to the representation (so a
    regression net that rescales its output, or a model with layers after its last linear, is refused).
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ObliviateError(f"LAF needs a representation fed to a final linear layer; "
                             f"{type(model).__name__} has no nn.Linear")
    head = linears[-1]
    extractor = Extractor(model, head)
    if probe is not None and len(probe):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model(probe)
            via_head = head(extractor(probe))
        model.train(was_training)
        if out.shape != via_head.shape or not torch.allclose(out, via_head, rtol=1e-4, atol=1e-5):
            raise ObliviateError(f"LAF needs a representation fed to a final linear layer; the output of "
                                 f"{type(model).__name__} is not its last nn.Linear applied to one")
    return extractor, head


# -- the VAE on representations (Model.py CNN_VAE_Encoder / CNN_VAE_Decoder) ---------------------------------


class RepresentationVAE(nn.Module):
    """Encoder dim→h1→h2→(μ, log σ²); decoder latent→h2→h1→dim, sigmoid output as in the official code
    (``decoder_output="linear"`` drops it: a sigmoid cannot reconstruct entries outside (0, 1); pitfall 2)."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (128, 32), latent: int = 8,
                 decoder_output: str = "sigmoid"):
        super().__init__()
        widths = [dim, *hidden]
        enc: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*enc)
        self.mu = nn.Linear(widths[-1], latent)
        self.logvar = nn.Linear(widths[-1], latent)
        back = [latent, *reversed(hidden)]
        dec: list[nn.Module] = []
        for a, b in zip(back[:-1], back[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        dec.append(nn.Linear(back[-1], dim))
        self.decoder = nn.Sequential(*dec)
        self.decoder_output = decoder_output

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) if self.decoder_output == "sigmoid" else out

    def forward(self, e: torch.Tensor, generator: torch.Generator | None = None):
        """(reconstruction, μ, σ). With a generator z = μ + σ·ε (the official code always samples);
        without one z = μ."""
        h = self.encoder(e)
        mu, sigma = self.mu(h), torch.exp(0.5 * self.logvar(h))
        if generator is None:
            z = mu
        else:
            z = mu + sigma * torch.randn(mu.shape, generator=generator).to(mu.device)
        return self.decode(z), mu, sigma


def vae_loss(recon: torch.Tensor, e: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
             kl_weight: float = 0.025) -> torch.Tensor:
    """``Train.vae_loss_function``: (1/B)·Σ‖ê − e‖² + w·(1/B)·Σ −½(log(σ² + 1e-8) + 1 − μ² − σ²)."""
    b = e.shape[0]
    rec = F.mse_loss(recon, e, reduction="sum") / b
    kld = -0.5 * torch.sum(torch.log(sigma.pow(2) + 1e-8) + 1 - mu.pow(2) - sigma.pow(2)) / b
    return rec + kl_weight * kld


# -- the two unlearning losses -----------------------------------------------------------------------------


def reconstruction_potential(recon: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Per example φ = exp(s / (s + 1)), s = Σ_d (ê_d − e_d)² (``extractor_loss_functionnmse`` before its sum);
    each φ lies in [1, e)."""
    s = (recon - e).pow(2).sum(dim=1)
    return torch.exp(s / (s + 1))


def ue_loss(recon_r: torch.Tensor, e_r: torch.Tensor, recon_f: torch.Tensor, e_f: torch.Tensor) -> torch.Tensor:
    """Extractor unlearning: mean φ(s_vae(e_r), e_r) − mean φ(u_vae(e_f), e_f) (official: sums)."""
    return reconstruction_potential(recon_r, e_r).mean() - reconstruction_potential(recon_f, e_f).mean()


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cos(a, b) per row (``nn.CosineEmbeddingLoss`` with target +1)."""
    return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-8)


def ra_loss(e_r: torch.Tensor, t_r: torch.Tensor, e_f: torch.Tensor, t_f: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """Representation alignment: mean_i d(e_r,i, t_r,i) − log mean_j exp(d(e_f,j, t_f,j) / τ).

    The official ``extractor_loss_functioncosine`` is Σ_i [d_r,i − log Σ_j exp(d_f,j / τ)]
    = |B_r| · (this − log |B_f|): the same gradient direction, scaled by the retain batch size.
    """
    d_r = cosine_distance(e_r, t_r)
    d_f = cosine_distance(e_f, t_f)
    return d_r.mean() - (torch.logsumexp(d_f / temperature, dim=0) - math.log(d_f.shape[0]))


# -- configs ---------------------------------------------------------------------------------------------

_HP = "ShaofeiShen768/LAF hyperparameter.md, class unlearning, CNN for MNIST/Fashion-MNIST"


@dataclass
class LAFConfig(MethodConfig):
    """Defaults: ``hyperparameter.md`` (class unlearning, CNN for MNIST/F-MNIST: LATENT_DIMS 8, 20 epochs,
    lr_UE 5e-5, lr_RA 1e-4, TEMP 20); ``Train.vae_train`` / ``vae_loss_function`` (10 VAE epochs, Adam 1e-3,
    KL weight 0.025); ``Model.py`` ``CNN_VAE_Encoder`` (hidden 128, 32; sigmoid decoder); ``Data.py``
    ``construct_data`` (batch 32); the notebook's s_vae on loaders['train'] (all of D)."""

    epochs: int = field(default=20, metadata={"help": f"UE+RA epochs (UNLEARNING_EPOCH; {_HP})", "min": 1,
                                                   "tune": (1, 30)})
    lr_ue: float = field(default=5e-5, metadata={"help": "Adam lr of the extractor-unlearning step "
                                                          "(UNLEARNING_LR_UE)", "gt": 0,
                                                 "tune": (1e-6, 1e-3, "log")})
    lr_ra: float = field(default=1e-4, metadata={"help": "Adam lr of the representation-alignment step "
                                                          "(UNLEARNING_LR_RA)", "gt": 0,
                                                 "tune": (1e-5, 1e-2, "log")})
    temperature: float = field(default=20.0, metadata={"help": "τ dividing the forget term of the contrastive "
                                                                "RA loss (TEMP)", "gt": 0})
    batch_size: int = field(default=32, metadata={"help": "mini-batch size of every loader (Data.py)", "min": 1})
    epoch_steps: Literal["zip", "retain"] = field(
        default="zip", metadata={"help": "zip: an epoch is min(|D_f|, |D_r|)/batch steps, as the official "
                                         "zip(unlearn, remain); retain: one pass over D_r, cycling D_f (use it "
                                         "for a small forget set: zip gives it too few steps to unlearn)",
                         "tune": ("choice", ["zip", "retain"])})
    latent_dims: int = field(default=8, metadata={"help": "VAE latent width (LATENT_DIMS)", "min": 1})
    vae_hidden: tuple[int, ...] = field(default=(128, 32), metadata={"help": "VAE encoder hidden widths "
                                                                             "(decoder mirrors them)"})
    vae_epochs: int = field(default=10, metadata={"help": "epochs of each VAE's training", "min": 1})
    vae_lr: float = field(default=1e-3, metadata={"help": "Adam lr of the VAEs", "gt": 0})
    kl_weight: float = field(default=0.025, metadata={"help": "weight of the VAE's KL term", "min": 0})
    vae_decoder_output: Literal["sigmoid", "linear"] = field(
        default="sigmoid", metadata={"help": "sigmoid (official) or linear decoder output"})
    s_vae_data: Literal["all", "retain"] = field(
        default="all", metadata={"help": "data of the remaining-data VAE: all of D (official notebook) or D_r "
                                         "(paper text)"})

    def validate(self) -> None:
        if not self.vae_hidden or any(w < 1 for w in self.vae_hidden):
            raise ConfigError(f"vae_hidden: expected one or more positive widths, got {self.vae_hidden!r}")


@dataclass
class LAFRConfig(LAFConfig):
    """LAF's defaults plus the supervised repair of the head (``VUnlearning.classifier_unlearning``: Adam on
    the head only, cross-entropy on labelled D_r). The official code takes the repair's epochs and lr as
    arguments and its notebook never calls it, so their defaults are obliviate's proposed design."""

    repair_epochs: int = field(default=5, metadata={"help": "epochs of the head repair (proposed design)",
                                                    "min": 1})
    repair_lr: float = field(default=1e-3, metadata={"help": "Adam lr of the head repair (proposed design)",
                                                     "gt": 0})


# -- the method ------------------------------------------------------------------------------------------


def _pairs(n_f: int, n_r: int, batch_size: int, mode: str, gen: torch.Generator) -> Iterator[tuple]:
    """Index pairs (forget batch, retain batch) of one epoch: ``zip`` stops with the shorter loader
    (official); ``retain`` makes one pass over the retain set and reshuffles the forget set as it runs out."""
    if mode == "zip":
        yield from zip(batches(n_f, batch_size, gen), batches(n_r, batch_size, gen))
        return
    forget_iter = batches(n_f, batch_size, gen)
    for idx_r in batches(n_r, batch_size, gen):
        idx_f = next(forget_iter, None)
        if idx_f is None:
            forget_iter = batches(n_f, batch_size, gen)
            idx_f = next(forget_iter)
        yield idx_f, idx_r


def _finite(loss: torch.Tensor, what: str, hint: str) -> None:
    if not torch.isfinite(loss):
        raise ObliviateError(f"LAF diverged: the {what} loss is {loss.item()}; {hint}")


def train_vae(reps: torch.Tensor, cfg: LAFConfig, gen: torch.Generator) -> RepresentationVAE:
    """``Train.vae_train``: Adam, ``cfg.vae_epochs`` shuffled passes over fixed representations."""
    init_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        vae = RepresentationVAE(reps.shape[1], tuple(cfg.vae_hidden), cfg.latent_dims, cfg.vae_decoder_output)
    vae = vae.to(reps.device).train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr, foreach=True)
    for _ in range(cfg.vae_epochs):
        for idx in batches(len(reps), cfg.batch_size, gen):
            e = reps[idx.to(reps.device)]
            recon, mu, sigma = vae(e, gen)
            loss = vae_loss(recon, e, mu, sigma, cfg.kl_weight)
            _finite(loss, "VAE", "lower vae_lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    return vae


@torch.no_grad()
def _representations(extractor: Extractor, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    return torch.cat([extractor(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@register
class LAF(Method):
    name = "laf"
    guarantee = "approximate"
    needs = frozenset({"retain", "original"})  # no "labels": LAF never sees one
    kinds = ("classification",)  # needs a classifier's representation fed to a linear head
    config_class = LAFConfig
    summary = ("label-free: VAEs on the extractor's representations, extractor unlearning + contrastive "
               "alignment to the original (classifiers only: needs a representation before a linear head)")
    reference = "Shen et al., ICLR 2024 (arXiv 2404.00506); ShaofeiShen768/LAF VUnlearning.py"

    def unlearn(self, ctx):
        model = ctx.model.eval()
        self.extractor_unlearning(ctx, model)
        return model.eval()

    def extractor_unlearning(self, ctx, model: nn.Module) -> tuple[Extractor, nn.Linear]:
        """Stages 1-2 (VAE training, then alternating UE and RA steps) on ``model`` in place."""
        cfg = self.config
        if ctx.x_retain is None or len(ctx.x_retain) == 0:
            raise ObliviateError(f"{self.name} needs retain data: the forget set covers the whole training set")
        probe = ctx.x_retain[:16]
        extractor, head = split_model(model, probe)
        teacher = frozen_copy(ctx.original).to(ctx.device)
        t_extractor, _ = split_model(teacher)
        gen = ctx.generator()

        # stage 1: the VAEs, on representations of the (frozen, eval-mode) original
        rep_r = _representations(t_extractor, ctx.x_retain)
        rep_f = _representations(t_extractor, ctx.x_forget)
        s_reps = torch.cat([rep_r, rep_f]) if cfg.s_vae_data == "all" else rep_r
        s_vae = train_vae(s_reps, cfg, gen)
        u_vae = train_vae(rep_f, cfg, gen)

        # stage 2: extractor unlearning and representation alignment, alternating per batch pair. The model
        # is in eval mode, so one forward pass over [x_r; x_f] equals two separate ones, and the frozen
        # teacher's representations are the stage-1 ones (rep_r, rep_f), looked up instead of recomputed.
        head_ids = {id(p) for p in head.parameters()}
        params = [p for p in model.parameters() if id(p) not in head_ids]
        opt_ue = torch.optim.Adam(params, lr=cfg.lr_ue, foreach=True)  # two Adam states on the same
        opt_ra = torch.optim.Adam(params, lr=cfg.lr_ra, foreach=True)  # parameters, as in the official code
        for _ in range(cfg.epochs):
            for idx_f, idx_r in _pairs(len(ctx.x_forget), len(ctx.x_retain), cfg.batch_size, cfg.epoch_steps, gen):
                idx_f, idx_r = idx_f.to(ctx.device), idx_r.to(ctx.device)
                x = torch.cat([ctx.x_retain[idx_r], ctx.x_forget[idx_f]])
                n_r = len(idx_r)

                e = extractor(x)
                e_r, e_f = e[:n_r], e[n_r:]
                loss = ue_loss(s_vae(e_r, gen)[0], e_r, u_vae(e_f, gen)[0], e_f)
                _finite(loss, "extractor-unlearning", "lower lr_ue")
                opt_ue.zero_grad(set_to_none=True)
                loss.backward()
                opt_ue.step()

                e = extractor(x)
                loss = ra_loss(e[:n_r], rep_r[idx_r], e[n_r:], rep_f[idx_f], cfg.temperature)
                _finite(loss, "representation-alignment", "lower lr_ra")
                opt_ra.zero_grad(set_to_none=True)
                loss.backward()
                opt_ra.step()
        return extractor, head


@register
class LAFR(LAF):
    name = "laf_r"
    needs = frozenset({"retain", "original", "labels"})
    config_class = LAFRConfig
    summary = "LAF followed by a supervised repair of the linear head on labelled retain data"
    reference = "Shen et al., ICLR 2024 (arXiv 2404.00506); ShaofeiShen768/LAF VUnlearning.classifier_unlearning"

    def unlearn(self, ctx):
        cfg = self.config
        if ctx.y_retain is None:
            raise ObliviateError("laf_r needs the retain labels for its repair step")
        model = ctx.model.eval()
        extractor, head = self.extractor_unlearning(ctx, model)
        # stage 3: cross-entropy on labelled retain data, gradients into the head only
        opt = torch.optim.Adam(head.parameters(), lr=cfg.repair_lr, foreach=True)
        gen = ctx.generator(1)
        for _ in range(cfg.repair_epochs):
            for _idx_f, idx_r in _pairs(len(ctx.x_forget), len(ctx.x_retain), cfg.batch_size, cfg.epoch_steps, gen):
                idx_r = idx_r.to(ctx.device)
                with torch.no_grad():
                    rep = extractor(ctx.x_retain[idx_r])
                loss = F.cross_entropy(head(rep), ctx.y_retain[idx_r])
                _finite(loss, "repair", "lower repair_lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return model.eval()
