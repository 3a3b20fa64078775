"""Certified removal (Guo et al., ICML 2020): the certificate's arithmetic, the Newton step against
retraining, the residual bound against the measured residual, the budget and its retrain, persistence, and the
refusals (non-convex model, regression)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import obliviate
from obliviate.errors import ConfigError, ObliviateError
from obliviate.methods.certified import (CertifiedConfig, CertifiedSystem, features, fit_linear, gradient,
                                         newton_step, noise_constant, residual_budget, sigma_for, worst_case_bound)


@pytest.fixture(scope="module")
def bc():
    return obliviate.get_task("breast_cancer")


@pytest.fixture(scope="module")
def bc_system(bc):
    return CertifiedSystem.fit(bc, np.arange(bc.n_train), CertifiedConfig(), seed=0)


def _design(system, ids):
    """Features and ±1 targets of ``ids`` under the system's (frozen) feature map."""
    return system._design(np.asarray(ids))


# -- the certificate's arithmetic ---------------------------------------------------------------------------

def test_noise_budget_relationship_by_hand():
    # c = sqrt(2 ln(1.5/δ)); δ = 1e-4: ln(15000) = 9.61581, c = 4.385386
    assert noise_constant(1e-4) == pytest.approx(math.sqrt(2 * 9.615805480084347), rel=1e-12)
    assert noise_constant(1e-4) == pytest.approx(4.385386, abs=1e-6)
    # ε' = σε/c: σ = 10, ε = 1 absorbs an accumulated residual of 2.2803
    assert residual_budget(1.0, 1e-4, 10.0) == pytest.approx(10.0 / 4.385386, rel=1e-6)
    assert residual_budget(1.0, 1e-4, 10.0) == pytest.approx(2.2803, abs=1e-4)
    # σ = c ε'/ε inverts it; twice the ε (weaker guarantee) halves the noise needed for the same budget
    assert sigma_for(1.0, 1e-4, residual_budget(1.0, 1e-4, 3.0)) == pytest.approx(3.0, rel=1e-12)
    assert sigma_for(2.0, 1e-4, 1.0) == pytest.approx(sigma_for(1.0, 1e-4, 1.0) / 2, rel=1e-12)
    # smaller δ needs more noise for the same budget
    assert sigma_for(1.0, 1e-6, 1.0) > sigma_for(1.0, 1e-4, 1.0)
    # Theorem 1 worst case for logistic loss (γ = 1/4, C = 1): 4γ/(λ²(n−1))
    assert worst_case_bound(0.1, 101) == pytest.approx(1.0 / (0.01 * 100), rel=1e-12)


# -- the Newton step ------------------------------------------------------------------------------------------

