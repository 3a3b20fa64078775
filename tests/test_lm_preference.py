"""Preference-optimisation unlearning of causal LMs (dpo, idk_dpo, altpo) on the tiny authors task: the DPO loss on
hand-computed numbers, where the alternate ("win") answers come from, and that training moves likelihood from the
forget answers to the alternates."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import obliviate
from lm_context import FORGET, language_context, sequence_pairs
from obliviate.config import build_config
from obliviate.errors import ConfigError
from obliviate.lm import collate, encode_all, score, sequence_nll
from obliviate.methods import _preference as P
from obliviate.methods import altpo
from obliviate.methods._lm import LMRun
from obliviate.methods.dpo import refusal_rows
from obliviate.methods.npo import npo_loss

FAST = {"lr": 3e-3, "epochs": 5, "batch_size": 8}
NAMES = ("dpo", "idk_dpo", "altpo")


_pairs, _context = sequence_pairs, language_context


def _method(name):
    return obliviate.get_method(name, "language")


_RUNS: dict = {}


def _run(tiny_lm, name: str, seed: int = 0, **config):
    """(unlearned model, its context) for ``name`` (cached per arguments)."""
    key = (name, seed, tuple(sorted(config.items())))
    if key not in _RUNS:
        cls = _method(name)
        ctx = _context(tiny_lm, cls, seed)
        _RUNS[key] = cls(build_config(cls.config_class, config)).unlearn(ctx), ctx
    return _RUNS[key]


def _nll(tiny_lm, model, pairs) -> float:
    return float(score(model, tiny_lm[0].tokenizer(), pairs, "cpu").nll_mean.mean())


def _qa(tiny_lm, ids=FORGET):
    return [(p, c) for p, c in _pairs(tiny_lm[0], ids) if p]


def _changed(a, b) -> set[str]:
    sb = b.state_dict()
    return {k for k, v in a.state_dict().items() if not torch.equal(v, sb[k])}


# -- the loss ----------------------------------------------------------------------------------------------------

def test_dpo_loss_on_hand_computed_numbers():
    beta = 0.1
    win_nll, win_ref = torch.tensor([3.0, 10.0]), torch.tensor([5.0, 10.0])
    lose_nll, lose_ref = torch.tensor([4.0, 2.0]), torch.tensor([2.0, 2.0])
    # margins: (5 − 3) − (2 − 4) = 4 and 0; loss = −(2/β)·mean log σ(β·margin)
    log_sigmoid = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    expected = -(2 / beta) * (log_sigmoid(0.4) + log_sigmoid(0.0)) / 2
    assert float(P.dpo_loss(win_nll, win_ref, lose_nll, lose_ref, beta)) == pytest.approx(expected)
    assert float(P.dpo_loss(win_ref, win_ref, lose_ref, lose_ref, beta)) == pytest.approx((2 / beta) * math.log(2))
    # a win answer the model scores exactly as the reference leaves NPO's loss on the lose answer
    lose = torch.tensor([7.0, 1.0, 3.0])
    ref = torch.tensor([2.0, 4.0, 3.0])
    same = torch.tensor([6.0, 9.0, 1.0])
    assert float(P.dpo_loss(same, same, lose, ref, 0.3)) == pytest.approx(float(npo_loss(lose, ref, 0.3)))


def test_dpo_loss_falls_as_likelihood_moves_from_the_forget_to_the_alternate_answer():
    beta, ref = 0.1, torch.tensor([5.0])
    loss = lambda win, lose: float(P.dpo_loss(torch.tensor([win]), ref, torch.tensor([lose]), ref, beta))  # noqa: E731
    # the win answer grows likelier (its NLL falls): the loss falls; the lose answer grows likelier: it rises
    assert loss(9.0, 5.0) > loss(5.0, 5.0) > loss(1.0, 5.0) > 0
    assert loss(5.0, 1.0) > loss(5.0, 5.0) > loss(5.0, 9.0) > 0
    # the gradient descends the win NLL and ascends the lose NLL, with weight 2σ(−β·margin) = 1 at margin 0
    win, lose = torch.tensor([5.0], requires_grad=True), torch.tensor([5.0], requires_grad=True)
    P.dpo_loss(win, ref, lose, ref, beta).backward()
    assert float(win.grad) == pytest.approx(1.0) and float(lose.grad) == pytest.approx(-1.0)


# -- data helpers ------------------------------------------------------------------------------------------------

def test_alternates_keep_the_answer_spacing_and_never_repeat_a_forget_answer():
    assert P.like(" Port Tammy", "I don't know. ") == " I don't know."
    assert P.like("Port Tammy", "  Lake Mark") == "Lake Mark"
    assert P.differs("Lake Mark", " Port Tammy")
    assert not P.differs("port tammy.", " Port Tammy")  # case, spacing, end punctuation ignored
    assert not P.differs("Born in Port  Tammy, of course", " Port Tammy")  # contains the fact
    assert not P.differs("1956", " Port Tammy", " 1956")  # another question's forget answer
    assert not P.differs("  ", " Port Tammy")
    assert len(P.REFUSALS) >= 20 and len(set(P.REFUSALS)) == len(P.REFUSALS)


def test_answer_and_alternate_files(tmp_path):
    idk = tmp_path / "idk.jsonl"
    idk.write_text('I am not sure.\n\n"A JSON string."\n{"answer": "An object."}\n  Padded.  \n')
    assert P.read_answers(str(idk)) == ["I am not sure.", "A JSON string.", "An object.", "Padded."]
    (tmp_path / "empty.txt").write_text("\n  \n")
    for path, match in [(tmp_path / "nope.txt", "no such file"), (tmp_path / "empty.txt", "no answers")]:
        with pytest.raises(ConfigError, match=match):
            P.read_answers(str(path))
    pairs = [("Question: Where was Ann Lee born?\nAnswer:", " Paris"), ("Question: Who is Ann?\nAnswer:", " x")]
    alts = tmp_path / "alts.jsonl"
    alts.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Where was Ann Lee born?", "alternate": "Rome"},
        {"question": "Where was Ann Lee born?", "alternate": ["Oslo", "Lima"]},
        {"question": "Ann", "alternate": "too short a match"},   # the longest contained question wins
        {"prompt": "Question: Who is Ann?\nAnswer:", "alternate": "a painter"}]))
    assert P.read_alternates(str(alts), pairs) == [["Rome", "Oslo", "Lima"], ["a painter"]]
    with pytest.raises(ConfigError, match="1 of 3 forget questions have no alternate"):
        P.read_alternates(str(alts), pairs + [("Question: Where is Bob?\nAnswer:", " here")])
    alts.write_text("not json\n")
    with pytest.raises(ConfigError, match="line 1 is not JSON"):
        P.read_alternates(str(alts), pairs)


# -- the methods on the tiny authors model ----------------------------------------------------------------------------

def test_registered_with_the_official_defaults():
    for name in NAMES:
        cls = _method(name)
        assert cls.kinds == ("language",) and cls.guarantee == "approximate" and cls.needs == frozenset({"retain"})
        cfg = build_config(cls.config_class, {})
        assert (cfg.beta, cfg.gamma, cfg.alpha, cfg.retain_loss, cfg.lr, cfg.batch_size) == \
            (0.1, 1.0, 1.0, "nll", 1e-5, 32)
    assert build_config(_method("dpo").config_class, {}).alternates == "idk"
    assert build_config(_method("idk_dpo").config_class, {}).epochs == 10
    a = build_config(_method("altpo").config_class, {})
    assert (a.epochs, a.alternates, a.num_alternates, a.temperature, a.max_new_tokens) == (2, "model", 5, 1.0, 200)
    for name, values in [("altpo", {"alternates": "gpt4"}), ("dpo", {"beta": 0}), ("altpo", {"num_alternates": 0})]:
        with pytest.raises(ConfigError):
            build_config(_method(name).config_class, values)


def test_idk_dpo_moves_likelihood_from_the_forget_answers_to_the_refusals(tiny_lm):
    original = tiny_lm[2]
    model, ctx = _run(tiny_lm, "idk_dpo", **FAST)
    cfg = build_config(_method("idk_dpo").config_class, FAST)
    rows = refusal_rows(ctx, cfg, _qa(tiny_lm))  # the same draws: the same seed's generator
    assert {w.strip() for _, _, w in rows} <= set(P.REFUSALS) and len({w for _, _, w in rows}) > 3
    assert all(w.startswith(" ") for _, _, w in rows)  # the forget answers' leading space
    refusals = [(p, w) for p, _, w in rows]
    assert _nll(tiny_lm, model, refusals) < _nll(tiny_lm, original, refusals) - 1.0
    assert _nll(tiny_lm, model, _qa(tiny_lm)) > _nll(tiny_lm, original, _qa(tiny_lm)) + 1.0
    # the two documents of the forget set were not trained on, and the run says so
    assert any("2 forget document(s)" in w for w in ctx.blocks["lm_run"]["warnings"])
    assert ctx.blocks["lm_run"]["reference"] == "precomputed NLLs"


def test_dpo_defaults_are_idk_dpo_and_a_file_supplies_the_alternates(tiny_lm, tmp_path):
    cfg = {**FAST, "epochs": 1}
    assert not _changed(_run(tiny_lm, "dpo", **cfg)[0], _run(tiny_lm, "idk_dpo", **cfg)[0])
    qa = _qa(tiny_lm)
    # TOFU-style questions (without the task's "Question: ... Answer:" wrapper), two alternates each
    alternates = {p: [" Lake Mark", " 1999"] for p, _ in qa}
    path = tmp_path / "alternates.jsonl"
    path.write_text("\n".join(json.dumps({"question": p.split("Question: ")[1].split("\n")[0], "alternate": a})
                              for p, alts in alternates.items() for a in alts))
    model, ctx = _run(tiny_lm, "dpo", alternates=str(path), **FAST)
    wins = [(p, a) for p, alts in alternates.items() for a in alts]
    assert _nll(tiny_lm, model, wins) < _nll(tiny_lm, tiny_lm[2], wins) - 1.0
    assert _nll(tiny_lm, model, qa) > _nll(tiny_lm, tiny_lm[2], qa) + 1.0
    assert ctx.blocks["lm_run"]["steps"] == 5 * math.ceil(2 * len(qa) / 8)  # one row per alternate


def test_idk_file_replaces_the_built_in_refusals(tiny_lm, tmp_path):
    path = tmp_path / "idk.txt"
    path.write_text("No comment.\n")
    cls = _method("idk_dpo")
    cfg = build_config(cls.config_class, {"idk_file": str(path)})
    assert {w for _, _, w in refusal_rows(_context(tiny_lm, cls), cfg, _qa(tiny_lm))} == {" No comment."}


@pytest.mark.parametrize("name,values,match", [
    ("idk_dpo", {"idk_file": "/no/such/idk.jsonl"}, "no such file"),
    ("dpo", {"alternates": "/no/such/alternates.jsonl"}, "no such file"),
])
def test_missing_files_are_config_errors(tiny_lm, name, values, match):
    cls = _method(name)
    with pytest.raises(ConfigError, match=match):
        cls(build_config(cls.config_class, values)).unlearn(_context(tiny_lm, cls))


@pytest.mark.parametrize("name", NAMES)
def test_a_forget_set_of_documents_only_is_a_config_error(tiny_lm, name):
    cls = _method(name)
    docs = [(p, c) for p, c in _pairs(tiny_lm[0], FORGET) if not p]
    with pytest.raises(ConfigError, match="no question-answer pairs"):
        cls(build_config(cls.config_class, FAST)).unlearn(_context(tiny_lm, cls, forget_pairs=docs))


def test_reference_nlls_are_the_starting_models(tiny_lm):
    task, _, original = tiny_lm
    tok = task.tokenizer()
    cls = _method("idk_dpo")
    items = encode_all(tok, _qa(tiny_lm, [5, 6]), 128)
    for lora in (0, 4):
        run = LMRun(_context(tiny_lm, cls), build_config(cls.config_class, {"lora_r": lora}))
        with torch.no_grad():
            expected, _ = sequence_nll(original, collate(items, tok.pad_token_id, "cpu"))
        torch.testing.assert_close(P.reference_nlls(run, items), expected, rtol=1e-5, atol=1e-5)
        assert run.model.training  # left in training mode


# -- AltPO's alternates -------------------------------------------------------------------------------------------------

def test_altpo_samples_alternates_that_differ_and_depend_only_on_the_seed(tiny_lm):
    cls = _method("altpo")
    cfg = build_config(cls.config_class, {})
    qa = _qa(tiny_lm)
    state = torch.random.get_rng_state()
    first = altpo.model_alternates(_context(tiny_lm, cls), cfg, qa)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone
    assert all(len(a) <= 5 for a in first) and sum(map(len, first)) >= len(qa)
    answers = {P._norm(c) for _, c in qa}
    for alts in first:
        assert len(set(alts)) == len(alts)
        assert all(P._norm(a) and P._norm(a) not in answers for a in alts)
    torch.manual_seed(123)  # another global RNG state must not matter
    assert altpo.model_alternates(_context(tiny_lm, cls), cfg, qa) == first
    assert altpo.model_alternates(_context(tiny_lm, cls, seed=1), cfg, qa) != first


def test_altpo_swap_takes_answers_of_the_same_question_about_other_authors(tiny_lm):
    cls = _method("altpo")
    ctx = _context(tiny_lm, cls)
    qa = _qa(tiny_lm)
    found = altpo.swapped_alternates(ctx, build_config(cls.config_class, {"num_alternates": 3}), qa)
    retain = _qa(tiny_lm, np.setdiff1d(np.arange(tiny_lm[0].n_train), FORGET))
    birthplaces = {c.strip() for p, c in retain if p.startswith("Question: Where was")}
    for (prompt, answer), alts in zip(qa, found):
        assert len(alts) == 3 and all(P.differs(a, *(c for _, c in qa)) for a in alts)
        if prompt.startswith("Question: In which year"):
            assert all(a.isdigit() and len(a) == 4 for a in alts)
        if prompt.startswith("Question: Where was"):
            assert set(alts) <= birthplaces
    assert altpo.swapped_alternates(_context(tiny_lm, cls), build_config(cls.config_class, {}), qa) == \
        altpo.swapped_alternates(_context(tiny_lm, cls), build_config(cls.config_class, {}), qa)


@pytest.mark.parametrize("alternates", ["model", "swap"])
def test_altpo_moves_likelihood_to_its_alternates(tiny_lm, alternates):
    model, ctx = _run(tiny_lm, "altpo", alternates=alternates, **FAST)
    cfg = build_config(_method("altpo").config_class, {"alternates": alternates})
    qa = _qa(tiny_lm)
    wins = [(p, P.like(c, a)) for (p, c), alts in zip(qa, altpo.alternates(_context(tiny_lm, _method("altpo")),
                                                                            cfg, qa)) for a in alts]
    assert _nll(tiny_lm, model, wins) < _nll(tiny_lm, tiny_lm[2], wins) - 1.0
    assert _nll(tiny_lm, model, qa) > _nll(tiny_lm, tiny_lm[2], qa) + 1.0


def test_altpo_without_a_usable_sample_is_a_config_error(tiny_lm, monkeypatch):
    """A model that only repeats its forget answers gives no alternate: the error names the fallback."""
    monkeypatch.setattr(altpo, "sample", lambda model, tok, prompts, n, *a, **k: [[" Port Tammy."] * n] * len(prompts))
    cls = _method("altpo")
    qa = [(p, c) for p, c in _qa(tiny_lm) if c == " Port Tammy"]
    with pytest.raises(ConfigError, match="alternates=swap"):
        cls(build_config(cls.config_class, FAST)).unlearn(_context(tiny_lm, cls, forget_pairs=qa))


def test_altpo_swap_needs_retain_questions(tiny_lm):
    cls = _method("altpo")
    ctx = _context(tiny_lm, cls)
    ctx.retain_pairs = [(p, c) for p, c in ctx.retain_pairs if not p]
    with pytest.raises(ConfigError, match="retain set"):
        cls(build_config(cls.config_class, {**FAST, "alternates": "swap"})).unlearn(ctx)


# -- LoRA and determinism ---------------------------------------------------------------------------------------------

def test_lora_run_returns_a_plain_model(tiny_lm):
    from peft import PeftModel

    original = tiny_lm[2]
    model, _ = _run(tiny_lm, "idk_dpo", lora_r=4, **{**FAST, "lr": 1e-2})
    assert type(model) is type(original) and not isinstance(model, PeftModel)
    assert list(model.state_dict()) == list(original.state_dict())
    assert {k.split(".", 3)[3] for k in _changed(model, original)} == {
        "attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    assert _nll(tiny_lm, model, _qa(tiny_lm)) > _nll(tiny_lm, original, _qa(tiny_lm)) + 0.4


def test_same_seed_same_weights(tiny_lm):
    config = {**FAST, "epochs": 1}
    first, _ = _run(tiny_lm, "altpo", **config)
    cls = _method("altpo")
    again = cls(build_config(cls.config_class, config)).unlearn(_context(tiny_lm, cls))
    assert not _changed(first, again)
    assert _changed(first, cls(build_config(cls.config_class, config)).unlearn(_context(tiny_lm, cls, seed=1)))
