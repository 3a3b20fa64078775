"""GUARD (prompt detector + forbidden phrases + decoding restriction) and the in-context filter, on the tiny authors
task: the original memorises 12 authors; the forget set is the 2 authors of ``subjects:2`` (seed 0)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import obliviate
from obliviate.errors import ObliviateError
from obliviate.guard import (FilterConfig, FilteredModel, Guard, GuardConfig, GuardedModel, InContextFilter,
                             PhraseBank, surface_variants, token_sequences)
from obliviate.lm import generate, score
from obliviate.metrics.language import verbmem_pair
from obliviate.requests import resolve
from obliviate.tasks.text import QA_PROMPT, TextRecord

from conftest import TINY_AUTHORS, TINY_LM_TRAIN

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def split(tiny_lm):
    task, _, model = tiny_lm
    ids = resolve("subjects:2", task, 0).ids
    retain_ids = np.setdiff1d(np.arange(task.n_train), ids)
    forget = [task.data.train[int(i)] for i in ids]
    retain = [task.data.train[int(i)] for i in retain_ids]
    return task, model, task.tokenizer(), forget, retain


@pytest.fixture(scope="module")
def guard(split):
    task, model, tok, forget, retain = split
    return Guard(model, tok, forget=forget, retain=retain, general=task.data.holdout, seed=0)


def _questions(records):
    return [QA_PROMPT.format(question=q.question) for r in records for q in r.qa]


def _answers(records):
    return [q.answer for r in records for q in r.qa]


# -- detector ------------------------------------------------------------------------------------------------------

def test_detector_precision_recall_on_held_out_prompts(guard, split):
    m = guard.detector_metrics
    assert m["n_test"] > 0 and m["held_out"]["tp"] + m["held_out"]["fn"] >= 4  # real positives held out
    assert m["precision"] == m["held_out"]["precision"] and m["recall"] == m["held_out"]["recall"]
    assert m["precision"] >= 0.8 and m["recall"] >= 0.7, m["held_out"]
    assert m["fit"]["precision"] >= 0.95 and m["fit"]["recall"] == 1.0
    assert guard.stats["detector"] is m
    _, _, tok, forget, retain = split
    # the evaluation's prompts: every forget question and VerbMem prompt fires, no retain question does
    assert guard.detect(_questions(forget) + [verbmem_pair(tok, r.text)[0] for r in forget]).all()
    assert not guard.detect(_questions(retain)).any()
    # retrieval finds the record each question is about
    found = guard.retrieve(_questions(forget))
    assert [f[0] for f in found] == [i for i, r in enumerate(forget) for _ in r.qa]


def test_key_phrases_and_their_spellings(guard, split):
    _, _, tok, forget, _ = split
    r = forget[0]
    phrases = guard.phrases(0)
    first, last = r.subject.split()[0], r.subject.split()[-1]
    assert {r.subject, first, last, r.attributes["year"], r.attributes["city"]} <= set(phrases)
    assert all(q.answer in phrases for q in r.qa)
    assert not set(guard.phrases(1)) & {first, last}
    # every spelling the word tokenizer can write: with and without the leading space, possessive
    seqs = token_sequences(tok, first)
    for variant in (" " + first, " " + first + "'s"):
        assert tuple(tok(variant, add_special_tokens=False)["input_ids"]) in seqs, variant
    # a variant it cannot spell (an unknown word, here: the name without its leading space) is left out
    assert tok(first, add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    assert all(tok.unk_token_id not in s and tok.eos_token_id not in s for s in seqs)
    assert len(surface_variants(first)) == 8 and len(seqs) == 2


# -- generation ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("beams", [1, 3])
def test_undetected_prompts_decode_bit_identically(guard, split, beams):
    _, model, tok, forget, retain = split
    prompts = _questions(retain)[::3] + [verbmem_pair(tok, r.text)[0] for r in retain[:3]]
    prompts = [p for p, hit in zip(prompts, guard.detect(prompts)) if not hit]
    assert len(prompts) >= 20
    mixed = prompts + _questions(forget)[:3]  # detected rows in the same batches
    n = 8 if beams > 1 else 32
    plain = generate(model, tok, mixed, "cpu", max_new_tokens=n, num_beams=beams)
    guarded = generate(guard.wrap(), tok, mixed, "cpu", max_new_tokens=n, num_beams=beams)
    assert guarded[:len(prompts)] == plain[:len(prompts)]
    assert guarded[len(prompts):] != plain[len(prompts):]  # the detected rows did change


@pytest.mark.parametrize("beams", [1, 3])
def test_detected_forget_questions_lose_their_answers(guard, split, beams):
    _, model, tok, forget, _ = split
    prompts, answers = _questions(forget), _answers(forget)
    if beams > 1:
        prompts, answers = prompts[::3], answers[::3]
    plain = generate(model, tok, prompts, "cpu", max_new_tokens=10, num_beams=beams)
    guarded = generate(guard.wrap(), tok, prompts, "cpu", max_new_tokens=10, num_beams=beams)
    assert all(a.lower() in p.lower() for a, p in zip(answers, plain))  # the original knows them
    leaked = [(a, g) for a, g in zip(answers, guarded) if a.lower() in g.lower()]
    assert not leaked
    assert guard.generate(prompts[:2], max_new_tokens=10, num_beams=beams) == guarded[:2]


def test_lazy_semantic_scoring_makes_the_same_choices(guard, split):
    _, _, tok, forget, _ = split
    prompts = _questions(forget)[1::4] + [verbmem_pair(tok, forget[0].text)[0]]
    lazy = [generate(guard.wrap(), tok, prompts, "cpu", max_new_tokens=8, num_beams=b) for b in (1, 2)]
    guard.config.lazy = False
    try:
        full = [generate(guard.wrap(), tok, prompts, "cpu", max_new_tokens=8, num_beams=b) for b in (1, 2)]
    finally:
        guard.config.lazy = True
    assert lazy == full


def test_guarded_model_scores_like_the_model(guard, split):
    _, model, tok, forget, _ = split
    wrapped = guard.wrap()
    assert isinstance(wrapped, GuardedModel) and isinstance(wrapped, torch.nn.Module)
    assert wrapped.config is model.config and wrapped.base is model
    pairs = [s for r in forget for s in r.sequences()]
    a, b = score(model, tok, pairs, "cpu"), score(wrapped, tok, pairs, "cpu")
    assert np.array_equal(a.nll_sum, b.nll_sum)
    before = dict(guard.stats["generation"])
    generate(wrapped, tok, _questions(forget)[:2], "cpu", max_new_tokens=4)
    assert guard.stats["generation"]["detected"] == before["detected"] + 2


# -- the processor on its own -------------------------------------------------------------------------------------

def _bank(tok, phrases, embedder=None, **cfg):
    config = GuardConfig(**cfg)
    bank = PhraseBank(tok, [TextRecord("x", "x")], [], config, embedder)
    bank.phrases = [list(phrases)]
    return bank


def _id(tok, word):
    ids = tok(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 and ids[0] != tok.unk_token_id, word
    return ids[0]


def test_hard_matching_bans_the_completing_token(split):
    _, _, tok, forget, _ = split
    city = forget[0].attributes["city"]  # two words, e.g. "Port Heidi"
    w1, w2 = city.split()
    a, b = _id(tok, " " + w1), _id(tok, " " + w2)
    other = _id(tok, " the")
    proc = _bank(tok, [city], semantic=False, lambda_tok=5.0).processor([0, None], prompt_len=2)
    ids = torch.tensor([[other, a], [other, a]])
    scores = torch.zeros(2, len(tok))
    out = proc(ids, scores)
    assert out[0, b] == float("-inf")              # " Port" + " Heidi" completes the phrase
    assert out[0, a] == pytest.approx(-2.5)         # a first token of the phrase: λ_tok · 1/2
    assert out[0, other] == 0
    assert torch.equal(out[1], scores[1])           # an inactive row is untouched
    ids = torch.tensor([[other, other]])
    out = _bank(tok, [city], semantic=False).processor([0], prompt_len=2)(ids, torch.zeros(1, len(tok)))
    assert out[0, b] == 0 and out[0, a] < 0          # " Heidi" alone completes nothing
    # beams: rows = items × beams, each beam row of an active item is restricted
    out = _bank(tok, [city], semantic=False).processor([None, 0], prompt_len=2)(
        torch.tensor([[other, a]] * 4), torch.zeros(4, len(tok)))
    assert [bool(torch.isinf(r[b])) for r in out] == [False, False, True, True]


def test_semantic_matching_penalises_a_close_window(split):
    from obliviate.guard.embedder import load_embedder

    _, _, tok, _, _ = split
    emb = load_embedder()
    close, far = _id(tok, " poetry"), _id(tok, " 1956")
    phrase = "poems and verses"  # not spellable by the word tokenizer: hard matching cannot fire
    assert not token_sequences(tok, phrase)
    s = float(emb.encode(["poetry"])[0] @ emb.encode([phrase])[0])
    assert 0.65 < s < 0.99
    scores = torch.zeros(1, len(tok))
    scores[0, close], scores[0, far] = 10.0, 9.0
    ids = torch.tensor([[_id(tok, " the")]])
    out = _bank(tok, [phrase], emb, top_k=2, lambda_sem=8.0, tau_sem=0.65, tau_hard=0.99).processor(
        [0], prompt_len=1)(ids, scores)
    assert out[0, close] == pytest.approx(10.0 - 8.0 * s, abs=1e-4)
    assert out[0, far] == 9.0
    out = _bank(tok, [phrase], emb, top_k=2, tau_sem=0.5, tau_hard=s - 0.01).processor([0], prompt_len=1)(ids, scores)
    assert out[0, close] == float("-inf")


def test_a_failing_embedder_never_stops_generation(split):
    _, model, tok, forget, _ = split

    class Broken:
        def encode(self, texts):
            raise RuntimeError("embedder down")

    city = forget[0].attributes["city"]
    bank = _bank(tok, [city], Broken())
    proc = bank.processor([0], prompt_len=2)
    ids = torch.tensor([[_id(tok, " the"), _id(tok, " " + city.split()[0])]])
    scores = torch.zeros(1, len(tok))
    scores[0, _id(tok, " was")] = 5.0  # a word candidate on top: the embedder is called
    out = proc(ids, scores)
    assert proc.warnings == 1 and not proc.semantic_ok
    assert out[0, _id(tok, " " + city.split()[1])] == float("-inf")  # hard matching still on
    assert out[0, _id(tok, " was")] == 5.0
    proc(ids, scores)
    assert proc.warnings == 1  # semantic matching is off from then on


# -- the method through the pipeline ---------------------------------------------------------------------------

def test_guard_method_end_to_end(tiny_lm):
    result = obliviate.unlearn("authors", "guard", "subjects:2", task_options=TINY_AUTHORS, train=TINY_LM_TRAIN,
                               oracle=False)
    r = result.report
    orig, unl = r["metrics"]["original"], r["metrics"]["unlearned"]
    assert r["method"] == "guard" and r["guarantee"] == "suppression"
    assert orig["knowmem_f"] >= 0.9 and unl["knowmem_f"] <= 0.2 * orig["knowmem_f"]
    assert unl["verbmem_f"] < orig["verbmem_f"]
    assert unl["knowmem_r"] >= 0.95 * orig["knowmem_r"]
    # suppression: teacher-forced metrics are the original's
    for key in ("privleak", "privleak_auc", "forget_prob", "forget_truth_ratio"):
        assert unl[key] == orig[key], key
    stats = result.model.guard.stats
    assert stats["detector"]["precision"] is not None and stats["generation"]["detected"] > 0


# -- in-context filter -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flt(split):
    _, _, tok, forget, retain = split
    return InContextFilter(tok, forget, FilterConfig(), retain_records=retain)


def test_filter_flags_a_pasted_forget_biography_only(flt, split):
    _, _, _, forget, retain = split
    q = "Question: " + forget[0].qa[0].question + "\nAnswer:"
    hit = flt.check(forget[0].text + "\n" + q)
    assert hit["flagged"] and hit["record"] == 0 and hit["subject"] == forget[0].subject
    assert hit["ngram"] >= 0.9 and hit["score"] >= hit["ngram"]
    # the same template about a retain author, and a plain question, are not flagged
    miss = flt.check(retain[0].text + "\nQuestion: " + retain[0].qa[0].question + "\nAnswer:")
    assert not miss["flagged"] and miss["record"] is None and miss["ngram"] < 0.5
    assert not flt.check(q)["flagged"]
    # a reworded forget fact is caught by the semantic test alone
    a = forget[1].attributes
    reworded = f"{forget[1].subject} was born in {a['city']} in {a['year']}."
    hit = flt.check(reworded)
    assert hit["flagged"] and hit["record"] == 1 and hit["semantic"] > 0.85 and hit["ngram"] < 0.5
    # redaction keeps the question
    assert flt.redact(forget[0].text + "\n" + q).strip() == q


def test_filter_reuses_a_guard_built_on_the_same_records(guard, split):
    _, _, tok, forget, retain = split
    f = InContextFilter(tok, forget, FilterConfig(action="guard"), guard=guard, retain_records=retain)
    assert f.bank is guard.bank and f.embedder is guard.embedder
    with pytest.raises(ObliviateError, match="same forget records"):
        InContextFilter(tok, forget[::-1], guard=guard)


def _filtered(split, action):
    _, model, tok, forget, retain = split
    f = InContextFilter(tok, forget, FilterConfig(action=action), retain_records=retain)
    return f.wrap(model)


@pytest.mark.parametrize("action", ["refuse", "redact", "guard"])
def test_filter_actions(split, action):
    _, model, tok, forget, retain = split
    q = "Question: " + forget[0].qa[0].question + "\nAnswer:"
    pasted = forget[0].text + "\n" + q                  # a biography pasted before a question
    opening = verbmem_pair(tok, forget[0].text)[0]     # a forget sentence the model goes on reciting
    clean = ["Question: " + r.qa[1].question + "\nAnswer:" for r in retain[:3]]
    prompts = [pasted, opening] + clean
    wrapped = _filtered(split, action)
    assert isinstance(wrapped, FilteredModel)
    plain = generate(model, tok, prompts, "cpu", max_new_tokens=24)
    out = generate(wrapped, tok, prompts, "cpu", max_new_tokens=24)
    assert out[2:] == plain[2:]  # unflagged rows decode bit for bit
    answers = [a.answer.lower() for a in forget[0].qa]
    assert any(a in plain[1].lower() for a in answers)  # the original recites facts
    if action == "refuse":
        assert out[:2] == ["", ""]
    elif action == "redact":
        # the biography goes, the line break and the question stay
        assert out[0] == generate(model, tok, ["\n" + q], "cpu", max_new_tokens=24)[0] != plain[0]
        assert out[1] == generate(model, tok, [""], "cpu", max_new_tokens=24)[0]
    else:
        assert all(o.strip() for o in out[:2]) and out[1] != plain[1]
        assert not [a for a in answers for o in out[:2] if a in o.lower()]
    assert wrapped.filter.stats["flagged"] == 2 and wrapped.filter.stats["action"] == action


def test_method_plus_filter_composes(tiny_lm):
    from obliviate.api import build_method

    task = tiny_lm[0]
    m = build_method("gradient_ascent+filter", {"action": "redact", "lr": 1e-3, "filter.tau_ngram": 0.4}, task)
    assert m.name == "gradient_ascent+filter" and m.guarantee == "approximate"
    assert m.config.lr == 1e-3 and m.filter_config.action == "redact" and m.filter_config.tau_ngram == 0.4
    with pytest.raises(ObliviateError, match="tau_ngram|valid keys"):
        build_method("gradient_ascent+filter", {"filter.nope": 1}, task)
    with pytest.raises(ObliviateError, match="unknown method"):
        build_method("nope+filter", {}, task)
    with pytest.raises(ObliviateError, match="language"):
        build_method("finetune+filter", {}, obliviate.tasks.get_task("digits"))
    result = obliviate.unlearn("authors", "gradient_ascent+filter", "subjects:2", task_options=TINY_AUTHORS,
                               train=TINY_LM_TRAIN, oracle=False, epochs=1)
    r = result.report
    assert r["method"] == "gradient_ascent+filter" and r["guarantee"] == "approximate"
    assert isinstance(result.model, FilteredModel)
    assert not torch.equal(result.model.base.lm_head.weight, tiny_lm[2].lm_head.weight)  # the base did unlearn
    assert result.model.filter.stats["flagged"] >= 2  # the VerbMem prompts are forget sentences
    assert r["metrics"]["unlearned"]["verbmem_f"] == 0.0  # refused


# -- bad input -----------------------------------------------------------------------------------------------------

def test_bad_input_is_one_clear_error(split):
    _, model, tok, forget, retain = split
    with pytest.raises(ObliviateError, match="at least one forget record"):
        Guard(model, tok, forget=[], retain=retain)
    with pytest.raises(ObliviateError, match=r"at least 8 forget-target prompts.*min_prompts"):
        Guard(model, tok, forget=["Jennifer wrote one book."], retain=retain)
    with pytest.raises(ObliviateError, match="cannot load the sentence embedder") as err:
        Guard(model, tok, forget=forget, retain=retain, config=GuardConfig(embedder="/no/such/model"))
    assert "\n" not in str(err.value)
    with pytest.raises(ObliviateError, match="at least one forget record"):
        InContextFilter(tok, [])
    with pytest.raises(ObliviateError, match="tau_hard"):
        obliviate.config.build_config(GuardConfig, {"tau_sem": 0.9, "tau_hard": 0.5})


def test_run_report_and_html_show_the_detector():
    from obliviate.report import render_run_html
    from conftest import TINY_AUTHORS, TINY_LM_TRAIN

    r = obliviate.unlearn("authors", "guard", "subjects:2", task_options=TINY_AUTHORS, train=TINY_LM_TRAIN,
                          oracle=False)
    det = r.report["guard"]["detector"]
    assert 0 <= det["precision"] <= 1 and 0 <= det["recall"] <= 1
    assert r.report["guard"]["generation"]["rows"] > 0  # counted during the evaluation's generation
    page = render_run_html(r.report)
    assert "GUARD prompt detector" in page and "suppression" in page


def test_greedy_detection_from_the_prefill_matches_the_detector_on_ids(guard, split):
    """Greedy generation detects from the prefill's own hidden states (no second pass over the prompt); it must
    flag exactly the rows the detector flags on the token ids."""
    from obliviate.lm import generate

    task, model, tok, forget, retain = split
    prompts = _questions(forget) + _questions(retain[:4])
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    expected = int(guard.detect_ids([bos + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]).sum())
    stats = guard.stats["generation"]
    before = dict(stats)
    generate(guard.wrap(), tok, prompts, "cpu", max_new_tokens=8)
    assert stats["detected"] - before["detected"] == expected > 0
    assert stats["rows"] - before["rows"] == len(prompts)
