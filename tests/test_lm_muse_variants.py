"""MUSE's own losses (npo_muse, ga_klr_muse, npo_klr_muse), MUSE's WHP baseline (distilled) and the learning-rate
schedules of LMRun, on hand-computed numbers and the tiny authors task (forget = authors 0 and 1)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import obliviate
from obliviate.config import build_config
from obliviate.errors import ConfigError
from obliviate.lm import Encoded, collate, encode_all, mean_nll
from obliviate.methods._lm import NPO_REPO_RECIPE, LMOptimConfig, LMRun, lr_factor
from obliviate.methods.lm_gradient import muse_klr_loss, muse_npo_loss, muse_positions
from obliviate.methods.whp import generic_labels, generic_logits

from test_lm_methods import FAST, _context, _nll, _pairs

FORGET = (0, 1)


# -- learning-rate schedules -------------------------------------------------------------------------------------------

def test_lr_factor_is_the_trainer_schedule_by_hand():
    """10 steps, 2 of warm-up: the Trainer's lr multipliers (first step 0, then 1/2, then the decay)."""
    got = {kind: [lr_factor(s, 10, 2, kind) for s in range(10)] for kind in ("constant", "linear", "cosine")}
    assert got["constant"] == [0.0, 0.5] + [1.0] * 8
    assert got["linear"] == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    # ½(1 + cos(π·k/8)), k = 0..7
    assert got["cosine"] == pytest.approx([0.0, 0.5, 1.0, 0.9619398, 0.8535534, 0.6913417, 0.5, 0.3086583,
                                           0.1464466, 0.0380602], abs=1e-7)
    assert [lr_factor(s, 4, 0, "linear") for s in range(4)] == [1.0, 0.75, 0.5, 0.25]  # no warm-up: starts at 1
    assert lr_factor(12, 10, 2, "linear") == 0.0 and lr_factor(12, 10, 2, "cosine") == 0.0  # never negative


def _lr_sequence(tiny_lm, values: dict, epochs: int | None = None) -> tuple[list[float], LMRun]:
    cls = obliviate.get_method("gradient_ascent", "language")
    run = LMRun(_context(tiny_lm, cls), build_config(LMOptimConfig, values), retain=False)
    seen = []
    for batch in run.batches(epochs=epochs):
        seen.append(run.lr())
        run.step(lambda forget, _: 0.0 * mean_nll(run.model, forget), batch)
    run.finish()
    return seen, run


def test_lm_run_steps_the_schedule_once_per_optimiser_step(tiny_lm):
    # 16 forget sequences, batch 8: 2 steps per epoch
    seen, run = _lr_sequence(tiny_lm, {"lr": 0.1, "batch_size": 8, "epochs": 2, "lr_schedule": "linear",
                                       "warmup_steps": 1})
    assert seen == pytest.approx([0.0, 0.1, 0.1 * 2 / 3, 0.1 / 3])  # total 4: warm-up 0, then (4 − s)/3
    assert run.ctx.blocks["lm_run"]["lr_schedule"] == {"kind": "linear", "warmup_steps": 1, "total_steps": 4}
    # the NPO repository's recipe: one epoch (2 steps) of warm-up, then linear decay over the other 8
    seen, _ = _lr_sequence(tiny_lm, {"lr": 1.0, "batch_size": 8, "epochs": 5, **NPO_REPO_RECIPE})
    assert seen == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    # max_steps is the horizon when it caps the run; batches(epochs=...) re-plans it before the first step
    seen, _ = _lr_sequence(tiny_lm, {"lr": 1.0, "batch_size": 8, "epochs": 5, "max_steps": 3,
                                     "lr_schedule": "cosine"})
    assert seen == pytest.approx([1.0, 0.75, 0.25])
    seen, _ = _lr_sequence(tiny_lm, {"lr": 1.0, "batch_size": 8, "epochs": 5, "lr_schedule": "linear"}, epochs=1)
    assert seen == pytest.approx([1.0, 0.5])


def test_the_default_constant_lr_is_the_unscheduled_loop_bit_for_bit(tiny_lm):
    """No scheduler object at the defaults: gradient ascent through LMRun equals a plain AdamW loop exactly."""
    cls = obliviate.get_method("gradient_ascent", "language")
    cfg = build_config(cls.config_class, FAST)
    ctx = _context(tiny_lm, cls)
    run = LMRun(ctx, cfg, retain=False)
    assert run.scheduler is None
    steps = list(run.batches())
    for batch in steps:
        run.step(lambda forget, _: -mean_nll(run.model, forget), batch)
    ours = run.finish()
    assert "lr_schedule" not in ctx.blocks["lm_run"]

    model = _context(tiny_lm, cls).model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    for f_idx, _ in steps:
        batch = collate([run.forget[i] for i in f_idx], run.pad, "cpu")
        (-mean_nll(model, batch)).backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), model.state_dict().values()))


