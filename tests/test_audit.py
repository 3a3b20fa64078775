"""Removal-vs-suppression audits (``obliviate audit``, schema ``obliviate.audit/1``) on the tiny authors task:
the original memorises 12 authors, the forget set is 2 of them (``subjects:2``), the methods are a few steps of
gradient ascent (approximate) and ``retrain`` (exact: the unlearned model *is* the oracle)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from obliviate.audit import (AUDIT_SCHEMA, MIN_GAP, THRESHOLDS, AuditConfig, build_audit_config,
                             check_probe_attribute, conv1d_to_linear, decide, knowmem, quantize_int8, relearn_curve,
                             side_effect_groups)
from obliviate.errors import ConfigError, ObliviateError
from obliviate.requests import resolve

from conftest import TINY_AUTHORS, TINY_LM_TRAIN
from doc_keys import check_documented

FORGET = "subjects:2"
GA = {"lr": 3e-3, "epochs": 3, "batch_size": 8}
# band 0.8: gradient ascent's KnowMem_f comes back above 0.8 within about 40 relearning steps (25–40: the count moves
# with float rounding, GA being chaotic at lr 3e-3), the oracle's stays below 0.6 for 120
GA_AUDIT = {"band": 0.8, "max_steps": 120}
TINY_SET = ([f"--set={k}={v}" for k, v in TINY_AUTHORS.items()]
            + [f"--set=train.{k}={v}" for k, v in TINY_LM_TRAIN.items()])
TOP_KEYS = {"schema", "task", "task_kind", "method", "guarantee", "seed", "device", "forget", "retain", "config",
            "audit_config", "metrics", "incontext", "relearn", "quantized", "probe", "side_effects", "verdict",
            "evidence", "thresholds", "time_s"}


def _audit(method: str, audit_config: dict, **config):
    from obliviate.audit import audit

    return audit("authors", method, FORGET, task_options=TINY_AUTHORS, train=TINY_LM_TRAIN,
                 audit_config=audit_config, **config)


@pytest.fixture(scope="module")
def ga_doc(tiny_lm):
    return _audit("gradient_ascent", GA_AUDIT, **GA)


@pytest.fixture(scope="module")
def split(tiny_lm):
    task = tiny_lm[0]
    forget = resolve(FORGET, task, 0).ids
    return forget, np.setdiff1d(np.arange(task.n_train), forget)


@pytest.fixture(scope="module")
def oracle(tiny_lm, split):
    from obliviate.models.store import ModelStore
    from obliviate.oracle import retrain_oracle

    task, recipe, _ = tiny_lm
    return retrain_oracle(task, split[1], recipe, 0, torch.device("cpu"), ModelStore())[0]


def _forget_qa(task, ids):
    return [q for i in ids for q in task.data.train[int(i)].qa]


# -- the document ---------------------------------------------------------------------------------------------------

def test_document_schema_and_keys(ga_doc, tmp_path):
    from obliviate.report import write_json

    assert TOP_KEYS <= set(ga_doc)
    assert ga_doc["schema"] == AUDIT_SCHEMA == "obliviate.audit/1"
    check_documented(ga_doc, "obliviate.audit/1")
    assert (ga_doc["task"], ga_doc["task_kind"], ga_doc["method"]) == ("authors", "language", "gradient_ascent")
    assert ga_doc["guarantee"] == "approximate" and ga_doc["verdict"] in ("removal-like", "suppression-like")
    assert ga_doc["forget"]["spec"] == FORGET and ga_doc["forget"]["n"] == 2 and ga_doc["retain"]["n"] == 10
    assert ga_doc["config"]["lr"] == GA["lr"] and ga_doc["audit_config"]["band"] == GA_AUDIT["band"]
    assert set(ga_doc["metrics"]) == {"original", "unlearned", "oracle"}
    assert ga_doc["thresholds"] == THRESHOLDS
    assert [e["check"] for e in ga_doc["evidence"]] == ["guarantee", "relearn_anamnesis", "quantization_recovery",
                                                        "probe_excess"]
    for e in ga_doc["evidence"]:
        assert set(e) >= {"check", "value", "threshold", "suppression"} and isinstance(e["suppression"], bool)
    assert {"run", "incontext", "relearn", "quantized", "probe", "side_effects", "total"} <= set(ga_doc["time_s"])
    path = tmp_path / "a.json"
    write_json(ga_doc, path)  # serialisable, no NaN
    assert json.loads(path.read_text())["verdict"] == ga_doc["verdict"]


def test_incontext_rows(ga_doc):
    ic = ga_doc["incontext"]
    rows, metrics = ic["models"], ga_doc["metrics"]
    assert ic["n_questions"] == 14
    for role in ("original", "oracle", "unlearned"):
        # KnowMem without context is exactly the run's knowmem_f (same prompts, same batch)
        assert rows[role]["base"] == pytest.approx(metrics[role]["knowmem_f"], abs=1e-9)
        assert len(rows[role]["context_f1"]) == len(rows[role]["context_answers"]) == 14
        assert 0 <= rows[role]["context"] <= 1
    assert rows["original"]["base"] >= 0.9          # the original answers the forget questions
    assert rows["oracle"]["base"] <= 0.3            # the oracle does not (it never saw the 2 authors)
    assert rows["original"]["recovery"] is None     # the reference itself
    u = rows["unlearned"]
    assert u["recovery"] == pytest.approx((u["context"] - u["base"]) / (rows["original"]["base"] - u["base"]))
    o = rows["original"]
    assert ic["context_usable"] == (o["context"] >= o["base"] - MIN_GAP)
    assert ("warnings" in ic) == (not ic["context_usable"])
    try:
        import obliviate.guard  # noqa: F401
        from obliviate.guard import InContextFilter  # noqa: F401
        assert "unlearned+filter" in rows
    except ImportError:
        assert "unlearned+filter" not in rows and "not available" in ic["note"]


# -- relearning -------------------------------------------------------------------------------------------------------

def test_relearn_steps_and_saturation(ga_doc):
    rl = ga_doc["relearn"]
    assert rl["target"] == pytest.approx(GA_AUDIT["band"] * rl["original_knowmem_f"])
    for run in rl["models"].values():
        steps = [p["step"] for p in run["curve"]]
        values = [p["knowmem_f"] for p in run["curve"]]
        assert steps == list(range(0, steps[-1] + 1, rl["eval_every"]))
        assert all(v < rl["target"] for v in values[:-1])
        if run["saturated"]:
            assert run["steps"] == rl["max_steps"] == steps[-1] and values[-1] < rl["target"]
        else:
            assert run["steps"] == steps[-1] and values[-1] >= rl["target"]
    u, o = rl["models"]["unlearned"], rl["models"]["oracle"]
    assert not u["saturated"] and o["saturated"]  # gradient ascent's knowledge comes back, the oracle's does not
    assert rl["anamnesis"] == pytest.approx(u["steps"] / o["steps"]) and rl["anamnesis_bound"]


def test_relearn_original_needs_zero_steps(tiny_lm, split):
    task, _, original = tiny_lm
    r = relearn_curve(original, task, split[0], 0.9, AuditConfig(), 0, "cpu")
    assert r["steps"] == 0 and not r["saturated"] and len(r["curve"]) == 1 and r["start"] >= 0.9


def test_relearn_saturates_and_is_deterministic(tiny_lm, split, oracle, ga_doc):
    task = tiny_lm[0]
    before = {k: v.clone() for k, v in oracle.state_dict().items()}
    cfg = build_audit_config({"max_steps": 10, "eval_every": 5})
    a = relearn_curve(oracle, task, split[0], 2.0, cfg, 0, "cpu")  # an unreachable target
    b = relearn_curve(oracle, task, split[0], 2.0, cfg, 0, "cpu")
    assert a["saturated"] and a["steps"] == 10 and [p["step"] for p in a["curve"]] == [0, 5, 10]
    assert a == b
    assert a["curve"] == ga_doc["relearn"]["models"]["oracle"]["curve"][:3]  # the audit's run, same seed
    assert all(torch.equal(v, before[k]) for k, v in oracle.state_dict().items())  # relearns a copy
    c = relearn_curve(oracle, task, split[0], 2.0, cfg, 1, "cpu")
    assert c["curve"] != a["curve"]  # another seed relearns on other sequences in another order


# -- quantization -----------------------------------------------------------------------------------------------------

def test_conv1d_to_linear_is_exact(tiny_lm):
    from transformers.pytorch_utils import Conv1D

    task, _, original = tiny_lm
    lin = conv1d_to_linear(original)
    assert not any(isinstance(m, Conv1D) for m in lin.modules())
    assert sum(isinstance(m, Conv1D) for m in original.modules()) == 8  # the original is untouched
    ids = torch.tensor([task.tokenizer()(task.data.train[0].text)["input_ids"][:60]])
    with torch.inference_mode():
        a, b = original(input_ids=ids).logits, lin(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_int8_model_generates_and_is_reported(tiny_lm, split, ga_doc):
    task, _, original = tiny_lm
    q, n = quantize_int8(original)
    assert n == 9  # 2 blocks x 4 projections + the LM head
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in q.modules()) == 9
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    k = knowmem(q, task, _forget_qa(task, split[0]), "cpu")
    assert all(isinstance(o, str) for o in k["outputs"]) and k["f1"].mean() >= 0.9  # still knows its authors
    qz = ga_doc["quantized"]
    for name in ("int8", "fp16"):
        v = qz["variants"][name]
        assert 0 <= v["knowmem_f"] <= 1 and 0 <= v["verbmem_f"] <= 1
        assert set(v["recovery"]) == {"knowmem_f", "verbmem_f"}
    assert qz["variants"]["int8"]["linear_layers"] == 9
    assert qz["variants"]["fp16"]["dtype"] in ("float16", "bfloat16")
    assert qz["unlearned"]["knowmem_f"] == ga_doc["metrics"]["unlearned"]["knowmem_f"]
    recs = [v["recovery"]["knowmem_f"] for v in qz["variants"].values() if v["recovery"]["knowmem_f"] is not None]
    assert qz["max_recovery"] == max(recs)


# -- probe and side effects -------------------------------------------------------------------------------------------

def test_probe_block(ga_doc, tiny_lm):
    pr = ga_doc["probe"]
    assert pr["attribute"] == "genre" and pr["n_train"] == 10 and pr["n_test"] >= 1
    assert 0 <= pr["chance"] <= 1
    for role in ("original", "unlearned", "oracle"):
        m = pr["models"][role]
        assert 0 <= m["accuracy"] <= 1 and len(m["per_layer"]) == 3  # embeddings + 2 blocks
        assert m["accuracy"] == m["per_layer"][-1]
    assert pr["excess_over_oracle"] == pytest.approx(pr["models"]["unlearned"]["accuracy"]
                                                     - pr["models"]["oracle"]["accuracy"])
    with pytest.raises(ConfigError, match="shoe_size"):
        check_probe_attribute(tiny_lm[0], "shoe_size")


def test_side_effect_groups(tiny_lm, split, ga_doc):
    task = tiny_lm[0]
    forget, retain = split
    attrs = ("city", "genre", "year")
    related, unrelated, shared = side_effect_groups(task, forget, retain, attrs)
    assert related and unrelated and not set(related) & set(unrelated)
    assert sorted(related + unrelated) == retain.tolist()
    recs = task.data.train
    fvals = {a: {recs[int(i)].attributes[a] for i in forget} for a in attrs}
    for i in related:
        assert shared[str(i)] and all(recs[i].attributes[a] in fvals[a] for a in shared[str(i)])
    for i in unrelated:
        assert all(recs[i].attributes[a] not in fvals[a] for a in attrs)
    se = ga_doc["side_effects"]
    assert se["related_ids"] == related and se["unrelated_ids"] == unrelated
    ch, km = se["change"]["unlearned"], se["knowmem"]
    assert ch["related"] == pytest.approx(km["unlearned"]["related"] - km["original"]["related"])
    assert ch["difference"] == pytest.approx(ch["related"] - ch["unrelated"])


# -- verdict ----------------------------------------------------------------------------------------------------------

def test_verdict_logic():
    clean = dict(anamnesis=1.0, quantization_recovery=0.0, probe_excess=0.0)
    assert decide("approximate", **clean)["verdict"] == "removal-like"
    sup = decide("suppression", **clean)
    assert sup["verdict"] == "suppression-like" and [e["suppression"] for e in sup["evidence"]] == [True] + [False] * 3
    for key, value in (("anamnesis", 0.49), ("quantization_recovery", 0.21), ("probe_excess", 0.16)):
        d = decide("approximate", **{**clean, key: value})
        assert d["verdict"] == "suppression-like" and sum(e["suppression"] for e in d["evidence"]) == 1
    at_threshold = decide("exact", anamnesis=0.5, quantization_recovery=0.2, probe_excess=0.15)
    assert at_threshold["verdict"] == "removal-like"
    unknown = decide("approximate", anamnesis=None, quantization_recovery=None, probe_excess=None)
    assert unknown["verdict"] == "removal-like" and all(e.get("note") for e in unknown["evidence"][1:])
    assert decide("approximate", **{**clean, "anamnesis": 0.7}, thresholds={"relearn_anamnesis": 0.8})[
        "verdict"] == "suppression-like"


def test_ga_audit_verdict_follows_evidence(ga_doc):
    assert ga_doc["verdict"] == ("suppression-like" if any(e["suppression"] for e in ga_doc["evidence"])
                                 else "removal-like")
    relearn = next(e for e in ga_doc["evidence"] if e["check"] == "relearn_anamnesis")
    assert relearn["value"] == ga_doc["relearn"]["anamnesis"] and relearn["suppression"]


def test_retrain_audit_is_removal_like(tiny_lm):
    doc = _audit("retrain", {"max_steps": 10})
    assert doc["guarantee"] == "exact" and doc["verdict"] == "removal-like"
    assert doc["models"]["unlearned"]["sha256"] == doc["models"]["oracle"]["sha256"]
    ic = doc["incontext"]["models"]
    assert ic["unlearned"]["base_f1"] == ic["oracle"]["base_f1"]
    assert ic["unlearned"]["context_f1"] == ic["oracle"]["context_f1"]
    assert doc["probe"]["excess_over_oracle"] == 0.0
    rl = doc["relearn"]
    assert rl["models"]["unlearned"] == rl["models"]["oracle"]
    assert rl["anamnesis"] is None and "undetermined" in rl["note"]  # both stay below the band in 10 steps


def test_audit_rejects_bad_input_before_training(tiny_lm):
    from obliviate.audit import audit

    with pytest.raises(ObliviateError, match="language task"):
        audit("digits", "finetune")
    with pytest.raises(ConfigError, match="unknown audit key 'bogus'"):
        _audit("gradient_ascent", {"bogus": 1})
    with pytest.raises(ConfigError, match="audit.band"):
        _audit("gradient_ascent", {"band": 1.5})


# -- command line ----------------------------------------------------------------------------------------------------

def test_cli_audit_writes_json_and_html(cli, tmp_path):
    j, h = tmp_path / "out" / "audit.json", tmp_path / "audit.html"
    rc, out, err = cli("audit", "--task", "authors", "--method", "gradient_ascent", "--forget", FORGET, *TINY_SET,
                       "--set", "lr=3e-3", "--set", "epochs=3", "--set", "batch_size=8",
                       "--set", "audit.max_steps=10", "--json", j, "--html", h)
    assert rc == 0, err
    doc = json.loads(j.read_text())
    assert doc["schema"] == "obliviate.audit/1" and doc["audit_config"]["max_steps"] == 10
    assert doc["verdict"] in ("removal-like", "suppression-like") and TOP_KEYS <= set(doc)
    text = h.read_text()
    assert doc["verdict"] in text and "Evidence" in text and "<svg" in text
    assert f"verdict: {doc['verdict']}" in out and "relearn steps" in out


@pytest.mark.parametrize("args, message", [
    (("--task", "digits", "--method", "finetune"), "language task"),
    (("--task", "authors", "--method", "gradient_ascent", *TINY_SET, "--set", "audit.bogus=1"), "audit key"),
    (("--task", "authors", "--method", "gradient_ascent", *TINY_SET, "--set", "audit.probe_attribute=shoe"),
     "probe_attribute"),
    (("--task", "authors", "--method", "gradient_ascent", *TINY_SET, "--forget", "subjects:12"), "subjects"),
    (("--task", "authors", "--method", "nope", *TINY_SET), "nope"),
])
def test_cli_audit_bad_input_exits_2_and_writes_nothing(cli, tmp_path, args, message):
    rc, out, err = cli("audit", *args, "--json", tmp_path / "a.json", "--html", tmp_path / "a.html")
    assert rc == 2 and message in err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_audit_output_path_checked_first(cli, tmp_path):
    rc, _, err = cli("audit", "--task", "authors", "--method", "gradient_ascent", "--json", tmp_path)
    assert rc == 2 and "is a directory" in err
