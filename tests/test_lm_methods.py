"""Language-model unlearning methods (gradient ascent, GradDiff, NPO, SimNPO, MUSE presets, RMU, task vector) on the
tiny authors task: the original memorises 12 authors; the forget set is every sequence of 2 of them.

The methods run directly on an UnlearnContext built by tests/lm_context.py (the pipeline's wiring is tested elsewhere), with
learning rates far above the LLM defaults (1e-5 barely moves a 2-layer model in a few steps).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import obliviate
from lm_context import FORGET, language_context, sequence_pairs
from obliviate.config import build_config
from obliviate.errors import ConfigError
from obliviate.lm import collate, encode_all, score, sequence_nll
from obliviate.methods._lm import LMOptimConfig, LMRun, kl_to_reference
from obliviate.methods.lm_gradient import npo_loss, simnpo_loss

LANGUAGE = [m for m in obliviate.list_methods() if "language" in m.kinds and m.guarantee == "approximate"]
OURS = {"gradient_ascent", "grad_diff", "npo", "simnpo", "rmu", "task_vector", "ga_gdr", "ga_klr", "npo_gdr", "npo_klr",
        "npo_muse", "ga_klr_muse", "npo_klr_muse", "whp"}

# 5 epochs of 2 steps (16 forget sequences, batch 8) at lr 3e-3: every method clearly forgets in < 1 s, and plain
# GA / NPO have already wrecked the retain authors (retain NLL ~0.01 -> >10) while the GDR/KLR variants have not.
FAST = {"lr": 3e-3, "epochs": 5, "batch_size": 8}
# RMU: α = 100 pins the retain activations so hard that one trainable c_proj cannot separate the (same-template)
# forget biographies from the retain ones in 40 steps; α = 1 does.
SETTINGS = {"rmu": {"lr": 5e-3, "alpha": 1.0, "max_num_batches": 40},
            # satimp: weight sg(p)^5·(1−sg(p)) ≈ 0 on tokens the original predicts at p ≈ 0.99, and γ = 0.1:
            # lr 3e-3 moves its forget NLL by 0.08; pdu: retain_loss_eps is required (no default)
            "satimp": {**FAST, "lr": 1e-2}, "pdu": {**FAST, "retain_loss_eps": 0.05},
            # MUSE's KLR sums exp(raw retain logits) (~7e6 per position here): at α = 1 it alone sets the clipped
            # update and the forget NLL only reaches 0.17; α = 1e-7 puts both terms on one scale. whp: MUSE's
            # reinforcement (lr 1e-5) barely moves a model that memorised the forget set, and at α = 1 only 5 of
            # 208 generic labels differ from the text; α = 10 changes 144
            "ga_klr_muse": {**FAST, "alpha": 1e-7}, "npo_klr_muse": {**FAST, "alpha": 1e-7},
            "whp": {**FAST, "reinforce_lr": 3e-3, "reinforce_epochs": 5, "alpha": 10.0}}


def _settings(name: str, **extra) -> dict:
    return {**SETTINGS.get(name, FAST), **extra}


_pairs, _context = sequence_pairs, language_context


_RUNS: dict = {}


def _run(tiny_lm, name: str, seed: int = 0, **config):
    """Unlearn with ``name``'s language implementation (cached per arguments)."""
    key = (name, seed, tuple(sorted(config.items())))
    if key not in _RUNS:
        cls = obliviate.get_method(name, "language")
        _RUNS[key] = cls(build_config(cls.config_class, config)).unlearn(_context(tiny_lm, cls, seed))
    return _RUNS[key]


def _nll(tiny_lm, model, which: str = "forget") -> float:
    task = tiny_lm[0]
    ids = FORGET if which == "forget" else np.setdiff1d(np.arange(task.n_train), FORGET)
    return float(score(model, task.tokenizer(), _pairs(task, ids), "cpu").nll_mean.mean())


def _changed(a: torch.nn.Module, b: torch.nn.Module) -> set[str]:
    sb = b.state_dict()
    return {k for k, v in a.state_dict().items() if not torch.equal(v, sb[k])}


