"""GUARD's detector under the prompt layout the evaluation sends, and a guard saved beside its model.

A detector trained on bare questions only misreads 2-shot KnowMem prompts, whose shared few-shot prefix dominates
the mean-pooled state: on this hf world it flagged 0/6 forget and 0/10 retain few-shot prompts (on a user's hf
task: 64/64, retain included; the direction depends on the model). :meth:`Guard.for_task` also trains on the
task's own KnowMem prompts: 6/6 forget, 0/10 retain here. A guarded model's ``save_pretrained`` writes the detector
(safetensors + JSON with its sha256) beside the weights; :func:`obliviate.guard.load_guarded` restores it to the
same decisions and generations."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from obliviate.errors import IntegrityError, ObliviateError
from obliviate.guard import Guard, GuardedModel, InContextFilter, load_guarded
from obliviate.lm import generate
from obliviate.metrics.language import eval_qa, knowmem_prompts
from obliviate.tasks.text import QA_PROMPT

from test_audit_hf import build_world, cli_sets
from doc_keys import check_documented

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("guard-layout"), icl=True)


@pytest.fixture(scope="module")
def setup(world):
    from obliviate.tasks import get_task

    task = get_task("hf", **world)  # icl_shots = 2 (the hf default)
    model, _ = task.provided_original()
    forget = task.resolve_forget_file()
    retain = np.setdiff1d(np.arange(task.n_train), forget)
    fq = [q.question for q in eval_qa(task, forget)]
    rq = [q.question for q in eval_qa(task, retain)]
    return {"task": task, "model": model, "tok": task.tokenizer(), "forget": forget, "retain": retain,
            "fp": knowmem_prompts(task, fq), "rp": knowmem_prompts(task, rq),
            "fbare": [QA_PROMPT.format(question=q) for q in fq], "rbare": [QA_PROMPT.format(question=q) for q in rq]}


@pytest.fixture(scope="module")
def guard(setup):
    s = setup
    return Guard.for_task(s["model"], s["tok"], s["task"], s["forget"], s["retain"], seed=0)


# -- item: the detector learns the evaluation's layout ------------------------------------------------------------

def test_detector_trains_on_the_evaluations_few_shot_prompts(guard, setup):
    fp, rp = setup["fp"], setup["rp"]
    assert all(p.count("Question:") == 3 for p in fp + rp)  # 2 shots, then the question
    pos = {p for p, y in zip(guard.prompts, guard.labels) if y == 1}
    neg = {p for p, y in zip(guard.prompts, guard.labels) if y == 0}
    assert set(fp) <= pos and set(rp) <= neg
    assert set(setup["fbare"]) <= pos and set(setup["rbare"]) <= neg  # the bare layout is still covered
    assert all(guard.prompts.count(p) == 1 for p in fp + rp + setup["fbare"] + setup["rbare"])  # no repeats


def test_few_shot_forget_prompts_are_flagged_retain_ones_mostly_not(guard, setup):
    fp, rp = setup["fp"], setup["rp"]
    hits_f, hits_r = guard.detect(fp), guard.detect(rp)
    assert hits_f.all(), hits_f
    assert hits_r.sum() <= len(rp) // 4, guard.detect_proba(rp)
    # both layouts: the bare questions too
    assert guard.detect(setup["fbare"]).all() and guard.detect(setup["rbare"]).sum() <= len(rp) // 4
    # retrieval reads the few-shot prompt's own question, not the shots
    owners = [k for k, i in enumerate(setup["forget"]) for _ in eval_qa(setup["task"], [i])]
    assert [r[0] for r in guard.retrieve(fp)] == owners
    # generation decides as detect() does (the prefill path reads the same states)
    before = guard.stats["generation"]["detected"]
    generate(guard.wrap(), setup["tok"], fp + rp, "cpu", max_new_tokens=2)
    assert guard.stats["generation"]["detected"] - before == int(hits_f.sum() + hits_r.sum())


def test_zero_shot_plain_task_trains_exactly_the_bare_prompts(world, setup):
    from obliviate.tasks import get_task

    task = get_task("hf", **world, icl_shots=0)
    recs = task.data.train
    s = setup
    a = Guard.for_task(s["model"], s["tok"], task, s["forget"], s["retain"], seed=0)
    b = Guard(s["model"], s["tok"], forget=[recs[i] for i in s["forget"]], retain=[recs[i] for i in s["retain"]],
              general=task.data.holdout, seed=0)
    assert a.prompts == b.prompts and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.detect_proba(s["fbare"] + s["rbare"]), b.detect_proba(s["fbare"] + s["rbare"]))


def test_layouts_must_align_with_the_records(setup):
    s = setup
    recs = s["task"].data.train
    with pytest.raises(ObliviateError, match=r"layouts\['forget'\] has 1 entries for 3 forget records"):
        Guard(s["model"], s["tok"], forget=[recs[i] for i in s["forget"]], layouts={"forget": [[]]})


# -- item: a saved guard -------------------------------------------------------------------------------------------

def _load_dir(path):
    from obliviate.tasks.hf import check_model_dir

    return check_model_dir(str(path), "model").load()


def test_saved_guard_reloads_to_the_same_decisions_and_generations(guard, setup, tmp_path):
    from obliviate.models.store import sha256_file
    from obliviate.models.tiny_lm import save_hf_dir

    tok = setup["tok"]
    save_hf_dir(guard.wrap(), tok, tmp_path)  # what --save-model does
    meta = json.loads((tmp_path / "guard.json").read_text())
    assert meta["format"] == "obliviate.guard/1" and meta["tensors"]["sha256"] == sha256_file(
        tmp_path / "guard.safetensors")
    check_documented(meta, "obliviate.guard/1")
    assert meta["base_weights"] == {"model.safetensors": sha256_file(tmp_path / "model.safetensors")}
    assert not [f for f in os.listdir(tmp_path) if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]

    base = _load_dir(tmp_path)
    loaded = load_guarded(tmp_path, base, tok)
    assert isinstance(loaded, GuardedModel) and loaded.base is base
    prompts = setup["fp"] + setup["rp"] + setup["fbare"] + setup["rbare"]
    g2 = loaded.guard
    assert np.array_equal(g2.detect_proba(prompts), guard.detect_proba(prompts))
    assert np.array_equal(g2.detect(prompts), guard.detect(prompts))
    assert g2.retrieve(prompts) == guard.retrieve(prompts)
    assert [g2.phrases(i) for i in range(3)] == [guard.phrases(i) for i in range(3)]
    few = setup["fbare"][:3] + setup["rbare"][:2] + setup["fp"][:1]
    before = generate(guard.wrap(), tok, few, "cpu", max_new_tokens=6)
    after = generate(loaded, tok, few, "cpu", max_new_tokens=6)
    plain = generate(base, tok, few, "cpu", max_new_tokens=6)
    assert after == before
    assert after[:3] != plain[:3] and after[3:5] == plain[3:5]  # forget rows restricted, retain rows untouched


def test_load_guarded_without_a_guard_returns_the_model(setup, tmp_path):
    from obliviate.models.tiny_lm import save_hf_dir

    save_hf_dir(setup["model"], setup["tok"], tmp_path)
    base = _load_dir(tmp_path)
    assert load_guarded(tmp_path, base, setup["tok"]) is base


def test_a_filter_over_a_guard_saves_the_guard(guard, setup, tmp_path):
    recs = setup["task"].data.train
    flt = InContextFilter(setup["tok"], [recs[i] for i in setup["forget"]]).wrap(guard.wrap())
    flt.save_pretrained(tmp_path, safe_serialization=True)
    assert {"guard.json", "guard.safetensors", "filter.json", "model.safetensors"} <= set(os.listdir(tmp_path))
    loaded = load_guarded(tmp_path, _load_dir(tmp_path), setup["tok"])
    assert np.array_equal(loaded.guard.detect(setup["fp"]), guard.detect(setup["fp"]))


@pytest.mark.parametrize("damage, error, match", [
    ("tensors", IntegrityError, "sha256 mismatch for .*guard.safetensors"),
    ("weights", IntegrityError, "saved with other model weights"),
    ("old", ObliviateError, "records a guard without its detector"),
    ("json", ObliviateError, "guard.json is not valid JSON"),
])
def test_a_damaged_guard_is_a_one_line_error(guard, setup, tmp_path, damage, error, match):
    from obliviate.models.tiny_lm import save_hf_dir

    save_hf_dir(guard.wrap(), setup["tok"], tmp_path)
    base = _load_dir(tmp_path)
    meta = tmp_path / "guard.json"
    if damage == "tensors":
        blob = bytearray((tmp_path / "guard.safetensors").read_bytes())
        blob[-1] ^= 1
        (tmp_path / "guard.safetensors").write_bytes(bytes(blob))
    elif damage == "weights":
        doc = json.loads(meta.read_text())
        doc["base_weights"]["model.safetensors"] = "0" * 64
        meta.write_text(json.dumps(doc))
    elif damage == "old":
        meta.write_text(json.dumps({"method": "guard", "config": {}}))
    else:
        meta.write_text("{not json")
    with pytest.raises(error, match=match) as info:
        load_guarded(tmp_path, base, setup["tok"])
    assert "\n" not in str(info.value)


def test_cli_save_model_writes_the_guard_and_clears_a_stale_one(cli, world, tmp_path):
    out, rep = tmp_path / "guarded", tmp_path / "run.json"
    rc, _, err = cli("run", "--task", "hf", "--method", "guard", *cli_sets(world), "--no-cache", "--quiet",
                     "--save-model", out, "--json", rep)
    assert rc == 0, err
    saved = json.loads(rep.read_text())["models"]["unlearned"]
    meta = json.loads((out / "guard.json").read_text())
    assert saved["guard"]["sha256"] == meta["tensors"]["sha256"] and saved["guard"]["file"] == "guard.safetensors"
    loaded = load_guarded(out, _load_dir(out), _tok(out))
    assert isinstance(loaded, GuardedModel)
    # the same directory then gets an unguarded model: the old guard must not wrap it
    rc, _, err = cli("run", "--task", "hf", "--method", "gradient_ascent", *cli_sets(world), "--no-cache",
                     "--quiet", "--set", "epochs=1", "--save-model", out, "--json", rep)
    assert rc == 0, err
    assert not (out / "guard.json").exists() and not (out / "guard.safetensors").exists()
    assert "guard" not in json.loads(rep.read_text())["models"]["unlearned"]
    base = _load_dir(out)
    assert load_guarded(out, base, _tok(out)) is base


def _tok(path: Path):
    from obliviate.tasks.hf import load_tokenizer

    return load_tokenizer(Path(path))
