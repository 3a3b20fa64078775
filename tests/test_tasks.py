"""obliviate.tasks: built-in tasks, stable splits, the csv task's inference and errors, TabularNet's normalizer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from obliviate.errors import ConfigError, ObliviateError
from obliviate.models.nets import MLP, TabularNet
from obliviate.tasks import get_task, list_tasks, task_class

# -- built-in tasks -----------------------------------------------------------------------------------------


def test_digits_shape():
    t = get_task("digits")
    d = t.data
    assert t.name == "digits" and t.kind == "classification"
    assert t.n_train == d.n_train == 1437
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert d.n_classes == 10
    assert d.class_names == [str(c) for c in range(10)]
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert set(np.unique(d.y_train)) == set(range(10))
    assert len(d.feature_names) == 64
    assert t.info() == {"name": "digits", "kind": "classification", "description": t.description,
                        "n_train": 1437, "n_test": 360, "n_features": 64, "n_classes": 10}


def test_breast_cancer_shape():
    t = get_task("breast_cancer")
    d = t.data
    assert t.kind == "classification"
    assert d.x_train.shape == (455, 30) and d.x_test.shape == (114, 30)
    assert d.n_classes == 2
    assert set(np.unique(d.y_train)) == {0, 1}
    assert len(d.feature_names) == 30


def test_friedman_shape():
    t = get_task("friedman")
    d = t.data
    assert t.kind == "regression"
    assert t.n_train == 4000 and d.x_test.shape == (1000, 10)
    assert d.class_names is None and d.n_classes is None
    assert d.y_train.dtype == np.float32
    assert "n_classes" not in t.info()
    assert len(np.unique(d.y_train)) > 1000  # continuous target


def test_friedman_options_change_data():
    t = get_task("friedman", n_samples="200", noise="0")
    assert t.n_train == 160 and t.data.x_test.shape[0] == 40
    assert t.data.fingerprint() != get_task("friedman", n_samples=200, noise=0.5).data.fingerprint()


def test_stratified_split_keeps_class_balance():
    d = get_task("digits").data
    train_frac = np.bincount(d.y_train) / d.n_train
    test_frac = np.bincount(d.y_test) / len(d.y_test)
    assert np.max(np.abs(train_frac - test_frac)) < 0.01


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "friedman"])
def test_split_is_stable(name):
    a, b = get_task(name), get_task(name)
    for attr in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a.data, attr), getattr(b.data, attr))
    assert a.data.fingerprint() == b.data.fingerprint()
    assert a.fingerprint() == b.fingerprint()


def test_split_seed_changes_split_and_fingerprint():
    a, b = get_task("digits"), get_task("digits", split_seed=1)
    assert not np.array_equal(a.data.y_train, b.data.y_train)
    assert a.data.fingerprint() != b.data.fingerprint()
    assert a.fingerprint() != b.fingerprint()


def test_model_option_changes_task_fingerprint_not_data():
    a, b = get_task("digits"), get_task("digits", hidden="32")
    assert a.data.fingerprint() == b.data.fingerprint()
    assert a.fingerprint() != b.fingerprint()


def test_test_size_option():
    t = get_task("breast_cancer", test_size="0.5")
    assert t.n_train + t.data.x_test.shape[0] == 569
    assert abs(t.n_train - 284) <= 1


def test_unknown_task():
    with pytest.raises(ObliviateError) as info:
        get_task("mnist_xl")
    msg = str(info.value)
    assert "unknown task 'mnist_xl'" in msg
    for name in ("digits", "breast_cancer", "friedman", "csv"):
        assert name in msg


def test_unknown_task_option():
    with pytest.raises(ConfigError) as info:
        get_task("digits", hiden="32")
    msg = str(info.value)
    assert "'hiden'" in msg
    assert "hidden" in msg and "split_seed" in msg  # lists the valid keys


@pytest.mark.parametrize("name, key, value, needle", [
    ("digits", "model", "resnet", "mlp, cnn"),
    ("digits", "test_size", "0", "> 0"),
    ("digits", "test_size", "0.95", "<= 0.9"),
    ("friedman", "n_samples", "5", ">= 20"),
    ("friedman", "noise", "-1", ">= 0"),
    ("digits", "split_seed", "1.5", "expected an integer"),
])
def test_bad_task_option_values(name, key, value, needle):
    with pytest.raises(ConfigError) as info:
        get_task(name, **{key: value})
    assert key in str(info.value) and needle in str(info.value)


def test_list_tasks_and_task_class():
    names = [c.name for c in list_tasks()]
    assert {"digits", "breast_cancer", "friedman", "csv"} <= set(names)
    assert names == sorted(names)
    assert task_class("digits").kind == "classification"


def test_make_model_seeded_and_shaped():
    t = get_task("digits")
    a, b, c = t.make_model(0), t.make_model(0), t.make_model(1)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    a.eval()
    assert a(torch.zeros(3, 64)).shape == (3, 10)
    cnn = get_task("digits", model="cnn").make_model(0).eval()
    assert cnn(torch.zeros(2, 64)).shape == (2, 10)
    reg = get_task("friedman").make_model(0).eval()
    assert reg(torch.zeros(4, 10)).shape == (4,)


def test_recipe_defaults_and_overrides():
    t = get_task("breast_cancer")
    r = t.recipe()
    assert (r.epochs, r.batch_size, r.optimizer) == (40, 32, "adam")
    r2 = t.recipe({"epochs": "3", "lr": "0.01"})
    assert (r2.epochs, r2.lr, r2.batch_size) == (3, 0.01, 32)
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        t.recipe({"epochs": "0"})
    with pytest.raises(ConfigError, match=r"unknown train\. key 'epoch'"):
        t.recipe({"epoch": "3"})


# -- csv task -----------------------------------------------------------------------------------------------


def _write(tmp_path, df: pd.DataFrame, name: str = "data.csv") -> str:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


def _by_rid(task):
    """Map row id (feature 0, ``rid``) -> (features, label) across both splits."""
    d = task.data
    x = np.concatenate([d.x_train, d.x_test])
    y = np.concatenate([d.y_train, d.y_test])
    return {int(r[0]): (r, lab) for r, lab in zip(x, y)}


def test_csv_string_target_is_classification(tmp_path):
    n = 40
    rng = np.random.default_rng(0)
    labels = np.where(np.arange(n) % 2 == 0, "dog", "cat")
    df = pd.DataFrame({"rid": np.arange(n), "x": rng.normal(size=n), "animal": labels})
    t = get_task("csv", data=_write(tmp_path, df), target="animal")
    assert t.kind == "classification"
    assert t.data.class_names == ["cat", "dog"]
    assert t.data.n_classes == 2
    assert t.data.y_train.dtype == np.int64
    assert t.n_train + t.data.x_test.shape[0] == n
    assert t.data.feature_names == ["rid", "x"]
    for rid, (_, lab) in _by_rid(t).items():
        assert t.data.class_names[lab] == labels[rid]
    assert t.info()["n_classes"] == 2


def test_csv_small_integer_target_is_classification(tmp_path):
    n = 30
    df = pd.DataFrame({"rid": np.arange(n), "x": np.linspace(0, 1, n), "y": np.arange(n) % 3})
    t = get_task("csv", data=_write(tmp_path, df), target="y")
    assert t.kind == "classification"
    assert t.data.class_names == ["0", "1", "2"]
    for rid, (_, lab) in _by_rid(t).items():
        assert lab == rid % 3


def test_csv_integer_labels_keep_numeric_order(tmp_path):
    """With 12 integer labels (<= max_classes) the class index should be the label itself, so that
    ``class:2`` forgets the rows labelled 2 (not the rows labelled 10, as string sorting would give)."""
    from obliviate.requests import resolve

    n = 60
    df = pd.DataFrame({"rid": np.arange(n), "y": np.arange(n) % 12})
    t = get_task("csv", data=_write(tmp_path, df), target="y")
    assert t.kind == "classification"
    assert t.data.class_names == [str(i) for i in range(12)]
    req = resolve("class:2", t)
    rids = t.data.x_train[req.ids, 0].astype(int)
    assert np.all(rids % 12 == 2)


def test_csv_bool_target_is_classification(tmp_path):
    n = 20
    df = pd.DataFrame({"x": np.arange(n, dtype=float), "flag": np.arange(n) % 2 == 0})
    t = get_task("csv", data=_write(tmp_path, df), target="flag")
    assert t.kind == "classification"
    assert t.data.class_names == ["False", "True"]


def test_csv_float_target_is_regression(tmp_path):
    n = 50
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    y = 2.5 * x + 0.1
    df = pd.DataFrame({"rid": np.arange(n), "x": x, "price": y})
    t = get_task("csv", data=_write(tmp_path, df), target="price")
    assert t.kind == "regression"
    assert t.data.class_names is None
    assert t.data.y_train.dtype == np.float32
    for rid, (_, target) in _by_rid(t).items():
        assert target == pytest.approx(y[rid], rel=1e-6)
    assert t.make_model(0).eval()(torch.zeros(3, 2)).shape == (3,)


def test_csv_many_integer_values_is_regression_and_max_classes(tmp_path):
    n = 60
    df = pd.DataFrame({"x": np.arange(n, dtype=float), "age": np.arange(n) % 30})
    path = _write(tmp_path, df)
    assert get_task("csv", data=path, target="age").kind == "regression"        # 30 values > 20
    assert get_task("csv", data=path, target="age", max_classes="30", test_size="0.5").kind == "classification"


def test_csv_explicit_kind_overrides_inference(tmp_path):
    n = 30
    df = pd.DataFrame({"x": np.arange(n, dtype=float), "y": np.arange(n) % 3})
    path = _write(tmp_path, df)
    t = get_task("csv", data=path, target="y", kind="regression")
    assert t.kind == "regression" and t.data.class_names is None
    with pytest.raises(ConfigError, match="kind"):
        get_task("csv", data=path, target="y", kind="ordinal")


def test_csv_kind_is_per_instance(tmp_path):
    n = 30
    reg = pd.DataFrame({"x": np.arange(n, dtype=float), "y": np.linspace(0, 1, n) + 0.013})
    cls = pd.DataFrame({"x": np.arange(n, dtype=float), "y": np.arange(n) % 2})
    r = get_task("csv", data=_write(tmp_path, reg, "r.csv"), target="y")
    c = get_task("csv", data=_write(tmp_path, cls, "c.csv"), target="y")
    assert (r.kind, c.kind) == ("regression", "classification")


def test_csv_categorical_features_one_hot(tmp_path):
    n = 24
    colours = np.array(["red", "green", "blue"] * (n // 3), dtype=object)
    colours[5] = None  # missing category: its own level
    df = pd.DataFrame({"rid": np.arange(n), "colour": colours, "y": np.arange(n) % 2})
    t = get_task("csv", data=_write(tmp_path, df), target="y")
    names = t.data.feature_names
    assert names == ["rid", "colour=<missing>", "colour=blue", "colour=green", "colour=red"]
    assert t.data.x_train.shape[1] == 5
    for rid, (row, _) in _by_rid(t).items():
        onehot = row[1:]
        assert set(onehot.tolist()) <= {0.0, 1.0}
        assert onehot.sum() == 1.0
        level = names[1 + int(onehot.argmax())].split("=", 1)[1]
        assert level == ("<missing>" if rid == 5 else colours[rid])


def test_csv_numeric_nan_imputed_by_the_model_with_its_training_mean(tmp_path):
    """Missing numeric features stay NaN in the data; the model fills them with the mean of the rows it
    was fitted on, so neither test rows nor forgotten rows leak into the imputation."""
    n = 20
    v = np.arange(n, dtype=float)  # 0..19
    v[[3, 7]] = np.nan
    df = pd.DataFrame({"rid": np.arange(n), "v": v, "y": np.arange(n) % 2})
    t = get_task("csv", data=_write(tmp_path, df), target="y")
    rows = _by_rid(t)
    assert np.isnan(rows[3][0][1]) and np.isnan(rows[7][0][1])
    assert rows[4][0][1] == 4.0
    model = t.make_model(0)
    subset = t.data.x_train[:6]
    model.fit_normalizer(subset, t.data.y_train[:6])
    expected = np.nanmean(subset[:, 1])
    assert float(model.x_mean[1]) == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():
        x = torch.tensor([[1.0, float("nan")], [1.0, expected]], dtype=torch.float32)
        out = model(x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0], out[1])  # NaN behaves exactly as the fitted mean


def test_csv_all_nan_column_dropped(tmp_path):
    n = 20
    df = pd.DataFrame({"x": np.arange(n, dtype=float), "empty": [np.nan] * n, "y": np.arange(n) % 2})
    t = get_task("csv", data=_write(tmp_path, df), target="y")
    assert t.data.feature_names == ["x"]


def test_csv_stable_split(tmp_path):
    n = 40
    df = pd.DataFrame({"x": np.arange(n, dtype=float), "y": np.arange(n) % 2})
    path = _write(tmp_path, df)
    a, b = get_task("csv", data=path, target="y"), get_task("csv", data=path, target="y")
    assert a.data.fingerprint() == b.data.fingerprint()
    np.testing.assert_array_equal(a.data.x_train, b.data.x_train)


def _csv_error(tmp_path, content: str | bytes | None, target: str = "y", name: str = "data.csv", **opts) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ObliviateError) as info:
        get_task("csv", data=str(path), target=target, **opts)
    return str(info.value)


def test_csv_missing_file(tmp_path):
    msg = _csv_error(tmp_path, None, name="nope.csv")
    assert "not found" in msg and "nope.csv" in msg


def test_csv_empty_file(tmp_path):
    assert "empty" in _csv_error(tmp_path, b"")


def test_csv_blank_lines_only(tmp_path):
    assert "cannot parse" in _csv_error(tmp_path, "\n\n\n")


def test_csv_header_only(tmp_path):
    assert "header but no rows" in _csv_error(tmp_path, "a,b,y\n")


def test_csv_missing_target_column_lists_columns(tmp_path):
    msg = _csv_error(tmp_path, "alpha,beta,gamma\n1,2,3\n4,5,6\n", target="label")
    assert "'label'" in msg
    assert "alpha, beta, gamma" in msg


def test_csv_nan_in_target(tmp_path):
    rows = "\n".join(f"{i},{'' if i in (2, 5) else i % 2}" for i in range(10))
    msg = _csv_error(tmp_path, "x,y\n" + rows + "\n")
    assert "2 missing value" in msg and "'y'" in msg


@pytest.mark.parametrize("value", ["cat", "1"])
def test_csv_one_class_target(tmp_path, value):
    rows = "\n".join(f"{i},{value}" for i in range(10))
    msg = _csv_error(tmp_path, "x,y\n" + rows + "\n")
    assert "single class" in msg and repr(value) in msg


def test_csv_no_feature_columns(tmp_path):
    msg = _csv_error(tmp_path, "y\n" + "\n".join(str(i % 2) for i in range(10)) + "\n")
    assert "no feature columns" in msg


def test_csv_no_usable_feature_columns(tmp_path):
    msg = _csv_error(tmp_path, "x,y\n" + "\n".join(f",{i % 2}" for i in range(10)) + "\n")
    assert "no usable feature columns" in msg


@pytest.mark.parametrize("target_values", [["0", "1", "0", "1"], ["0.5", "1.5", "2.25", "3.75"]])
def test_csv_too_few_rows(tmp_path, target_values):
    rows = "\n".join(f"{i},{v}" for i, v in enumerate(target_values))
    msg = _csv_error(tmp_path, "x,y\n" + rows + "\n")
    assert "4 rows" in msg and "at least 5" in msg


def test_csv_regression_on_non_numeric_target(tmp_path):
    rows = "\n".join(f"{i},{'ab'[i % 2]}" for i in range(10))
    msg = _csv_error(tmp_path, "x,y\n" + rows + "\n", kind="regression")
    assert "not numeric" in msg and "'y'" in msg


def test_csv_missing_data_option():
    with pytest.raises(ObliviateError, match=r"needs --set data=path\.csv"):
        get_task("csv")
    with pytest.raises(ObliviateError, match=r"needs --set data=path\.csv"):
        get_task("csv", target="y")


def test_csv_missing_target_option(tmp_path):
    with pytest.raises(ObliviateError, match=r"needs --set target=<column>"):
        get_task("csv", data=str(tmp_path / "x.csv"))


# -- TabularNet normalizer ----------------------------------------------------------------------------------


def test_fit_normalizer_sets_buffers():
    x = np.array([[1.0, 10.0, 5.0], [3.0, 20.0, 5.0], [5.0, 60.0, 5.0]], dtype=np.float32)
    net = TabularNet(MLP(3, (4,), 2), 3)
    net.fit_normalizer(x, np.array([0, 1, 0]))
    np.testing.assert_allclose(net.x_mean.numpy(), [3.0, 30.0, 5.0], rtol=1e-6)
    # population std (ddof=0); a constant column gets std 1 so it is not divided by zero
    np.testing.assert_allclose(net.x_std.numpy(), [np.sqrt(8 / 3), np.sqrt(1400 / 3), 1.0], rtol=1e-6)
    assert net.y_mean.item() == 0.0 and net.y_std.item() == 1.0  # classification: target untouched


def test_fit_normalizer_regression_target():
    net = TabularNet(MLP(1, (4,), 1), 1, regression=True)
    net.fit_normalizer(np.array([[0.0], [1.0]]), np.array([2.0, 4.0, 6.0, 8.0]))
    assert net.y_mean.item() == pytest.approx(5.0)
    assert net.y_std.item() == pytest.approx(np.sqrt(5.0))
    net.fit_normalizer(np.array([[0.0], [1.0]]), np.array([7.0, 7.0]))
    assert net.y_mean.item() == pytest.approx(7.0) and net.y_std.item() == 1.0


def test_normalizer_in_forward():
    body = nn.Linear(2, 1)
    with torch.no_grad():
        body.weight.copy_(torch.tensor([[1.0, 0.0]]))
        body.bias.zero_()
    net = TabularNet(body, 2, regression=True)
    net.fit_normalizer(np.array([[0.0, 1.0], [4.0, 1.0]]), np.array([10.0, 30.0]))
    # x0 standardised: (x0 - 2) / 2; output = z * 10 + 20
    out = net(torch.tensor([[2.0, 9.0], [4.0, -3.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out.detach().numpy(), [20.0, 30.0, 10.0], rtol=1e-6)


def test_normalizer_is_saved_in_state_dict():
    net = TabularNet(MLP(2, (3,), 1), 2, regression=True)
    net.fit_normalizer(np.array([[1.0, 2.0], [3.0, 6.0]]), np.array([1.0, 3.0]))
    state = net.state_dict()
    for key in ("x_mean", "x_std", "y_mean", "y_std"):
        assert key in state
    other = TabularNet(MLP(2, (3,), 1), 2, regression=True)
    other.load_state_dict(state)
    assert torch.equal(other.x_mean, net.x_mean) and other.y_std.item() == net.y_std.item()


def test_model_trained_on_subset_gets_subset_statistics():
    from obliviate.training import train

    t = get_task("friedman", n_samples=400)
    d = t.data
    subset = np.arange(50)
    model = train(t.make_model(0), d.x_train[subset], d.y_train[subset], t.recipe({"epochs": 1}), t.kind, seed=0)
    sub_x = d.x_train[subset].astype(np.float64)
    np.testing.assert_allclose(model.x_mean.numpy(), sub_x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(model.x_std.numpy(), sub_x.std(axis=0), rtol=1e-5)
    assert model.y_mean.item() == pytest.approx(float(d.y_train[subset].astype(np.float64).mean()), rel=1e-5)
    full_mean = d.x_train.astype(np.float64).mean(axis=0)
    assert not np.allclose(model.x_mean.numpy(), full_mean, rtol=1e-3)
