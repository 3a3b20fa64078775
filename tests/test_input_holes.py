"""Input holes found by fuzzing (issue 15): each is a one-line error with exit status 2 that writes nothing —
CSV files (repeated columns, inf / float32-overflow cells, an inf regression target, row keys), a corrupt
safetensors file in a model directory, and a corrupt cache entry, which is retrained but said."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from obliviate.errors import ObliviateError, SpecError
from obliviate.requests import resolve
from obliviate.tasks import get_task


def _csv(path, n=60, **columns):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"customer_id": [f"c{i:03d}" for i in range(n)], "a": rng.normal(size=n),
                          "b": rng.normal(size=n), "y": rng.integers(0, 2, n)})
    for name, values in columns.items():
        frame[name] = values
    frame.to_csv(path, index=False)
    return path


def _bad_run(cli, tmp_path, sets, forget="random:0.1"):
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["run", "--task", "csv", "--method", "finetune", "--forget", forget, "--set", "train.epochs=2"]
    for s in sets:
        args += ["--set", s]
    rc, out, err = cli(*args, "--json", tmp_path / "o.json", "--cache-dir", tmp_path / "cache")
    assert rc == 2 and out.strip() == "" and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    return err.strip()


def test_a_repeated_column_name_is_refused_not_renamed(cli, tmp_path):
    # pandas would rename the second "y" to "y.1" and train on the label as a feature
    (tmp_path / "d.csv").write_text("a,y,y\n" + "".join(f"{i},{i % 2},{i % 2}\n" for i in range(20)))
    err = _bad_run(cli, tmp_path, ["data=" + str(tmp_path / "d.csv"), "target=y"])
    assert "column name 'y' appears twice (columns 2 and 3)" in err


@pytest.mark.parametrize("cell,shown", [(np.inf, "'inf'"), ("1e308", "'1e+308'"), (-np.inf, "'-inf'")])
def test_infinite_or_float32_overflowing_features_are_refused_before_training(cli, tmp_path, cell, shown):
    a = np.random.default_rng(1).normal(size=60).astype(object)
    a[7] = cell
    _csv(tmp_path / "d.csv", a=a)
    err = _bad_run(cli, tmp_path, ["data=" + str(tmp_path / "d.csv"), "target=y"])
    assert f"column 'a' line 9 holds {shown}" in err and "±3.4e38" in err


def test_an_infinite_regression_target_is_refused(cli, tmp_path):
    y = np.random.default_rng(2).normal(size=60)
    y[3] = np.inf
    _csv(tmp_path / "d.csv", y=y)
    err = _bad_run(cli, tmp_path, ["data=" + str(tmp_path / "d.csv"), "target=y", "kind=regression"])
    assert "target column 'y' line 5 holds 'inf'" in err


def test_missing_feature_cells_are_still_accepted(tmp_path):
    a = np.random.default_rng(3).normal(size=60)
    a[5] = np.nan
    task = get_task("csv", data=str(_csv(tmp_path / "d.csv", a=a)), target="y")
    assert np.isnan(task.data.x_train).sum() + np.isnan(task.data.x_test).sum() == 1


def test_rows_are_forgotten_by_their_own_key(tmp_path):
    path = _csv(tmp_path / "d.csv")
    task = get_task("csv", data=str(path), target="y", id_column="customer_id")
    assert task.feature_names == ["a", "b"]  # the key is not a feature
    frame = pd.read_csv(path)
    train_keys = [k for k in frame["customer_id"] if k in task._keys]
    assert len(train_keys) == task.n_train == 48
    chosen = train_keys[4], train_keys[17]
    request = resolve(f"ids:{chosen[0]}, {chosen[1]}", task)
    # the resolved training ids are the rows whose features are those of the two customers
    rows = frame.set_index("customer_id").loc[list(chosen), ["a", "b"]].to_numpy(np.float32)
    found = {tuple(np.round(task.data.x_train[i], 5)) for i in request.ids}
    assert found == {tuple(np.round(r, 5)) for r in rows} and request.n == 2
    (tmp_path / "ids.txt").write_text(f"{chosen[0]}\n{chosen[1]}\n")
    assert np.array_equal(resolve(f"ids@{tmp_path / 'ids.txt'}", task).ids, request.ids)
    test_key = next(k for k in frame["customer_id"] if k not in task._keys)
    with pytest.raises(SpecError, match=f"customer_id '{test_key}' is not a training row"):
        resolve(f"ids:{test_key}", task)


def test_a_bad_key_column_is_refused(cli, tmp_path):
    keys = [f"c{i % 30}" for i in range(60)]
    _csv(tmp_path / "d.csv", customer_id=keys)
    err = _bad_run(cli, tmp_path, ["data=" + str(tmp_path / "d.csv"), "target=y", "id_column=customer_id"])
    assert "id_column 'customer_id' is not unique: key 'c0'" in err
    err = _bad_run(cli, tmp_path, ["data=" + str(tmp_path / "d.csv"), "target=y", "id_column=nope"])
    assert "id_column 'nope' not in d.csv" in err


def test_class_by_name():
    task = get_task("breast_cancer")
    assert np.array_equal(resolve("class:malignant", task).ids, resolve("class:0", task).ids)
    assert np.array_equal(resolve("class:Benign", task).ids, resolve("class:1", task).ids)  # case-insensitive
    with pytest.raises(SpecError, match="no class named 'cancer'; classes: malignant, benign"):
        resolve("class:cancer", task)


def test_a_truncated_safetensors_file_is_one_line(tmp_path):
    from transformers import GPT2Config

    from obliviate.tasks.hf import check_model_dir

    d = tmp_path / "lm"
    GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20, n_positions=16).save_pretrained(d)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(256)}, str(d / "model.safetensors"))
    blob = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(blob[:-100])
    with pytest.raises(ObliviateError, match=r"model\.safetensors is not a readable safetensors file \(truncated"):
        check_model_dir(str(d))
    (d / "model.safetensors").write_bytes(b"\0" * 40)
    with pytest.raises(ObliviateError, match="not a readable safetensors file"):
        check_model_dir(str(d))


def test_a_corrupt_cache_entry_is_retrained_and_said(tmp_path, capsys):
    from obliviate.models.store import ModelStore

    store = ModelStore(tmp_path)
    model = torch.nn.Linear(3, 2)
    store.put("k1", model, {"what": "original"})
    weights = tmp_path / "k1.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"oops")
    capsys.readouterr()
    assert store.get("k1", torch.nn.Linear(3, 2)) is None  # a miss: the caller trains again
    err = capsys.readouterr().err
    assert "cached entry k1.safetensors" in err and "corrupt (sha256 mismatch" in err and "training it again" in err
    assert not weights.exists() and not (tmp_path / "k1.json").exists()
    assert json.dumps(store.put("k1", model, {"what": "original"}))  # and the slot is usable again
