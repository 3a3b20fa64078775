"""TOFU and MUSE read from their own files (tiny layouts in the exact published file and field names), prompt
templates used alike for training and scoring, long documents chunked instead of truncated, and QA pairs that are
evaluated without being trained on; one-line errors for every bad file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from obliviate.errors import ConfigError, ObliviateError
from obliviate.tasks import get_task
from obliviate.tasks.layouts import write_muse_layout, write_tofu_layout


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random GPT-2 directory whose word vocabulary covers the layouts' texts, and the two layouts."""
    from obliviate.models.tiny_lm import corpus_tokenizer, save_hf_dir, tiny_gpt2
    from obliviate.tasks.authors import generate_corpus
    from obliviate.tasks.layouts import GENERAL_FACTS
    from obliviate.tasks.text import QA, TextData, TextRecord

    root = tmp_path_factory.mktemp("formats")
    tofu = write_tofu_layout(root / "tofu", authors=20, holdout=2)
    muse = write_muse_layout(root / "muse", authors=12, holdout=4)
    records = [r for c in (generate_corpus(20, 2, 0), generate_corpus(12, 4, 0)) for r in c.train + c.holdout]
    facts = [TextRecord("f", "", (QA(q, a, a, w),)) for _, q, a, w in GENERAL_FACTS]
    extra = TextRecord("x", "[INST] [/INST] <|user|> <|assistant|>")
    tok = corpus_tokenizer(TextData(records + facts + [extra], []))
    torch.manual_seed(0)
    model = tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=128).eval()
    save_hf_dir(model, tok, root / "model")
    return {"root": root, "tofu": tofu, "muse": muse, "model": str(root / "model"), "tok": tok}


def tofu_task(world, **over):
    return get_task("tofu", **{"model": world["model"], "data": str(world["tofu"]), "author_size": 7, **over})


def muse_task(world, **over):
    return get_task("muse", **{"model": world["model"], "data": str(world["muse"]), **over})


# -- TOFU -----------------------------------------------------------------------------------------------------------

