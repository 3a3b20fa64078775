"""Gaussian fine-tuning (Deep Regression Unlearning's "Gaussian amnesiac" baseline, Tarun et al., ICML 2023): the
replacement targets' distribution and seeding, which data μ and σ come from, and the friedman cohort."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import obliviate
from obliviate.config import build_config
from obliviate.errors import ConfigError, ObliviateError
from obliviate.methods import UnlearnContext
from obliviate.methods import gaussian_finetune as gf
from obliviate.methods.gaussian_finetune import (GaussianFinetune, GaussianFinetuneConfig, gaussian_targets,
                                                 target_stats)


def test_target_stats_by_hand():
    mu, sd = target_stats(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mu == 2.5 and sd == pytest.approx(math.sqrt(5 / 3))      # sample std (ddof=1), as pandas' .std()
    assert target_stats(torch.tensor([7.0])) == (7.0, 0.0)
    with pytest.raises(ObliviateError, match="no training targets"):
        target_stats(np.array([]))


def test_gaussian_targets_have_the_requested_mean_and_std():
    n, mu, sigma = 200_000, 14.25, 4.98
    y = gaussian_targets(n, mu, sigma, torch.Generator().manual_seed(0)).double()
    assert y.dtype == torch.float64 and y.shape == (n,)
    # 5 standard errors: se(mean) = σ/√n ≈ 0.011, se(std) ≈ σ/√(2n) ≈ 0.008
    assert abs(y.mean().item() - mu) < 5 * sigma / math.sqrt(n)
    assert abs(y.std().item() - sigma) < 5 * sigma / math.sqrt(2 * n)
    # and they are normal: about 68.3 % within one σ
    assert abs(((y - mu).abs() < sigma).double().mean().item() - 0.6827) < 0.005


def test_gaussian_targets_are_seeded():
    draw = lambda seed: gaussian_targets(1000, 0.0, 1.0, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def _context(task, forget_ids: np.ndarray, seed: int = 0, y_forget: np.ndarray | None = None) -> UnlearnContext:
    d = task.data
    retain_ids = np.setdiff1d(np.arange(task.n_train), forget_ids)
    model = task.make_model(seed)
    model.fit_normalizer(d.x_train, d.y_train)
    yf = d.y_train[forget_ids] if y_forget is None else y_forget
    return UnlearnContext(
        task=task, model=model, original=None, x_forget=torch.as_tensor(d.x_train[forget_ids]),
        y_forget=torch.as_tensor(yf), x_retain=torch.as_tensor(d.x_train[retain_ids]),
        y_retain=torch.as_tensor(d.y_train[retain_ids]), forget_ids=forget_ids, retain_ids=retain_ids,
        recipe=task.recipe({"epochs": 1}), seed=seed, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def friedman():
    return obliviate.get_task("friedman")


def test_stats_come_from_the_retain_set_by_default(friedman):
    y = friedman.data.y_train
    forget_ids = np.flatnonzero(y <= 8)
    ctx = _context(friedman, forget_ids)
    retain = np.delete(y, forget_ids).astype(np.float64)
    mu, sd = GaussianFinetune().stats(ctx)
    assert mu == pytest.approx(retain.mean()) and sd == pytest.approx(retain.std(ddof=1))
    # the official notebooks' choice: the whole training set, forget cohort included
    mu_d, sd_d = GaussianFinetune(GaussianFinetuneConfig(stats_from="D")).stats(ctx)
    assert mu_d == pytest.approx(y.astype(np.float64).mean()) and sd_d == pytest.approx(y.astype(np.float64).std(ddof=1))
    assert mu_d < mu  # removing the lowest-target cohort raises the mean


def test_forget_targets_are_replaced_by_seeded_draws(friedman, monkeypatch):
    forget_ids = np.flatnonzero(friedman.data.y_train <= 8)
    draws = []
    real = gf.gaussian_targets
    monkeypatch.setattr(gf, "gaussian_targets", lambda *a: draws.append(real(*a)) or draws[-1])
    cfg = GaussianFinetuneConfig(epochs=1)
    a = GaussianFinetune(cfg).unlearn(_context(friedman, forget_ids, seed=0))
    b = GaussianFinetune(cfg).unlearn(_context(friedman, forget_ids, seed=0))
    c = GaussianFinetune(cfg).unlearn(_context(friedman, forget_ids, seed=1))
    assert len(draws) == 3 and all(len(d) == len(forget_ids) for d in draws)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])   # same seed, same draws
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_forget_labels_do_not_matter_with_retain_statistics(friedman):
    """With μ, σ from D_r the unlearned model is a function of the retain rows and the forget inputs only."""
    forget_ids = np.flatnonzero(friedman.data.y_train <= 8)
    cfg = GaussianFinetuneConfig(epochs=1)
    a = GaussianFinetune(cfg).unlearn(_context(friedman, forget_ids))
    b = GaussianFinetune(cfg).unlearn(_context(friedman, forget_ids, y_forget=np.full(len(forget_ids), 1e6,
                                                                                      dtype=np.float32)))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_registry_entry_and_official_defaults(cache_dir):
    cls = obliviate.get_method("gaussian_finetune")
    assert cls is GaussianFinetune and cls.guarantee == "approximate"
    assert cls.needs == {"retain", "labels"} and cls.kinds == ("regression",)   # the paper defines it for regression
    cfg = GaussianFinetuneConfig()
    # STS-B notebook In[27]-In[28]: Adam lr 1e-3, 5 epochs, batch 256 on D_r ∪ relabelled D_f
    assert (cfg.optimizer, cfg.lr, cfg.epochs, cfg.batch_size, cfg.weight_decay) == ("adam", 1e-3, 5, 256, 0.0)
    assert cfg.stats_from == "D_r" and cfg.base_loss == "task"
    with pytest.raises(ObliviateError, match="does not apply"):
        obliviate.unlearn("digits", "gaussian_finetune", "class:3", train={"epochs": 1}, cache_dir=str(cache_dir))


@pytest.mark.parametrize("values, key", [({"stats_from": "D_f"}, "stats_from"), ({"epochs": 0}, "epochs"),
                                         ({"lr": 0}, "lr"), ({"base_loss": "huber"}, "base_loss")])
def test_config_validation(values, key):
    with pytest.raises(ConfigError, match=key):
        build_config(GaussianFinetuneConfig, values, prefix="gaussian_finetune.")
    assert build_config(GaussianFinetuneConfig, {"stats_from": "D"}).stats_from == "D"


def test_cohort_forget_mae_moves_in_the_oracle_direction():
    """friedman ``target<=8``, train epochs 10, seed 0. Measured: original forget MAE 0.939, oracle 1.397,
    Gaussian FT 6.47 with the defaults — it overshoots: fitting N(μ_r, σ_r²) noise on the cohort pushes its
    error far past the oracle's (the oracle extrapolates, it does not predict noise). Only the direction is
    asserted."""
    r = obliviate.unlearn("friedman", "gaussian_finetune", "target<=8", seed=0, train={"epochs": 10},
                          executor="serial")
    m = r.report["metrics"]
    assert m["oracle"]["forget_mae"] > m["original"]["forget_mae"]
    assert m["unlearned"]["forget_mae"] > m["original"]["forget_mae"]
