"""Blindspot unlearning (Deep Regression Unlearning, Tarun et al., ICML 2023, arXiv 2210.08196): the pieces by
hand, the data the blindspot model is trained on, the retain-set minimum, and the friedman cohort scenario
``target<=8``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import obliviate
from obliviate.config import build_config
from obliviate.errors import ConfigError, ObliviateError
from obliviate.methods import UnlearnContext
from obliviate.methods import blindspot as bs
from obliviate.methods.blindspot import (Blindspot, BlindspotConfig, activation_modules, attention_map,
                                         attention_transfer, forget_fraction, mixed_loss)

SQ5 = math.sqrt(5.0)


# -- attention maps and the attention-transfer loss, by hand -------------------------------------------------

def test_attention_map_of_a_conv_map_by_hand():
    # one example, 2 channels over 2 positions: channel 0 = [1, 2], channel 1 = [3, 4]
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])           # (B=1, C=2, H=1, W=2)
    # mean over channels of a²: [(1+9)/2, (4+16)/2] = [5, 10]; L2-normalised: [1, 2]/√5
    assert torch.allclose(attention_map(a), torch.tensor([[1 / SQ5, 2 / SQ5]]))
    # the same for both settings: they differ only on 2-D activations
    assert torch.equal(attention_map(a, "channel_mean"), attention_map(a, "features"))


def test_attention_transfer_by_hand():
    a = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])           # map [1, 2]/√5
    s = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])           # map [1, 0]
    # mean over positions of ([1/√5 − 1]² + [2/√5]²) = (1 − 2/√5 + 1/5 + 4/5) / 2 = 1 − 1/√5
    assert attention_transfer(a, s).item() == pytest.approx(1 - 1 / SQ5, abs=1e-6)
    assert attention_transfer(a, a).item() == 0.0
    # scale-invariant (the maps are normalised)
    assert attention_transfer(3 * a, a).item() == pytest.approx(0.0, abs=1e-12)


def test_attention_of_a_vector_activation():
    a = torch.tensor([[1.0, 1.0], [0.0, 2.0]])                  # (B=2, D=2): e.g. an MLP's ReLU output
    # features: each unit is a position of one channel: normalize(a²)
    assert torch.allclose(attention_map(a, "features"), torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)],
                                                                      [0.0, 1.0]]))
    # the official formula averages over dim 1: one value per row, normalised to 1 -> AT is always 0
    assert torch.equal(attention_map(a, "channel_mean"), torch.ones(2, 1))
    assert attention_transfer(a, torch.rand(2, 2) + 0.1, "channel_mean").item() == 0.0
    # row 0 against [[0, 2]]: ((1/√2)² + (1/√2 − 1)²) / 2 = 1 − √2/2
    assert attention_transfer(a[:1], a[1:], "features").item() == pytest.approx(1 - math.sqrt(2) / 2, abs=1e-6)


# -- λ weighting and the mixed loss, by hand ------------------------------------------------------------------

class _Scale(torch.nn.Module):
    def __init__(self, y_std: float):
        super().__init__()
        self.register_buffer("y_std", torch.tensor(y_std))


def test_forget_fraction():
    assert forget_fraction(torch.tensor([True, False, False, False])).item() == 0.25
    assert forget_fraction(torch.tensor([False, False])).item() == 0.0
    assert forget_fraction(torch.tensor([True, True, True])).item() == 1.0


def test_mixed_loss_weights_by_the_forget_fraction():
    model = _Scale(2.0)                                  # regression loss: ((out - target) / 2)²
    out = torch.tensor([1.0, 3.0, 5.0, 7.0])
    out_s = torch.tensor([3.0, 0.0, 0.0, 0.0])           # the blindspot's outputs (only row 0 matters)
    y = torch.tensor([float("nan"), 3.0, 4.0, 7.0])      # the forget row's label is never read
    u = torch.tensor([True, False, False, False])        # λ = 1/4
    l_r = (0 + 0.25 + 0) / 3                             # retain rows: ((3-3)/2)², ((5-4)/2)², ((7-7)/2)²
    l_f = 1.0                                            # forget row: ((1-3)/2)²
    got = mixed_loss("regression", model, out, out_s, [], [], y, u, beta=50.0)
    assert got.item() == pytest.approx(0.25 * l_f + 0.75 * l_r)

    # with an attention term on one 2-D activation: β · AT = 2 · (1 − √2/2) on the forget row only
    acts = [torch.tensor([[1.0, 1.0], [9.0, 0.0], [9.0, 0.0], [9.0, 0.0]])]
    acts_s = [torch.tensor([[0.0, 2.0], [0.0, 9.0], [0.0, 9.0], [0.0, 9.0]])]
    got = mixed_loss("regression", model, out, out_s, acts, acts_s, y, u, beta=2.0)
    assert got.item() == pytest.approx(0.25 * (l_f + 2 * (1 - math.sqrt(2) / 2)) + 0.75 * l_r)
    # the official map on a 2-D activation contributes nothing
    got = mixed_loss("regression", model, out, out_s, acts, acts_s, y, u, beta=2.0, vector_attention="channel_mean")
    assert got.item() == pytest.approx(0.25 * l_f + 0.75 * l_r)
    # l1 base loss: |out - target| / 2
    got = mixed_loss("regression", model, out, out_s, [], [], y, u, beta=0.0, base_loss="l1")
    assert got.item() == pytest.approx(0.25 * 1.0 + 0.75 * (0 + 0.5 + 0) / 3)


def test_mixed_loss_batches_of_one_kind():
    model = _Scale(1.0)
    out, out_s, y = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    # no forget rows: λ = 0, the retain loss alone
    assert mixed_loss("regression", model, out, out_s, [], [], y, torch.tensor([False, False]),
                      beta=50.0).item() == pytest.approx((0 + 4) / 2)
    # only forget rows: λ = 1, output matching alone (labels unused)
    assert mixed_loss("regression", model, out, out_s, [], [], torch.full((2,), float("nan")),
                      torch.tensor([True, True]), beta=50.0).item() == pytest.approx((1 + 4) / 2)


def test_mixed_loss_for_classification():
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    out_s = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([-1, 1])                            # row 0 is a forget row; its label is never read
    u = torch.tensor([True, False])
    p_s, log_p = torch.tensor([0.5, 0.5]), torch.log_softmax(out[0], 0)
    kl = float((p_s * (p_s.log() - log_p)).sum())        # KL(blindspot ‖ model) on the forget row
    ce = float(torch.nn.functional.cross_entropy(out[1:], y[1:]))
    got = mixed_loss("classification", None, out, out_s, [], [], y, u, beta=50.0)
    assert got.item() == pytest.approx(0.5 * kl + 0.5 * ce, abs=1e-6)


# -- hooks on the body's hidden activations -------------------------------------------------------------------

def test_activation_modules_and_hooks():
    mlp = obliviate.get_task("friedman").make_model(0)
    mods = activation_modules(mlp)
    assert len(mods) == 2 and all(isinstance(m, torch.nn.ReLU) for m in mods)  # hidden (128, 64)
    rec = bs._Recorder(mods)
    mlp(torch.zeros(3, 10))
    assert [tuple(a.shape) for a in rec.take()] == [(3, 128), (3, 64)]
    rec.close()
    mlp(torch.zeros(3, 10))
    assert rec.take() == []                             # closed: hooks removed
    cnn = obliviate.get_task("digits", model="cnn").make_model(0)
    rec = bs._Recorder(activation_modules(cnn))
    cnn(torch.zeros(2, 64))
    assert [tuple(a.shape) for a in rec.take()] == [(2, 16, 8, 8), (2, 32, 8, 8), (2, 128)]
    rec.close()


# -- the blindspot model is trained on the retain rows only ----------------------------------------------------

def _context(task, forget_ids: np.ndarray, seed: int = 0, x_forget: np.ndarray | None = None) -> UnlearnContext:
    d = task.data
    retain_ids = np.setdiff1d(np.arange(task.n_train), forget_ids)
    model = task.make_model(seed)
    model.fit_normalizer(d.x_train, d.y_train)
    xf = d.x_train[forget_ids] if x_forget is None else x_forget
    return UnlearnContext(
        task=task, model=model, original=model, x_forget=torch.as_tensor(xf),
        y_forget=torch.as_tensor(d.y_train[forget_ids]), x_retain=torch.as_tensor(d.x_train[retain_ids]),
        y_retain=torch.as_tensor(d.y_train[retain_ids]), forget_ids=forget_ids, retain_ids=retain_ids,
        recipe=task.recipe({"epochs": 1}), seed=seed, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def friedman():
    return obliviate.get_task("friedman")


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.detach().cpu().numpy()}


def test_blindspot_model_never_sees_forget_rows(friedman, monkeypatch):
    forget_ids = np.flatnonzero(friedman.data.y_train <= 8)
    ctx = _context(friedman, forget_ids)
    seen: dict = {"inputs": []}
    real = bs.fit_blindspot

    def spy(model, x, y, kind, cfg, gen):
        seen["x"], seen["y"] = x.clone(), y.clone()
        seen["init"] = model.body.layers[0].weight.detach().clone()
        hook = model.register_forward_pre_hook(lambda m, inp: seen["inputs"].append(inp[0].detach().clone()))
        try:
            out = real(model, x, y, kind, cfg, gen)
        finally:
            hook.remove()
        seen["model"] = out
        return out

    monkeypatch.setattr(bs, "fit_blindspot", spy)
    method = Blindspot(BlindspotConfig(epochs=1, blindspot_epochs=2))
    method.unlearn(ctx)
    forget_rows, retain_rows = _rows(ctx.x_forget), _rows(ctx.x_retain)
    assert torch.equal(seen["x"], ctx.x_retain) and torch.equal(seen["y"], ctx.y_retain)
    fed = torch.cat(seen["inputs"])
    assert len(fed) == 2 * len(ctx.x_retain)           # two epochs over the retain set, nothing else
    assert _rows(fed) == retain_rows and not (_rows(fed) & forget_rows)
    blind = seen["model"]
    # its standardisation is the retain set's, it is frozen, and it is not the original's initialisation
    assert torch.allclose(blind.x_mean, ctx.x_retain.mean(0), atol=1e-5)
    assert not blind.training and not any(p.requires_grad for p in blind.parameters())
    assert not torch.equal(seen["init"], friedman.make_model(ctx.seed).body.layers[0].weight)


def test_blindspot_model_does_not_depend_on_the_forget_rows(friedman):
    forget_ids = np.flatnonzero(friedman.data.y_train <= 8)
    method = Blindspot(BlindspotConfig(blindspot_epochs=1))
    a = method.blindspot_model(_context(friedman, forget_ids))
    noise = np.random.default_rng(0).normal(size=(len(forget_ids), 10)).astype(np.float32)
    b = method.blindspot_model(_context(friedman, forget_ids, x_forget=noise))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


# -- no retain data, bad config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n_retain", [0, 3, 9])
def test_too_few_retain_rows_is_a_clear_error(friedman, n_retain):
    ctx = _context(friedman, np.arange(friedman.n_train - n_retain))
    with pytest.raises(ObliviateError, match=rf"blindspot needs retain data.* leaves {n_retain} retain row"):
        Blindspot().unlearn(ctx)
    ctx.x_retain = ctx.y_retain = None
    with pytest.raises(ObliviateError, match="leaves 0 retain row"):
        Blindspot().unlearn(ctx)


def test_check_request_needs_no_training():
    method = Blindspot()
    method.check_request("regression", 10)
    with pytest.raises(ObliviateError, match="leaves 9 retain row"):
        method.check_request("regression", 9)
    with pytest.raises(ObliviateError, match="min_retain=50"):
        Blindspot(BlindspotConfig(min_retain=50)).check_request("classification", 49)


def test_ten_retain_rows_are_enough(friedman):
    ctx = _context(friedman, np.arange(friedman.n_train - 10))
    out = Blindspot(BlindspotConfig(epochs=1, blindspot_epochs=1)).unlearn(ctx)
    assert torch.isfinite(out(ctx.x_forget[:5])).all()


def test_min_retain_through_the_api(cache_dir):
    with pytest.raises(ObliviateError, match="min_retain=100000"):
        obliviate.unlearn("friedman", "blindspot", "target<=8", train={"epochs": 10}, oracle=False,
                          executor="serial", min_retain=100000)


def test_l1_base_loss_is_for_regression_only():
    digits = obliviate.get_task("digits")
    ctx = _context(digits, np.flatnonzero(digits.data.y_train == 3))
    with pytest.raises(ObliviateError, match="base_loss=l1 applies to regression"):
        Blindspot(BlindspotConfig(base_loss="l1")).unlearn(ctx)


def test_registry_entry_and_official_defaults():
    cls = obliviate.get_method("blindspot")
    assert cls is Blindspot and cls.guarantee == "approximate"
    assert cls.needs == {"retain", "labels", "original"} and set(cls.kinds) == {"classification", "regression"}
    cfg = BlindspotConfig()
    # ayu987/deep-regression-unlearning: unlearn.py L66 (β 50), L87 (Adam); STS-B notebook In[33], In[36]
    assert (cfg.optimizer, cfg.lr, cfg.epochs, cfg.batch_size, cfg.beta) == ("adam", 1e-3, 5, 256, 50.0)
    assert (cfg.blindspot_lr, cfg.blindspot_epochs, cfg.blindspot_batch_size) == (0.01, 10, 256)
    assert cfg.weight_decay == 0.0 and cfg.vector_attention == "features" and cfg.min_retain == 10
    info = {f["name"]: f for f in cls.info()["config"]}
    assert {"beta", "blindspot_epochs", "blindspot_lr", "vector_attention", "min_retain"} <= set(info)


@pytest.mark.parametrize("values, key", [({"beta": -1}, "beta"), ({"blindspot_epochs": 0}, "blindspot_epochs"),
                                         ({"blindspot_lr": 0}, "blindspot_lr"), ({"min_retain": 0}, "min_retain"),
                                         ({"vector_attention": "rows"}, "vector_attention"),
                                         ({"base_loss": "huber"}, "base_loss")])
def test_config_validation(values, key):
    with pytest.raises(ConfigError, match=key):
        build_config(BlindspotConfig, values, prefix="blindspot.")
    assert build_config(BlindspotConfig, {"beta": "0", "epochs": "1"}).beta == 0.0


# -- the friedman cohort scenario (ayu987/deep-regression-unlearning, ``metrics.py``) ---------------------------

@pytest.fixture(scope="module")
def cohort():
    """friedman ``target<=8`` (about the 10th percentile of the training targets), train epochs 10, seed 0."""
    bench = obliviate.bench("friedman", ["finetune", "gaussian_finetune", "blindspot"], "target<=8", seeds=[0],
                            overrides={"train.epochs": 10}, executor="serial")
    return {r["method"]: r["metrics"] for r in bench["runs"]}


def test_cohort_blindspot_moves_forget_mae_toward_the_oracle(cohort):
    m = cohort["blindspot"]
    original, oracle = m["original"], m["oracle"]
    # the scenario is meaningful: the oracle extrapolates to the removed cohort clearly worse
    assert oracle["forget_mae"] > 1.3 * original["forget_mae"]

    def gap(name):
        return abs(cohort[name]["unlearned"]["forget_mae"] - oracle["forget_mae"])

    original_gap = abs(original["forget_mae"] - oracle["forget_mae"])
    # Measured (seed 0, train epochs 10): original 0.939, finetune 1.001, gaussian 6.47, blindspot 1.27,
    # oracle 1.397. Blindspot is closer to the oracle than the original, fine-tuning and Gaussian FT.
    assert gap("blindspot") < 0.5 * original_gap
    assert gap("blindspot") < gap("finetune") < original_gap
    assert gap("blindspot") < gap("gaussian_finetune")
    # and keeps the retain error within 10 % of the original's
    assert cohort["blindspot"]["unlearned"]["retain_mae"] <= 1.10 * original["retain_mae"]