def _rows(n=30, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = features(x, x.mean(0), x.std(0))
    y = z @ torch.randn(d + 1, 1, generator=g, dtype=torch.float64) + 0.1 * torch.randn(n, 1, generator=g,
                                                                                        dtype=torch.float64)
    return z, y


@pytest.mark.parametrize("sigma", [0.0, 2.0])
@pytest.mark.parametrize("batch", [False, True])
def test_quadratic_loss_newton_removal_equals_the_retrained_minimiser(sigma, batch):
    """Squared loss: ℓ'' is constant (γ = 0), so the Newton step is exact and its residual bound is 0 — with or
    without the perturbation b (the retrained model uses the same b)."""
    z, t = _rows()
    lam = 0.05
    b = sigma * torch.randn(z.shape[1], 1, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    w, g0 = fit_linear(z, t, lam, b, loss="squared")
    assert g0 < 1e-10
    rm = [3, 17, 21]
    keep = [i for i in range(len(z)) if i not in rm]
    if batch:
        w_new, bound, _ = newton_step(w, z[keep], t[keep], z[rm], t[rm], lam, "squared")
    else:
        w_new, alive = w, list(range(len(z)))
        for i in rm:
            alive.remove(i)
            w_new, bound, _ = newton_step(w_new, z[alive], t[alive], z[i:i + 1], t[i:i + 1], lam, "squared")
    retrained, _ = fit_linear(z[keep], t[keep], lam, b, loss="squared")
    torch.testing.assert_close(w_new, retrained, rtol=1e-9, atol=1e-10)
    assert bound == 0.0
    assert float(gradient(w_new, z[keep], t[keep], lam, b, "squared").norm()) < 1e-10


def test_ridge_system_with_no_noise_removes_exactly():
    """The squared-loss system (σ = 0, budget 0): Newton removals spend nothing, so they stay certified and equal a
    refit on the remaining rows under the same feature map."""
    task = obliviate.get_task("friedman", n_samples=200)
    system = CertifiedSystem.fit(task, np.arange(task.n_train), CertifiedConfig(sigma=0.0), seed=0)
    assert system.budget == 0.0
    cost = system.delete(np.array([0, 5, 7]))
    assert not cost["retrained"] and cost["newton_removals"] == 3 and cost["residual_norm"] == 0.0
    assert cost["budget_satisfied"] and cost["gamma"] == 0.0
    z, t = _design(system, np.flatnonzero(system.alive))
    refit, _ = fit_linear(z, t, system.config.lam, system.state["b"], loss="squared")
    torch.testing.assert_close(system.state["weight"], refit, rtol=1e-9, atol=1e-10)
    pred = system.served_model()(torch.as_tensor(task.data.x_train[:4]))
    assert pred.shape == (4,) and pred.dtype == torch.float32


def test_logistic_newton_step_matches_retraining_and_the_bound_holds(bc, bc_system):
    """The paper's sanity check: on L2-regularised logistic regression the Newton step matches retraining to
    ~1e-3 relative error, and the measured gradient residual stays within the data-dependent bound."""
    system = bc_system.copy()
    w0 = system.state["weight"].clone()
    cost = system.delete(np.array([11]))
    assert not cost["retrained"] and cost["newton_removals"] == 1
    rest = np.flatnonzero(system.alive)
    z, t = _design(system, rest)
    lam, b = system.config.lam, system.state["b"]
    residual = float(gradient(system.state["weight"], z, t, lam, b, "logistic").norm())
    assert 0.0 < residual <= cost["residual_added"]
    retrained, _ = fit_linear(z, t, lam, b, loss="logistic")
    moved = float((retrained - w0).norm())
    err = float((system.state["weight"] - retrained).norm())
    assert err <= 1e-3 * float(retrained.norm())
    assert err < 0.05 * moved  # the step did most of the work retraining would do
    assert bc_system.alive[11]  # copy() is independent of the fitted system


def test_sequential_removals_accumulate_the_budget(bc_system):
    system = bc_system.copy()
    first = system.delete(np.array([1, 2]))
    second = system.delete(np.array([3]))
    assert first["residual_before"] == 0.0
    assert second["residual_before"] == pytest.approx(first["residual_norm"])
    assert second["residual_norm"] == pytest.approx(first["residual_norm"] + second["residual_added"])
    assert second["residual_norm"] <= second["budget"] and second["certified"]
    assert second["newton_removals_total"] == 3
    again = system.delete(np.array([3, 4]))  # 3 is gone already: a no-op for it
    assert again["already_deleted"] == [3] and again["deleted"] == 1


def test_exhausted_budget_retrains_from_scratch_and_says_so(bc):
    cfg = CertifiedConfig(sigma=1e-4)  # budget ≈ 2e-5: no Newton step fits in it
    system = CertifiedSystem.fit(bc, np.arange(bc.n_train), cfg, seed=0)
    cost = system.delete(np.array([0, 1, 2]))
    assert cost["retrained"] and cost["models_retrained"] == 1 and cost["retrains_total"] == 1
    assert "budget" in cost["retrain_reason"] and cost["newton_removals"] == 0
    assert cost["residual_norm"] == 0.0 and cost["budget_satisfied"]
    # the served model is a from-scratch fit on the remaining rows (refitted feature map, the retrain's own b)
    fresh = CertifiedSystem.fit(bc, np.arange(3, bc.n_train), cfg, seed=0, retrains=1)
    torch.testing.assert_close(system.state["weight"], fresh.state["weight"], rtol=0, atol=0)
    torch.testing.assert_close(system.state["x_mean"], fresh.state["x_mean"], rtol=0, atol=0)
    assert not torch.equal(system.state["b"], CertifiedSystem.fit(bc, np.arange(bc.n_train), cfg, 0).state["b"])


def test_batch_removal_is_one_step(bc_system):
    system = bc_system.copy()
    system.config = CertifiedConfig(removal="batch")
    cost = system.delete(np.array([5, 6, 7, 8]))
    assert cost["removal"] == "batch" and cost["newton_removals"] == 4 and not cost["retrained"]
    z, t = _design(system, np.flatnonzero(system.alive))
    residual = float(gradient(system.state["weight"], z, t, system.config.lam, system.state["b"], "logistic").norm())
    assert residual <= cost["residual_added"]


# -- the served model and persistence ---------------------------------------------------------------------------

def test_served_model_standardises_raw_features(bc, bc_system):
    net = bc_system.served_model()
    x = torch.as_tensor(bc.data.x_test[:5])
    out = net(x)
    assert out.shape == (5, 2) and out.dtype == torch.float32 and torch.all(out[:, 0] == 0)
    s = bc_system.state
    manual = features(x, s["x_mean"], s["x_std"]) @ s["weight"]
    torch.testing.assert_close(out[:, 1].double(), manual[:, 0], rtol=1e-6, atol=1e-6)
    assert set(net.state_dict()) == {"weight", "x_mean", "x_std", "y_mean", "y_std"}
    acc = (net(torch.as_tensor(bc.data.x_test)).argmax(1).numpy() == bc.data.y_test).mean()
    assert acc > 0.9


def test_restore_round_trip_and_determinism(bc, bc_system):
    system = bc_system.copy()
    system.delete(np.array([9]))
    back = CertifiedSystem.restore(bc, system.config, 0, system.tensors(), system.meta())
    for key, value in system.state.items():
        assert torch.equal(back.state[key], value), key
    assert np.array_equal(back.alive, system.alive) and back.beta == system.beta
    assert back.meta() == system.meta()
    again = CertifiedSystem.fit(bc, np.arange(bc.n_train), CertifiedConfig(), seed=0)
    assert torch.equal(again.state["weight"], bc_system.state["weight"])
    other = CertifiedSystem.fit(bc, np.arange(bc.n_train), CertifiedConfig(), seed=1)
    assert not torch.equal(other.state["b"], bc_system.state["b"])


# -- through the pipeline -------------------------------------------------------------------------------------

def test_run_report_carries_the_certificate(tmp_path):
    r = obliviate.unlearn("breast_cancer", "certified", "ids:0,1,2", seed=0, oracle=False, cache_dir=str(tmp_path))
    rep = r.report
    assert rep["guarantee"] == "certified" and rep["config"]["model"] == "linear"
    e = rep["exact"]
    assert e["scheme"] == "certified" and e["deleted"] == 3 and e["newton_removals"] == 3 and not e["retrained"]
    for key in ("epsilon", "delta", "sigma", "lam", "residual_norm", "budget", "budget_satisfied", "time_s"):
        assert key in e, key
    assert e["budget"] == pytest.approx(residual_budget(e["epsilon"], e["delta"], e["sigma"]))
    assert 0 < e["residual_norm"] <= e["budget"] and e["budget_satisfied"]
    assert rep["time_s"]["unlearn"] == e["time_s"]
    assert rep["metrics"]["unlearned"]["test_acc"] > 0.9

    tight = obliviate.unlearn("breast_cancer", "certified", "ids:0,1,2", seed=0, oracle=False,
                              cache_dir=str(tmp_path), sigma=1e-4)
    assert tight.report["exact"]["retrained"] and "budget" in tight.report["exact"]["retrain_reason"]


def test_digits_one_vs_rest(tmp_path):
    r = obliviate.unlearn("digits", "certified", "random:5", seed=0, oracle=False, cache_dir=str(tmp_path))
    assert r.model(torch.as_tensor(obliviate.get_task("digits").data.x_test[:3])).shape == (3, 10)
    assert "one-vs-rest" in r.report["exact"]["model"] and r.report["metrics"]["original"]["test_acc"] > 0.8


def test_csv_classification(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    a, b = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green"], size=n)
    label = np.where(a + b > 0.5, "hi", np.where(a - b > 0.5, "mid", "lo"))
    a[3] = np.nan  # imputed with the training mean
    path = tmp_path / "d.csv"
    with path.open("w") as fh:
        fh.write("a,b,colour,label\n")
        for row in zip(a, b, colour, label):
            fh.write(",".join("" if isinstance(v, float) and np.isnan(v) else str(v) for v in row) + "\n")
    r = obliviate.unlearn("csv", "certified", "random:4", seed=0, oracle=False, cache_dir=str(tmp_path / "cache"),
                          task_options={"data": str(path), "target": "label"})
    assert r.report["exact"]["scheme"] == "certified" and r.report["metrics"]["unlearned"]["test_acc"] > 0.7


# -- refusals -------------------------------------------------------------------------------------------------

def test_non_convex_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"non-convex.*model=linear"):
        obliviate.unlearn("breast_cancer", "certified", "random:5", model="mlp", cache_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # refused before training anything


def test_non_convex_model_on_the_command_line(cli, tmp_path):
    rc, out, err = cli("run", "--task", "breast_cancer", "--method", "certified", "--set", "model=mlp",
                       "--no-oracle")
    assert rc == 2
    lines = [ln for ln in (out + err).strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "non-convex" in lines[0] and "Traceback" not in out + err


def test_regression_tasks_are_refused(tmp_path):
    with pytest.raises(ObliviateError, match="does not apply to regression"):
        obliviate.unlearn("friedman", "certified", "target>=20", cache_dir=str(tmp_path))


def test_registry_entry():
    cls = obliviate.get_method("certified")
    assert cls.guarantee == "certified" and cls.trains_original
    assert cls.kinds == ("classification",) and cls.needs == frozenset({"labels"})
    cfg = cls.config_class()
    assert (cfg.epsilon, cfg.delta, cfg.sigma, cfg.lam, cfg.steps, cfg.removal, cfg.model) == \
        (1.0, 1e-4, 3.0, 0.03, 100, "sequential", "linear")
    with pytest.raises(ConfigError, match="delta"):
        obliviate.unlearn("breast_cancer", "certified", delta=0)
