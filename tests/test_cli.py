"""End-to-end tests of the ``obliviate`` command line (README "Command line"; docs/report-formats.md).

All runs use the same small recipes as tests/test_methods.py (digits: 8 epochs, friedman: 10 epochs) so the
session's model cache trains each original and oracle once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch

import obliviate
from obliviate.requests import ids_sha256

DIGITS = ("--task", "digits", "--set", "train.epochs=8")
FRIEDMAN = ("--task", "friedman", "--set", "train.epochs=10")
N_TRAIN_DIGITS = 1437

HEADLINE = {"classification": ("forget_acc", "retain_acc", "test_acc", "mia"),
            "regression": ("forget_mae", "retain_mae", "test_mae", "mia")}
UNIT = {"type": "number", "minimum": 0, "maximum": 1}
NONNEG = {"type": "number", "minimum": 0}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}


def _metrics_schema(kind: str) -> dict:
    props = {k: UNIT for k in HEADLINE[kind]} if kind == "classification" else {
        "forget_mae": NONNEG, "retain_mae": NONNEG, "test_mae": NONNEG, "mia": UNIT}
    return {"type": "object", "required": list(HEADLINE[kind]), "properties": props}


def run_schema(kind: str = "classification", oracle: bool = True) -> dict:
    """JSON schema of an ``obliviate.run/1`` report, written from docs/report-formats.md."""
    roles = ["original", "unlearned"] + (["oracle"] if oracle else [])
    return {
        "type": "object",
        "required": ["schema", "task", "task_kind", "method", "guarantee", "seed", "device", "forget", "retain",
                     "config", "metrics", "gap", "avg_gap", "time_s", "versions"],
        "properties": {
            "schema": {"const": "obliviate.run/1"},
            "task": {"type": "string", "minLength": 1},
            "task_kind": {"const": kind},
            "method": {"type": "string", "minLength": 1},
            "guarantee": {"enum": ["exact", "certified", "approximate", "suppression"]},
            "seed": {"type": "integer"},
            "device": {"enum": ["cpu", "cuda"]},
            "forget": {"type": "object", "required": ["spec", "n", "sha256"],
                       "properties": {"spec": {"type": "string", "minLength": 1},
                                      "n": {"type": "integer", "minimum": 1}, "sha256": SHA256}},
            "retain": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "minimum": 1}}},
            "config": {"type": "object"},
            "metrics": {"type": "object", "required": roles,
                        "properties": {r: _metrics_schema(kind) for r in roles},
                        **({} if oracle else {"not": {"required": ["oracle"]}})},
            "gap": {"type": "object", "additionalProperties": NONNEG,
                    **({"required": list(HEADLINE[kind])} if oracle else {"maxProperties": 0})},
            "avg_gap": NONNEG if oracle else {"type": "null"},
            "time_s": {"type": "object", "required": ["train", "unlearn"] + (["oracle"] if oracle else []),
                       "properties": {k: NONNEG for k in ("train", "unlearn", "oracle")}},
            "versions": {"type": "object", "required": ["obliviate", "torch"],
                         "properties": {"obliviate": {"const": obliviate.__version__},
                                        "torch": {"const": torch.__version__}}},
        },
    }


BENCH_SCHEMA = {
    "type": "object",
    "required": ["schema", "task", "runs"],
    "properties": {"schema": {"const": "obliviate.bench/1"}, "task": {"const": "digits"},
                   "runs": {"type": "array", "items": run_schema("classification")}},
}


def _validate(doc: dict, schema: dict) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)


def _check_gaps(report: dict) -> None:
    m, kind = report["metrics"], report["task_kind"]
    for k in m["unlearned"]:
        assert report["gap"][k] == pytest.approx(abs(m["unlearned"][k] - m["oracle"][k]), abs=1e-12), k
    headline = HEADLINE[kind]
    assert report["avg_gap"] == pytest.approx(sum(report["gap"][k] for k in headline) / len(headline), abs=1e-12)


def _check_html(text: str, *mentions: str) -> None:
    assert text.lstrip().lower().startswith("<!doctype html")
    assert text.rstrip().endswith("</html>")
    assert "<svg" in text
    # self-contained: nothing fetched from elsewhere (SVG xmlns attributes are names, not fetches)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)""", text, re.I)
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I)
    assert not re.search(r"<link\b", text, re.I)
    assert "@import" not in text and "url(http" not in text
    for word in mentions:
        assert word in text, word


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _listing(*roots: Path) -> list[str]:
    out = []
    for root in roots:
        if root.exists():
            out += sorted(f"{root.name}/{p.relative_to(root)}:{p.stat().st_size if p.is_file() else 'd'}"
                          for p in root.rglob("*"))
    return out


