"""``obliviate audit`` on a given-model task: the ``hf`` task with a tiny GPT-2 directory (trained here, in a few
seconds, on 8 people's facts) and JSONL forget / retain / holdout texts and QA pairs. Its records carry no
attributes and no oracle is given, so ``probe`` and ``side_effects`` are skipped with their reason; the in-context,
relearning and quantization audits run, and the verdict says it rests on those."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from obliviate.errors import ConfigError

NAMES = ["Ada Stone", "Ben Ray", "Cara Lee", "Dan Fox", "Eve Hart", "Finn Moss", "Gil Park", "Hana Cole",
         "Ivo Lind", "Juno Vale"]
CITIES = ["Lyon", "Oslo", "Porto", "Turin", "Quito", "Perth", "Cork", "Bern", "Riga", "Malmo"]
JOBS = ["baker", "pilot", "painter", "nurse", "farmer", "tailor", "sailor", "potter", "singer", "judge"]
N_FORGET, N_RETAIN = 3, 5  # then 2 holdout people (their QA are the few-shot examples)


def facts(i: int) -> tuple[dict, list[dict]]:
    name, city, job = NAMES[i], CITIES[i], JOBS[i]
    text = {"text": f"{name} was born in {city} and works as a {job}.", "subject": name}
    qa = [{"question": f"Where was {name} born?", "answer": city, "subject": name},
          {"question": f"What is the job of {name}?", "answer": job, "subject": name}]
    return text, qa


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def word_tokenizer(people):
    """A word tokenizer over every person's text and QA pairs (holdout people too: the few-shot examples)."""
    from obliviate.models.tiny_lm import corpus_tokenizer
    from obliviate.tasks.text import QA, TextData, TextRecord

    return corpus_tokenizer(TextData([TextRecord(t["subject"], t["text"], tuple(QA(q["question"], q["answer"])
                                                                                for q in qa)) for t, qa in people],
                                     []))


def train_tiny(texts: list[str], qa: list[dict], tok, steps: int = 120, seed: int = 0):
    """A tiny GPT-2 that memorises ``texts`` and the QA pairs in the plain KnowMem layout (the given model: the
    hf task never trains it)."""
    from obliviate.models.tiny_lm import tiny_gpt2
    from obliviate.tasks.text import QA_PROMPT

    torch.manual_seed(seed)
    model = tiny_gpt2(tok, n_layer=2, n_embd=48, n_head=2, n_positions=128)
    seqs = texts + [f"{QA_PROMPT.format(question=q['question'])} {q['answer']}" for q in qa]
    rows = [[tok.bos_token_id, *tok(s, add_special_tokens=False)["input_ids"], tok.eos_token_id] for s in seqs]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def build_world(root: Path, icl: bool = False, oracle: bool = False, seed: int = 0) -> dict[str, str]:
    """The hf task's options for a model directory and JSONL files under ``root`` (``icl``: the 2 holdout people's
    QA pairs as few-shot examples; ``oracle``: also a model trained on the retain people only, same vocabulary)."""
    from obliviate.models.tiny_lm import save_hf_dir

    people = [facts(i) for i in range(N_FORGET + N_RETAIN + 2)]
    forget, retain, holdout = people[:N_FORGET], people[N_FORGET:N_FORGET + N_RETAIN], people[N_FORGET + N_RETAIN:]
    tok = word_tokenizer(people)
    model = train_tiny([t["text"] for t, _ in forget + retain], [q for _, qs in forget + retain for q in qs], tok,
                       seed=seed)
    root.mkdir(parents=True, exist_ok=True)
    save_hf_dir(model, tok, root / "model")
    extra = {}
    if oracle:
        retrained = train_tiny([t["text"] for t, _ in retain], [q for _, qs in retain for q in qs], tok, seed=seed)
        save_hf_dir(retrained, tok, root / "oracle")
        extra["oracle"] = str(root / "oracle")
    opts = {"model": str(root / "model"),
            "forget": write_jsonl(root / "forget.jsonl", [t for t, _ in forget]),
            "retain": write_jsonl(root / "retain.jsonl", [t for t, _ in retain]),
            "holdout": write_jsonl(root / "holdout.jsonl", [t for t, _ in holdout]),
            "forget_qa": write_jsonl(root / "forget_qa.jsonl", [q for _, qs in forget for q in qs]),
            "retain_qa": write_jsonl(root / "retain_qa.jsonl", [q for _, qs in retain for q in qs])}
    opts.update(extra)
    if icl:
        opts["icl"] = write_jsonl(root / "icl.jsonl", [{k: q[k] for k in ("question", "answer")}
                                                       for _, qs in holdout for q in qs])
    return opts


