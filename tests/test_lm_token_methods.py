"""OpenUnlearning's token-level language methods — undial, ce_u, satimp, wga, pdu — and their shared losses
(obliviate.methods._token_losses): hand-computed loss values, what is detached, OU's flat token mean kept exact
across micro-batches, PDU's dual variable, and forgetting on the tiny authors task."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import obliviate
from lm_context import FORGET, language_context, sequence_pairs
from obliviate.config import build_config
from obliviate.errors import ConfigError
from obliviate.lm import collate, encode_all, score
from obliviate.methods._token_losses import (TokenMean, answer_mask, ceu_token_losses, dual_update,
                                             pdu_token_losses, satimp_token_losses, scored_tokens,
                                             undial_token_losses, wga_token_losses)

NAMES = ("undial", "ce_u", "satimp", "wga", "pdu")
FAST = {"lr": 3e-3, "epochs": 5, "batch_size": 8}
# satimp: its weight sg(p)^5·(1 − sg(p)) is ~0 on tokens the original predicts with p ≈ 0.99, and γ = 0.1, so at
# lr 3e-3 ten steps barely move it (forget NLL 0.008 -> 0.09); pdu: ε is required
SETTINGS = {"satimp": {**FAST, "lr": 1e-2}, "pdu": {**FAST, "retain_loss_eps": 0.05}}


_pairs, _context = sequence_pairs, language_context


def _unlearn(tiny_lm, name: str, **config):
    cls = obliviate.get_method(name, "language")
    ctx = _context(tiny_lm, cls)
    return cls(build_config(cls.config_class, config)).unlearn(ctx), ctx


def _nll(tiny_lm, model, which: str = "forget") -> float:
    task = tiny_lm[0]
    ids = FORGET if which == "forget" else np.setdiff1d(np.arange(task.n_train), FORGET)
    return float(score(model, task.tokenizer(), _pairs(task, ids), "cpu").nll_mean.mean())


# -- a hand-computed case: one sequence, 4 positions, vocabulary 4 ---------------------------------------------------
# labels: position 0 is the prompt; positions 1-3 hold answer tokens 2, 0, 3. Logits at t predict token t+1.
Z = [[1.0, 0.0, 2.0, -1.0], [0.5, 0.5, -0.5, 1.5], [-1.0, 2.0, 0.0, 1.0], [3.0, 1.0, 0.0, 0.0]]
LABELS = [-100, 2, 0, 3]


def _case():
    return torch.tensor([Z]), torch.tensor([LABELS])


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _answers():
    """(logit row, answer token) of each position that predicts an answer token."""
    return [(Z[t], LABELS[t + 1]) for t in range(3)]


def test_wga_and_satimp_losses_by_hand():
    p = [_softmax(z)[y] for z, y in _answers()]
    wga = [-(q ** 1.0) * -math.log(q) for q in p]
    torch.testing.assert_close(wga_token_losses(*_case(), beta=1.0), torch.tensor(wga))
    wga2 = sum(-(q ** 2.5) * -math.log(q) for q in p) / 3
    assert float(wga_token_losses(*_case(), beta=2.5).mean()) == pytest.approx(wga2, rel=1e-6)
    sat = [-(q ** 5) * (1 - q) * -math.log(q) for q in p]
    torch.testing.assert_close(satimp_token_losses(*_case(), beta1=5.0, beta2=1.0), torch.tensor(sat))
    assert float(wga_token_losses(*_case(), beta=0.0).mean()) == pytest.approx(sum(math.log(q) for q in p) / 3)


def test_ceu_loss_by_hand_skips_the_first_answer_token():
    def ce(z, y):
        q = _softmax([v if v_i != y else -math.inf for v_i, v in enumerate(z)])
        logp = [math.log(v) for v in _softmax(z)]
        return -sum(qi * li for qi, li in zip(q, logp))

    rows = _answers()
    torch.testing.assert_close(ceu_token_losses(*_case(), skip_first=1), torch.tensor([ce(*r) for r in rows[1:]]))
    torch.testing.assert_close(ceu_token_losses(*_case(), skip_first=0), torch.tensor([ce(*r) for r in rows]))
    assert ceu_token_losses(*_case(), skip_first=3).numel() == 0


def test_undial_loss_by_hand_lowers_the_answer_logit_of_the_teacher():
    teacher = [[0.0, 1.0, 3.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]]  # one row per answer position
    beta = 10.0
    expected = []
    for (z, y), zt in zip(_answers(), teacher):
        q = _softmax([v - beta * (i == y) for i, v in enumerate(zt)])
        expected.append(-sum(qi * math.log(pi) for qi, pi in zip(q, _softmax(z))))
    logits, labels = _case()
    torch.testing.assert_close(undial_token_losses(logits, torch.tensor(teacher), labels, beta), torch.tensor(expected))


def test_pdu_loss_by_hand_on_the_unshifted_answer_positions():
    # OU pdu.py masks with labels != -100 on the unshifted labels: positions 1, 2, 3
    expected = [(max(Z[t]) - sum(Z[t]) / 4) ** 2 for t in (1, 2, 3)]
    torch.testing.assert_close(pdu_token_losses(*_case()), torch.tensor(expected))
    uniform = torch.zeros(1, 4, 4) + 0.7
    assert float(pdu_token_losses(uniform, torch.tensor([LABELS])).abs().max()) == 0.0


def test_losses_are_one_flat_mean_over_the_batch_tokens():
    """Two sequences with 3 and 1 answer tokens: OU's mean is over the 4 tokens, not a mean of per-sequence means."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 4, generator=gen)
    labels = torch.tensor([LABELS, [-100, -100, -100, 1]])
    values = wga_token_losses(logits, labels, 1.0)
    assert values.numel() == 4
    mean = TokenMean(4, 2)
    piece = {"input_ids": torch.zeros(2, 4)}
    assert float(mean(values.sum(), piece)) == pytest.approx(float(values.mean()))
    assert float(values.mean()) != pytest.approx(float((values[:3].mean() + values[3]) / 2))
    # a one-sequence micro-batch's value, times its weight 1/2 in LMRun.step, is its share of the batch mean
    half = float(mean(values[:3].sum(), {"input_ids": torch.zeros(1, 4)})) * 0.5
    assert half == pytest.approx(float(values[:3].sum() / 4))