def test_task_vector_fine_tunes_with_muse_cosine_schedule():
    cfg = obliviate.get_method("task_vector", "language").config_class()
    assert (cfg.lr_schedule, cfg.warmup_steps, cfg.warmup_epochs) == ("cosine", 0, 0.0)
    base = LMOptimConfig()
    assert (base.lr_schedule, base.warmup_steps, base.warmup_epochs) == ("constant", 0, 0.0)
    whp = obliviate.get_method("whp", "language").config_class()
    assert (whp.alpha, whp.reinforce_lr, whp.reinforce_epochs, whp.reinforce_lr_schedule, whp.lr_schedule) == \
        (1.0, 1e-5, 10, "cosine", "constant")


@pytest.mark.parametrize("name,values", [
    ("gradient_ascent", {"lr_schedule": "step"}), ("gradient_ascent", {"warmup_steps": -1}),
    ("gradient_ascent", {"warmup_epochs": -0.5}), ("npo", {"warmup_steps": 2, "warmup_epochs": 1}),
    ("npo_muse", {"positions": "prompt"}), ("npo_muse", {"beta": 0}), ("npo_muse", {"retain_loss": "kl"}),
    ("ga_klr_muse", {"alpha": -1}), ("npo_klr_muse", {"gamma": -1}), ("whp", {"alpha": -1}),
    ("whp", {"reinforce_lr": 0}), ("whp", {"reinforce_epochs": 0}), ("whp", {"reinforce_lr_schedule": "step"}),
    ("task_vector", {"lr_schedule": "exp"})])
def test_bad_schedule_and_variant_values_are_config_errors(name, values):
    with pytest.raises(ConfigError):
        build_config(obliviate.get_method(name, "language").config_class, values)


# -- MUSE's losses on hand-computed numbers -------------------------------------------------------------------------------

def _muse_npo(logits, ref, beta):
    """MUSE iterative.py, restated: −logsigmoid(β·(ref_logits − logits)).mean() · 2/β over the whole tensor."""
    return -F.logsigmoid(beta * (ref - logits)).mean() * 2 / beta


def test_muse_npo_loss_by_hand_and_against_muse_expression():
    # one position, two vocabulary entries: ref − logits = (−1, +1), β = 1
    logits, ref = torch.tensor([[[1.0, -1.0]]]), torch.zeros(1, 1, 2)
    mask = torch.ones(1, 1, dtype=torch.bool)
    expected = 2 * (math.log(1 + math.e) + math.log(1 + math.exp(-1))) / 2
    assert float(muse_npo_loss(logits, ref, mask, 1.0)) == pytest.approx(expected)  # 1.62652
    assert float(muse_npo_loss(ref, ref, mask, 0.1)) == pytest.approx(2 / 0.1 * math.log(2))
    # unpadded equal-length blocks (MUSE's data): exactly MUSE's global mean
    g = torch.Generator().manual_seed(0)
    logits, ref = torch.randn(3, 4, 7, generator=g) * 3, torch.randn(3, 4, 7, generator=g) * 3
    full = torch.ones(3, 4, dtype=torch.bool)
    torch.testing.assert_close(muse_npo_loss(logits, ref, full, 0.1), _muse_npo(logits, ref, 0.1))
    # padded: each sequence averages its own rows, then the sequences are averaged; padding is ignored
    mask = torch.tensor([[True, True, True, True], [True, False, False, False], [True, True, False, False]])
    per_seq = [_muse_npo(logits[i, :n], ref[i, :n], 0.1) for i, n in enumerate((4, 1, 2))]
    torch.testing.assert_close(muse_npo_loss(logits, ref, mask, 0.1), sum(per_seq) / 3)
    junk = logits.clone()
    junk[~mask] = 1e4
    torch.testing.assert_close(muse_npo_loss(junk, ref, mask, 0.1), sum(per_seq) / 3)
    # lowering every logit uniformly lowers the loss (the softmax is unchanged: MUSE's NPO is not the NPO objective)
    assert float(muse_npo_loss(logits - 1.0, ref, full, 0.1)) < float(muse_npo_loss(logits, ref, full, 0.1))


