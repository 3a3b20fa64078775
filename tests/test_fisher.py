"""Fisher forgetting (Golatkar et al., CVPR 2020, arXiv 1911.04933; OPTML-Group/Unlearn-Saliency ``fisher.py``):
the diagonal Fisher, the clamped noise variance, seeded noise."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import obliviate
from obliviate.config import build_config
from obliviate.errors import ConfigError
from obliviate.methods.base import UnlearnContext
from obliviate.methods.fisher import (Fisher, FisherConfig, diagonal_fisher, head_parameter_names,
                                      noise_variance)

TRAIN = {"epochs": 8}  # the recipe of tests/test_methods.py (shared session cache)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


def _x(n=10, seed=1):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))


def test_softmax_regression_fisher_has_the_closed_form():
    """Linear softmax model: F(W_cj) = mean_x x_j² p_c(1 − p_c), F(b_c) = mean_x p_c(1 − p_c)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 4)
    x = _x(12)
    fisher = diagonal_fisher(lin, x, "per_example", chunk_size=5)
    with torch.no_grad():
        p = F.softmax(lin(x), dim=1)
    v = p * (1 - p)                                          # (N, C)
    torch.testing.assert_close(fisher["weight"], (v[:, :, None] * x[:, None, :] ** 2).mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fisher["bias"], v.mean(0), rtol=1e-5, atol=1e-7)


def test_per_example_fisher_matches_a_hand_loop_over_examples_and_labels():
    model = _mlp()
    x = _x(9)
    params = list(model.parameters())
    expected = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        out = model(x[i:i + 1])
        prob = F.softmax(out, 1).detach()[0]
        for y in range(3):
            grads = torch.autograd.grad(F.cross_entropy(out, torch.tensor([y])), params, retain_graph=True)
            for e, g in zip(expected, grads):
                e += prob[y] * g ** 2
    fisher = diagonal_fisher(model, x, "per_example", chunk_size=4)
    for (name, _), e in zip(model.named_parameters(), expected):
        torch.testing.assert_close(fisher[name], e / len(x), rtol=1e-5, atol=1e-8)


def test_batch_mean_estimator_is_unlearn_saliency_hessian():
    model = _mlp()
    x = _x(10)
    params = list(model.parameters())
    expected = [torch.zeros_like(p) for p in params]
    batches = [x[0:4], x[4:8], x[8:10]]
    for xb in batches:
        out = model(xb)
        prob = F.softmax(out, 1).detach()
        for y in range(3):
            grads = torch.autograd.grad(F.cross_entropy(out, torch.full((len(xb),), y)), params, retain_graph=True)
            for e, g in zip(expected, grads):
                e += prob[:, y].mean() * g ** 2
    fisher = diagonal_fisher(model, x, "batch_mean", batch_size=4)
    for (name, _), e in zip(model.named_parameters(), expected):
        torch.testing.assert_close(fisher[name], e / len(batches), rtol=1e-5, atol=1e-8)


def test_fisher_is_taken_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)).train()
    a = diagonal_fisher(model, _x(), "per_example")
    b = diagonal_fisher(model, _x(), "per_example")
    assert model.training
    for k in a:
        assert torch.equal(a[k], b[k])


def test_noise_variance_formula():
    alpha = 1e-3
    fisher = torch.tensor([[1e-2, 1e-6], [4.0, 0.0]])
    # hidden 2-D tensor: α·clamp(1/(F+1e-8), 1e3), then averaged over dim 1; no ×10
    keep, var = noise_variance(fisher, alpha, is_head=False)
    raw = torch.tensor([[1 / (1e-2 + 1e-8), 1e3], [1 / (4.0 + 1e-8), 1e3]]) * alpha
    torch.testing.assert_close(var, raw.mean(dim=1, keepdim=True).expand(2, 2))
    assert torch.equal(keep, torch.ones(2, 2))
    # output layer: clamp at 1e2 instead, then ×10
    _, var = noise_variance(fisher, alpha, is_head=True)
    head = torch.tensor([[1e2, 1e2], [1 / (4.0 + 1e-8), 1e2]]) * alpha
    torch.testing.assert_close(var, 10 * head.mean(dim=1, keepdim=True).expand(2, 2))
    # 1-D tensors outside the head: ×10, no averaging
    _, var = noise_variance(torch.tensor([0.5, 1e-9]), alpha, is_head=False)
    torch.testing.assert_close(var, 10 * alpha * torch.tensor([1 / (0.5 + 1e-8), 1e3]))
    # class reset in the head: that row's mean becomes 0 and its variance 1e-4 (×10)
    keep, var = noise_variance(fisher, alpha, is_head=True, reset_rows=[1])
    assert torch.equal(keep, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(var[1], torch.full((2,), 1e-3))
    # noise standard deviation is √α·F^{-1/2} where the clamp is inactive
    _, var = noise_variance(torch.tensor([0.25]), 4e-4, is_head=False)
    assert float(var.sqrt()) == pytest.approx(10 ** 0.5 * (4e-4) ** 0.5 * 0.25 ** -0.5, rel=1e-6)


def _tiny_ctx(model, y_forget, y_retain, seed=0):
    xr = _x(len(y_retain), 2)
    return UnlearnContext(task=SimpleNamespace(kind="classification"), model=model, original=None,
                          x_forget=_x(len(y_forget), 3), y_forget=torch.tensor(y_forget), x_retain=xr,
                          y_retain=torch.tensor(y_retain), forget_ids=np.arange(len(y_forget)),
                          retain_ids=np.arange(len(y_retain)), recipe=None, seed=seed, device=torch.device("cpu"))


def test_method_adds_exactly_the_seeded_scaled_noise():
    model = _mlp()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ctx = _tiny_ctx(model, [0, 1], [0, 1, 2, 2, 1, 0, 2, 1])
    cfg = FisherConfig(alpha=1e-4)
    fisher = diagonal_fisher(model, ctx.x_retain)
    head = head_parameter_names(model)
    assert head == {"2.weight", "2.bias"}
    gen = ctx.generator()
    expected = {}
    for name, p in before.items():
        _, var = noise_variance(fisher[name], cfg.alpha, name in head)
        expected[name] = p + var.sqrt() * torch.randn(p.shape, generator=gen)
    out = Fisher(cfg).unlearn(ctx)
    for name, p in out.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=1e-7)