# -- the registry -------------------------------------------------------------------------------------------------

def test_language_methods_are_registered_beside_the_classifier_ones():
    names = {m.name for m in LANGUAGE}
    assert OURS <= names
    for cls in LANGUAGE:
        assert obliviate.get_method(cls.name, "language") is cls
        assert cls.kinds == ("language",) and cls.guarantee == "approximate" and cls.summary
    for name in ("gradient_ascent", "grad_diff", "npo"):
        classic = obliviate.get_method(name, "classification")
        assert classic is not obliviate.get_method(name, "language")
        assert obliviate.get_method(name) is classic  # no kind: the classifier's, as before
    with pytest.raises(obliviate.ObliviateError, match="does not apply"):
        obliviate.get_method("rmu", "classification")


def test_needs_and_official_defaults():
    get = lambda name: obliviate.get_method(name, "language")  # noqa: E731
    assert get("gradient_ascent").needs == frozenset() and get("task_vector").needs == frozenset()
    assert get("grad_diff").needs == get("ga_gdr").needs == get("simnpo").needs == frozenset({"retain"})
    for name in ("npo", "npo_gdr", "npo_klr", "ga_klr", "rmu", "npo_muse", "npo_klr_muse", "ga_klr_muse"):
        assert get(name).needs == frozenset({"original", "retain"}), name
    assert get("whp").needs == frozenset({"original"})
    base = LMOptimConfig()
    assert (base.lr, base.epochs, base.batch_size, base.optimizer, base.weight_decay, base.lora_r) == \
        (1e-5, 10, 32, "adamw", 0.0, 0)
    cfg = {name: get(name).config_class() for name in OURS}
    assert [cfg[n].retain_loss for n in ("grad_diff", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo")] == \
        ["nll", "nll", "kl", "none", "nll", "kl", "nll"]
    assert (cfg["npo"].beta, cfg["npo"].gamma, cfg["npo"].alpha) == (0.1, 1.0, 1.0)
    assert (cfg["simnpo"].delta, cfg["simnpo"].beta, cfg["simnpo"].gamma, cfg["simnpo"].alpha) == (0.0, 4.5, 0.125, 1.0)
    r = cfg["rmu"]
    assert (r.steering_coeff, r.alpha, r.lr, r.batch_size, r.max_num_batches, r.layer) == (20.0, 100.0, 5e-5, 4, 80, None)
    assert cfg["task_vector"].alpha == 5.0 and cfg["task_vector"].lr == 1e-5 and cfg["task_vector"].epochs == 10
    assert [(cfg[n].retain_loss, cfg[n].beta, cfg[n].positions) for n in ("npo_muse", "npo_klr_muse")] == \
        [("none", 0.1, "all"), ("klr", 0.1, "all")]
    assert (cfg["ga_klr_muse"].gamma, cfg["ga_klr_muse"].alpha, cfg["whp"].alpha) == (1.0, 1.0, 1.0)
    assert cfg["task_vector"].lr_schedule == "cosine" and base.lr_schedule == "constant"
    for name in OURS:  # every field documented, defaults pass their own checks
        assert build_config(get(name).config_class, {}) == cfg[name]


@pytest.mark.parametrize("name,values", [
    ("npo", {"retain_loss": "xx"}), ("npo", {"beta": 0}), ("npo", {"beta": -1}), ("grad_diff", {"retain_loss": "none"}),
    ("simnpo", {"beta": 0}), ("gradient_ascent", {"lr": 0}), ("gradient_ascent", {"optimizer": "lion"}),
    ("gradient_ascent", {"lora_r": -1}), ("rmu", {"steering_coeff": 0}), ("rmu", {"layer": -1}),
    ("task_vector", {"alpha": -1}), ("npo", {"no_such_key": 1})])
def test_configs_reject_bad_values(name, values):
    with pytest.raises(ConfigError):
        build_config(obliviate.get_method(name, "language").config_class, values)


@pytest.mark.parametrize("values,match", [({"layer": 2}, "blocks"), ({"params": "nothing"}, "matches no"),
                                          ({"params": "(("}, "regular expression")])
def test_rmu_rejects_a_layer_or_pattern_the_model_lacks(tiny_lm, values, match):
    cls = obliviate.get_method("rmu", "language")
    with pytest.raises(ConfigError, match=match):
        cls(build_config(cls.config_class, values)).unlearn(_context(tiny_lm, cls))


# -- every method forgets -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", LANGUAGE, ids=lambda c: c.name)
def test_every_language_method_raises_the_forget_nll(tiny_lm, cls):
    original = tiny_lm[2]
    before = _nll(tiny_lm, original)
    assert before < 0.05  # the original memorised the forget authors
    model = _run(tiny_lm, cls.name, **_settings(cls.name))
    assert type(model) is type(original) and not model.training
    after = _nll(tiny_lm, model)
    assert math.isfinite(after) and after > before + 0.4, f"{cls.name}: forget NLL {before:.3f} -> {after:.3f}"
    assert _changed(model, original)


@pytest.mark.parametrize("name", ["npo_klr", "rmu"])
def test_the_original_is_read_not_changed(tiny_lm, name):
    """NPO and RMU read ``ctx.original`` directly (no copy): it must come out bit-identical and in eval mode."""
    original = tiny_lm[2]
    before = {k: v.clone() for k, v in original.state_dict().items()}
    cls = obliviate.get_method(name, "language")
    cls(build_config(cls.config_class, _settings(name, max_num_batches=3) if name == "rmu" else
                     _settings(name, epochs=1))).unlearn(_context(tiny_lm, cls))
    assert all(torch.equal(v, before[k]) for k, v in original.state_dict().items())
    assert not original.training


@pytest.mark.parametrize("variant,plain", [("ga_gdr", "gradient_ascent"), ("ga_klr", "gradient_ascent"),
                                           ("grad_diff", "gradient_ascent"), ("npo_gdr", "npo"), ("npo_klr", "npo")])
def test_retain_terms_keep_the_retain_authors(tiny_lm, variant, plain):
    plain_retain = _nll(tiny_lm, _run(tiny_lm, plain, **FAST), "retain")
    variant_retain = _nll(tiny_lm, _run(tiny_lm, variant, **FAST), "retain")
    assert plain_retain > 5.0  # at these settings the plain method destroys the retain authors too
    assert variant_retain < 0.5 * plain_retain, f"{variant} retain NLL {variant_retain:.2f} vs {plain} {plain_retain:.2f}"


def test_the_retain_loss_setting_is_what_the_presets_change(tiny_lm):
    """ga_klr is grad_diff with retain_loss=kl, npo_gdr is npo with retain_loss=nll: identical weights."""
    assert not _changed(_run(tiny_lm, "ga_klr", **FAST), _run(tiny_lm, "grad_diff", **FAST, retain_loss="kl"))
    assert not _changed(_run(tiny_lm, "npo_gdr", **FAST), _run(tiny_lm, "npo", **FAST, retain_loss="nll"))
    assert _changed(_run(tiny_lm, "npo_gdr", **FAST), _run(tiny_lm, "npo", **FAST))


# -- losses on hand-computed numbers ---------------------------------------------------------------------------------

def test_npo_loss_values_and_sign():
    beta = 0.1
    same = torch.tensor([3.0, 40.0])
    assert float(npo_loss(same, same, beta)) == pytest.approx((2 / beta) * math.log(2))
    nll, ref = torch.tensor([15.0, 5.0]), torch.tensor([5.0, 15.0])  # Δ = +10, −10
    expected = -(2 / beta) * (math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert float(npo_loss(nll, ref, beta)) == pytest.approx(expected)
    # it falls as the forget NLL rises above the reference's (a flipped sign would re-learn)
    losses = [float(npo_loss(torch.tensor([r + d]), torch.tensor([r]), beta)) for r, d in [(5, -5), (5, 0), (5, 5)]]
    assert losses[0] > losses[1] > losses[2] > 0


def test_npo_weight_shrinks_as_the_forget_nll_grows():
    """dL/dNLL_i = −(2/n)·σ(−βΔ_i): GA's gradient reweighted by 2σ(−βΔ) ∈ (0, 2), shrinking as Δ grows."""
    beta = 0.1
    delta = torch.tensor([-10.0, 0.0, 10.0, 40.0])
    nll = (5.0 + delta).requires_grad_(True)
    npo_loss(nll, torch.full((4,), 5.0), beta).backward()
    expected = -(2 / 4) * torch.sigmoid(-beta * delta)
    torch.testing.assert_close(nll.grad, expected)
    weights = -nll.grad * 4
    assert float(weights[1]) == pytest.approx(1.0)  # at Δ = 0 NPO is exactly gradient ascent on the sum
    assert bool((weights[1:] < weights[:-1]).all()) and float(weights[-1]) < 0.04


def test_npo_gradient_on_the_model_shrinks_once_forgotten(tiny_lm):
    """On the model: the NPO gradient norm at the original equals GA's on summed NLL (Δ = 0, weight 1), and is
    far smaller at a model whose forget NLL is already high (relative to GA's gradient there)."""
    task, _, original = tiny_lm
    tok = task.tokenizer()
    batch = collate(encode_all(tok, _pairs(task, FORGET), 128), tok.pad_token_id, "cpu")

    def grad_norms(model):
        with torch.no_grad():
            ref, _ = sequence_nll(original, batch)
        out = []
        for loss_fn in (lambda nll: npo_loss(nll, ref, 0.1), lambda nll: -nll.mean()):
            model.zero_grad()
            loss_fn(sequence_nll(model, batch)[0]).backward()
            out.append(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None)))
        return float(out[0]), float(out[1])

    start = copy.deepcopy(original).train()
    npo0, ga0 = grad_norms(start)
    assert npo0 == pytest.approx(ga0, rel=1e-4)
    forgotten = copy.deepcopy(_run(tiny_lm, "gradient_ascent", **FAST)).train()
    npo1, ga1 = grad_norms(forgotten)
    assert npo1 < 0.2 * ga1


def test_simnpo_loss_values():
    beta, delta = 4.5, 0.5
    nll_sum, n = torch.tensor([6.0, 2.0, 0.0]), torch.tensor([3, 1, 0])  # per-token 2, 2, and an empty completion
    a = [2.0 - delta, 2.0 - delta, 0.0 - delta]
    expected = -(2 / beta) * sum(math.log(1 / (1 + math.exp(-beta * x))) for x in a) / 3
    assert float(simnpo_loss(nll_sum, n, beta, delta)) == pytest.approx(expected)
    # length-normalised: the same per-token NLL over a longer completion gives the same loss
    assert float(simnpo_loss(torch.tensor([20.0]), torch.tensor([10]), beta, 0.0)) == \
        pytest.approx(float(simnpo_loss(torch.tensor([2.0]), torch.tensor([1]), beta, 0.0)))


def test_kl_retain_term_is_a_true_kl_on_completion_tokens(tiny_lm):
    task, _, original = tiny_lm
    tok = task.tokenizer()
    batch = collate(encode_all(tok, _pairs(task, [5, 6]), 128), tok.pad_token_id, "cpu")
    moved = _run(tiny_lm, "gradient_ascent", **FAST)
    cls = obliviate.get_method("ga_klr", "language")
    run = LMRun(_context(tiny_lm, cls), build_config(LMOptimConfig, {}), reference="model")
    assert run.ref_kind == "starting weights swapped in"
    with torch.no_grad():
        assert float(kl_to_reference(run, batch)) == 0.0
        run.model.load_state_dict(moved.state_dict())  # the trained weights move; the reference stays the original
        kl = float(kl_to_reference(run, batch))
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        p = F.softmax(original(**inputs).logits[:, :-1].double(), -1)
        q = F.softmax(moved(**inputs).logits[:, :-1].double(), -1)
    mask = batch["labels"][:, 1:] != -100
    per_token = (p * (p.log() - q.log())).sum(-1)
    per_sequence = (per_token * mask).sum(1) / mask.sum(1)  # each sequence's completion tokens, then sequences
    assert kl > 0.1 and kl == pytest.approx(float(per_sequence.mean()), rel=1e-4)
    assert kl != pytest.approx(float(per_token[mask].mean()), rel=1e-3)
    assert kl != pytest.approx(float(per_token[batch["attention_mask"][:, 1:].bool()].mean()), rel=1e-3)


def test_batches_anchor_on_forget_with_same_size_retain_partners(tiny_lm):
    cls = obliviate.get_method("grad_diff", "language")
    ctx = _context(tiny_lm, cls)
    cfg = build_config(LMOptimConfig, {"batch_size": 5, "epochs": 2})
    run = LMRun(ctx, cfg)
    steps = list(run.batches())
    assert [len(f) for f, _ in steps] == [5, 5, 5, 1] * 2
    assert all(len(r) == len(f) for f, r in steps)
    tok = ctx.tokenizer
    expected = sorted(tuple(e.ids) for e in encode_all(tok, ctx.forget_pairs, 128))
    for epoch in (steps[:4], steps[4:]):  # every forget sequence exactly once per epoch
        seen = sorted(tuple(run.forget[i].ids) for f, _ in epoch for i in f)
        assert seen == expected
    capped = build_config(LMOptimConfig, {"batch_size": 5, "epochs": 2, "max_steps": 3})
    assert len(list(LMRun(_context(tiny_lm, cls), capped).batches())) == 3


# -- task vector ---------------------------------------------------------------------------------------------------

def test_task_vector_is_the_negated_fine_tuning_delta(tiny_lm):
    from obliviate.methods.task_vector import fine_tune

    cls = obliviate.get_method("task_vector", "language")
    cfg = build_config(cls.config_class, {"epochs": 1, "lr": 1e-3, "batch_size": 8, "alpha": 5.0})
    original = tiny_lm[2]
    unlearned = cls(cfg).unlearn(_context(tiny_lm, cls))
    tuned = fine_tune(_context(tiny_lm, cls), cfg)  # θ_ft again, same seed
    theta_o, theta_ft = dict(original.named_parameters()), dict(tuned.named_parameters())
    changed = 0
    for name, p in unlearned.named_parameters():
        expected = theta_o[name].detach() - 5.0 * (theta_ft[name].detach() - theta_o[name].detach())
        assert torch.equal(p.detach(), expected), name
        changed += not torch.equal(theta_ft[name], theta_o[name])
    assert changed == len(theta_o)  # every parameter moved, embeddings included
    assert "transformer.wte.weight" in theta_o


# -- RMU ---------------------------------------------------------------------------------------------------------------

def test_rmu_trains_only_the_selected_weights_and_steers_forget_activations(tiny_lm):
    from obliviate.methods.rmu import block_output, masked_mse

    task, _, original = tiny_lm
    cls = obliviate.get_method("rmu", "language")
    cfg = build_config(cls.config_class, _settings("rmu"))
    model = cls(cfg).unlearn(_context(tiny_lm, cls))
    # 2 blocks: layer round(7·2/32) = 0, trainable = block 0's MLP output projection
    assert _changed(model, original) == {"transformer.h.0.mlp.c_proj.weight"}

    u = torch.rand(1, 1, original.config.hidden_size, generator=_context(tiny_lm, cls).generator())
    control = u / u.norm() * cfg.steering_coeff
    tok = task.tokenizer()
    forget = collate(encode_all(tok, _pairs(task, FORGET), 128), tok.pad_token_id, "cpu")
    retain = collate(encode_all(tok, _pairs(task, [4, 5, 6]), 128), tok.pad_token_id, "cpu")
    with torch.no_grad():
        h0 = block_output(original, original.transformer.h[0], forget)
        h1 = block_output(model, model.transformer.h[0], forget)
        r0 = block_output(original, original.transformer.h[0], retain)
        r1 = block_output(model, model.transformer.h[0], retain)
    mask = forget["attention_mask"]
    before, after = float(masked_mse(h0, control, mask)), float(masked_mse(h1, control, mask))
    assert after < 0.7 * before, (before, after)
    other = torch.rand(1, 1, original.config.hidden_size, generator=torch.Generator().manual_seed(12345))
    other = other / other.norm() * cfg.steering_coeff  # toward u itself, not merely "somewhere positive"
    assert float(masked_mse(h1, control, mask)) < float(masked_mse(h1, other, mask))
    # the retain term holds the retain activations: far less drift than without it (α = 0)
    free = _run(tiny_lm, "rmu", **_settings("rmu", alpha=0.0))
    with torch.no_grad():
        r_free = block_output(free, free.transformer.h[0], retain)
    drift, drift_free = (float(masked_mse(r, r0, retain["attention_mask"])) for r in (r1, r_free))
    assert drift < 0.5 * drift_free, (drift, drift_free)
    # and the forget authors lose far more likelihood than the retain ones
    rise = lambda which: _nll(tiny_lm, model, which) - _nll(tiny_lm, original, which)  # noqa: E731
    assert rise("forget") > 5 * rise("retain")


def test_rmu_params_regex_and_layer_are_honoured(tiny_lm):
    original = tiny_lm[2]
    model = _run(tiny_lm, "rmu", **_settings("rmu", layer=1, params=r"transformer\.h\.1\.mlp\.c_fc\.(weight|bias)"))
    assert _changed(model, original) == {"transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.bias"}


# -- LoRA ----------------------------------------------------------------------------------------------------------

# task_vector: its fine-tune decays the lr (MUSE cosine), so lr 2e-2 where a constant 1e-2 was enough
LORA = {"gradient_ascent": {"lr": 1e-2}, "npo": {"lr": 1e-2}, "task_vector": {"lr": 2e-2, "epochs": 2},
        "rmu": {"lr": 3e-2, "max_num_batches": 80, "steering_coeff": 40.0}}


@pytest.mark.parametrize("name", sorted(LORA))
def test_lora_adapters_are_merged_into_a_plain_model(tiny_lm, name):
    from peft import PeftModel

    original = tiny_lm[2]
    model = _run(tiny_lm, name, **_settings(name, lora_r=4, **LORA[name]))
    assert type(model) is type(original) and not isinstance(model, PeftModel)
    state = model.state_dict()
    assert list(state) == list(original.state_dict()) and not [k for k in state if "lora_" in k]
    changed = _changed(model, original)
    if name == "rmu":  # LoRA only on the modules the parameter regex selects
        assert changed == {"transformer.h.0.mlp.c_proj.weight"}
    else:  # auto targets for GPT-2: c_attn, c_proj (attention and MLP), c_fc of every block
        assert {k.split(".", 3)[3] for k in changed} == {"attn.c_attn.weight", "attn.c_proj.weight",
                                                          "mlp.c_fc.weight", "mlp.c_proj.weight"}
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    assert _nll(tiny_lm, model) > _nll(tiny_lm, original) + 0.4


# -- determinism ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,extra", [("npo_klr", {}), ("simnpo", {}), ("rmu", {}), ("gradient_ascent", {"lora_r": 4})],
                         ids=["npo_klr", "simnpo", "rmu", "ga-lora"])
def test_same_seed_same_weights(tiny_lm, name, extra):
    config = _settings(name, **extra, **({"max_num_batches": 10} if name == "rmu" else {"epochs": 2}))
    first = _run(tiny_lm, name, **config)
    cls = obliviate.get_method(name, "language")
    with torch.random.fork_rng(devices=[]):  # a different global RNG state must not matter: only ctx.generator
        torch.manual_seed(987)
        again = cls(build_config(cls.config_class, config)).unlearn(_context(tiny_lm, cls))
    assert not _changed(first, again)
    other_seed = cls(build_config(cls.config_class, config)).unlearn(_context(tiny_lm, cls, seed=1))
    assert _changed(first, other_seed)  # the seed does drive the shuffling / control vector / LoRA init