# -- what is detached ------------------------------------------------------------------------------------------------

def test_token_weights_are_detached():
    """The gradient flows through the NLL only: d(−w·nll)/dz = −w·(softmax − onehot)/N with w a constant."""
    logits, labels = _case()
    z = logits.clone().requires_grad_(True)
    wga_token_losses(z, labels, 2.0).mean().backward()
    probs = torch.softmax(logits[0, :3], -1)
    y = labels[0, 1:]
    onehot = torch.nn.functional.one_hot(y, 4).float()
    w = probs.gather(1, y[:, None]) ** 2.0
    torch.testing.assert_close(z.grad[0, :3], -w * (probs - onehot) / 3)
    assert float(z.grad[0, 3].abs().max()) == 0.0  # the last position predicts nothing
    # with the weight left in the graph the gradient would be (w + 2w·log p)·…: different
    attached = logits.clone().requires_grad_(True)
    lp = torch.log_softmax(attached[0, :3], -1).gather(1, y[:, None])
    (-(lp.exp() ** 2.0) * -lp).mean().backward()
    assert not torch.allclose(attached.grad[0, :3], z.grad[0, :3])

    z = logits.clone().requires_grad_(True)
    satimp_token_losses(z, labels, 5.0, 1.0).mean().backward()
    p = probs.gather(1, y[:, None])
    torch.testing.assert_close(z.grad[0, :3], -(p ** 5) * (1 - p) * (probs - onehot) / 3)


def test_ceu_target_is_detached_gradient_is_p_minus_q():
    logits, labels = _case()
    z = logits.clone().requires_grad_(True)
    ceu_token_losses(z, labels, skip_first=0).mean().backward()
    probs = torch.softmax(logits[0, :3], -1)
    y = labels[0, 1:]
    q = torch.softmax(logits[0, :3].scatter(1, y[:, None], float("-inf")), -1)
    torch.testing.assert_close(z.grad[0, :3], (probs - q) / 3)
    assert bool((z.grad[0, :3].gather(1, y[:, None]) > 0).all())  # descent lowers every answer logit


