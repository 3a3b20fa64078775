"""IAU (Liu et al. 2025, arXiv 2507.23257): the paper's gradient step, the official one-Adam-step variant, and the
gradient-restriction regulariser of the training loop."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import obliviate
from obliviate.config import build_config
from obliviate.errors import ConfigError
from obliviate.methods.base import UnlearnContext
from obliviate.methods.iau import IAU, IAUConfig
from obliviate.tasks.base import TrainRecipe
from obliviate.training import gradient_norm_penalty, make_optimizer, seed_everything, task_loss, to_tensors, train

FAST_DIGITS = {"epochs": 8}  # the recipe of tests/test_methods.py (shared session cache)


def _tiny(out_dim: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, out_dim))


def _data(kind: str, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g) if kind == "classification" else torch.randn(n, 3, generator=g)
    return x, y


def _ctx(model, kind, xf, yf, xr, yr, seed=0) -> UnlearnContext:
    return UnlearnContext(task=SimpleNamespace(kind=kind), model=model, original=None, x_forget=xf, y_forget=yf,
                          x_retain=xr, y_retain=yr, forget_ids=np.arange(len(xf)), retain_ids=np.arange(len(xr)),
                          recipe=None, seed=seed, device=torch.device("cpu"))


def _mean_grad(model, kind, x, y):
    out = model(x)
    loss = F.cross_entropy(out, y) if kind == "classification" else ((out - y) ** 2).mean()
    return torch.autograd.grad(loss, list(model.parameters()))


# -- the paper's rule -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_sgd_rule_is_theta_minus_eta_times_retain_minus_forget_gradient(kind):
    model = _tiny()
    xf, yf = _data(kind, 7, 1)
    xr, yr = _data(kind, 23, 2)
    before = [p.detach().clone() for p in model.parameters()]
    g_r = _mean_grad(model, kind, xr, yr)
    g_f = _mean_grad(model, kind, xf, yf)
    eta = 0.37
    # batch_size 4 forces the full-batch gradients to be accumulated over uneven mini-batches
    out = IAU(IAUConfig(eta=eta, batch_size=4)).unlearn(_ctx(model, kind, xf, yf, xr, yr))
    for p, p0, gr, gf in zip(out.parameters(), before, g_r, g_f):
        torch.testing.assert_close(p.detach(), p0 - eta * (gr - gf), rtol=0, atol=1e-6)
        assert p.grad is None  # no stale gradients left behind


def test_retain_weight_zero_is_pure_forget_ascent():
    model = _tiny()
    xf, yf = _data("classification", 9, 3)
    xr, yr = _data("classification", 20, 4)
    before = [p.detach().clone() for p in model.parameters()]
    g_f = _mean_grad(model, "classification", xf, yf)
    out = IAU(IAUConfig(eta=0.5, retain_weight=0.0)).unlearn(_ctx(model, "classification", xf, yf, xr, yr))
    for p, p0, gf in zip(out.parameters(), before, g_f):
        torch.testing.assert_close(p.detach(), p0 + 0.5 * gf, rtol=0, atol=1e-6)


def test_gradients_are_taken_in_eval_mode():
    """Dropout must not make g random: the step is the same whatever the global RNG says."""
    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))

    xf, yf = _data("classification", 6, 5)
    xr, yr = _data("classification", 12, 6)
    results = []
    for rng in (1, 2):
        torch.manual_seed(rng)
        results.append(IAU(IAUConfig()).unlearn(_ctx(net(), "classification", xf, yf, xr, yr)).state_dict())
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k])


# -- the official code: one Adam step ≈ sign descent ------------------------------------------------------

def test_adam_1step_is_lr_times_sign_of_g_up_to_epsilon():
    model = _tiny()
    xf, yf = _data("classification", 7, 1)
    xr, yr = _data("classification", 23, 2)
    before = [p.detach().clone() for p in model.parameters()]
    g = [gr - gf for gr, gf in zip(_mean_grad(model, "classification", xr, yr),
                                   _mean_grad(model, "classification", xf, yf))]
    lr, eps = 1e-3, 1e-8
    out = IAU(IAUConfig(optimizer="adam_1step")).unlearn(_ctx(model, "classification", xf, yf, xr, yr))
    for p, p0, gi in zip(out.parameters(), before, g):
        step = p.detach().double() - p0.double()
        # exactly Adam's first step: −lr·g/(|g| + ε) ...
        torch.testing.assert_close(step, (-lr * gi / (gi.abs() + eps)).double(), rtol=1e-4, atol=1e-9)
        # ... which is −lr·sign(g) to within lr·ε/|g| (plus float32 rounding of θ)
        nz = gi.abs() > 1e-6
        dev = (step + lr * torch.sign(gi).double()).abs()
        assert torch.all(dev[nz] <= lr * eps / gi.abs()[nz].double() + 1e-7)
        assert torch.all(step[~nz].abs() <= lr)


def test_adam_1step_moves_every_coordinate_by_the_same_amount():
    """The pitfall in numbers: the official step ignores gradient magnitude, the paper's does not."""
    xf, yf = _data("classification", 7, 1)
    xr, yr = _data("classification", 23, 2)
    steps = {}
    for opt in ("sgd", "adam_1step"):
        model = _tiny()
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        IAU(IAUConfig(optimizer=opt)).unlearn(_ctx(model, "classification", xf, yf, xr, yr))
        steps[opt] = (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).abs()
    big = steps["adam_1step"][steps["adam_1step"] > 1e-5]
    assert big.min() > 0.99e-3 and big.max() < 1.01e-3
    assert steps["sgd"].max() / steps["sgd"][steps["sgd"] > 0].min() > 100


