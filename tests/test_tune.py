"""obliviate tune: declared ranges, a seeded and reproducible search, JSON reusable as --set @file, clean errors."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

import obliviate
from obliviate.config import build_config, split_overrides
from obliviate.errors import ConfigError
from obliviate.tune import declared_space, tune
from doc_keys import check_documented

FAST = ["--set", "train.epochs=8"]  # the digits recipe of the other tests (shared session cache)
SEARCH = dict(trials=3, budget=100.0, seed=0, test_seeds=[1], overrides={"train.epochs": "8"})


@dataclass
class _Toy:
    lr: float = field(default=0.01, metadata={"gt": 0, "tune": (1e-4, 1e-1, "log")})
    epochs: int = field(default=3, metadata={"min": 1, "tune": (1, 9)})
    mode: Literal["a", "b"] = field(default="a", metadata={"tune": ("choice", ["a", "b"])})
    other: float = 1.0


def test_declared_space_reads_int_float_log_and_choice_ranges():
    space = declared_space(_Toy)
    assert set(space) == {"lr", "epochs", "mode"}  # undeclared fields are never searched
    assert (space["lr"].kind, space["lr"].low, space["lr"].high, space["lr"].log) == ("float", 1e-4, 0.1, True)
    assert (space["epochs"].kind, space["epochs"].low, space["epochs"].high) == ("int", 1, 9)
    assert space["mode"].choices == ("a", "b")
    assert space["epochs"].contains(9) and not space["epochs"].contains(10)


@pytest.mark.parametrize("spec", [(1.0, 0.5), (0.0, 1.0, "log"), (1e-3, 1.0, "lin"), ("choice", ["only"]), (1,)])
def test_a_malformed_declaration_is_a_bug_of_the_method(spec):
    @dataclass
    class Bad:
        lr: float = field(default=0.5, metadata={"gt": 0, "tune": spec})

    with pytest.raises(ValueError):
        declared_space(Bad)


def test_every_methods_declared_ranges_are_valid_and_contain_its_defaults():
    """Each declared range parses, stays inside the field's own min/max, and holds the default (so trial 0 of a
    search is the method as shipped)."""
    tuned = 0
    for cls in obliviate.list_methods():
        space = declared_space(cls.config_class)
        defaults = build_config(cls.config_class, {})
        for name, r in space.items():
            assert r.contains(getattr(defaults, name)), (cls.name, name)
        tuned += bool(space)
    assert tuned >= 8


def test_tune_is_seeded_stays_in_the_ranges_and_starts_from_the_defaults(cache_dir):
    a = tune("digits", "gradient_ascent", "random:0.1", cache_dir=str(cache_dir), **SEARCH)
    b = tune("digits", "gradient_ascent", "random:0.1", cache_dir=str(cache_dir), **SEARCH)
    strip = lambda doc: [(t["params"], t["avg_gap"]) for t in doc["trials"]]  # noqa: E731 (times vary)
    assert strip(a) == strip(b)
    assert a["trials"][0]["params"] == {"lr": 1e-4, "epochs": 5} and a["defaults_enqueued"]
    for t in a["trials"]:
        assert 1e-5 <= t["params"]["lr"] <= 1e-1 and 1 <= t["params"]["epochs"] <= 20
        assert isinstance(t["params"]["epochs"], int)
    best = min(a["trials"], key=lambda t: t["avg_gap"])
    assert a["best"]["params"] == best["params"] and a["best"]["avg_gap"] == best["avg_gap"]
    assert a["set"] == {"train.epochs": "8", **{f"gradient_ascent.{k}": v for k, v in best["params"].items()}}
    test = a["test"]
    assert [r["seed"] for r in test["tuned"]["per_seed"]] == [1]
    assert test["tuned"]["avg_gap_std"] == 0.0 and test["noop"]["avg_gap_mean"] > 0
    # a different sampler seed proposes different parameters after the enqueued defaults
    c = tune("digits", "gradient_ascent", "random:0.1", cache_dir=str(cache_dir), **{**SEARCH, "trials": 2, "seed": 2})
    assert c["trials"][1]["params"] != a["trials"][1]["params"]


def test_a_trial_over_the_time_budget_is_penalised_and_never_best(cache_dir):
    doc = tune("digits", "gradient_ascent", "random:0.1", cache_dir=str(cache_dir),
               **{**SEARCH, "trials": 1, "budget": 1e-9})
    (trial,) = doc["trials"]
    assert not trial["within_budget"] and trial["value"] == pytest.approx(trial["avg_gap"] + 1.0)
    assert doc["best"] is None and doc["set"] is None and doc["test"] is None


def test_a_failing_trial_scores_worst_and_the_search_goes_on(monkeypatch, cli, tmp_path):
    from obliviate import api
    from obliviate.errors import ObliviateError

    def diverge(self, method, *args, **kwargs):
        raise ObliviateError(f"method {method.name!r} diverged")

    monkeypatch.setattr(api.Session, "run", diverge)  # no training happens at all
    doc = tune("digits", "finetune", "random:0.1", **{**SEARCH, "trials": 2})
    assert [t["value"] for t in doc["trials"]] == [3.0, 3.0] and all("diverged" in t["error"] for t in doc["trials"])
    assert doc["best"] is None
    out = tmp_path / "tuned.json"
    rc, _, err = cli("tune", "--task", "digits", "--method", "finetune", "--trials", "2", "--test-seeds", "1",
                     "--out", out, *FAST)
    assert rc == 2 and "every trial of finetune failed" in err and not out.exists()


def test_tune_json_is_reusable_as_set_at_file(cli, tmp_path, cache_dir):
    out = tmp_path / "tuned.json"
    rc, _, err = cli("tune", "--task", "digits", "--method", "gradient_ascent", "--trials", "2", "--budget", "100",
                     "--test-seeds", "1", "--out", out, *FAST, "--quiet")
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert doc["schema"] == "obliviate.tune/1"
    check_documented(doc, "obliviate.tune/1")
    report = tmp_path / "run.json"
    rc, _, err = cli("run", "--task", "digits", "--method", "gradient_ascent", "--set", f"@{out}",
                     "--json", report, "--quiet")
    assert rc == 0, err
    run = json.loads(report.read_text())
    assert run["config"]["lr"] == doc["best"]["params"]["lr"]        # float repr round-trips exactly
    assert run["config"]["epochs"] == doc["best"]["params"]["epochs"]
    assert run["train"]["epochs"] == 8                              # the fixed pairs come back too
    # the best validation run is reproduced exactly by run --set @file on the validation seed
    assert run["avg_gap"] == pytest.approx(doc["best"]["avg_gap"], abs=1e-12)


def test_set_at_file_pairs_apply_in_order_and_take_plain_objects(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"lr": 0.1, "hidden": [32, 16], "flag": True, "name": "x"}))
    assert split_overrides(["lr=1", f"@{f}", "name=y"]) == {"lr": "0.1", "hidden": "32,16", "flag": "true",
                                                              "name": "y"}


@pytest.mark.parametrize("content, message", [
    (None, "file not found"), ("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"),
    ('{"lr": {"a": 1}}', "flat list"),
    (json.dumps({"schema": "obliviate.tune/1", "set": None}), "no best parameters")])
def test_a_missing_or_malformed_set_file_is_one_line_exit_2(cli, tmp_path, content, message):
    f = tmp_path / "p.json"
    if content is not None:
        f.write_text(content)
    rc, out, err = cli("run", "--task", "digits", "--method", "finetune", "--set", f"@{f}", "--quiet")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError):
        split_overrides([f"@{f}"])


@pytest.mark.parametrize("args, message", [
    (["--method", "retrain"], "declares no tunable ranges"),
    (["--method", "finetune", "--budget", "0"], "--budget"),
    (["--method", "finetune", "--budget", "nan"], "--budget"),
    (["--method", "finetune", "--trials", "0"], "--trials"),
    (["--method", "finetune", "--test-seeds", "0,1"], "also a test seed"),
    (["--method", "finetune", "--set", "lr=0.1", "--set", "epochs=2"], "every declared range is fixed"),
    (["--method", "nope"], "unknown method"),
])
def test_bad_tune_requests_are_one_line_exit_2_and_write_nothing(cli, tmp_path, args, message):
    out = tmp_path / "tuned.json"
    rc, _, err = cli("tune", "--task", "digits", *args, "--out", out)  # all refused before any training
    assert rc == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_no_trial_within_budget_is_an_error_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "tuned.json"
    rc, _, err = cli("tune", "--task", "digits", "--method", "gradient_ascent", "--trials", "1", "--budget", "1e-9",
                     "--test-seeds", "1", "--out", out, *FAST, "--quiet")
    assert rc == 2 and "budget" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()

