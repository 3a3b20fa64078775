"""Certified removal (Guo, Goldstein, Hannun & van der Maaten, ICML 2020, arXiv 1911.03030).

A training-time method: the original is an L2-regularised *linear* model trained with a random linear loss
perturbation, and a deletion is a Newton step whose leftover gradient is masked by that perturbation. In the
paper's (sum) form, with b ~ N(0, σ²) per coordinate drawn once from the run seed::

    L_b(w; D) = Σ_i ℓ(wᵀφ(x_i), y_i) + (λ n / 2)‖w‖² + bᵀw       (trained with L-BFGS, as the official code)
    remove D_m:  Δ = m λ w* + Σ_{j∈D_m} ∇ℓ(w*ᵀφ(x_j), y_j),   H = ∇²L(w*; D \\ D_m),   w⁻ = w* + H⁻¹Δ
    residual:    ‖∇L_b(w⁻; D′)‖ ≤ γ ‖Φ′‖₂ ‖H⁻¹Δ‖ ‖Φ′ H⁻¹Δ‖              (data-dependent bound, Corollary 1)
    certificate: (ε, δ)-certified removal while the accumulated bound β ≤ ε′ = σ ε / c,  c = √(2 log(1.5/δ))

When a deletion would take β past ε′ the system retrains from scratch on the remaining data (a new b from the
seed, the feature map refitted, β reset) and the report says so (``retrained: true`` with the reason).

The model. Whatever network the task would train, this method trains its own linear model on the task's
features (so ``guarantee: certified`` holds for what is served): φ(x) = [z, 1]/‖[z, 1]‖, z the standardised
features (mean/std of the training rows it was fitted on, NaN imputed with the mean), so ‖φ(x)‖ = 1 as the
bound assumes (the official code L2-normalises each feature row likewise). Two classes: one binary logistic
regression (y ∈ {−1, +1}); more: one-vs-rest, K binary models with their own columns of b, their residual
bounds summed (``test_removal.py``, ``--train-mode ovr``). γ = 1/4 bounds the Lipschitz constant of ℓ'' for the
logistic loss (the official code's ``/ 4``).

Asking for another model (``--set certified.model=mlp``, or ``--set model=mlp`` on a task without a ``model``
option of its own) is an error: the guarantee needs a convex loss. (On digits ``--set model=...`` is the task's
option, which this method does not use.) Regression tasks are refused by the registry: the paper's analysis covers
least squares (ℓ'' is constant, γ = 0, the Newton step is exact), and :func:`fit_linear` /
:func:`newton_step` implement it (``loss="squared"``), but a linear model is not what the pipeline compares
against on the built-in regression task (see ``kinds``).

Assumptions, recorded in the certificate (``assumptions``): the guarantee is the paper's — it assumes the exact
minimiser (the L-BFGS gradient norm is reported as ``train_gradient_norm``) and a feature map independent of the removed
rows; the standardisation statistics come from the training rows at the last (re)fit and are kept fixed
across Newton removals (the paper's fixed public feature extractor); a retrain refits them.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from obliviate.errors import ConfigError, ObliviateError
from obliviate.exact.plan import derive_seed
from obliviate.methods import register
from obliviate.methods.base import MethodConfig, TrainingTimeMethod

GAMMA = {"logistic": 0.25, "squared": 0.0}   # Lipschitz constant of ℓ''
ASSUMPTIONS = ("Guo et al. Theorem 3 with the data-dependent bound of Corollary 1: the trained weights are the exact "
               "minimiser of the perturbed objective (train_gradient_norm is how close L-BFGS got) and the feature map "
               "(standardisation fitted on the rows of the last (re)fit, then row L2 normalisation) is treated as "
               "public; it is refitted only when the model is retrained")


@dataclass
class CertifiedConfig(MethodConfig):
    """Defaults and where they come from. ε, δ, λ and σ are user choices (Guo et al. 2020), recorded in the
    certificate.

    - ``steps=100``: the official ``test_removal.py`` (``--num-steps 100``, L-BFGS).
    - ``epsilon=1``, ``delta=1e-4``: the official script has no ε/δ flags (it only accumulates the residual);
      these are the values the certified-graph-unlearning follow-ups of that code use as defaults.
    - ``lam=0.03``, ``sigma=3`` are obliviate's, chosen to keep the official *ratio*: the perturbation moves the
      optimum by about b/(λn), and the official README run (``--std 10 --lam 2e-4`` on n ≈ 604k SVHN rows) has
      σ/(λn) ≈ 0.08; its values at n ≈ 1.4k (digits) give a noise-dominated model (test accuracy 0.63 at
      λ = 1e-6, σ = 10; 0.78 at λ = 1e-2, σ = 10). At λ = 0.03, σ = 3 (σ/(λn) ≈ 0.07) digits reaches 0.88 test
      accuracy and ~50 single random removals are certified before a retrain (breast_cancer: 0.93, > 60);
      λ = 0.01, σ = 1 gives 0.905 but only ~5 removals (3 seeds of b each; the trade-off the paper describes).
    - ``removal=sequential``: one Newton step per deleted row, as the official script; ``batch`` takes one step
      for the whole request (cheaper; its bound grows with m², so the budget runs out sooner).
    """

    epsilon: float = field(default=1.0, metadata={"help": "ε of the (ε, δ)-certified removal", "gt": 0})
    delta: float = field(default=1e-4, metadata={"help": "δ of the (ε, δ)-certified removal", "gt": 0, "max": 1})
    sigma: float = field(default=3.0, metadata={"help": "std σ of the objective perturbation b ~ N(0, σ²); the "
                                                         "residual budget is σε/c (0: no noise, only exact removals)",
                                                 "min": 0})
    lam: float = field(default=0.03, metadata={"help": "L2 regularisation λ (the objective has λn/2·‖w‖²)", "gt": 0})
    steps: int = field(default=100, metadata={"help": "L-BFGS steps (each up to 20 inner iterations)", "min": 1})
    removal: Literal["sequential", "batch"] = field(
        default="sequential", metadata={"help": "sequential: one Newton step per deleted row (official code); "
                                                "batch: one step for the whole request"})
    model: str = field(default="linear", metadata={"help": "the certified model: linear (logistic regression, "
                                                           "one-vs-rest for more than two classes); nothing else "
                                                           "is allowed"})

    def validate(self) -> None:
        if self.model != "linear":
            raise ConfigError(
                f"certified.model={self.model!r}: certified removal (Guo et al. 2020) holds only for an "
                f"L2-regularised linear model with a convex loss; a {self.model} is non-convex, so its Newton step "
                "has no gradient-residual bound and no (ε, δ) certificate. Use model=linear (the default: the method "
                "trains its own linear model on the task's features) or an approximate method such as influence")


# -- the certificate's arithmetic ----------------------------------------------------------------------------

def noise_constant(delta: float) -> float:
    """c = √(2 log(1.5/δ)) of Theorem 3 (b ~ N(0, cε′/ε) gives (ε, δ)-certified removal)."""
    return math.sqrt(2.0 * math.log(1.5 / delta))


def residual_budget(epsilon: float, delta: float, sigma: float) -> float:
    """ε′ = σ ε / c: the accumulated gradient-residual norm a model trained with noise σ can absorb."""
    return sigma * epsilon / noise_constant(delta)


def sigma_for(epsilon: float, delta: float, budget: float) -> float:
    """The noise σ = c ε′ / ε that certifies removals up to an accumulated residual ε′."""
    return noise_constant(delta) * budget / epsilon


def worst_case_bound(lam: float, n: int, gamma: float = 0.25, c_lipschitz: float = 1.0) -> float:
    """Theorem 1: one removal leaves ‖∇L(w⁻; D′)‖ ≤ 4γC²/(λ²(n−1)) when ‖x‖ ≤ 1 and |ℓ'| ≤ C."""
    return 4.0 * gamma * c_lipschitz ** 2 / (lam ** 2 * max(n - 1, 1))