# -- config ------------------------------------------------------------------------------------------------

def test_config_defaults_and_validation():
    cfg = build_config(IAUConfig, {}, prefix="iau.")
    assert cfg.optimizer == "sgd" and cfg.eta == 0.1 and cfg.adam_lr == 1e-3
    assert IAU.kinds == ("classification", "regression") and IAU.guarantee == "approximate"
    assert obliviate.get_method("iau") is IAU
    with pytest.raises(ConfigError, match="optimizer"):
        build_config(IAUConfig, {"optimizer": "adam"}, prefix="iau.")
    with pytest.raises(ConfigError, match="eta"):
        build_config(IAUConfig, {"eta": "0"}, prefix="iau.")
    with pytest.raises(ConfigError, match="retain_weight"):
        build_config(IAUConfig, {"retain_weight": "-1"}, prefix="iau.")


# -- gradient restriction -----------------------------------------------------------------------------------

def _plain_train(model, x, y, recipe, kind, seed):
    """The training loop exactly as it was before gradient restriction existed."""
    from obliviate.training import batches

    seed_everything(seed)
    model.train()
    xt, yt = to_tensors(x, y, torch.device("cpu"))
    opt = make_optimizer(model.parameters(), recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(recipe.epochs):
        for idx in batches(len(xt), recipe.batch_size, gen):
            loss = task_loss(kind, model, model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def _toy_xy(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n).astype(np.int64)


@pytest.mark.parametrize("norm", ["per_tensor", "global"])
def test_alpha_zero_is_bit_identical_to_the_plain_loop(norm):
    x, y = _toy_xy()
    recipe = TrainRecipe(epochs=3, batch_size=8, grad_restriction=0.0, grad_restriction_norm=norm)
    a = train(_tiny(seed=3), x, y, recipe, "classification", seed=5)
    b = _plain_train(_tiny(seed=3), x, y, recipe, "classification", seed=5)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_penalty_is_the_sum_of_per_tensor_norms_or_the_global_norm():
    model = _tiny()
    x, y = _data("classification", 10, 7)
    params = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    per_tensor = sum(float(torch.sqrt((g.double() ** 2).sum())) for g in grads)
    global_ = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    assert float(gradient_norm_penalty(loss, params, "per_tensor").detach()) == pytest.approx(per_tensor, rel=1e-5)
    assert float(gradient_norm_penalty(loss, params, "global").detach()) == pytest.approx(global_, rel=1e-5)
    assert per_tensor > global_  # 4 tensors: the sum of norms exceeds the norm of the concatenation
    with pytest.raises(obliviate.ObliviateError, match="grad_restriction_norm"):
        gradient_norm_penalty(F.cross_entropy(model(x), y), params, "l1")


@pytest.mark.parametrize("norm", ["per_tensor", "global"])
def test_training_step_descends_loss_plus_alpha_times_gradient_norm(norm):
    """One full-batch SGD step of train() equals θ − lr·∇(ℓ + α·‖∇ℓ‖) computed by hand (double back-prop)."""
    x, y = _toy_xy(16, 1)
    alpha, lr = 0.5, 0.1
    recipe = TrainRecipe(epochs=1, batch_size=16, optimizer="sgd", lr=lr, momentum=0.0,
                         grad_restriction=alpha, grad_restriction_norm=norm)
    trained = train(_tiny(seed=2), x, y, recipe, "classification", seed=0)

    model = _tiny(seed=2)
    params = list(model.parameters())
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    loss = F.cross_entropy(model(xt), yt)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    if norm == "per_tensor":
        penalty = sum(torch.sqrt((g ** 2).sum()) for g in grads)
    else:
        penalty = torch.sqrt(sum((g ** 2).sum() for g in grads))
    total_grads = torch.autograd.grad(loss + alpha * penalty, params)
    plain_grads = torch.autograd.grad(F.cross_entropy(model(xt), yt), params)
    for p_new, p, gt, gp in zip(trained.parameters(), params, total_grads, plain_grads):
        torch.testing.assert_close(p_new.detach(), (p - lr * gt).detach(), rtol=1e-5, atol=1e-6)
    # and the penalty did change the step (it is not the plain step)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(total_grads, plain_grads))


def test_recipe_fields_are_typed_and_validated():
    r = build_config(TrainRecipe, {"grad_restriction": "0.005", "grad_restriction_norm": "global"}, prefix="train.")
    assert r.grad_restriction == 0.005 and r.grad_restriction_norm == "global"
    assert TrainRecipe().grad_restriction == 0.0 and TrainRecipe().grad_restriction_norm == "per_tensor"
    with pytest.raises(ConfigError, match="train.grad_restriction"):
        build_config(TrainRecipe, {"grad_restriction": "-0.1"}, prefix="train.")
    with pytest.raises(ConfigError, match="train.grad_restriction_norm"):
        build_config(TrainRecipe, {"grad_restriction_norm": "frobenius"}, prefix="train.")
    helps = {f.name: f.metadata.get("help") for f in dataclasses.fields(TrainRecipe)}
    assert helps["grad_restriction"] and helps["grad_restriction_norm"]


def test_gradient_restricted_original_on_digits_is_accurate_and_cached_separately():
    plain = obliviate.unlearn("digits", "iau", "class:3", train=FAST_DIGITS, oracle=False, executor="serial")
    gr = obliviate.unlearn("digits", "iau", "class:3", train={**FAST_DIGITS, "grad_restriction": 0.005},
                           oracle=False, executor="serial")
    assert gr.report["train"]["grad_restriction"] == 0.005
    assert gr.report["models"]["original"]["sha256"] != plain.report["models"]["original"]["sha256"]
    orig = gr.report["metrics"]["original"]
    assert orig["test_acc"] > 0.9 and orig["retain_acc"] > 0.95
    # IAU on the restricted original still lowers forget accuracy without hurting the retain set
    unl = gr.report["metrics"]["unlearned"]
    assert unl["forget_acc"] < orig["forget_acc"] and unl["retain_acc"] > 0.95


def test_cli_sets_gradient_restriction_through_the_recipe(cli, tmp_path):
    out = tmp_path / "run.json"
    rc, _, err = cli("run", "--task", "digits", "--method", "iau", "--forget", "class:3", "--no-oracle",
                     "--set", "train.epochs=8", "--set", "train.grad_restriction=0.005",
                     "--set", "iau.optimizer=adam_1step", "--json", out)
    assert rc == 0, err
    report = json.loads(out.read_text())
    assert report["train"]["grad_restriction"] == 0.005 and report["config"]["optimizer"] == "adam_1step"
    rc, _, err = cli("run", "--task", "digits", "--method", "iau", "--no-oracle",
                     "--set", "train.grad_restriction=-1")
    assert rc == 2 and "train.grad_restriction" in err