def test_whole_class_forgetting_resets_the_class_row_and_random_forgetting_does_not():
    row = _mlp()[2].weight.detach()[2]
    assert float(row.abs().max()) > 0.3  # the fixed initialisation makes the reset visible
    ctx = _tiny_ctx(_mlp(), [2, 2, 2], [0, 1, 0, 1, 1, 0])   # class 2 has no retain example
    out = Fisher(FisherConfig()).unlearn(ctx)
    w, b = out[2].weight.detach(), out[2].bias.detach()
    assert float(w[2].abs().max()) < 0.2 and float(b[2].abs()) < 0.2         # μ = 0, std √1e-3
    assert float((w[:2] - _mlp()[2].weight.detach()[:2]).abs().max()) < 0.5
    kept = Fisher(FisherConfig(class_reset=False)).unlearn(_tiny_ctx(_mlp(), [2, 2, 2], [0, 1, 0, 1, 1, 0]))
    mixed = Fisher(FisherConfig()).unlearn(_tiny_ctx(_mlp(), [2, 0], [0, 1, 2, 1, 2, 0]))
    for m in (kept, mixed):  # no reset: row 2 keeps the original's weights (plus small noise)
        torch.testing.assert_close(m[2].weight.detach()[2], row, rtol=0, atol=0.2)


def test_head_is_the_last_parameterised_module_of_a_real_task_model():
    model = obliviate.get_task("digits").make_model(0)
    last = [n for n, _ in model.named_parameters()][-2:]
    assert head_parameter_names(model) == set(last)
    assert all(p.shape[0] == 10 for n, p in model.named_parameters() if n in last)


def test_deterministic_on_digits():
    kw = dict(train=TRAIN, oracle=False, executor="serial", class_reset=False, chunk_size=256)
    a = obliviate.unlearn("digits", "fisher", "random:0.1", seed=0, **kw)
    b = obliviate.unlearn("digits", "fisher", "random:0.1", seed=0, **kw)
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.report["models"]["unlearned"]["sha256"] == b.report["models"]["unlearned"]["sha256"]
    assert a.report["models"]["unlearned"]["sha256"] != a.report["models"]["original"]["sha256"]
    # the default α keeps the model usable
    assert a.report["metrics"]["unlearned"]["retain_acc"] > 0.9


def test_config_defaults_and_validation():
    cfg = build_config(FisherConfig, {}, prefix="fisher.")
    assert (cfg.alpha, cfg.estimator, cfg.var_clamp, cfg.head_var_clamp, cfg.class_reset) == \
        (1e-6, "per_example", 1e3, 1e2, True)
    assert obliviate.get_method("fisher") is Fisher and Fisher.kinds == ("classification",)
    assert Fisher.needs == {"retain", "labels"}
    with pytest.raises(ConfigError, match="alpha"):
        build_config(FisherConfig, {"alpha": "0"}, prefix="fisher.")
    with pytest.raises(ConfigError, match="estimator"):
        build_config(FisherConfig, {"estimator": "kfac"}, prefix="fisher.")
    with pytest.raises(obliviate.ObliviateError, match="does not apply"):
        obliviate.unlearn("friedman", "fisher", "target>=20", train={"epochs": 10})
    with pytest.raises(obliviate.ObliviateError, match="retain"):
        Fisher().unlearn(_tiny_ctx(_mlp(), [0, 1], []))
