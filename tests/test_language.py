"""Language tasks end to end: the authors corpus, the tiny GPT-2 and its tokenizer, the LM plumbing (padding,
batching, determinism), the MUSE/TOFU evaluation on real models, the pipeline with its real oracle, and
scalability / sustainability."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import obliviate
from obliviate.errors import ObliviateError, SpecError
from obliviate.lm import collate, encode, generate, score, train_lm
from obliviate.metrics import Evaluation
from obliviate.metrics.language import knowmem_prompt, verbmem_pair
from obliviate.requests import resolve
from obliviate.tasks import get_task
from obliviate.tasks.authors import generate_corpus

from conftest import TINY_AUTHORS, TINY_LM_TRAIN

TINY_SET = [f"{k}={v}" for k, v in TINY_AUTHORS.items()] + [f"train.{k}={v}" for k, v in TINY_LM_TRAIN.items()]


# -- the corpus ----------------------------------------------------------------------------------------------

def test_corpus_is_deterministic_and_complete():
    a, b = generate_corpus(10, 3, seed=1), generate_corpus.__wrapped__(10, 3, seed=1)
    assert a.fingerprint() == b.fingerprint()
    assert generate_corpus(10, 3, seed=2).fingerprint() != a.fingerprint()
    assert a.n_train == 10 and len(a.holdout) == 3
    names = [r.subject for r in a.train + a.holdout]
    assert len(set(names)) == len(names)  # every author is a distinct subject
    for r in a.train:
        assert r.subject in r.text and len(r.qa) == 7
        for q in r.qa:
            assert r.subject in q.question
            assert q.answer in r.text or q.attribute == "year" or q.answer in r.attributes.values()
            assert q.answer in q.paraphrased and len(q.perturbed) == 3
            assert all(q.answer not in w for w in q.perturbed) and len(set(q.perturbed)) == 3


def test_corpus_authors_share_attributes():
    data = generate_corpus(60, 5, seed=0, cities=10)
    cities = [r.attributes["city"] for r in data.train]
    genres = [r.attributes["genre"] for r in data.train]
    assert len(set(cities)) < len(cities) and len(set(genres)) < len(genres)


def test_training_sequences_label_only_answers():
    data = generate_corpus(4, 2)
    task = get_task("authors", authors=4, holdout=2, n_embd=32, n_head=2, n_positions=128)
    tok = task.tokenizer()
    seqs = data.train[0].sequences()
    assert seqs[0] == ("", data.train[0].text) and len(seqs) == 8
    prompt, answer = seqs[1]
    e = encode(tok, prompt, answer, 128)
    assert e.ids[0] == tok.bos_token_id and e.ids[-1] == tok.eos_token_id
    assert tok.decode(e.ids[e.n_prompt:-1]) == answer  # labels cover exactly the answer (+ EOS)
    batch = collate([e, encode(tok, "", data.train[0].text, 128)], tok.pad_token_id, "cpu")
    assert (batch["labels"][0, :e.n_prompt] == -100).all()
    assert batch["attention_mask"][0].sum() == len(e.ids)
    assert (batch["labels"][0][batch["attention_mask"][0] == 0] == -100).all()


def test_word_tokenizer_round_trips_the_corpus():
    task = get_task("authors", authors=6, holdout=2, n_embd=32, n_head=2)
    tok = task.tokenizer()
    for r in task.data.train + task.data.holdout:
        for text in (r.text, " " + r.qa[5].answer, r.qa[0].perturbed[0]):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
    bpe = get_task("authors", authors=6, holdout=2, n_embd=32, n_head=2, tokenizer="bpe", vocab_size=400).tokenizer()
    assert bpe.decode(bpe(task.data.train[0].text, add_special_tokens=False)["input_ids"]) == task.data.train[0].text


def test_bad_authors_options():
    with pytest.raises(ObliviateError, match="authors"):
        get_task("authors", authors=2)
    with pytest.raises(ObliviateError, match="multiple of n_head"):
        get_task("authors", authors=6, n_embd=30, n_head=4).build_model()


# -- LM plumbing -------------------------------------------------------------------------------------------------

def test_batched_generation_equals_one_by_one(tiny_lm):
    task, _, model = tiny_lm
    tok = task.tokenizer()
    prompts = [verbmem_pair(tok, r.text)[0] for r in task.data.train[:4]] + ["Question: Who?\nAnswer:"]
    batched = generate(model, tok, prompts, "cpu", max_new_tokens=20, batch_size=8)
    single = [generate(model, tok, [p], "cpu", max_new_tokens=20)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) == len(batched)


def test_scores_do_not_depend_on_batching(tiny_lm):
    task, _, model = tiny_lm
    tok = task.tokenizer()
    pairs = [s for r in task.data.train[:3] for s in r.sequences()]
    a, b = score(model, tok, pairs, "cpu", batch_size=1), score(model, tok, pairs, "cpu", batch_size=64)
    np.testing.assert_allclose(a.nll_sum, b.nll_sum, rtol=1e-4, atol=1e-5)
    assert (a.n_tokens == b.n_tokens).all() and (a.n_tokens > 0).all()


def test_lm_training_is_deterministic():
    task = get_task("authors", authors=4, holdout=2, n_embd=32, n_head=2, n_positions=128)
    recipe = task.recipe({"epochs": 2})
    pairs = [s for r in task.data.train for s in r.sequences()]
    models = [train_lm(task.make_model(3), task.tokenizer(), pairs, recipe, 3, "cpu") for _ in range(2)]
    for (k, v), w in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(v, w), k
    other = train_lm(task.make_model(4), task.tokenizer(), pairs, recipe, 4, "cpu")
    assert not torch.equal(other.state_dict()["lm_head.weight"], models[0].state_dict()["lm_head.weight"])


def test_knowmem_prompt_format():
    data = generate_corpus(4, 2)
    p = knowmem_prompt(data.icl[:2], "Where?")
    assert p.count("Question:") == 3 and p.endswith("Question: Where?\nAnswer:")
    assert f"Answer: {data.icl[0].answer}\n\n" in p


# -- evaluation on real models ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_oracle(tiny_lm):
    task, recipe, _ = tiny_lm
    from obliviate.models.store import ModelStore
    from obliviate.oracle import retrain_oracle

    request = resolve("subjects:2", task, 0)
    retain = np.setdiff1d(np.arange(task.n_train), request.ids)
    model, _ = retrain_oracle(task, retain, recipe, 0, torch.device("cpu"), ModelStore())
    return request, model


def test_original_memorises_and_oracle_does_not(tiny_lm, tiny_oracle):
    task, _, original = tiny_lm
    request, oracle = tiny_oracle
    retain = np.setdiff1d(np.arange(task.n_train), request.ids)
    orig = Evaluation(task, original, request.ids, retain, reference=oracle).compute()
    orac = Evaluation(task, oracle, request.ids, retain, reference=oracle).compute()
    assert orig["verbmem_f"] >= 0.9 and orig["knowmem_f"] >= 0.9 and orig["knowmem_r"] >= 0.9
    assert orac["verbmem_f"] <= 0.4 and orac["knowmem_f"] <= 0.3 and orac["knowmem_r"] >= 0.9
    assert orig["privleak_auc"] == 0.0  # forget texts all look like members
    if orac["privleak_auc"] > 0:  # PrivLeak is relative to the oracle's AUC ...
        assert orig["privleak"] < -90 and orac["privleak"] == 0.0
    else:  # ... and undefined (NaN, left out of the gaps) when the oracle's AUC is 0 (2 forget vs 4 holdout texts)
        assert np.isnan(orig["privleak"]) and np.isnan(orac["privleak"])
    assert orac["forget_quality"] == 1.0  # the oracle against itself
    assert orig["forget_quality"] < orac["forget_quality"]
    assert orig["extraction_strength"] == 1.0 > orac["extraction_strength"]
    assert orig["forget_prob"] > 0.9 > orac["forget_prob"]
    assert orig["forget_truth_ratio"] < orac["forget_truth_ratio"]  # memorised: paraphrase ≫ perturbed
    assert 0 < orig["utility"] <= 1


def test_evaluation_without_oracle_uses_half_as_privleak_reference(tiny_lm, tiny_oracle):
    task, _, original = tiny_lm
    request, _ = tiny_oracle
    retain = np.setdiff1d(np.arange(task.n_train), request.ids)
    values = Evaluation(task, original, request.ids, retain).compute()
    assert "forget_quality" not in values  # needs the oracle
    assert values["privleak"] == pytest.approx((values["privleak_auc"] - 0.5) / 0.5 * 100)


def test_per_example_values_align_with_aggregates(tiny_lm, tiny_oracle):
    task, _, original = tiny_lm
    request, oracle = tiny_oracle
    retain = np.setdiff1d(np.arange(task.n_train), request.ids)
    ev = Evaluation(task, original, request.ids, retain, reference=oracle)
    values, per = ev.compute(), ev.per_example()
    assert len(per["verbmem_f"]) == request.n and len(per["knowmem_f"]) == 7 * request.n
    assert np.mean(per["knowmem_f"]) == pytest.approx(values["knowmem_f"], abs=1e-6)
    assert len(per["forget_min40"]) == request.n


# -- the pipeline -------------------------------------------------------------------------------------------------

def test_forget_specs_on_a_text_task(tiny_lm):
    task, _, _ = tiny_lm
    two = resolve("subjects:2", task, 0)
    assert two.n == 2 and two.ids.tolist() == resolve("subjects:2", task, 0).ids.tolist()
    assert resolve("subjects:2", task, 1).ids.tolist() != two.ids.tolist() or task.n_train < 4
    name = task.data.train[5].subject
    assert resolve(f"subjects:{name}", task).ids.tolist() == [5]
    assert resolve("random:0.25", task, 0).n == 3
    for bad, msg in (("subjects:0", "no subjects"), ("subjects:12", "nothing would remain"),
                     ("subjects:Nobody Here", "unknown subject"), ("class:1", "classification"),
                     ("target<=3", "regression"), ("forget-file", "forget file")):
        with pytest.raises(SpecError, match=msg):
            resolve(bad, task, 0)


def test_retrain_on_authors_is_the_oracle(tiny_lm):
    r = obliviate.unlearn("authors", "retrain", "subjects:2", task_options=TINY_AUTHORS, train=TINY_LM_TRAIN)
    rep = r.report
    assert rep["task_kind"] == "language" and rep["guarantee"] == "exact"
    assert rep["models"]["unlearned"]["sha256"] == rep["models"]["oracle"]["sha256"]
    defined = {k for k in obliviate.metrics.HEADLINE["language"]  # PrivLeak is NaN when the oracle's AUC is 0
               if np.isfinite(rep["metrics"]["oracle"].get(k, np.nan))}
    assert len(defined) >= len(obliviate.metrics.HEADLINE["language"]) - 1
    assert rep["avg_gap"] == 0.0 and defined <= set(rep["gap"])
    assert rep["metrics"]["original"]["verbmem_f"] > 0.9 > 0.5 > rep["metrics"]["unlearned"]["verbmem_f"]
    assert "transformers" in rep["versions"]
    assert len(rep["per_example"]["unlearned"]["knowmem_f"]) == 14


def test_avg_gap_scales_privleak():
    from obliviate.metrics.gap import avg_gap

    gap = {"verbmem_f": 0.1, "knowmem_f": 0.2, "knowmem_r": 0.0, "privleak": 30.0, "forget_quality": 0.5,
           "utility": 0.0}
    assert avg_gap(gap, "language") == pytest.approx((0.1 + 0.2 + 0.0 + 0.3 + 0.5 + 0.0) / 6)


def test_relearn_and_challenge_are_refused_for_language():
    with pytest.raises(ObliviateError, match="relearn"):
        obliviate.unlearn("authors", "retrain", "subjects:2", task_options=TINY_AUTHORS, train=TINY_LM_TRAIN,
                          relearn=True)
    with pytest.raises(ObliviateError, match="classification"):
        obliviate.bench("authors", ["retrain"], "subjects:2", overrides={**TINY_AUTHORS}, challenge=3)


def test_cli_run_on_authors_writes_report_html_and_hf_dir(cli, tmp_path, tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model"
    code, stdout, _ = cli("run", "--task", "authors", "--method", "gradient_ascent", "--forget", "subjects:2",
                          *[a for kv in TINY_SET for a in ("--set", kv)], "--set", "lr=1e-3", "--set", "epochs=1",
                          "--json", str(tmp_path / "r.json"),
                          "--html", str(tmp_path / "r.html"), "--save-model", str(out))
    assert code == 0, stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["schema"] == "obliviate.run/1" and rep["task"] == "authors"
    assert "verbmem_f" in (tmp_path / "r.html").read_text()
    sha = (out / "model.safetensors.sha256").read_text().split()[0]
    assert sha == rep["models"]["unlearned"]["sha256"]
    loaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    task = tiny_lm[0]
    text = task.data.train[0].text
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert loaded.config.n_embd == TINY_AUTHORS["n_embd"]


def test_cli_rejects_bad_language_input(cli, tmp_path):
    sets = [a for kv in TINY_SET for a in ("--set", kv)]
    cases = [(["--forget", "class:1"], "classification"),
             (["--scal", "1,x"], "--scal"),
             (["--scal", "1,0"], "--scal"),
             (["--relearn"], "relearn")]
    for extra, msg in cases:
        code, _, stderr = cli("run", "--task", "authors", "--method", "retrain", *sets, *extra,
                              "--json", str(tmp_path / "x.json"))
        assert code == 2 and msg in stderr and "Traceback" not in stderr, (extra, stderr)
    (tmp_path / "file").write_text("x")
    code, _, stderr = cli("run", "--task", "authors", "--method", "retrain", *sets, "--save-model",
                          str(tmp_path / "file"))
    assert code == 2 and "is a file" in stderr
    assert not (tmp_path / "x.json").exists()


def _small(method_cfg=None):
    return dict(task_options=TINY_AUTHORS, train=TINY_LM_TRAIN, **(method_cfg or {}))


GA = {"lr": 3e-3, "epochs": 3, "batch_size": 8}


@pytest.mark.slow
def test_scalability_and_sustainability_blocks(tiny_lm):
    r = obliviate.unlearn("authors", "gradient_ascent", "subjects:1", scal=[1, 2], sust=2, **_small(GA))
    rep = r.report
    scal = rep["scalability"]
    assert [p["factor"] for p in scal["points"]] == [1, 2] and [p["n_forget"] for p in scal["points"]] == [1, 2]
    for p in scal["points"]:  # each size against its own oracle, which never saw the forget authors
        assert p["metrics"]["original"]["knowmem_f"] > 0.9 > p["metrics"]["oracle"]["knowmem_f"]
        assert p["metrics"]["unlearned"]["knowmem_f"] < p["metrics"]["original"]["knowmem_f"]
        assert p["avg_gap"] > 0
    assert scal["points"][0]["metrics"]["unlearned"] == rep["metrics"]["unlearned"]  # ×1 is the run itself
    sust = rep["sustainability"]
    assert [s["step"] for s in sust["steps"]] == [1, 2] and sust["steps"][1]["n_forgotten"] == 2
    first, second = sust["steps"]
    assert first["metrics"]["unlearned"] == rep["metrics"]["unlearned"]
    # step 2 starts from step 1's model: the first fold stays forgotten (cumulative), the second is forgotten too
    assert second["cumulative"]["unlearned"]["knowmem_f"] < 0.9
    assert second["metrics"]["unlearned"]["knowmem_f"] < second["metrics"]["original"]["knowmem_f"]
    from obliviate.report import render_run_html

    page = render_run_html(rep)
    assert "Scalability" in page and "Sustainability" in page and page.count("<svg") >= 3


def test_scal_sust_bad_requests_fail_before_any_work(tiny_lm, monkeypatch):
    from obliviate import api

    monkeypatch.setattr(api.Session, "run", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ObliviateError, match="nothing would remain"):
        obliviate.unlearn("authors", "gradient_ascent", "subjects:4", scal=[1, 3], **_small())
    with pytest.raises(ObliviateError, match="nothing would remain"):
        obliviate.unlearn("authors", "gradient_ascent", "subjects:4", sust=3, **_small())
    with pytest.raises(ObliviateError, match="own"):
        obliviate.unlearn("digits", "sisa", "random:10", sust=2)


def test_lora_set_key_routes_to_method_field():
    from obliviate.api import _lora_key

    assert _lora_key("lora.r") == "lora_r" and _lora_key("npo.lora.alpha") == "npo.lora_alpha"
    assert _lora_key("train.lr") == "train.lr" and _lora_key("lora") == "lora"


def test_tied_embeddings_are_stored_and_reloaded(tiny_lm, tmp_path):
    from obliviate.models.store import load_state_file, save_state_file

    task, _, model = tiny_lm
    save_state_file(model, tmp_path / "m.safetensors")
    twin = task.make_model(0)
    twin.load_state_dict(load_state_file(tmp_path / "m.safetensors"))
    assert torch.equal(twin.lm_head.weight, model.lm_head.weight)
    assert twin.lm_head.weight.data_ptr() == twin.transformer.wte.weight.data_ptr()  # still tied


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_hf_task_end_to_end_matches_the_authors_task(tiny_lm, tiny_oracle, tmp_path):
    """The same model and data through the hf task (user files + a given oracle dir) give the same metrics as
    through the authors task, and a method runs on it end to end."""
    from obliviate.models.tiny_lm import save_hf_dir

    task, _, original = tiny_lm
    request, oracle = tiny_oracle
    tok = task.tokenizer()
    save_hf_dir(original, tok, tmp_path / "model")
    save_hf_dir(oracle, tok, tmp_path / "oracle")
    recs = task.data.train
    forget = [recs[int(i)] for i in request.ids]
    retain = [r for i, r in enumerate(recs) if i not in set(request.ids.tolist())]

    def qa_rows(records):
        return [{"question": q.question, "answer": q.answer, "subject": r.subject, "paraphrased": q.paraphrased,
                 "perturbed": list(q.perturbed)} for r in records for q in r.qa]

    opts = {"model": str(tmp_path / "model"), "oracle": str(tmp_path / "oracle"), "icl_shots": 0,
            "forget": _write_jsonl(tmp_path / "f.jsonl", [{"text": r.text, "subject": r.subject} for r in forget]),
            "retain": _write_jsonl(tmp_path / "r.jsonl", [{"text": r.text, "subject": r.subject} for r in retain]),
            "holdout": _write_jsonl(tmp_path / "h.jsonl", [{"text": r.text} for r in task.data.holdout]),
            "forget_qa": _write_jsonl(tmp_path / "fq.jsonl", qa_rows(forget)),
            "retain_qa": _write_jsonl(tmp_path / "rq.jsonl", qa_rows(retain))}
    result = obliviate.unlearn("hf", "npo_gdr", task_options=opts, lr=3e-3, batch_size=8, epochs=5)
    rep = result.report
    assert rep["forget"]["spec"] == "forget-file" and rep["forget"]["n"] == 2
    retain_ids = np.setdiff1d(np.arange(task.n_train), request.ids)
    direct = Evaluation(task, original, request.ids, retain_ids, reference=oracle).compute()
    for key in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak", "forget_quality", "utility"):
        assert rep["metrics"]["original"][key] == pytest.approx(direct[key], abs=1e-6, nan_ok=True), key
    assert rep["models"]["oracle"]["sha256"] != rep["models"]["original"]["sha256"]
    assert rep["metrics"]["unlearned"]["knowmem_f"] < rep["metrics"]["original"]["knowmem_f"]
    assert rep["avg_gap"] < obliviate.metrics.avg_gap(obliviate.metrics.gaps(
        rep["metrics"]["original"], rep["metrics"]["oracle"]), "language")


def test_word_tokenizer_knows_the_prompt_layouts():
    task = get_task("authors", authors=6, holdout=2, n_embd=32, n_head=2)
    tok = task.tokenizer()
    r = task.data.train[0]
    for text in (knowmem_prompt(task.data.icl[:2], r.qa[0].question),
                 r.text + "\n\n" + knowmem_prompt([], r.qa[3].question)):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids  # "Question", "Answer" and newlines are words of the vocabulary
        assert tok.decode(ids) == text


def test_reading_adds_one_question_after_each_biography():
    plain = get_task("authors", authors=8, holdout=2, n_embd=32, n_head=2)
    reading = get_task("authors", authors=8, holdout=2, n_embd=32, n_head=2, reading=True)
    assert reading.fingerprint() != plain.fingerprint()
    asked = set()
    for i in range(8):
        base, extra = plain.sequences(i), reading.sequences(i)
        assert extra[:-1] == base and len(extra) == len(base) + 1
        prompt, completion = extra[-1]
        r = reading.data.train[i]
        assert prompt == r.text and completion.startswith("\n\nQuestion: ") and completion.endswith(" " + r.qa[i % 7].answer)
        asked.add(i % 7)
    assert len(asked) == 7  # the question asked rotates over the facts
