"""SCRUB's lr schedule and plain retain CE (meghdadk/SCRUB small-scale notebook) and SalUn's eval-mode
saliency mask (Unlearn-Saliency generate_mask.py); the moves-toward-the-oracle and determinism tests of both
methods are the shared ones in tests/test_methods.py."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import obliviate.methods.scrub as scrub_module
from obliviate.config import build_config
from obliviate.methods.base import UnlearnContext
from obliviate.methods.salun import saliency_mask
from obliviate.methods.scrub import Scrub, ScrubConfig, scheduled_lr
from obliviate.models.nets import MLP


# -- SCRUB --------------------------------------------------------------------------------------------------

def test_scrub_defaults_are_the_small_scale_notebook():
    cfg = ScrubConfig()
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.epochs, cfg.msteps) == ("adam", 5e-4, 0.1, 10, 3)
    assert (cfg.gamma, cfg.alpha, cfg.temperature) == (1.0, 0.5, 2.0)
    assert (cfg.lr_decay_epochs, cfg.lr_decay_rate) == ((5, 8, 9), 0.1)
    assert (cfg.batch_size, cfg.forget_batch_size) == (32, 64)
    assert cfg.label_smoothing == 0.0  # the notebook's smoothing=0.5 is the unused SGDA factor


def test_scrub_lr_schedule_by_hand():
    # adjust_learning_rate: steps = #{m : epoch > m}; milestones 5, 8, 9 over epochs 1..10
    cfg = ScrubConfig(lr=1.0)
    assert [scheduled_lr(cfg, e) for e in range(1, 11)] == pytest.approx(
        [1, 1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.001])
    assert [scheduled_lr(ScrubConfig(lr=2.0, lr_decay_epochs=(), lr_decay_rate=0.5), e) for e in (1, 9)] == [2, 2]
    assert build_config(ScrubConfig, {"lr_decay_epochs": ""}).lr_decay_epochs == ()
    assert build_config(ScrubConfig, {"lr_decay_epochs": "2,4"}).lr_decay_epochs == (2, 4)


def _tiny_ctx(model, n_forget=8, n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=g), torch.randint(3, (n,), generator=g)
    return UnlearnContext(task=None, model=copy.deepcopy(model), original=copy.deepcopy(model),
                          x_forget=x[:n_forget], y_forget=y[:n_forget], x_retain=x[n_forget:], y_retain=y[n_forget:],
                          forget_ids=np.arange(n_forget), retain_ids=np.arange(n_forget, n), recipe=None, seed=0,
                          device=torch.device("cpu"))


def test_scrub_steps_follow_the_schedule_and_the_plain_ce(monkeypatch):
    """Every optimiser step of a run uses the scheduled lr; the min-step loss is γ·CE + α·KL without smoothing."""
    torch.manual_seed(0)
    model = MLP(6, (8,), 3)
    ctx = _tiny_ctx(model)
    seen, losses = [], []
    real_optimizer, real_ce = scrub_module.optimizer, scrub_module.F.cross_entropy

    def recording_optimizer(module, cfg):
        opt = real_optimizer(module, cfg)
        real_step = opt.step

        def step(*a, **k):
            seen.append(opt.param_groups[0]["lr"])
            return real_step(*a, **k)

        opt.step = step
        return opt

    def recording_ce(logits, target, **kwargs):
        losses.append(kwargs)
        return real_ce(logits, target, **kwargs)

    monkeypatch.setattr(scrub_module, "optimizer", recording_optimizer)
    monkeypatch.setattr(scrub_module.F, "cross_entropy", recording_ce)
    cfg = ScrubConfig(epochs=4, msteps=1, lr=1e-2, lr_decay_epochs=(1, 3), batch_size=16, forget_batch_size=8)
    Scrub(cfg).unlearn(ctx)
    # epoch 1: 1 forget step + 2 retain steps at 1e-2; epoch 2-3: 2 steps at 1e-3; epoch 4: 2 at 1e-4
    assert seen == pytest.approx([1e-2] * 3 + [1e-3] * 4 + [1e-4] * 2)
    assert losses and all(k.get("label_smoothing", 0.0) == 0.0 for k in losses)


# -- SalUn --------------------------------------------------------------------------------------------------

def _dropout_model():
    torch.manual_seed(0)
    return MLP(6, (16, 16), 3, dropout=0.5)


def test_salun_mask_ignores_dropout_and_global_rng():
    model = _dropout_model()
    ctx = _tiny_ctx(model, n_forget=20)
    model.train()
    torch.manual_seed(1)
    first = saliency_mask(model, ctx.x_forget, ctx.y_forget, batch_size=8, ratio=0.5)
    torch.manual_seed(2)
    second = saliency_mask(model, ctx.x_forget, ctx.y_forget, batch_size=8, ratio=0.5)
    assert model.training  # the caller's mode is restored
    assert all(torch.equal(first[k], second[k]) for k in first)

    # the check can fail: train-mode gradients (dropout on) do depend on the global RNG
    def train_mode_grad(seed):
        torch.manual_seed(seed)
        model.zero_grad()
        (-F.cross_entropy(model(ctx.x_forget), ctx.y_forget)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    assert not torch.equal(train_mode_grad(1), train_mode_grad(2))


def test_salun_mask_is_the_top_fraction_of_the_eval_gradient():
    """By an independent computation: |Σ_b ∇(−mean CE_b)| in eval mode, top int(ratio · n) weights."""
    model = _dropout_model()
    ctx = _tiny_ctx(model, n_forget=20)
    mask = saliency_mask(model, ctx.x_forget, ctx.y_forget, batch_size=8, ratio=0.3)
    twin = copy.deepcopy(model).eval()
    params = list(twin.parameters())
    total = [torch.zeros_like(p) for p in params]
    for xb, yb in ((ctx.x_forget[:8], ctx.y_forget[:8]), (ctx.x_forget[8:16], ctx.y_forget[8:16]),
                   (ctx.x_forget[16:], ctx.y_forget[16:])):
        for t, g in zip(total, torch.autograd.grad(-F.cross_entropy(twin(xb), yb), params)):
            t += g
    saliency = torch.cat([t.abs().flatten() for t in total])
    flat = torch.cat([m.flatten() for m in mask.values()])
    n_keep = int(0.3 * saliency.numel())
    assert int(flat.sum()) == n_keep
    assert saliency[flat == 1].min() >= saliency[flat == 0].max()