def test_undial_gradient_is_student_minus_adjusted_teacher():
    logits, labels = _case()
    teacher = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    z = logits.clone().requires_grad_(True)
    undial_token_losses(z, teacher, labels, 10.0).mean().backward()
    y = labels[0, 1:]
    q = torch.softmax(teacher.scatter_add(1, y[:, None], torch.full((3, 1), -10.0)), -1)
    torch.testing.assert_close(z.grad[0, :3], (torch.softmax(logits[0, :3], -1) - q) / 3)


# -- token counts and micro-batches ---------------------------------------------------------------------------------

def test_scored_tokens_match_the_collated_masks(tiny_lm):
    task = tiny_lm[0]
    tok = task.tokenizer()
    items = encode_all(tok, _pairs(task, FORGET), 128)
    idx = [0, 3, 5, 7]
    labels = collate([items[i] for i in idx], tok.pad_token_id, "cpu")["labels"]
    for skip in (0, 1, 3):
        assert scored_tokens(items, idx, skip) == int(answer_mask(labels, skip).sum())
    assert scored_tokens(items, idx, shifted=False) == int((labels != -100).sum())


@pytest.mark.parametrize("name", ["wga", "ce_u"])
def test_grad_accum_gives_the_full_batch_update(tiny_lm, name):
    """The flat token mean is exact across micro-batches (SGD, no clipping: the update is lr × the gradient)."""
    config = {"lr": 3e-3, "batch_size": 8, "max_steps": 1, "optimizer": "sgd", "max_grad_norm": 0.0}
    whole, _ = _unlearn(tiny_lm, name, **config)
    split, _ = _unlearn(tiny_lm, name, **config, grad_accum=3)
    original = tiny_lm[2].state_dict()
    for key, value in whole.state_dict().items():
        if value.is_floating_point() and not torch.equal(value, original[key]):
            torch.testing.assert_close(split.state_dict()[key] - original[key], value - original[key],
                                       rtol=1e-4, atol=1e-7)


# -- PDU's dual variable ---------------------------------------------------------------------------------------------

def test_dual_update_rule():
    assert dual_update(1.0, 0.8, 0.3, 2.0) == pytest.approx(2.0)   # constraint violated: α rises
    assert dual_update(1.0, 0.1, 0.3, 2.0) == pytest.approx(0.6)   # satisfied: α falls
    assert dual_update(0.1, 0.0, 0.3, 2.0) == 0.0                  # and never below 0


def test_pdu_dual_variable_follows_the_retain_constraint(tiny_lm):
    base = {**FAST, "epochs": 3, "dual_warmup_epochs": 0}
    _, ctx = _unlearn(tiny_lm, "pdu", **base, retain_loss_eps=0.0)  # any positive retain loss violates ε = 0
    trace = ctx.diagnostics["pdu_retain_preference"]
    assert len(trace) == 1 + 6 and trace[0] == 1.0
    assert all(b > a for a, b in zip(trace, trace[1:]))
    assert ctx.blocks["lm_run"]["retain_preference"] == trace[-1]
    _, ctx = _unlearn(tiny_lm, "pdu", **base, retain_loss_eps=100.0, dual_step_size=0.006)
    trace = ctx.diagnostics["pdu_retain_preference"]
    assert 0.0 < trace[1] < trace[0] and set(trace[2:]) == {0.0}  # satisfied: α decays and is clamped at 0
    # warm-up: α is held for the first epoch (2 steps); epoch mode: one update at each epoch's end
    _, ctx = _unlearn(tiny_lm, "pdu", **base | {"dual_warmup_epochs": 1}, retain_loss_eps=0.0)
    trace = ctx.diagnostics["pdu_retain_preference"]
    assert trace[:3] == [1.0] * 3 and trace[3] > 1.0
    _, ctx = _unlearn(tiny_lm, "pdu", **base, retain_loss_eps=0.0, dual_update_upon="epoch")
    trace = ctx.diagnostics["pdu_retain_preference"]
    assert trace[0] == trace[1] < trace[2] == trace[3] < trace[4] == trace[5] < trace[6]
    _, ctx = _unlearn(tiny_lm, "pdu", **base, retain_loss_eps=0.0, primal_dual=False)
    assert ctx.diagnostics["pdu_retain_preference"] == [1.0] * 7


