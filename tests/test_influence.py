"""Influence-function unlearning (Koh & Liang, ICML 2017): the solvers against an exact solve, the Newton step against
retraining on a quadratic problem, the registry entry, and the errors for non-convergence and non-convexity."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import obliviate
from obliviate.errors import ObliviateError
from obliviate.methods.influence import (InfluenceConfig, conjugate_gradient, hvp_operator, lissa, newton_removal,
                                         select_parameters)


@pytest.fixture(autouse=True)
def _float64():
    """The hand-checkable problems are built in float64 so they can be compared to 1e-8."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _ce(net, x, y):
    return F.cross_entropy(net(x), y, reduction="none")


def _sq(net, x, y):
    return (net(x).squeeze(-1) - y) ** 2


def _logistic_problem(n=12, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * torch.randn(n, generator=g) > 0).long()
    net = torch.nn.Linear(d, 2)
    with torch.no_grad():
        net.weight.copy_(torch.randn(2, d, generator=g))
        net.bias.copy_(torch.randn(2, generator=g))
    return net, x, y


def _exact_hessian(net, loss_fn, x, y):
    """The mean Hessian of ``loss_fn`` over (x, y) w.r.t. the flattened parameters, by torch.func."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def f(theta):
        params, off = {}, 0
        for name, shape in zip(names, shapes):
            k = math.prod(shape)
            params[name] = theta[off:off + k].view(shape)
            off += k
        return loss_fn(lambda inp: torch.func.functional_call(net, params, (inp,)), x, y).mean()

    return torch.autograd.functional.hessian(f, flat)


# -- the solvers against torch.linalg.solve ---------------------------------------------------------------

def test_hvp_operator_matches_the_exact_hessian():
    net, x, y = _logistic_problem()
    params = list(net.parameters())
    hess = _exact_hessian(net, _ce, x, y)
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(1))
    for chunk in (1, 5, 100):  # chunking changes nothing but memory
        hvp = hvp_operator(net, params, _ce, x, y, chunk)
        torch.testing.assert_close(hvp(v), hess @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("damping", [1e-3, 0.1])
def test_cg_matches_the_exact_solve(damping):
    net, x, y = _logistic_problem()
    hess = _exact_hessian(net, _ce, x, y)
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(2))
    exact = torch.linalg.solve(hess + damping * torch.eye(len(v)), v)
    hvp = hvp_operator(net, list(net.parameters()), _ce, x, y)
    h, info = conjugate_gradient(hvp, v, damping, iterations=100, tolerance=1e-12)
    torch.testing.assert_close(h, exact, rtol=1e-8, atol=1e-8)
    assert info["solver"] == "cg" and info["relative_residual"] <= 1e-12
    assert info["iterations"] <= len(v) + 2  # CG is exact in at most dim steps (up to rounding)


def test_lissa_matches_the_exact_solve():
    """LiSSA on the full set is the deterministic Neumann series of (H + λI)/scale; with scale above the largest
    eigenvalue it converges to the same solution."""
    net, x, y = _logistic_problem()
    damping = 0.1
    hess = _exact_hessian(net, _ce, x, y)
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(2))
    exact = torch.linalg.solve(hess + damping * torch.eye(len(v)), v)
    hvp = hvp_operator(net, list(net.parameters()), _ce, x, y)
    scale = 1.5 * float(torch.linalg.eigvalsh(hess)[-1] + damping)
    h, info = lissa(hvp, v, damping, scale, depth=50_000, repeats=1, tolerance=1e-13)
    torch.testing.assert_close(h, exact, rtol=1e-7, atol=1e-7)
    assert info["solver"] == "lissa" and info["steps"] < 50_000  # stopped on convergence, not on depth


def test_stochastic_lissa_is_close_to_the_exact_solve():
    """Mini-batch LiSSA is an unbiased-ish stochastic estimate: with repeats it lands near the exact solve."""
    net, x, y = _logistic_problem(n=40)
    params = list(net.parameters())
    damping = 0.1
    hess = _exact_hessian(net, _ce, x, y)
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(3))
    exact = torch.linalg.solve(hess + damping * torch.eye(len(v)), v)
    gen = torch.Generator().manual_seed(4)

    def sample(vec):
        idx = torch.randint(len(x), (20,), generator=gen)
        loss = _ce(net, x[idx], y[idx]).mean()
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(grad, params, vec)])

    h, _ = lissa(sample, v, damping, scale=4.0, depth=300, repeats=4, tolerance=1e-12)
    assert float((h - exact).norm() / exact.norm()) < 0.1, float((h - exact).norm() / exact.norm())


# -- the Newton step --------------------------------------------------------------------------------------

def _ridge_problem(n=15, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + 0.5 + 0.1 * torch.randn(n, generator=g)
    return x, y


def _ridge_fit(x, y, l2):
    """argmin mean (w·x + b − y)² + l2/2 ‖(w, b)‖² in closed form."""
    xa = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    n = len(x)
    theta = torch.linalg.solve(2.0 / n * xa.T @ xa + l2 * torch.eye(xa.shape[1]), 2.0 / n * xa.T @ y)
    return theta[:-1], theta[-1]


def _linear(w, b):
    net = torch.nn.Linear(len(w), 1)
    with torch.no_grad():
        net.weight.copy_(w.view(1, -1))
        net.bias.copy_(b.view(1))
    return net


@pytest.mark.parametrize("solver", ["cg", "lissa"])
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_newton_step_on_ridge_reproduces_retraining(solver, l2):
    """The classic sanity check: on a quadratic objective one Newton step with the retain Hessian lands exactly on
    the minimiser retrained without the forget rows (the L2 term of the objective included)."""
    x, y = _ridge_problem()
    forget = torch.tensor([1, 4, 9])
    keep = torch.tensor([i for i in range(len(x)) if i not in forget.tolist()])
    net = _linear(*_ridge_fit(x, y, l2))
    retrained = _ridge_fit(x[keep], y[keep], l2)
    cfg = InfluenceConfig(solver=solver, params="all", damping=0.0, tolerance=1e-13, iterations=50,
                          scale=4.0 * (1 + float((x ** 2).sum(1).max())), depth=100_000, batch_size=10_000)
    info = newton_removal(net, _sq, x[forget], y[forget], x[keep], y[keep], cfg, l2=l2)
    torch.testing.assert_close(net.weight.detach().view(-1), retrained[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(net.bias.detach().view(()), retrained[1], rtol=1e-6, atol=1e-6)
    assert info["hessian"] == "retain" and info["n_hessian"] == len(keep) and info["parameters"] == x.shape[1] + 1


def test_full_hessian_variant_is_koh_and_liang_formula():
    """hessian=full: θ + α/n (H + λI)⁻¹ Σ_f ∇ℓ, H the mean Hessian over all n rows (the sign: along the forget
    gradient, i.e. the forget loss goes up to first order)."""
    net, x, y = _logistic_problem(n=16)
    forget, keep = torch.arange(4), torch.arange(4, 16)
    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone()
    hess = _exact_hessian(net, _ce, x, y)
    g_f = torch.cat([g.reshape(-1) for g in torch.autograd.grad(_ce(net, x[forget], y[forget]).sum(),
                                                                 list(net.parameters()))])
    damping, alpha = 0.05, 0.5
    expected = theta0 + alpha / len(x) * torch.linalg.solve(hess + damping * torch.eye(len(theta0)), g_f)
    loss_before = _ce(net, x[forget], y[forget]).sum().item()
    cfg = InfluenceConfig(hessian="full", params="all", damping=damping, alpha=alpha, tolerance=1e-12)
    newton_removal(net, _ce, x[forget], y[forget], x[keep], y[keep], cfg)
    theta1 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(theta1, expected, rtol=1e-8, atol=1e-10)
    assert _ce(net, x[forget], y[forget]).sum().item() > loss_before


def test_params_last_changes_only_the_output_layer():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    assert select_parameters(net, "last") == ["2.weight", "2.bias"]
    assert select_parameters(net, "all") == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = torch.randn(20, 3)
    y = (x[:, 0] > 0).long()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    newton_removal(net, _ce, x[:5], y[:5], x[5:], y[5:], InfluenceConfig())
    after = net.state_dict()
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["0.bias"], before["0.bias"])
    assert not torch.equal(after["2.weight"], before["2.weight"])


# -- errors -------------------------------------------------------------------------------------------------

def test_cg_non_convergence_is_a_clear_error():
    net, x, y = _logistic_problem()
    cfg = InfluenceConfig(params="all", iterations=1, tolerance=1e-14, damping=1e-3)
    with pytest.raises(ObliviateError, match=r"did not converge in 1 iterations.*--set iterations=.*--set damping="):
        newton_removal(net, _ce, x[:3], y[:3], x[3:], y[3:], cfg)


def test_negative_curvature_is_a_clear_error():
    """A concave loss: H + λI is negative definite, CG must refuse rather than step uphill."""
    net, x, y = _logistic_problem()

    def concave(model, inp, target):
        return -(model(inp) ** 2).sum(1)

    with pytest.raises(ObliviateError, match=r"not positive definite.*--set damping="):
        newton_removal(net, concave, x[:3], y[:3], x[3:], y[3:], InfluenceConfig(params="all"))


def test_lissa_divergence_is_a_clear_error():
    net, x, y = _logistic_problem()
    cfg = InfluenceConfig(solver="lissa", params="all", scale=1e-3, depth=1000, batch_size=1000)
    with pytest.raises(ObliviateError, match=r"LiSSA diverged.*--set scale="):
        newton_removal(net, _ce, x[:3], y[:3], x[3:], y[3:], cfg)


def test_no_retain_data_is_an_error():
    net, x, y = _logistic_problem()
    with pytest.raises(ObliviateError, match="needs retain data"):
        newton_removal(net, _ce, x, y, x[:0], y[:0], InfluenceConfig())


def test_non_convex_mlp_through_the_pipeline_says_what_to_change(tmp_path):
    """All parameters of the digits MLP with no damping: the Hessian is indefinite; a one-line error naming the
    fix, and nothing but the original written to the cache (no half-unlearned model, no oracle)."""
    with pytest.raises(ObliviateError, match=r"not positive definite.*damping"):
        obliviate.unlearn("digits", "influence", "class:3", seed=0, train={"epochs": 2}, cache_dir=str(tmp_path),
                          params="all", damping=0.0)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


# -- the registry ---------------------------------------------------------------------------------------------

def test_registry_entry():
    cls = obliviate.get_method("influence")
    assert cls.guarantee == "approximate" and not cls.trains_original
    assert set(cls.kinds) == {"classification", "regression"}
    assert cls.needs == frozenset({"labels", "retain"})
    cfg = cls.config_class()
    assert (cfg.solver, cfg.hessian, cfg.params, cfg.damping, cfg.iterations) == ("cg", "retain", "last", 0.01, 100)
    assert (cfg.scale, cfg.depth, cfg.repeats) == (25.0, 5000, 1)
    assert {f.name for f in dataclasses.fields(cfg)} >= {"solver", "damping", "scale", "iterations", "tolerance"}


@pytest.mark.parametrize("key,value", [("solver", "newton"), ("damping", -1), ("iterations", 0), ("scale", 0)])
def test_bad_config_values_are_config_errors(key, value):
    with pytest.raises(obliviate.ObliviateError, match=key):
        obliviate.unlearn("digits", "influence", "class:3", **{key: value})
