"""Relearn time and the anamnesis index (Golatkar et al. 2020; the anamnesis index of Chundawat et al. 2023; obliviate.metrics.relearn) on controlled
models, and the ``--relearn`` flag of ``run`` and ``bench``."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from obliviate.metrics.relearn import (RelearnConfig, anamnesis_index, forget_metric, reached, relearn_time,
                                       target_value)

DIGITS = ("--task", "digits", "--set", "train.epochs=8")


def _task(kind: str, n: int = 64, seed: int = 0):
    """Two well-separated blobs (labels 0/1), or a linear target for regression."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    x[: n // 2, 0] += 3.0
    x[n // 2:, 0] -= 3.0
    if kind == "classification":
        y = (np.arange(n) < n // 2).astype(np.int64)
    else:
        y = (2.0 * x[:, 0] - x[:, 1]).astype(np.float32)
    data = SimpleNamespace(x_train=x, y_train=y, x_test=x, y_test=y)
    return SimpleNamespace(kind=kind, data=data)


def _linear(kind: str, flip: bool = False, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 2 if kind == "classification" else 1)
    with torch.no_grad():
        if kind == "classification":
            sign = -1.0 if flip else 1.0  # flip: predicts the wrong blob everywhere
            model.weight.copy_(torch.tensor([[-sign, 0.0], [sign, 0.0]]))
            model.bias.zero_()
        else:
            model.weight.zero_()
            model.bias.zero_()
    if kind == "regression":
        return _Squeeze(model)
    return model


class _Squeeze(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).squeeze(-1)


def test_target_and_band():
    assert target_value("classification", 0.9, 0.05) == pytest.approx(0.855)
    assert target_value("regression", 2.0, 0.05) == pytest.approx(2.1)
    assert reached("classification", 0.86, 0.855) and not reached("classification", 0.85, 0.855)
    assert reached("regression", 2.1, 2.1) and not reached("regression", 2.2, 2.1)


def test_anamnesis_index_arithmetic():
    assert anamnesis_index(3, 12) == 0.25
    assert anamnesis_index(0, 5) == 0.0
    assert anamnesis_index(12, 3) == 4.0
    assert anamnesis_index(5, 0) is None  # the oracle needs no step: undefined


def test_model_already_at_the_original_level_needs_zero_steps():
    task = _task("classification")
    ids = np.arange(0, 64, 2)
    model = _linear("classification")
    acc = forget_metric("classification", model, task.data.x_train[ids], task.data.y_train[ids], "cpu")
    assert acc == 1.0
    res = relearn_time(model, task, ids, target_value("classification", acc, 0.05))
    assert (res.steps, res.saturated) == (0, False)
    assert res.start == res.final == acc


def test_forgetful_model_relearns_in_a_few_seeded_steps_and_the_input_is_untouched():
    task = _task("classification")
    ids = np.arange(0, 64, 2)
    model = _linear("classification", flip=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RelearnConfig(lr=0.5, batch_size=8, max_steps=200)
    res = relearn_time(model, task, ids, target_value("classification", 1.0, 0.05), config=cfg, seed=3)
    assert res.start == 0.0 and 0 < res.steps < 200 and not res.saturated and res.final >= 0.95
    again = relearn_time(model, task, ids, target_value("classification", 1.0, 0.05), config=cfg, seed=3)
    assert again == res  # seeded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_saturation_is_reported():
    task = _task("classification")
    ids = np.arange(0, 64, 2)
    model = _linear("classification", flip=True)
    cfg = RelearnConfig(lr=1e-6, batch_size=8, max_steps=7)
    res = relearn_time(model, task, ids, 0.95, config=cfg)
    assert (res.steps, res.saturated) == (7, True)


def test_regression_form_relearns_to_the_band():
    task = _task("regression", n=40)
    ids = np.arange(0, 40, 4)  # 10 forget rows
    cfg = RelearnConfig(max_steps=500)
    assert cfg.learning_rate("regression") == 0.01 and cfg.learning_rate("classification") == 0.001
    res = relearn_time(_linear("regression"), task, ids, target_value("regression", 0.5, 0.05), config=cfg)
    assert res.steps > 0 and not res.saturated and res.final <= 0.525 < res.start


def test_relearn_data_per_form(monkeypatch):
    task = _task("regression", n=40)
    ids = np.arange(0, 40, 4)
    sizes = []
    real_forward = _Squeeze.forward

    def spy(self, x):
        if self.training:
            sizes.append(len(x))
        return real_forward(self, x)

    monkeypatch.setattr(_Squeeze, "forward", spy)
    relearn_time(_linear("regression"), task, ids, -1.0, config=RelearnConfig(batch_size=1000, max_steps=2))
    assert sizes == [40, 40]  # regression relearns on retain ∪ forget, not the 10 forget rows
    sizes.clear()
    cls_task = _task("classification")
    model = _linear("classification", flip=True)

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if self.training:
                sizes.append(len(x))
            return self.inner(x)

    relearn_time(Spy(model), cls_task, np.arange(0, 64, 2), 2.0, config=RelearnConfig(batch_size=1000, max_steps=2))
    assert sizes == [32, 32]  # classification relearns on the forget set


def test_bad_config():
    from obliviate.errors import ConfigError

    for kwargs in ({"alpha": 1.0}, {"lr": 0.0}, {"max_steps": 0}):
        with pytest.raises(ConfigError):
            RelearnConfig(**kwargs)


# -- through the CLI -------------------------------------------------------------------------------------------

def test_run_relearn_flag_adds_the_keys(cli, tmp_path):
    path, html = tmp_path / "r.json", tmp_path / "r.html"
    rc, stdout, stderr = cli("run", *DIGITS, "--method", "finetune", "--set", "epochs=1", "--forget", "class:3",
                             "--relearn", "--json", path, "--html", html)
    assert rc == 0, stderr
    assert "relearn_steps" in stdout and "anamnesis" in stdout
    report = json.loads(path.read_text())
    m = report["metrics"]
    for role in ("original", "unlearned", "oracle"):
        assert isinstance(m[role]["relearn_steps"], int) and m[role]["relearn_steps"] >= 0
    assert m["original"]["relearn_steps"] == 0  # the original is its own target
    rl = report["relearn"]
    assert rl["alpha"] == 0.05 and rl["data"] == "forget set" and set(rl["saturated"]) == {"original", "unlearned",
                                                                                          "oracle"}
    oracle_steps = m["oracle"]["relearn_steps"]
    assert oracle_steps > 0  # the oracle never saw class 3: it must relearn it
    assert m["unlearned"]["anamnesis"] == pytest.approx(m["unlearned"]["relearn_steps"] / oracle_steps)
    assert m["original"]["anamnesis"] == 0.0
    assert rl["target"] == pytest.approx(0.95 * m["original"]["forget_acc"])
    assert "relearn_steps" in html.read_text()


def test_bench_relearn_flag_adds_the_keys(cli, tmp_path):
    path = tmp_path / "b.json"
    rc, stdout, stderr = cli("bench", *DIGITS, "--methods", "finetune", "--set", "epochs=1", "--forget", "class:3",
                             "--relearn", "--json", path)
    assert rc == 0, stderr
    doc = json.loads(path.read_text())
    run = doc["runs"][0]
    m = run["metrics"]
    assert {"relearn_steps", "anamnesis"} <= set(m["unlearned"]) and "relearn" in run
    assert m["oracle"]["relearn_steps"] > 0
    assert m["unlearned"]["anamnesis"] == pytest.approx(m["unlearned"]["relearn_steps"] / m["oracle"]["relearn_steps"])
    assert doc["summary"][0]["anamnesis"] == pytest.approx(m["unlearned"]["anamnesis"])
    assert "relearn" not in run["gap"] and set(run["gap"]) >= {"forget_acc", "retain_acc", "test_acc", "mia"}


def test_without_relearn_nothing_changes(cli, tmp_path):
    path = tmp_path / "r.json"
    rc, _, stderr = cli("run", *DIGITS, "--method", "finetune", "--set", "epochs=1", "--forget", "class:3",
                        "--json", path)
    assert rc == 0, stderr
    report = json.loads(path.read_text())
    assert "relearn" not in report
    assert not {"relearn_steps", "anamnesis"} & set(report["metrics"]["unlearned"])


def test_bench_summary_leaves_undefined_anamnesis_out_of_the_mean():
    """An oracle already at the target (0 relearn steps) leaves the anamnesis index undefined (None) for that seed:
    the summary averages the seeds that define it and is None, never NaN, when none does."""
    from obliviate.api import summarize

    def run(seed, anamnesis):
        return {"method": "npo", "guarantee": "approximate", "seed": seed, "avg_gap": 0.1 * (seed + 1),
                "metrics": {"unlearned": {"forget_acc": 0.5, "anamnesis": anamnesis}},
                "time_s": {"unlearn": 1.0, "oracle": 10.0}}

    row = summarize([run(0, None), run(1, 0.5), run(2, 1.5)])[0]
    assert row["anamnesis"] == 1.0 and row["anamnesis_std"] == 0.5
    assert abs(row["avg_gap"] - 0.2) < 1e-12
    row = summarize([run(0, None), run(1, None)])[0]
    assert row["anamnesis"] is None and row["anamnesis_std"] is None