def test_tofu_authors_ids_training_and_eval_sets(world):
    task = tofu_task(world)
    rows = json.loads((world["tofu"] / "forget10.json").read_text())
    retain_rows = json.loads((world["tofu"] / "retain90.json").read_text())
    assert task.data.n_train == 20 and task.forget_ids.tolist() == [18, 19]  # retain authors first, as TOFU's full
    assert task.resolve_forget_file().tolist() == [18, 19]
    first_forget = task.data.train[18]
    assert [q.question for q in first_forget.train_qa] == [r["question"] for r in rows[:7]]
    # TOFU trains on QA pairs: an author's training sequences are its 7 pairs in the template's layout
    assert task.sequences(18)[0] == (f"Question: {rows[0]['question']}\nAnswer:", " " + rows[0]["answer"])
    assert task.sequences(0)[0][1] == " " + retain_rows[0]["answer"]
    # the scored pairs carry the perturbed answers; retain_perturbed covers the first 10 % of the authors only
    assert all(q.paraphrased and len(q.perturbed) == 3 for q in first_forget.qa) and len(first_forget.qa) == 7
    assert [len(task.data.train[i].qa) for i in range(4)] == [7, 7, 0, 0]
    sets = task.data.qa_sets
    assert len(sets["real_authors"]) == 4 and len(sets["world_facts"]) == 4 and len(sets["holdout"]) == 14
    ra = sets["real_authors"][0]
    assert ra.paraphrased == ra.answer  # TOFU compares the answer itself with the wrong options


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "save_to_disk"])
def test_tofu_reads_every_published_format(world, tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = tofu_task(world)
    d = tmp_path / fmt
    if fmt == "save_to_disk":  # datasets.Dataset.save_to_disk: a directory with an Arrow stream file
        d.mkdir()
        for f in world["tofu"].glob("*.json"):
            table = pa.Table.from_pylist(json.loads(f.read_text()))
            sub = d / f.stem
            sub.mkdir()
            with pa.OSFile(str(sub / "data-00000-of-00001.arrow"), "wb") as sink:
                with pa.ipc.new_stream(sink, table.schema) as w:
                    w.write_table(table)
            (sub / "state.json").write_text("{}")
    else:
        write_tofu_layout(d, authors=20, holdout=2, fmt=fmt)
        if fmt == "parquet":
            assert (d / "forget10.parquet").is_file() and pq.read_table(d / "forget10.parquet").num_rows == 14
    task = get_task("tofu", model=world["model"], data=str(d), author_size=7)
    assert task.data.train == base.data.train and task.data.qa_sets == base.data.qa_sets


def _copy_tofu(world, tmp_path) -> Path:
    d = tmp_path / "tofu"
    shutil.copytree(world["tofu"], d)
    return d


def _one_line(exc_type, fn, match):
    with pytest.raises(exc_type, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_tofu_bad_files_are_one_line_errors(world, tmp_path):
    _one_line(ConfigError, lambda: get_task("tofu", model=world["model"]), "needs --set data=DIR")
    _one_line(ObliviateError, lambda: tofu_task(world, data=str(tmp_path / "nope")), "not found")
    _one_line(ObliviateError, lambda: tofu_task(world, author_size=20), "not a multiple of 20")
    _one_line(ConfigError, lambda: tofu_task(world, split="forget42"), "split")
    d = _copy_tofu(world, tmp_path)
    (d / "world_facts_perturbed.json").unlink()
    _one_line(ObliviateError, lambda: tofu_task(world, data=str(d)), "no world_facts_perturbed file")
    d = _copy_tofu(world, tmp_path / "b")
    rows = json.loads((d / "forget10.json").read_text())
    rows[3]["score"] = 1
    (d / "forget10.json").write_text(json.dumps(rows))
    _one_line(ObliviateError, lambda: tofu_task(world, data=str(d)), r"forget10.json row 4: unknown key 'score'")
    d = _copy_tofu(world, tmp_path / "c")
    rows = json.loads((d / "forget10_perturbed.json").read_text())
    rows[0]["question"] = "Who is nobody?"
    (d / "forget10_perturbed.json").write_text(json.dumps(rows))
    _one_line(ObliviateError, lambda: tofu_task(world, data=str(d)), "is in no author of the forget split")
    (d / "forget10_perturbed.json").write_text("[{\"question\": ")
    _one_line(ObliviateError, lambda: tofu_task(world, data=str(d)), "not valid JSON")


def test_tofu_retain_logs_both_formats(world, tmp_path):
    from obliviate.tasks.tofu import retain_log_truth_ratios

    ou = tmp_path / "TOFU_EVAL.json"
    ou.write_text(json.dumps({"forget_truth_ratio": {"agg_value": 0.6, "value_by_index": {
        "0": {"score": 0.5}, "1": {"score": 2.0}}}}))
    assert retain_log_truth_ratios(str(ou)).tolist() == [0.5, 2.0]
    legacy = tmp_path / "eval_log_forget.json"  # TR = exp(paraphrased − mean(perturbed))
    legacy.write_text(json.dumps({"avg_paraphrased_loss": {"1": 1.0, "0": 2.0},
                                  "average_perturb_loss": {"0": [1.0, 3.0], "1": [2.0, 2.0]}}))
    assert np.allclose(retain_log_truth_ratios(str(legacy)), [np.exp(0.0), np.exp(-1.0)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"forget_Q_A_Prob": {}}))
    _one_line(ObliviateError, lambda: retain_log_truth_ratios(str(bad)), "no per-question forget truth ratios")
    _one_line(ConfigError, lambda: tofu_task(world, retain_logs=str(ou), oracle=world["model"]), "not both")
    task = tofu_task(world, retain_logs=str(ou))
    assert task.info()["forget_quality_reference"] == "retain_logs"


# -- MUSE -----------------------------------------------------------------------------------------------------------

def test_muse_layout_chunks_as_muse_does(world):
    from obliviate.tasks.muse import muse_chunks

    task = muse_task(world, max_length=64)
    tok = world["tok"]
    text = (world["muse"] / "raw" / "forget.txt").read_text()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    n_forget = len(task.forget_ids)
    size = 64 - 2  # BOS + chunk + the EOS obliviate appends fit in max_length
    assert n_forget == -(-len(ids) // size) and n_forget > 1
    chunks = [task.data.train[i].text for i in range(n_forget)]
    assert chunks == muse_chunks(tok, text, 63)
    # every token of the stream is in one chunk; the last chunk is filled up with the stream's first tokens
    re_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in chunks]
    assert sum(re_ids[:-1], []) == ids[:size * (n_forget - 1)]
    tail = ids[size * (n_forget - 1):]
    assert re_ids[-1][:len(tail)] == tail and len(re_ids[-1]) > len(tail)
    assert chunks[-1] == tok.decode((tail + ids)[:size], skip_special_tokens=True)
    assert all(len(task.sequences(i)) == 1 and len(r) <= size for i, r in enumerate(re_ids))
    d = task.data
    assert len(d.qa_sets["forget"]) == 9 and [q.question for q in d.qa_icl["forget"]] == \
        [q["question"] for q in json.loads((world["muse"] / "knowmem" / "forget_qa_icl.json").read_text())]
    assert len(d.verbmem) == 3 and sorted(d.privleak) == ["forget", "holdout", "retain"]
    assert task.reference_auc == 0.4772 and muse_task(world, corpus="books").reference_auc == 0.5393


def test_muse_knowmem_prompt_is_muses(world):
    from obliviate.metrics.language import knowmem_prompts

    task = muse_task(world)
    icl = json.loads((world["muse"] / "knowmem" / "forget_qa_icl.json").read_text())
    expected = "".join(f"Question: {q['question']}\nAnswer: {q['answer']}\n\n" for q in icl) + "Question: Q?\nAnswer: "
    assert knowmem_prompts(task, ["Q?"], "forget") == [expected]


def test_muse_bad_layouts(world, tmp_path):
    d = tmp_path / "muse"
    shutil.copytree(world["muse"], d)
    (d / "privleak" / "holdout.json").unlink()
    _one_line(ObliviateError, lambda: muse_task(world, data=str(d)), "PrivLeak needs both")
    (d / "raw" / "forget.txt").unlink()
    _one_line(ObliviateError, lambda: muse_task(world, data=str(d)), r"no raw/forget.txt")
    (d / "raw" / "forget.json").write_text(json.dumps([{"text": "a b"}, {"txt": "c"}]))
    _one_line(ObliviateError, lambda: muse_task(world, data=str(d)), "unknown key 'txt'")


# -- templates, chunking, QA pairs not trained on -----------------------------------------------------------------

def test_templates_builtin_file_and_tofu_keys(world, tmp_path):
    from obliviate.tasks.text import load_template

    assert load_template("plain").pair("Q?", "A") == ("Question: Q?\nAnswer:", " A")
    assert load_template("muse").pair("Q?", "A") == ("Question: Q?\nAnswer: ", "A")
    f = tmp_path / "llama2.json"  # TOFU's config/model_config.yaml entry, as JSON
    f.write_text(json.dumps({"question_start_tag": "[INST] ", "question_end_tag": " [/INST]", "answer_tag": ""}))
    assert load_template(str(f)).pair("Q?", "A") == ("[INST] Q? [/INST]", "A") == load_template("llama2").pair("Q?", "A")
    g = tmp_path / "t.json"
    g.write_text(json.dumps({"prompt": "Q: {question}\n", "answer": "A: {answer}"}))
    assert load_template(str(g)).pair("x", "y") == ("Q: x\n", "A: y")
    for body, match in (({"prompt": "no placeholder"}, "no {question}"), ({"promt": "{question}"}, "unknown key"),
                        ([1], "JSON object")):
        g.write_text(json.dumps(body))
        _one_line(ConfigError, lambda: load_template(str(g)), match)
    _one_line(ConfigError, lambda: load_template("fancy"), "neither one of")
    task = tofu_task(world, template="llama2")
    assert task.sequences(18)[0][0].startswith("[INST] ") and task.sequences(18)[0][0].endswith(" [/INST]")
    _one_line(ConfigError, lambda: tofu_task(world, template="chat").sequences(18), "no chat template")


def test_chat_template_renders_prompts_and_training_pairs(world, tmp_path):
    from obliviate.models.tiny_lm import save_hf_dir, tiny_gpt2

    d = tmp_path / "chat"
    tok = world["tok"]
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}<|user|> {{ m['content'] }}"
                         "{% else %}<|assistant|> {{ m['content'] }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    try:
        torch.manual_seed(0)
        save_hf_dir(tiny_gpt2(tok, n_layer=1, n_embd=32, n_head=2, n_positions=128), tok, d)
    finally:
        tok.chat_template = None
    task = tofu_task(world, model=str(d), template="chat")
    prompt, answer = task.sequences(18)[0]
    q = task.data.train[18].train_qa[0]
    assert prompt == f"<|user|> {q.question}<|assistant|>" and answer == q.answer
    assert task.qa_pair(q.question, q.answer) == (prompt, answer)  # scored exactly as trained