# -- on the tiny authors model ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_each_method_raises_the_forget_nll(tiny_lm, name):
    original = tiny_lm[2]
    before = _nll(tiny_lm, original)
    model, _ = _unlearn(tiny_lm, name, **SETTINGS.get(name, FAST))
    assert type(model) is type(original) and not model.training
    after = _nll(tiny_lm, model)
    assert math.isfinite(after) and after > before + 0.4, f"{name}: forget NLL {before:.3f} -> {after:.3f}"


def test_undial_teacher_is_the_original(tiny_lm):
    """β = 0: the target is the teacher's own distribution, which at the start is the student's — the gradient
    p − q is 0, so the weights never move (a teacher other than the starting model would move them)."""
    config = {"lr": 3e-3, "epochs": 1, "batch_size": 8, "optimizer": "sgd", "beta": 0.0}
    model, ctx = _unlearn(tiny_lm, "undial", **config)
    original = tiny_lm[2].state_dict()
    assert max(float((v - original[k]).abs().max()) for k, v in model.state_dict().items()
               if v.is_floating_point()) < 1e-6
    assert ctx.blocks["lm_run"]["reference"] == "starting weights swapped in"
    moved, _ = _unlearn(tiny_lm, "undial", **config | {"beta": 10.0})
    assert _nll(tiny_lm, moved) > _nll(tiny_lm, tiny_lm[2])


@pytest.mark.parametrize("name", ["undial", "wga"])
def test_lora(tiny_lm, name):
    from peft import PeftModel

    model, ctx = _unlearn(tiny_lm, name, **SETTINGS.get(name, FAST) | {"lr": 1e-2, "lora_r": 4})
    assert not isinstance(model, PeftModel) and not [k for k in model.state_dict() if "lora_" in k]
    assert ctx.blocks["lm_run"]["lora_r"] == 4
    if name == "undial":
        assert ctx.blocks["lm_run"]["reference"] == "adapters disabled"
    assert _nll(tiny_lm, model) > _nll(tiny_lm, tiny_lm[2]) + 0.4


# -- configs ---------------------------------------------------------------------------------------------------------

def test_official_defaults():
    get = lambda name: obliviate.get_method(name, "language").config_class()  # noqa: E731
    u, c, s, w, p = (get(n) for n in NAMES)
    assert (u.beta, u.gamma, u.alpha, u.lr, u.epochs, u.batch_size) == (10.0, 1.0, 0.0, 1e-4, 10, 16)
    assert (c.ignore_first_n_answer_tokens, c.lr, c.epochs) == (1, 1e-5, 10)
    assert (s.beta1, s.beta2, s.gamma, s.alpha, s.lr, s.epochs) == (5.0, 1.0, 0.1, 1.0, 1e-5, 5)
    assert (w.beta, w.gamma, w.alpha, w.lr, w.epochs) == (1.0, 1.0, 1.0, 1e-5, 5)
    assert (p.retain_loss_eps, p.gamma, p.alpha, p.primal_dual, p.dual_step_size, p.dual_update_upon,
            p.dual_warmup_epochs) == (None, 1.0, 1.0, True, 1.0, "step", 5)
    for name in NAMES:
        cls = obliviate.get_method(name, "language")
        assert cls.kinds == ("language",) and cls.guarantee == "approximate" and cls.summary and cls.reference
        assert build_config(cls.config_class, {}) == get(name)


@pytest.mark.parametrize("name,values", [
    ("undial", {"beta": -1}), ("undial", {"retain_loss": "none"}), ("ce_u", {"ignore_first_n_answer_tokens": -1}),
    ("satimp", {"beta1": -1}), ("satimp", {"gamma": -0.1}), ("wga", {"beta": "x"}), ("wga", {"retain_loss": "l2"}),
    ("pdu", {"dual_update_upon": "batch"}), ("pdu", {"dual_step_size": -1}), ("pdu", {"retain_loss_eps": "nan"}),
    ("pdu", {"no_such_key": 1})])
def test_configs_reject_bad_values(name, values):
    with pytest.raises(ConfigError):
        build_config(obliviate.get_method(name, "language").config_class, values)


def test_pdu_without_eps_is_a_config_error(tiny_lm):
    cls = obliviate.get_method("pdu", "language")
    with pytest.raises(ConfigError, match="retain_loss_eps"):
        cls(build_config(cls.config_class, FAST)).unlearn(_context(tiny_lm, cls))
