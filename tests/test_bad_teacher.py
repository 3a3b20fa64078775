"""Bad Teacher (Chundawat et al., AAAI 2023, arXiv 2205.08096): the two-teacher KL loss, the seeded retain
subset, the incompetent teacher."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import obliviate
from obliviate.config import build_config
from obliviate.errors import ConfigError
from obliviate.methods.bad_teacher import (BadTeacher, BadTeacherConfig, bad_teacher_loss, incompetent_teacher,
                                           retain_subset)

TRAIN = {"epochs": 8}  # the recipe of tests/test_methods.py (shared session cache)


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_loss_on_hand_computed_tensors_in_both_reductions(temperature):
    student = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    good = [[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    bad = [[0.0, 0.0, 2.0], [1.0, -1.0, 0.0]]
    u = [1, 0]  # first row is a forget sample (bad teacher), second a retain sample (good teacher)
    total = 0.0
    for s, gd, bd, ui in zip(student, good, bad, u):
        p_t = _softmax([v / temperature for v in (bd if ui else gd)])
        q = _softmax([v / temperature for v in s])
        total += sum(p * (math.log(p) - math.log(qc)) for p, qc in zip(p_t, q))
    args = [torch.tensor(student), torch.tensor(good), torch.tensor(bad), torch.tensor(u)]
    assert float(bad_teacher_loss(*args, temperature, "batchmean")) == pytest.approx(total / 2, rel=1e-6)
    assert float(bad_teacher_loss(*args, temperature, "mean")) == pytest.approx(total / (2 * 3), rel=1e-6)


def test_mean_reduction_is_the_official_kl_div_default():
    g = torch.Generator().manual_seed(0)
    s, good, bad = (torch.randn(6, 4, generator=g) for _ in range(3))
    u = torch.tensor([1, 0, 0, 1, 0, 1])
    p_t = u[:, None] * F.softmax(bad, 1) + (1 - u[:, None]) * F.softmax(good, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about its own 'mean' default
        official = F.kl_div(F.log_softmax(s, 1), p_t)
    torch.testing.assert_close(bad_teacher_loss(s, good, bad, u, 1.0, "mean"), official)


def test_retain_subset_is_seeded_and_of_the_official_size():
    n = 1291
    a = retain_subset(n, 0.3, torch.Generator().manual_seed(5))
    b = retain_subset(n, 0.3, torch.Generator().manual_seed(5))
    c = retain_subset(n, 0.3, torch.Generator().manual_seed(6))
    assert len(a) == int(0.3 * n) == 387
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.tolist())) == len(a) and int(a.min()) >= 0 and int(a.max()) < n
    assert torch.equal(a, a.sort().values)
    assert len(retain_subset(n, 0.0, torch.Generator())) == 0 and len(retain_subset(n, 1.0, torch.Generator())) == n


def _context(seed=0):
    """An UnlearnContext for digits class:3 around the session's cached original."""
    import numpy as np

    from obliviate.methods.base import UnlearnContext

    result = obliviate.unlearn("digits", "bad_teacher", "class:3", train=TRAIN, oracle=False, executor="serial",
                               seed=seed)
    task = obliviate.get_task("digits")
    forget = np.flatnonzero(task.data.y_train == 3)
    retain = np.flatnonzero(task.data.y_train != 3)
    x = torch.as_tensor(task.data.x_train)
    ctx = UnlearnContext(task=task, model=result.original, original=result.original, x_forget=x[forget],
                         y_forget=None, x_retain=x[retain], y_retain=None, forget_ids=forget, retain_ids=retain,
                         recipe=task.recipe(TRAIN), seed=seed, device=torch.device("cpu"))
    return ctx, result


def test_incompetent_teacher_is_a_frozen_seeded_random_model():
    ctx, _ = _context()
    state = torch.get_rng_state()
    bad = incompetent_teacher(ctx)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG stream is untouched
    again = incompetent_teacher(ctx)
    assert not bad.training and all(not p.requires_grad for p in bad.parameters())
    orig = ctx.original.state_dict()
    for name, value in bad.state_dict().items():
        assert torch.equal(value, again.state_dict()[name])  # seeded
        if name in dict(bad.named_buffers()):
            assert torch.equal(value, orig[name])  # same input standardisation as the original
        else:
            assert not torch.equal(value, orig[name])  # fresh weights
    # it is incompetent: about chance on the forget set
    assert (bad(ctx.x_forget).argmax(1) == 3).float().mean() < 0.5
    # a different run seed gives a different teacher, not the original's initialisation
    fresh = obliviate.get_task("digits").make_model(0).state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in bad.state_dict().items() if k not in dict(bad.named_buffers()))


def test_method_needs_no_labels_and_forgets_with_more_steps():
    assert "labels" not in BadTeacher.needs and BadTeacher.needs == {"retain", "original"}
    result = obliviate.unlearn("digits", "bad_teacher", "class:3", train=TRAIN, oracle=False, executor="serial",
                               lr=1e-3, epochs=3)
    m = result.report["metrics"]
    assert m["original"]["forget_acc"] > 0.95
    assert m["unlearned"]["forget_acc"] < 0.3 and m["unlearned"]["retain_acc"] > 0.95


def _update(result) -> torch.Tensor:
    return torch.cat([(p - q).detach().flatten() for p, q in zip(result.model.parameters(),
                                                                  result.original.parameters())])


def test_reductions_give_nearly_the_same_student_under_adam():
    """Adam is invariant to a constant loss scale up to ε: 'mean' (÷C) and 'batchmean' move the student alike;
    under SGD 'mean' takes a C = 10 times smaller step."""
    kw = dict(train=TRAIN, oracle=False, executor="serial", lr=1e-3)
    a = _update(obliviate.unlearn("digits", "bad_teacher", "class:3", reduction="mean", **kw))
    b = _update(obliviate.unlearn("digits", "bad_teacher", "class:3", reduction="batchmean", **kw))
    assert float((a - b).norm()) < 0.01 * float(a.norm())
    c = _update(obliviate.unlearn("digits", "bad_teacher", "class:3", reduction="mean", optimizer="sgd", **kw))
    d = _update(obliviate.unlearn("digits", "bad_teacher", "class:3", reduction="batchmean", optimizer="sgd", **kw))
    assert float(d.norm()) / float(c.norm()) == pytest.approx(10, rel=0.1)


def test_config_defaults_and_validation():
    cfg = build_config(BadTeacherConfig, {}, prefix="bad_teacher.")
    assert (cfg.optimizer, cfg.lr, cfg.epochs, cfg.batch_size, cfg.temperature, cfg.retain_fraction,
            cfg.reduction, cfg.weight_decay) == ("adam", 1e-4, 1, 256, 1.0, 0.3, "mean", 0.0)
    assert obliviate.get_method("bad_teacher") is BadTeacher and BadTeacher.kinds == ("classification",)
    with pytest.raises(ConfigError, match="retain_fraction"):
        build_config(BadTeacherConfig, {"retain_fraction": "1.5"}, prefix="bad_teacher.")
    with pytest.raises(ConfigError, match="reduction"):
        build_config(BadTeacherConfig, {"reduction": "sum"}, prefix="bad_teacher.")
    with pytest.raises(ConfigError, match="temperature"):
        build_config(BadTeacherConfig, {"temperature": "0"}, prefix="bad_teacher.")