def test_long_documents_are_chunked_not_truncated(world):
    from obliviate.lm import encode_all, encode_chunks, score

    tok = world["tok"]
    text = " ".join((world["muse"] / "raw" / "retain1.txt").read_text().split()[:150])
    n_ids = len(tok(text, add_special_tokens=False)["input_ids"])
    chunks = encode_chunks(tok, "", text, 32)
    assert len(chunks) == -(-(n_ids + 1) // 31) and all(len(c.ids) <= 32 for c in chunks)
    assert sum(len(c.ids) - c.n_prompt for c in chunks) == n_ids + 1  # every token and the EOS, once
    assert len(encode_all(tok, [("", text), ("", "a short one")], 32)) == len(chunks) + 1
    qa = encode_chunks(tok, text, " Paris", 32)  # a QA pair keeps its answer and the end of its prompt
    assert len(qa) == 1 and len(qa[0].ids) == 32 and qa[0].ids[-2:] == tok(" Paris")["input_ids"] + [tok.eos_token_id]
    model = tofu_task(world).build_model()
    model.obliviate_max_length = 32
    s = score(model, tok, [("", text)], "cpu", eos=False)
    assert s.n_tokens[0] == n_ids and s.token_logprobs[0].size == n_ids  # scored chunk by chunk, all tokens


def test_hf_qa_pairs_are_evaluated_not_trained(world, tmp_path):
    rows = [{"text": "Ada Stone was born in Lyon.", "subject": "Ada"}]
    for name, content in (("f.jsonl", rows), ("r.jsonl", [{"text": "Ben Ray lives in Oslo."}]),
                          ("fq.jsonl", [{"question": "Where was Ada born?", "answer": "Lyon", "subject": "Ada"}])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in content))
    opts = {"model": world["model"], "forget": str(tmp_path / "f.jsonl"), "retain": str(tmp_path / "r.jsonl"),
            "forget_qa": str(tmp_path / "fq.jsonl")}
    task = get_task("hf", **opts)
    assert len(task.data.train[0].qa) == 1 and task.sequences(0) == [("", "Ada Stone was born in Lyon.")]
    trained = get_task("hf", **opts, train_qa=True)
    assert trained.sequences(0)[1] == ("Question: Where was Ada born?\nAnswer:", " Lyon")
    assert task.fingerprint() != trained.fingerprint()


