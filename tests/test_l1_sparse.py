"""l1-sparse (Jia et al., NeurIPS 2023): fine-tune on the retain set + α_t‖θ‖₁ with α_t decaying per epoch."""
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
from obliviate.methods.l1_sparse import L1Sparse, L1SparseConfig, l1_alpha, l1_norm

TRAIN = {"epochs": 8}  # the recipe of tests/test_methods.py (shared session cache)


def test_alpha_schedule_by_hand():
    a = 1e-4
    assert [l1_alpha(a, t, 10) for t in range(10)] == pytest.approx([a * (1 - t / 10) for t in range(10)])
    assert l1_alpha(a, 0, 10) == a and l1_alpha(a, 9, 10) == pytest.approx(a / 10)
    # 4 final epochs without L1: decay over the first 6, then exactly 0
    assert [l1_alpha(a, t, 10, 4) for t in range(10)] == pytest.approx(
        [a, a * 5 / 6, a * 4 / 6, a * 3 / 6, a * 2 / 6, a / 6, 0, 0, 0, 0])
    assert all(l1_alpha(a, t, 10, 4) == 0.0 for t in range(6, 10))
    # no_l1_epochs == epochs: the official code keeps α constant
    assert [l1_alpha(a, t, 3, 3) for t in range(3)] == [a, a, a]


def test_l1_norm_counts_every_trainable_parameter():
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        lin.bias.copy_(torch.tensor([-0.25, 3.0]))
    assert float(l1_norm(lin).detach()) == pytest.approx(6.75)
    lin.bias.requires_grad_(False)
    assert float(l1_norm(lin).detach()) == pytest.approx(3.5)


def test_updates_follow_ce_plus_decaying_l1_by_hand():
    """Plain SGD (no momentum, no wd), one full batch per epoch: θ ← θ − lr·(∇CE + α_t·sign θ)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ref = torch.nn.Linear(3, 2)
    ref.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
    cfg = L1SparseConfig(lr=0.1, epochs=3, momentum=0.0, weight_decay=0.0, batch_size=8, alpha=0.05,
                         no_l1_epochs=1)
    ctx = UnlearnContext(task=SimpleNamespace(kind="classification"), model=model, original=None,
                         x_forget=x[:1], y_forget=y[:1], x_retain=x, y_retain=y, forget_ids=np.arange(1),
                         retain_ids=np.arange(8), recipe=None, seed=0, device=torch.device("cpu"))
    out = L1Sparse(cfg).unlearn(ctx)
    for alpha_t in (0.05, 0.025, 0.0):
        grads = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
        with torch.no_grad():
            for p, gr in zip(ref.parameters(), grads):
                p -= 0.1 * (gr + alpha_t * torch.sign(p))
    for a, b in zip(out.parameters(), ref.parameters()):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-6)


def _l1(model) -> float:
    return float(sum(p.detach().abs().sum() for p in model.parameters()))


def test_l1_term_shrinks_the_weights_and_alpha_zero_is_finetune():
    runs = {a: obliviate.unlearn("digits", "l1_sparse", "class:3", train=TRAIN, oracle=False, executor="serial",
                                 alpha=a) for a in (0.0, 1e-4, 1e-3)}
    norms = {a: _l1(r.model) for a, r in runs.items()}
    assert norms[1e-3] < norms[1e-4] < norms[0.0], norms
    # the default α already moves ‖θ‖₁ measurably (it is not a no-op at this scale)
    assert norms[0.0] - norms[1e-4] > 1e-3 * norms[0.0], norms
    # with α = 0 the method is exactly the finetune baseline (same optimiser defaults, same data order)
    ft = obliviate.unlearn("digits", "finetune", "class:3", train=TRAIN, oracle=False, executor="serial")
    for (ka, va), (kb, vb) in zip(runs[0.0].model.state_dict().items(), ft.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    # and the retain set stays learned
    assert runs[1e-4].report["metrics"]["unlearned"]["retain_acc"] > 0.95


def test_config_defaults_and_validation():
    cfg = build_config(L1SparseConfig, {}, prefix="l1_sparse.")
    assert (cfg.lr, cfg.epochs, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.optimizer) == \
        (0.01, 10, 0.9, 5e-4, 256, "sgd")
    assert cfg.alpha == 1e-4 and cfg.no_l1_epochs == 0
    assert obliviate.get_method("l1_sparse") is L1Sparse
    assert L1Sparse.kinds == ("classification", "regression") and L1Sparse.guarantee == "approximate"
    with pytest.raises(ConfigError, match="no_l1_epochs"):
        build_config(L1SparseConfig, {"epochs": "3", "no_l1_epochs": "4"}, prefix="l1_sparse.")
    with pytest.raises(ConfigError, match="alpha"):
        build_config(L1SparseConfig, {"alpha": "-1e-4"}, prefix="l1_sparse.")