def test_muse_klr_loss_by_hand_and_against_kl_div_on_raw_logits():
    # Σ exp(ref)·(ref − logits): ref = (0, ln 2), logits = 0 → 1·0 + 2·ln 2
    ref, logits = torch.tensor([[[0.0, math.log(2.0)]]]), torch.zeros(1, 1, 2)
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert float(muse_klr_loss(logits, ref, mask)) == pytest.approx(2 * math.log(2))
    g = torch.Generator().manual_seed(1)
    logits, ref = torch.randn(2, 3, 5, generator=g) * 2, torch.randn(2, 3, 5, generator=g) * 2
    full = torch.ones(2, 3, dtype=torch.bool)
    muse_value = F.kl_div(logits, ref, reduction="batchmean", log_target=True)  # MUSE iterative.py, klr
    torch.testing.assert_close(muse_klr_loss(logits, ref, full), muse_value)
    assert float(muse_klr_loss(ref, ref, full)) == 0.0
    # not a divergence: the same distributions (logits shifted by c) give −c·Σ exp(ref) / B
    torch.testing.assert_close(muse_klr_loss(ref + 0.5, ref, full), -0.5 * ref.exp().sum() / 2)
    # padded rows are left out, sums stay per sequence, the mean is over sequences
    mask = torch.tensor([[True, True, False], [True, False, False]])
    expected = (F.kl_div(logits[0, :2], ref[0, :2], reduction="sum", log_target=True)
                + F.kl_div(logits[1, :1], ref[1, :1], reduction="sum", log_target=True)) / 2
    torch.testing.assert_close(muse_klr_loss(logits, ref, mask), expected)


def test_muse_positions():
    items = [Encoded([5, 6, 7, 8], 2), Encoded([5, 9, 10], 1)]  # BOS + prompt, then completion
    batch = collate(items, 0, "cpu")
    assert muse_positions(batch, "all").tolist() == [[True] * 4, [True, True, True, False]]
    # rows predicting completion tokens: 7, 8 (rows 1, 2) and 9, 10 (rows 0, 1)
    assert muse_positions(batch, "completion").tolist() == [[False, True, True, False], [True, True, False, False]]


# -- WHP ---------------------------------------------------------------------------------------------------------------------

def test_generic_logits_by_hand():
    base, reinforced = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([3.0, 1.0, -1.0])
    # ReLU(reinforced − base) = (1, 0, 0): only the reinforced token is pushed down
    assert generic_logits(base, reinforced, 2.0).tolist() == [0.0, 1.0, 0.0]
    assert generic_logits(base, reinforced, 0.0).tolist() == base.tolist()


def test_generic_labels_are_the_shifted_argmax_on_completion_tokens(tiny_lm):
    task, _, original = tiny_lm
    tok = task.tokenizer()
    items = encode_all(tok, _pairs(task, [0]), 128)
    moved = copy.deepcopy(original)
    with torch.no_grad():  # a stand-in "reinforced" model: the final norm's gain up by half
        moved.transformer.ln_f.weight.mul_(1.5)
    labels = generic_labels(original, moved, items, tok.pad_token_id, 3.0, "cpu", 2)
    batch = collate(items, tok.pad_token_id, "cpu")
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        vb, vr = original(**inputs).logits, moved(**inputs).logits
    top = (vb - 3.0 * (vr - vb).clamp_min(0)).argmax(-1)
    changed = 0
    for i, e in enumerate(items):
        assert labels[i][:e.n_prompt].tolist() == [-100] * e.n_prompt
        assert labels[i][e.n_prompt:].tolist() == top[i, e.n_prompt - 1:len(e.ids) - 1].tolist()
        changed += int((labels[i][e.n_prompt:] != torch.tensor(e.ids[e.n_prompt:])).sum())
    assert changed > 0  # the combination does move some labels away from the text


def test_whp_reads_the_original_and_alpha_drives_the_forgetting(tiny_lm):
    original = tiny_lm[2]
    before = {k: v.clone() for k, v in original.state_dict().items()}
    cls = obliviate.get_method("whp", "language")
    settings = {**FAST, "reinforce_lr": 3e-3, "reinforce_epochs": 5}
    off = cls(build_config(cls.config_class, {**settings, "alpha": 0.0})).unlearn(_context(tiny_lm, cls))
    assert all(torch.equal(v, before[k]) for k, v in original.state_dict().items()) and not original.training
    # α = 0: the generic labels are the baseline's own predictions, so the forget authors stay known
    assert _nll(tiny_lm, off) < 0.1