# -- run ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_writes_valid_json_and_html(cli, tmp_path):
    out_json, out_html = tmp_path / "out.json", tmp_path / "out.html"
    rc, stdout, stderr = cli("run", *DIGITS, "--method", "finetune", "--forget", "random:0.1",
                             "--json", out_json, "--html", out_html)
    assert rc == 0, stderr
    assert "finetune" in stdout and "avg_gap" in stdout  # the table
    report = _load(out_json)
    _validate(report, run_schema("classification"))
    assert (report["task"], report["method"], report["guarantee"]) == ("digits", "finetune", "approximate")
    assert report["seed"] == 0 and report["device"] == "cpu"
    assert report["forget"]["spec"] == "random:0.1"
    assert report["forget"]["n"] == round(0.1 * N_TRAIN_DIGITS) == 144
    assert report["retain"]["n"] == N_TRAIN_DIGITS - report["forget"]["n"]
    # the recorded config is the method's default config
    assert report["config"] == dataclasses.asdict(obliviate.get_method("finetune").config_class())
    _check_gaps(report)
    ids = report["per_example"]["forget_ids"]
    assert len(ids) == report["forget"]["n"] and ids == sorted(set(ids))
    assert ids_sha256(ids) == report["forget"]["sha256"]
    _check_html(out_html.read_text(), "finetune", "approximate", "random:0.1")


@pytest.mark.slow
def test_run_twice_is_deterministic_and_reuses_the_cache(cli, tmp_path):
    docs = []
    for i in range(2):
        path = tmp_path / f"run{i}.json"
        rc, _, stderr = cli("run", *DIGITS, "--method", "finetune", "--forget", "random:0.1", "--json", path)
        assert rc == 0, stderr
        docs.append(_load(path))
    first, second = docs
    for key in ("metrics", "gap", "avg_gap", "forget", "retain", "config", "per_example"):
        assert json.dumps(first[key], sort_keys=True) == json.dumps(second[key], sort_keys=True), key
    assert first["models"]["unlearned"]["sha256"] == second["models"]["unlearned"]["sha256"]
    assert second["models"]["original"]["cached"] is True
    assert second["models"]["oracle"]["cached"] is True
    assert second["models"]["original"]["sha256"] == first["models"]["original"]["sha256"]


@pytest.mark.slow
def test_class_forgetting_with_retrain_matches_the_oracle(cli, tmp_path):
    path = tmp_path / "r.json"
    rc, _, stderr = cli("run", *DIGITS, "--method", "retrain", "--forget", "class:3", "--json", path)
    assert rc == 0, stderr
    report = _load(path)
    _validate(report, run_schema("classification"))
    assert report["guarantee"] == "exact"
    m = report["metrics"]
    assert m["oracle"]["forget_acc"] <= 0.05
    assert m["original"]["forget_acc"] >= 0.95
    assert set(report["gap"]) == set(m["unlearned"])
    assert all(v == 0 for v in report["gap"].values()), report["gap"]
    assert report["avg_gap"] == 0
    task = obliviate.get_task("digits")
    assert report["forget"]["n"] == int((task.data.y_train == 3).sum())
    assert report["forget"]["n"] + report["retain"]["n"] == N_TRAIN_DIGITS


@pytest.mark.slow
def test_regression_run_reports_regression_metrics(cli, tmp_path):
    path, html_path = tmp_path / "f.json", tmp_path / "f.html"
    rc, _, stderr = cli("run", *FRIEDMAN, "--method", "finetune", "--forget", "target<=10", "--json", path,
                        "--html", html_path)
    assert rc == 0, stderr
    report = _load(path)
    _validate(report, run_schema("regression"))
    assert report["task_kind"] == "regression"
    for role in ("original", "unlearned", "oracle"):
        assert set(HEADLINE["regression"]) <= set(report["metrics"][role])
        assert not {"forget_acc", "retain_acc", "test_acc"} & set(report["metrics"][role])
    task = obliviate.get_task("friedman")
    assert report["forget"]["n"] == int((task.data.y_train <= 10).sum())
    _check_gaps(report)
    _check_html(html_path.read_text(), "finetune", "forget_mae")