def cli_sets(opts: dict[str, str]) -> list[str]:
    return [f"--set={k}={v}" for k, v in opts.items()]


GA = {"lr": 1e-2, "epochs": 2, "batch_size": 4}
AUDIT = {"max_steps": 10, "eval_every": 5, "relearn_lr": 1e-2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("hf-audit"))


@pytest.fixture(scope="module")
def doc(world):
    from obliviate.audit import audit

    return audit("hf", "gradient_ascent", task_options=world, audit_config=AUDIT, use_cache=False, **GA)


def test_python_api_runs_what_it_can_and_says_why_the_rest_is_skipped(doc):
    assert doc["schema"] == "obliviate.audit/1" and doc["task"] == "hf" and doc["forget"]["n"] == N_FORGET
    assert set(doc["metrics"]) == {"original", "unlearned"}  # no oracle given
    assert "not available" in doc["notes"][0]
    for key in ("probe", "side_effects"):
        assert set(doc[key]) == {"skipped"} and "carry no attributes" in doc[key]["skipped"]
    ic, rl, qz = doc["incontext"], doc["relearn"], doc["quantized"]
    assert "skipped" not in ic and "skipped" not in rl and "skipped" not in qz
    # in-context: every forget question (their records all have a document), no oracle row
    assert ic["n_questions"] == 2 * N_FORGET and set(ic["models"]) == {"original", "unlearned", "unlearned+filter"}
    assert ic["models"]["original"]["base"] == pytest.approx(doc["metrics"]["original"]["knowmem_f"], abs=1e-9)
    assert ic["models"]["original"]["base"] >= 0.5  # the given model knows the forget facts
    # relearning: the unlearned model alone; anamnesis needs an oracle's steps
    assert set(rl["models"]) == {"unlearned"} and rl["anamnesis"] is None and "no oracle" in rl["note"]
    assert rl["models"]["unlearned"]["curve"][0]["step"] == 0
    assert set(qz["variants"]) == {"int8", "fp16"}
    # the verdict rests on what gave it a value: the guarantee and quantization, not relearn / probe
    basis = doc["verdict_basis"]
    assert basis["ran"] == ["incontext", "relearn", "quantized"]
    assert set(basis["skipped"]) == {"probe", "side_effects"}
    assert basis["rests_on"] == (["quantized"] if qz["max_recovery"] is not None else [])
    assert basis["guarantee"] is True
    ev = {e["check"]: e for e in doc["evidence"]}
    assert ev["probe_excess"]["note"].startswith("skipped: ") and not ev["probe_excess"]["suppression"]
    assert "not applicable" in ev["relearn_anamnesis"]["note"] and "no oracle" in ev["relearn_anamnesis"]["note"]
    assert doc["verdict"] == ("suppression-like" if any(e["suppression"] for e in doc["evidence"])
                              else "removal-like")
    assert {"run", "incontext", "relearn", "quantized", "total"} <= set(doc["time_s"])
    assert not {"probe", "side_effects"} & set(doc["time_s"])


def test_with_a_given_oracle_relearn_gives_the_verdict_an_anamnesis(tmp_path):
    from obliviate.audit import audit

    world = build_world(tmp_path, oracle=True)
    doc = audit("hf", "gradient_ascent", task_options=world, audit_config={**AUDIT, "incontext_filter": False},
                use_cache=False, **GA)
    assert set(doc["metrics"]) == {"original", "unlearned", "oracle"} and "notes" not in doc
    ic, rl = doc["incontext"]["models"], doc["relearn"]
    assert ic["oracle"]["base"] <= 0.5 < ic["original"]["base"]  # the oracle never saw the forget people
    assert set(rl["models"]) == {"unlearned", "oracle"}
    ev = {e["check"]: e for e in doc["evidence"]}
    assert ev["relearn_anamnesis"]["value"] == rl["anamnesis"]
    assert ("relearn" in doc["verdict_basis"]["rests_on"]) == (rl["anamnesis"] is not None)
    assert rl["anamnesis"] is not None or "undetermined" in rl["note"] or "undefined" in rl["note"]
    assert set(doc["verdict_basis"]["skipped"]) == {"probe", "side_effects"}


