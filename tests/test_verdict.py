"""The verdict (issue 15): the best method against doing nothing, and methods that did not forget, from a bench
document; the original/oracle reference rows averaged over the same seeds as the method rows."""
from __future__ import annotations

import pytest

from obliviate.report import render_bench_html
from obliviate.verdict import bench_verdict, reference, run_verdict


def _run(method, seed, forget_acc_orig, forget_acc_oracle, forget_acc_unl):
    # one headline metric differs; the others are equal, so avg_gap = |Δ forget_acc| / 4 (4 classification keys)
    base = {"retain_acc": 1.0, "test_acc": 0.9, "mia": 0.5}
    return {"method": method, "seed": seed, "guarantee": "approximate",
            "metrics": {"original": {**base, "forget_acc": forget_acc_orig},
                        "oracle": {**base, "forget_acc": forget_acc_oracle},
                        "unlearned": {**base, "forget_acc": forget_acc_unl}}}


def test_reference_rows_are_means_over_the_seeds():
    runs = [_run("a", 0, 1.0, 0.8, 0.9), _run("b", 0, 1.0, 0.8, 0.85), _run("a", 1, 1.0, 0.6, 0.7)]
    ref = reference(runs, "classification")
    assert ref["seeds"] == [0, 1]
    assert ref["oracle"]["forget_acc"] == pytest.approx(0.7) and ref["oracle_std"]["forget_acc"] == pytest.approx(0.1)
    # doing nothing: |1.0 - 0.8| / 4 = 0.05 on seed 0, |1.0 - 0.6| / 4 = 0.1 on seed 1
    assert ref["do_nothing_avg_gap"] == pytest.approx(0.075)
    assert ref["do_nothing_avg_gap_std"] == pytest.approx(0.025)


def _doc(rows, runs=()):
    return {"task": "t", "task_kind": "classification", "forget": "random:0.1", "seeds": [0], "runs": list(runs),
            "summary": [{"method": m, "guarantee": "approximate", "avg_gap": g, "time_ratio": 0.1, "n_seeds": 1}
                        for m, g in rows]}


def test_best_method_and_the_ones_that_did_not_forget():
    v = bench_verdict(_doc([("retrain", 0.0), ("npo", 0.01), ("finetune", 0.05), ("ga", 0.04)]), do_nothing=0.04)
    assert v["best"] == "npo"  # retrain is the oracle's recipe, not a contender
    assert v["times_closer"] == pytest.approx(4.0)
    assert v["did_not_forget"] == ["finetune", "ga"]  # ties with doing nothing count as not forgetting
    assert "best: npo (approximate): avg_gap 0.0100, 4.0× closer to the oracle than doing nothing (0.0400)" in v["text"]
    assert "did not forget at these settings (avg_gap ≥ doing nothing): finetune, ga" in v["text"]
    assert "note:" not in v["text"]


def test_no_method_beating_doing_nothing_is_said_and_a_tiny_gap_is_noted():
    v = bench_verdict(_doc([("finetune", 0.02), ("ga", 0.03)]), do_nothing=0.0145)
    assert v["did_not_forget"] == ["finetune", "ga"] and "times_closer" not in v
    assert v["text"].splitlines()[0] == "no method beat doing nothing (avg_gap 0.0145) at these settings"
    assert "already within 0.0145 of the oracle" in v["text"]


def test_the_do_nothing_gap_comes_from_the_runs_when_not_given():
    runs = [_run("npo", 0, 1.0, 0.6, 0.62)]
    v = bench_verdict(_doc([("npo", 0.005)], runs))
    assert v["do_nothing_avg_gap"] == pytest.approx(0.1) and v["times_closer"] == pytest.approx(20.0)


def test_run_verdict():
    r = {**_run("finetune", 0, 1.0, 0.8, 0.99), "task_kind": "classification", "avg_gap": 0.0525}
    assert run_verdict(r) == ("verdict: finetune did not forget at these settings (avg_gap 0.0525 ≥ doing nothing "
                              "0.0500)")
    r["avg_gap"] = 0.01
    assert run_verdict(r) == "verdict: avg_gap 0.0100 vs doing nothing 0.0500 (5.0× closer to the oracle)"
    assert run_verdict({**r, "avg_gap": None}) is None


def test_the_bench_page_shows_the_verdict_and_flags():
    runs = [_run("npo", 0, 1.0, 0.8, 0.81), _run("finetune", 0, 1.0, 0.8, 1.0)]
    for r in runs:
        r.update(task="t", forget={"spec": "random:0.1", "n": 1, "sha256": "0" * 64}, retain={"n": 9}, device="cpu",
                 time_s={}, avg_gap=None)
    page = render_bench_html(_doc([("npo", 0.0025), ("finetune", 0.05)], runs))
    assert "<b>Verdict.</b> best: npo (approximate): avg_gap 0.0025, 20.0× closer" in page
    assert "finetune <small>(did not forget at these settings)</small>" in page
    assert "do nothing: the original" in page


@pytest.mark.parametrize("kind", ["classification", "language"])
def test_the_bench_table_fits_80_columns(kind, monkeypatch):
    import io

    from rich.console import Console

    from obliviate import cli
    from obliviate.metrics.gap import HEADLINE

    keys = HEADLINE[kind]
    metrics = {role: {k: v for k, v in zip(keys, (0.5, -98.123, 0.25, 1.0, 0.333, 0.75))}
               for role in ("original", "oracle", "unlearned")}
    doc = {"task": "authors" if kind == "language" else "digits", "task_kind": kind, "forget": "random:0.1",
           "seeds": [0, 1, 2], "runs": [{"method": "npo_klr_muse", "seed": 0, "metrics": metrics}],
           "summary": [{"method": name, "guarantee": g, "avg_gap": 0.1234, "unlearn_s": 123.456, "time_ratio": 0.25,
                        **metrics["unlearned"]} for name, g in (("npo_klr_muse", "approximate"), ("s3t", "exact"))]}
    buffer = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buffer, width=80, color_system=None))
    cli._print_bench(doc)
    lines = buffer.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    row = next(line for line in lines if line.lstrip().startswith("npo_klr_muse"))
    assert "appr" in row and "0.123" in row  # one row per method, no wrapped cell
    assert "gap = avg_gap to the oracle" in " ".join(" ".join(lines).split())  # the legend (wrapped at 80)


def test_settings_say_whether_the_defaults_are_the_papers(tmp_path):
    """A bench records the settings it ran with; its page and the doctest-checked note say defaults are the
    published ones, what the task suggests instead, and what --set changed."""
    import doctest

    import obliviate.verdict
    from obliviate import api
    from obliviate.verdict import settings_note

    assert doctest.testmod(obliviate.verdict).failed == 0
    doc = api.bench("digits", ["finetune"], "class:3", overrides={"epochs": 1}, cache_dir=str(tmp_path),
                    executor="serial")
    assert doc["settings"] == {"set": {"epochs": 1}, "task_suggested": {}}
    note = settings_note(doc["settings"])
    assert note.startswith("settings: every method at its published defaults") and note.endswith("--set epochs=1")
    assert "with --set epochs=1" in render_bench_html(doc)


def test_task_suggested_settings_are_listed():
    from obliviate.tasks import task_class
    from obliviate.verdict import settings_note

    suggested = task_class("authors").method_defaults
    name = next(iter(suggested))
    note = settings_note({"set": {}, "task_suggested": {name: suggested[name]}})
    assert f"this task suggests {name} " in note
    assert settings_note({"set": {"lr": 0.5}, "task_suggested": {}}).endswith("; with --set lr=0.5")