@pytest.mark.slow
def test_save_model_writes_safetensors_and_matching_sha256(cli, tmp_path):
    from safetensors.torch import load_file

    model_path, path = tmp_path / "m.safetensors", tmp_path / "s.json"
    rc, _, stderr = cli("run", *DIGITS, "--method", "finetune", "--save-model", model_path, "--json", path)
    assert rc == 0, stderr
    report = _load(path)
    side = Path(f"{model_path}.sha256")
    assert model_path.is_file() and side.is_file()
    recorded = side.read_text().split()[0]
    actual = hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert recorded == actual == report["models"]["unlearned"]["sha256"]
    state = load_file(str(model_path))
    task = obliviate.get_task("digits")
    model = task.make_model(0)
    model.load_state_dict(state)  # a complete state dict of the task's model
    values = obliviate.evaluate("digits", model, "random:0.1")
    for k in HEADLINE["classification"]:
        assert values[k] == pytest.approx(report["metrics"]["unlearned"][k], abs=1e-12)


@pytest.mark.slow
def test_unlearned_sha256_does_not_depend_on_save_model(cli, tmp_path):
    """models.unlearned.sha256 identifies the weights: the same run with and without --save-model agrees."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli("run", *DIGITS, "--method", "finetune", "--json", a)[0] == 0
    assert cli("run", *DIGITS, "--method", "finetune", "--json", b, "--save-model", tmp_path / "m.safetensors")[0] == 0
    without, with_file = _load(a), _load(b)
    assert without["metrics"] == with_file["metrics"]
    assert without["models"]["unlearned"]["sha256"] == with_file["models"]["unlearned"]["sha256"], (
        "state_sha256 (metadata-free) != hash of the file save_state_file writes (header has __metadata__ {})")


@pytest.mark.slow
def test_no_oracle_report(cli, tmp_path):
    path, cache = tmp_path / "n.json", tmp_path / "cache"
    rc, _, stderr = cli("run", *DIGITS, "--method", "finetune", "--no-oracle", "--json", path, "--cache-dir", cache)
    assert rc == 0, stderr
    report = _load(path)
    _validate(report, run_schema("classification", oracle=False))
    assert "oracle" not in report["metrics"]
    assert report["avg_gap"] is None
    assert report["gap"] == {}
    assert "oracle" not in report["models"]
    assert report["time_s"].get("oracle") is None
    # only the original was trained and cached, no oracle
    assert len(list(cache.glob("*.safetensors"))) == 1


# -- bench --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bench_two_seeds_three_methods(cli, tmp_path):
    out_json, out_html = tmp_path / "b.json", tmp_path / "b.html"
    rc, _, stderr = cli("bench", *DIGITS, "--methods", "retrain,finetune,npo", "--seeds", "2",
                        "--json", out_json, "--html", out_html)
    assert rc == 0, stderr
    doc = _load(out_json)
    _validate(doc, BENCH_SCHEMA)
    runs = doc["runs"]
    assert len(runs) == 6
    assert sorted((r["seed"], r["method"]) for r in runs) == sorted(
        (s, m) for s in (0, 1) for m in ("retrain", "finetune", "npo"))
    for r in runs:
        _check_gaps(r)
        if r["method"] == "retrain":
            assert r["avg_gap"] == 0
    # the oracle is shared by every method of a seed; seeds differ
    for s in (0, 1):
        seed_runs = [r for r in runs if r["seed"] == s]
        assert len({r["models"]["oracle"]["sha256"] for r in seed_runs}) == 1
        assert len({json.dumps(r["metrics"]["oracle"], sort_keys=True) for r in seed_runs}) == 1
        assert len({r["forget"]["sha256"] for r in seed_runs}) == 1
    assert runs[0]["forget"]["sha256"] != runs[-1]["forget"]["sha256"]
    summary = doc["summary"]
    assert [s["method"] for s in summary] == ["retrain", "finetune", "npo"]
    for s in summary:
        method_runs = [r for r in runs if r["method"] == s["method"]]
        assert s["n_seeds"] == 2
        assert s["guarantee"] == method_runs[0]["guarantee"]
        assert s["avg_gap"] == pytest.approx(sum(r["avg_gap"] for r in method_runs) / 2, abs=1e-12)
        assert s["forget_acc"] == pytest.approx(
            sum(r["metrics"]["unlearned"]["forget_acc"] for r in method_runs) / 2, abs=1e-12)
    _check_html(out_html.read_text(), "retrain", "finetune", "npo", "exact", "approximate")
    # the verdict: the original / oracle reference rows are means over both seeds, like the method rows
    ref, verdict = doc["reference"], doc["verdict"]
    assert ref["seeds"] == [0, 1]
    assert ref["oracle"]["forget_acc"] == pytest.approx(
        sum(r["metrics"]["oracle"]["forget_acc"] for r in runs if r["method"] == "npo") / 2, abs=1e-12)
    rated = [s for s in summary if s["method"] != "retrain"]
    assert verdict["best"] == min(rated, key=lambda s: s["avg_gap"])["method"]
    assert verdict["did_not_forget"] == [s["method"] for s in rated if s["avg_gap"] >= ref["do_nothing_avg_gap"]]
    assert "<b>Verdict.</b>" in out_html.read_text()


def test_bench_prints_the_verdict(cli, tmp_path):
    rc, stdout, stderr = cli("bench", *DIGITS, "--methods", "finetune,npo", "--cache-dir", tmp_path / "c")
    assert rc == 0, stderr
    assert "do nothing" in stdout and "verdict:" in stdout
    assert "best: " in stdout or "no method beat doing nothing" in stdout


# -- listings -----------------------------------------------------------------------------------------------

def test_methods_name_shows_one_methods_config(cli):
    rc, stdout, _ = cli("methods", "npo")
    assert rc == 0
    assert stdout.count("npo (approximate;") == 2  # the classifier and the language implementation
    assert "beta" in stdout and "inverse temperature" in stdout and "lora_r" in stdout
    rc, stdout, _ = cli("methods", "scrub", "--json")
    info = json.loads(stdout)
    assert rc == 0 and info["name"] == "scrub" and {f["name"] for f in info["config"]} >= {"lr", "epochs"}
    rc, _, stderr = cli("methods", "no_such_method")
    assert rc == 2 and "unknown method 'no_such_method'" in stderr and len(stderr.strip().splitlines()) == 1

def test_methods_json_lists_every_method(cli):
    rc, stdout, _ = cli("methods", "--json")
    assert rc == 0
    infos = json.loads(stdout)
    assert [i["name"] for i in infos] == [m.name for m in obliviate.list_methods()]
    for info in infos:
        cls = obliviate.get_method(info["name"], info["kinds"][0])
        assert info["guarantee"] == cls.guarantee
        assert info["needs"] == sorted(cls.needs)
        assert info["kinds"] == list(cls.kinds) and info["kinds"]
        assert {c["name"] for c in info["config"]} == {f for f in cls.config_class.__dataclass_fields__}


def test_methods_table(cli):
    rc, stdout, _ = cli("methods")
    assert rc == 0
    for m in obliviate.list_methods():
        assert m.name in stdout


def test_tasks_json_lists_builtin_tasks(cli):
    rc, stdout, _ = cli("tasks", "--json")
    assert rc == 0
    infos = {i["name"]: i for i in json.loads(stdout)}
    assert {"digits", "breast_cancer", "friedman", "csv"} <= set(infos)
    assert infos["digits"]["kind"] == "classification"
    assert infos["breast_cancer"]["kind"] == "classification"
    assert infos["friedman"]["kind"] == "regression"
    assert {"data", "target"} <= {o["name"] for o in infos["csv"]["options"]}
    assert all(i["description"] for i in infos.values())


# -- bad input ----------------------------------------------------------------------------------------------

def _run_args(out: Path, *, task="digits", method="finetune", forget="random:0.1", sets=("train.epochs=8",),
              extra=()) -> list[str]:
    args = ["run", "--task", task, "--method", method, "--forget", forget]
    for s in sets:
        args += ["--set", s]
    return args + ["--json", str(out / "o.json"), "--html", str(out / "o.html"),
                   "--save-model", str(out / "m.safetensors"), "--cache-dir", str(out / "cache"), *extra]


BAD_INPUT = {
    "unknown-method": (dict(method="no_such_method"), "no_such_method"),
    "unknown-task": (dict(task="no_such_task"), "no_such_task"),
    "bad-forget-spec": (dict(forget="bogus:3"), "bogus:3"),
    "ids-out-of-range": (dict(forget="ids:0,5000"), "out of range"),
    "empty-forget-set": (dict(forget="random:0.0001"), "no training examples"),
    "empty-regression-cohort": (dict(task="friedman", forget="target>=1000", sets=("train.epochs=10",)),
                                "no training examples"),
    "forget-everything": (dict(forget="class:0,1,2,3,4,5,6,7,8,9"), "whole training set"),
    "unknown-set-key": (dict(sets=("train.epochs=8", "no_such_key=1")), "no_such_key"),
    "unknown-train-key": (dict(sets=("train.no_such_key=1",)), "no_such_key"),
    "bad-set-int": (dict(sets=("train.epochs=abc",)), "train.epochs"),
    "bad-set-range": (dict(sets=("train.epochs=8", "lr=-1")), "lr"),
    "set-without-equals": (dict(sets=("train.epochs=8", "lr")), "key=value"),
    "class-spec-on-regression": (dict(task="friedman", forget="class:3", sets=("train.epochs=10",)), "class:3"),
    "scrub-on-regression": (dict(task="friedman", method="scrub", forget="target>=20", sets=("train.epochs=10",)),
                            "does not apply"),
    "csv-missing-file": (dict(task="csv", sets=("data=/nonexistent/dir/none.csv", "target=y")), "not found"),
    "device-cuda": (dict(extra=("--device", "cuda")), "cuda"),
    "bad-device": (dict(extra=("--device", "tpu")), "tpu"),
    "unknown-option": (dict(extra=("--no-such-option",)), "--no-such-option"),
    # issue 15's fuzzing holes
    "epochs-1e12": (dict(sets=("train.epochs=1e12",)), "train.epochs: expected at most 1,000,000"),
    "method-epochs-1e12": (dict(sets=("train.epochs=8", "epochs=1e12")), "epochs: expected at most"),
    "hidden-0": (dict(sets=("train.epochs=8", "hidden=0")), "hidden: expected a value >= 1"),
    "hidden-negative": (dict(sets=("train.epochs=8", "hidden=64,-5")), "hidden: expected a value >= 1"),
    "full-width-ids": (dict(forget="ids:１,２"), "is not an integer id (ASCII digits"),
    "arabic-indic-ids": (dict(forget="ids:٣"), "is not an integer id (ASCII digits"),
    "full-width-fraction": (dict(forget="random:０.１"), "is not a number"),
    "unknown-class-name": (dict(forget="class:seven"), "no class named 'seven'; classes: 0, 1"),
    "huge-bad-spec": (dict(forget="bogus:" + "x" * 1_000_000), "(1,000,006 characters)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, cli, tmp_path, monkeypatch, cache_dir):
    kwargs, names = BAD_INPUT[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a stray relative write would show up in the listing
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "a machine without CUDA", on any machine
    before = _listing(tmp_path, cache_dir)
    rc, stdout, stderr = cli(*_run_args(tmp_path, **kwargs))
    assert rc == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:")
    assert names in lines[0], lines[0]
    assert len(lines[0]) < 600, f"{len(lines[0])} characters"  # a huge bad input is not echoed whole
    assert "Traceback" not in stderr and stdout.strip() == ""
    for name in ("o.json", "o.html", "m.safetensors", "m.safetensors.sha256", "cache"):
        assert not (tmp_path / name).exists(), name
    assert _listing(tmp_path, cache_dir) == before


def test_bench_bad_input(cli, tmp_path):
    before = _listing(tmp_path)
    for methods, names in (("finetune,no_such_method", "no_such_method"), ("finetune,scrub", "does not apply"),
                           (",", "at least one")):
        task = "friedman" if "scrub" in methods else "digits"
        rc, _, stderr = cli("bench", "--task", task, "--methods", methods, "--json", tmp_path / "b.json",
                            "--cache-dir", tmp_path / "cache")
        assert rc == 2
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error:") and names in stderr, stderr
    assert _listing(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("args,names", [
    (("--method", "no_such_method"), "no_such_method"),
    (("--method", "finetune", "--forget", "bogus:3"), "bogus:3"),
])
def test_bad_input_in_a_real_process(cli_subprocess, tmp_path, args, names):
    rc, stdout, stderr = cli_subprocess("run", "--task", "digits", *args, "--json", tmp_path / "o.json",
                                        "--cache-dir", tmp_path / "cache", cwd=tmp_path)
    assert rc == 2
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and names in lines[0], stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_diverging_method_does_not_crash_with_a_traceback(cli_subprocess, tmp_path):
    """gradient_ascent with a large lr on friedman drives the regressor to NaN; the run must still end with a
    report (NaN metrics become null) or a one-line error, never a traceback."""
    out = tmp_path / "d.json"
    rc, stdout, stderr = cli_subprocess("run", *FRIEDMAN, "--method", "gradient_ascent", "--forget", "target>=20",
                                        "--set", "lr=0.01", "--json", out, "--quiet", cwd=tmp_path)
    assert "Traceback" not in stderr, stderr[-2000:]
    assert rc == 2, stderr[-2000:]
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error:")
    assert "diverged" in stderr and "gradient_ascent" in stderr
    assert not out.exists()