# -- the linear model ----------------------------------------------------------------------------------------

def features(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """φ(x) = [z, 1]/‖[z, 1]‖ with z = (x − mean)/std, missing values at the mean (float64)."""
    x = x.to(torch.float64)
    x = torch.where(torch.isnan(x), mean, x)
    z = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=torch.float64, device=x.device)], dim=1)
    return z / z.norm(dim=1, keepdim=True)


def loss_derivatives(loss: str, scores: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ'(s) and ℓ''(s) per example and column: logistic ℓ = log(1 + e^{−ts}); squared ℓ = (s − t)²/2."""
    if loss == "logistic":
        p = torch.sigmoid(t * scores)
        return (p - 1.0) * t, p * (1.0 - p)
    return scores - t, torch.ones_like(scores)


def gradient(w: torch.Tensor, z: torch.Tensor, t: torch.Tensor, lam: float, b: torch.Tensor, loss: str,
             n_reg: int | None = None) -> torch.Tensor:
    """∇L_b(w) in sum form (d × K): Φᵀℓ' + λ·n·w + b (n = rows of ``z`` unless ``n_reg``)."""
    d1, _ = loss_derivatives(loss, z @ w, t)
    return z.T @ d1 + lam * (len(z) if n_reg is None else n_reg) * w + b


def hessians(w: torch.Tensor, z: torch.Tensor, t: torch.Tensor, lam: float, loss: str) -> torch.Tensor:
    """∇²L per column (K × d × d): Φᵀ diag(ℓ'') Φ + λ n I."""
    _, d2 = loss_derivatives(loss, z @ w, t)
    eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    return torch.einsum("nk,ni,nj->kij", d2, z, z) + lam * len(z) * eye


def fit_linear(z: torch.Tensor, t: torch.Tensor, lam: float, b: torch.Tensor, loss: str = "logistic",
               steps: int = 100) -> tuple[torch.Tensor, float]:
    """argmin_w L_b(w; D). Logistic: L-BFGS on the official code's mean form Σ_k mean_i ℓ + λ/2‖w‖² + Σ b∘w / n
    (= L_b / n). Squared: the normal equations (ΦᵀΦ + λnI) w = Φᵀt − b, exact. Returns w and ‖∇L_b(w)‖."""
    n = len(z)
    if loss == "squared":
        a = z.T @ z + lam * n * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        w = torch.linalg.solve(a, z.T @ t - b)
    else:
        w = torch.zeros(z.shape[1], t.shape[1], dtype=torch.float64, device=z.device, requires_grad=True)
        opt = torch.optim.LBFGS([w], tolerance_grad=1e-10, tolerance_change=1e-20, history_size=100,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            value = -F.logsigmoid(t * (z @ w)).mean(0).sum() + lam * w.pow(2).sum() / 2 + (b * w).sum() / n
            value.backward()
            return value

        for _ in range(steps):
            opt.step(closure)
            if float(gradient(w.detach(), z, t, lam, b, loss).norm()) <= 1e-9 * max(n, 1):
                break
        w = w.detach()
    return w, float(gradient(w, z, t, lam, b, loss).norm())


def newton_step(w: torch.Tensor, z_rest: torch.Tensor, t_rest: torch.Tensor, z_del: torch.Tensor,
                t_del: torch.Tensor, lam: float, loss: str) -> tuple[torch.Tensor, float, list[float]]:
    """Remove the rows ``(z_del, t_del)`` from a model trained on them plus ``(z_rest, t_rest)``:
    w⁻ = w + H⁻¹Δ per column, Δ = mλw + Σ∇ℓ, H the Hessian on the rest. Returns w⁻, the data-dependent residual
    bound summed over columns, and the per-column bounds."""
    m = len(z_del)
    d1, _ = loss_derivatives(loss, z_del @ w, t_del)
    delta = z_del.T @ d1 + lam * m * w                                   # d × K
    h = hessians(w, z_rest, t_rest, lam, loss)                           # K × d × d
    step = torch.linalg.solve(h, delta.T.unsqueeze(-1)).squeeze(-1).T    # d × K
    spectral = math.sqrt(max(float(torch.linalg.eigvalsh(z_rest.T @ z_rest)[-1]), 0.0)) if len(z_rest) else 0.0
    gamma = GAMMA[loss]
    per_col = [gamma * spectral * float(step[:, k].norm()) * float((z_rest @ step[:, k]).norm())
               for k in range(step.shape[1])]
    return w + step, float(sum(per_col)), per_col


def encode_targets(y: np.ndarray, kind: str, n_classes: int | None, y_mean: float = 0.0, y_std: float = 1.0
                   ) -> torch.Tensor:
    """±1 targets (one column for two classes, one per class otherwise) or standardised regression targets."""
    if kind == "regression":
        return torch.as_tensor((np.asarray(y, np.float64) - y_mean) / y_std).unsqueeze(1)
    y = torch.as_tensor(np.asarray(y, np.int64))
    if n_classes == 2:
        return (2.0 * y - 1.0).to(torch.float64).unsqueeze(1)
    t = -torch.ones(len(y), n_classes, dtype=torch.float64)
    t[torch.arange(len(y)), y] = 1.0
    return t


class CertifiedLinear(torch.nn.Module):
    """The served model: raw features → logits (or predictions in target units for regression).

    Two classes give logits (0, wᵀφ(x)), so the softmax is the logistic model's σ(wᵀφ(x)); more classes give the
    K one-vs-rest scores. Weights and buffers are float64; the output has the input's dtype."""

    def __init__(self, in_dim: int, columns: int, kind: str, n_classes: int | None):
        super().__init__()
        self.kind, self.n_classes = kind, n_classes
        self.weight = torch.nn.Parameter(torch.zeros(in_dim + 1, columns, dtype=torch.float64))
        self.register_buffer("x_mean", torch.zeros(in_dim, dtype=torch.float64))
        self.register_buffer("x_std", torch.ones(in_dim, dtype=torch.float64))
        self.register_buffer("y_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("y_std", torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = features(x, self.x_mean, self.x_std) @ self.weight
        if self.kind == "regression":
            out = scores[:, 0] * self.y_std + self.y_mean
        elif self.n_classes == 2:
            out = torch.cat([torch.zeros_like(scores), scores], dim=1)
        else:
            out = scores
        return out.to(x.dtype if x.is_floating_point() else torch.float32)


# -- the fitted system ---------------------------------------------------------------------------------------

class CertifiedSystem:
    """A certified linear model over the task's training rows: its weights, noise, feature map, the rows still
    alive, and the removal budget spent so far."""

    def __init__(self, task, config: CertifiedConfig, seed: int, state: dict[str, torch.Tensor], alive: np.ndarray,
                 beta: float, retrains: int, train_gradient_norm: float, newton_removals: int = 0):
        self.task, self.config, self.seed = task, config, seed
        self.state = state                # weight, b, x_mean, x_std, y_mean, y_std (float64)
        self.alive = alive                # bool mask over the task's training rows
        self.beta = beta                  # accumulated gradient-residual bound since the last (re)fit
        self.retrains = retrains
        self.train_gradient_norm = train_gradient_norm
        self.newton_removals = newton_removals

    # -- what the model is -------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def loss(self) -> str:
        return "squared" if self.kind == "regression" else "logistic"

    @property
    def n_classes(self) -> int | None:
        return self.task.data.n_classes

    @property
    def budget(self) -> float:
        c = self.config
        return residual_budget(c.epsilon, c.delta, c.sigma)

    def describe_model(self) -> str:
        if self.kind == "regression":
            return "ridge regression (squared loss, standardised target)"
        if self.n_classes == 2:
            return "binary logistic regression"
        return f"one-vs-rest logistic regression ({self.n_classes} binary models)"

    @classmethod
    def fit(cls, task, ids: np.ndarray, config: CertifiedConfig, seed: int, retrains: int = 0) -> "CertifiedSystem":
        alive = np.zeros(task.n_train, dtype=bool)
        alive[np.asarray(ids, dtype=np.int64)] = True
        state, grad_norm = cls._train(task, alive, config, seed, retrains)
        return cls(task, config, seed, state, alive, 0.0, retrains, grad_norm)

    @staticmethod
    def _train(task, alive: np.ndarray, config: CertifiedConfig, seed: int, retrains: int):
        kind, d = task.kind, task.data
        if kind not in ("classification", "regression"):
            raise ObliviateError(f"certified removal needs a tabular task; {task.name} is a {kind} task")
        ids = np.flatnonzero(alive)
        if len(ids) == 0:
            raise ObliviateError("certified: no training rows left to fit the model on")
        x = np.asarray(d.x_train[ids], np.float64)
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(x, axis=0)) if np.isnan(x).any() else x.mean(axis=0)
            std = np.nan_to_num(np.nanstd(x, axis=0)) if np.isnan(x).any() else x.std(axis=0)
        std = np.where(std > 1e-8, std, 1.0)
        y_mean, y_std = 0.0, 1.0
        if kind == "regression":
            yv = np.asarray(d.y_train[ids], np.float64)
            y_mean, y_std = float(yv.mean()), float(yv.std()) if yv.std() > 1e-8 else 1.0
        mean_t, std_t = torch.as_tensor(mean), torch.as_tensor(std)
        z = features(torch.as_tensor(x), mean_t, std_t)
        t = encode_targets(d.y_train[ids], kind, d.n_classes, y_mean, y_std)
        gen = torch.Generator().manual_seed(derive_seed(seed, "certified", "b", retrains))
        b = config.sigma * torch.randn(z.shape[1], t.shape[1], generator=gen, dtype=torch.float64)
        loss = "squared" if kind == "regression" else "logistic"
        w, grad_norm = fit_linear(z, t, config.lam, b, loss, config.steps)
        state = {"weight": w, "b": b, "x_mean": mean_t, "x_std": std_t,
                 "y_mean": torch.tensor(y_mean, dtype=torch.float64), "y_std": torch.tensor(y_std, dtype=torch.float64)}
        return state, grad_norm

    def served_model(self) -> torch.nn.Module:
        s = self.state
        net = CertifiedLinear(s["x_mean"].numel(), s["weight"].shape[1], self.kind, self.n_classes)
        with torch.no_grad():
            net.weight.copy_(s["weight"])
            for key in ("x_mean", "x_std", "y_mean", "y_std"):
                getattr(net, key).copy_(s[key])
        return net.eval()

    def _design(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        d, s = self.task.data, self.state
        z = features(torch.as_tensor(np.asarray(d.x_train[ids], np.float64)), s["x_mean"], s["x_std"])
        t = encode_targets(d.y_train[ids], self.kind, self.n_classes, float(s["y_mean"]), float(s["y_std"]))
        return z, t

    # -- deletion ----------------------------------------------------------------------------------------
    def delete(self, ids: np.ndarray, runtime=None) -> dict[str, Any]:
        """Remove ``ids`` by Newton steps while the accumulated residual bound stays within the budget σε/c;
        otherwise retrain from scratch on the remaining rows. Returns the certificate and cost for the report."""
        start = time.perf_counter()
        cfg, budget = self.config, self.budget
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        already = [int(i) for i in ids if not self.alive[i]]
        todo = np.array([i for i in ids if self.alive[i]], dtype=np.int64)
        beta_before, n_before = self.beta, int(self.alive.sum())
        w = self.state["weight"]
        newton, bounds, reason = 0, [], None
        if len(todo):
            alive = self.alive.copy()
            if cfg.removal == "batch":
                alive[todo] = False
                z_rest, t_rest = self._design(np.flatnonzero(alive))
                z_del, t_del = self._design(todo)
                w_new, bound, _ = newton_step(w, z_rest, t_rest, z_del, t_del, cfg.lam, self.loss)
                if self.beta + bound > budget:
                    reason = (f"one Newton step for {len(todo)} rows would leave a residual bound of {bound:.4g}; "
                              f"with {self.beta:.4g} already spent that exceeds the budget {budget:.4g}")
                else:
                    w, newton = w_new, len(todo)
                    bounds.append(bound)
                    self.beta += bound
            else:
                z_all, t_all = self._design(np.arange(self.task.n_train))
                for i in todo:
                    alive[i] = False
                    rest = torch.as_tensor(np.flatnonzero(alive))
                    w_new, bound, _ = newton_step(w, z_all[rest], t_all[rest], z_all[i:i + 1], t_all[i:i + 1],
                                                  cfg.lam, self.loss)
                    if self.beta + bound > budget:
                        reason = (f"removing row {int(i)} ({newton + 1} of {len(todo)}) would add a residual bound of "
                                  f"{bound:.4g} to {self.beta:.4g}, past the budget {budget:.4g}")
                        break
                    w, newton = w_new, newton + 1
                    bounds.append(bound)
                    self.beta += bound
        retrained = reason is not None
        self.alive[todo] = False
        if retrained:
            self.retrains += 1
            self.state, self.train_gradient_norm = self._train(self.task, self.alive, cfg, self.seed, self.retrains)
            self.beta = 0.0
            newton = 0
        else:
            self.state = dict(self.state, weight=w)
            self.newton_removals += newton
        elapsed = time.perf_counter() - start
        n_alive = int(self.alive.sum())
        return {
            "scheme": "certified", "time_s": elapsed,
            "deleted": int(len(todo)), "already_deleted": already,
            "model": self.describe_model(), "removal": cfg.removal,
            "epsilon": cfg.epsilon, "delta": cfg.delta, "sigma": cfg.sigma, "lam": cfg.lam,
            "c": noise_constant(cfg.delta), "budget": budget, "gamma": GAMMA[self.loss],
            "residual_norm": self.beta, "residual_before": beta_before,
            "residual_added": float(sum(bounds)) if not retrained else 0.0,
            "budget_satisfied": self.beta <= budget, "certified": self.beta <= budget,
            "newton_removals": newton, "retrained": retrained, "retrain_reason": reason,
            "retrains_total": self.retrains, "newton_removals_total": self.newton_removals,
            "train_gradient_norm": self.train_gradient_norm,
            "worst_case_bound_per_removal": worst_case_bound(cfg.lam, n_before, GAMMA[self.loss]),
            "n_alive": n_alive,
            "assumptions": ASSUMPTIONS,
            # the keys the run table and HTML report read for every training-time method
            "shards_touched": [0] if len(todo) else [], "models_deactivated": 0,
            "models_retrained": int(retrained), "retrained_shards": [0] if retrained else [],
            "examples_reprocessed": n_alive if retrained else 0,
            "fraction_reprocessed": (n_alive / max(1, self.task.n_train)) if retrained else 0.0,
            "plan": {"shards": 1, "slices": 1, "lineage_sha256": self.lineage_sha256()},
        }

    def lineage_sha256(self) -> str:
        return hashlib.sha256(",".join(map(str, np.flatnonzero(self.alive).tolist())).encode()).hexdigest()

    # -- persistence -------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {**{k: v.clone() for k, v in self.state.items()}, "alive": torch.as_tensor(self.alive.astype(np.uint8))}

    def meta(self) -> dict[str, Any]:
        return {"scheme": "certified", "beta": self.beta, "retrains": self.retrains,
                "train_gradient_norm": self.train_gradient_norm, "newton_removals": self.newton_removals,
                "model": self.describe_model(), "budget": self.budget}

    @classmethod
    def restore(cls, task, config: CertifiedConfig, seed: int, tensors: dict[str, torch.Tensor],
                meta: dict[str, Any]) -> "CertifiedSystem":
        state = {k: v.clone() for k, v in tensors.items() if k != "alive"}
        alive = tensors["alive"].numpy().astype(bool)
        return cls(task, config, seed, state, alive, float(meta["beta"]), int(meta["retrains"]),
                   float(meta["train_gradient_norm"]), int(meta.get("newton_removals", 0)))

    def copy(self) -> "CertifiedSystem":
        return CertifiedSystem(self.task, self.config, self.seed, {k: v.clone() for k, v in self.state.items()},
                               self.alive.copy(), self.beta, self.retrains, self.train_gradient_norm,
                               self.newton_removals)


@register
class Certified(TrainingTimeMethod):
    name = "certified"
    guarantee = "certified"
    needs = frozenset({"labels"})
    # Regression is implemented (loss "squared": ℓ'' is constant, γ = 0, the Newton step is exact and spends no
    # budget) but not registered: the pipeline measures a regression method against the task's MLP oracle, which a
    # linear model cannot approach (friedman target>=20: ridge forget MAE 2.49, the MLP oracle 1.88, the original
    # MLP 0.79), so "moves toward the oracle" is not a property this model can have there. Adding "regression" here
    # is the whole change once that comparison is settled.
    kinds = ("classification",)
    config_class = CertifiedConfig
    summary = "(ε, δ)-certified removal for a linear model trained with loss perturbation (Newton step + budget)"
    reference = ("Guo, Goldstein, Hannun & van der Maaten, ICML 2020 (arXiv 1911.03030); "
                 "facebookresearch/certified-removal")

    def fit(self, task, train_ids, recipe, seed, runtime):
        """The linear model replaces the task's network (its recipe's optimiser and epochs are not used)."""
        return CertifiedSystem.fit(task, train_ids, self.config, seed)

    def restore(self, task, recipe, seed, tensors, meta):
        return CertifiedSystem.restore(task, self.config, seed, tensors, meta)