def test_cli_writes_json_and_html_and_prints_the_skips(cli, world, tmp_path):
    j, h = tmp_path / "audit.json", tmp_path / "audit.html"
    rc, out, err = cli("audit", "--task", "hf", "--method", "gradient_ascent", *cli_sets(world), "--no-cache",
                       "--set", "lr=1e-2", "--set", "epochs=1", "--set", "audit.max_steps=5",
                       "--set", "audit.incontext_filter=false", "--json", j, "--html", h)
    assert rc == 0, err
    doc = json.loads(j.read_text())
    assert doc["probe"] == {"skipped": doc["verdict_basis"]["skipped"]["probe"]}
    assert "probe: skipped — " in out and "side_effects: skipped — " in out
    assert f"verdict: {doc['verdict']}" in out and "rests on:" in out
    text = h.read_text()
    assert text.count("<b>skipped</b>") == 2 and "carry no attributes" in text and doc["verdict"] in text


def test_without_forget_questions_only_quantization_runs(cli, world, tmp_path):
    opts = {k: v for k, v in world.items() if k not in ("forget_qa", "retain_qa")}
    j = tmp_path / "a.json"
    rc, out, err = cli("audit", "--task", "hf", "--method", "gradient_ascent", *cli_sets(opts), "--no-cache",
                       "--set", "epochs=1", "--json", j, "--quiet")
    assert rc == 0, err
    doc = json.loads(j.read_text())
    assert doc["verdict_basis"]["ran"] == ["quantized"]
    for key in ("incontext", "relearn"):
        assert "no evaluation questions" in doc[key]["skipped"]
    assert doc["quantized"]["variants"]["int8"]["knowmem_f"] is None  # nothing to ask; VerbMem still measured
    assert doc["quantized"]["variants"]["int8"]["verbmem_f"] is not None


@pytest.mark.parametrize("extra, message", [
    (("--set", "audit.probe_attribute=genre"), "audit.probe_attribute: the task's records carry no attributes"),
    (("--set", "audit.side_attributes=city"), "audit.side_attributes: the task's records carry no attributes"),
    (("--set", "model=/nonexistent/dir"), "/nonexistent/dir"),
    (("--set", "audit.max_steps=0"), "audit.max_steps"),
])
def test_cli_bad_input_is_one_line_exit_2_nothing_written(cli, world, tmp_path, extra, message):
    rc, out, err = cli("audit", "--task", "hf", "--method", "gradient_ascent", *cli_sets(world), *extra,
                       "--no-cache", "--json", tmp_path / "a.json", "--html", tmp_path / "a.html")
    assert rc == 2 and message in err, err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_skip_reasons_before_any_training(world):
    from obliviate.audit import AuditConfig, skip_reasons
    from obliviate.tasks import get_task

    task = get_task("hf", **world)
    why = skip_reasons(task, AuditConfig(), task.resolve_forget_file())
    assert set(why) == {"probe", "side_effects"}
    with pytest.raises(ConfigError, match="probe_attribute"):
        skip_reasons(task, AuditConfig(), task.resolve_forget_file(), explicit=["probe_attribute"])


def test_decide_names_what_the_verdict_rests_on():
    from obliviate.audit import decide

    d = decide("approximate", None, 0.3, None, skipped={"probe": "no attributes"},
               why_none={"relearn_anamnesis": "no oracle"})
    assert d["verdict"] == "suppression-like" and d["rests_on"] == ["guarantee", "quantization_recovery"]
    notes = {e["check"]: e.get("note") for e in d["evidence"]}
    assert notes == {"guarantee": None, "relearn_anamnesis": "not applicable: no oracle",
                     "quantization_recovery": None, "probe_excess": "skipped: no attributes"}