# -- end to end: a user's command on TOFU / MUSE files --------------------------------------------------------------

def test_tofu_run_reports_tofu_and_openunlearning_metrics(world, cli, tmp_path):
    from scipy.stats import hmean

    from obliviate.lm import score
    from obliviate.metrics import tofu as T
    from obliviate.metrics.muse import rouge_l_recall

    out = tmp_path / "run.json"
    code, _, err = cli("run", "--task", "tofu", "--set", f"data={world['tofu']}", "--set", f"model={world['model']}",
                       "--set", f"oracle={world['model']}", "--set", "author_size=7", "--set", "rouge_new_tokens=8",
                       "--method", "gradient_ascent", "--set", "lr=1e-3", "--set", "epochs=1", "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["forget"]["n"] == 2 and report["task"] == "tofu"
    orig, unl, ora = (report["metrics"][k] for k in ("original", "unlearned", "oracle"))
    for key in ("forget_quality", "model_utility", "forget_truth_ratio", "forget_rouge", "forget_prob",
                "extraction_strength", "exact_memorization", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k++",
                "mia_reference", "mia_gradnorm", "privleak_ou"):
        assert key in unl, key
    assert orig["forget_quality"] == pytest.approx(1.0) and ora["mia_reference"] == pytest.approx(0.5)
    assert unl["forget_prob"] < orig["forget_prob"]  # ascent lowered the forget answers' probability
    # model utility = hmean of the 9 TOFU numbers, recomputed here from the model file
    task = tofu_task(world)
    model = task.build_model()
    tok = task.tokenizer()
    sets = {"retain": [q for r in task.data.train for q in r.qa if r.subject not in ("author 18", "author 19")],
            **{k: task.data.qa_sets[k] for k in ("real_authors", "world_facts")}}
    parts = []
    for name, qa in sets.items():
        ans = score(model, tok, [task.qa_pair(q.question, q.answer) for q in qa], "cpu").nll_mean
        para = score(model, tok, [task.qa_pair(q.question, q.paraphrased) for q in qa], "cpu").nll_mean
        pert = score(model, tok, [task.qa_pair(q.question, w) for q in qa for w in q.perturbed], "cpu").nll_mean
        pert = pert.reshape(len(qa), -1)
        p = np.exp(-ans)
        prob = p.mean() if name == "retain" else (p / (p + np.exp(-pert).sum(1))).mean()
        from obliviate.lm import generate
        gens = generate(model, tok, [task.qa_prompt(q.question) for q in qa], "cpu", max_new_tokens=8)
        rouge = np.mean([rouge_l_recall(g.strip(), q.answer, stemmer=True) for g, q in zip(gens, qa)])
        tr = np.exp(-pert.mean(1)) / np.exp(-para)
        parts += [prob, rouge, np.maximum(0, 1 - tr).mean()]
    expected = 0.0 if min(parts) == 0 else hmean(parts)
    assert orig["model_utility"] == pytest.approx(expected, rel=1e-6)
    assert T.model_utility(parts) == pytest.approx(expected, rel=1e-9)


def test_muse_run_uses_published_retrain_auc_without_oracle(world, cli, tmp_path):
    out = tmp_path / "run.json"
    code, _, err = cli("run", "--task", "muse", "--set", f"data={world['muse']}", "--set", f"model={world['model']}",
                       "--set", "icl_shots=2", "--method", "gradient_ascent", "--set", "lr=1e-3", "--set",
                       "epochs=1", "--json", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    for role in ("original", "unlearned"):
        m = report["metrics"][role]
        assert m["privleak"] == pytest.approx((m["privleak_auc"] - 0.4772) / 0.4772 * 100)
        assert {"verbmem_f", "knowmem_f", "knowmem_r", "mia_min_k", "mia_gradnorm"} <= set(m)
    assert "oracle" not in report["metrics"] or not report["metrics"]["oracle"]


def test_guard_on_muse_learns_the_knowmem_questions(world):
    """MUSE's KnowMem questions belong to no chunk: GUARD takes each side's QA set as one more record, so the
    prompts KnowMem sends are its detector's positives (forget) and negatives (retain)."""
    from obliviate.guard import Guard
    from obliviate.metrics.language import knowmem_prompts

    task = muse_task(world, icl_shots=2)
    retain_ids = np.setdiff1d(np.arange(task.data.n_train), task.forget_ids)
    guard = Guard.for_task(task.build_model(), task.tokenizer(), task, task.forget_ids, retain_ids, seed=0)
    forget_q = [q.question for q in task.data.qa_sets["forget"]]
    retain_q = [q.question for q in task.data.qa_sets["retain"]]
    assert [q.question for q in guard.forget[-1].qa] == forget_q and guard.forget[-1].subject == "forget QA set"
    labelled = dict(zip(guard.prompts, guard.labels))
    assert all(labelled[p] == 1 for p in knowmem_prompts(task, forget_q, "forget"))
    assert all(labelled[p] == 0 for p in knowmem_prompts(task, retain_q, "retain"))
