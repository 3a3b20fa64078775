"""The mnist1d task: generated from code, deterministic, and an MLP memorises it (the gap random forgetting needs)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import obliviate
from obliviate.errors import ObliviateError
from obliviate.tasks import get_task
from obliviate.tasks import mnist1d as mnist1d_task

SMALL = {"n_samples": 1000}  # 800 train / 200 test rows: seconds to train, same memorisation regime


def test_mnist1d_loads_with_the_package_shapes_and_ten_balanced_classes():
    task = get_task("mnist1d", **SMALL)
    d = task.data
    assert d.x_train.shape == (800, 40) and d.x_test.shape == (200, 40)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.class_names == [str(c) for c in range(10)]
    counts = np.bincount(np.concatenate([d.y_train, d.y_test]), minlength=10)
    assert counts.tolist() == [100] * 10  # make_dataset draws n_samples // 10 per class
    assert task.info()["n_classes"] == 10 and task.kind == "classification"


def test_mnist1d_is_deterministic_per_seed_and_leaves_the_global_rng_alone():
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    mnist1d_task._CACHE.clear()  # generate for real, not from the in-process cache
    a = get_task("mnist1d", **SMALL)
    assert np.random.rand() == expected_next  # make_dataset reseeds numpy's global RNG; it must be restored
    mnist1d_task._CACHE.clear()
    b = get_task("mnist1d", **SMALL)
    assert a.fingerprint() == b.fingerprint()
    np.testing.assert_array_equal(a.data.x_train, b.data.x_train)
    other = get_task("mnist1d", **SMALL, data_seed=7)
    assert other.fingerprint() != a.fingerprint()
    assert not np.array_equal(other.data.x_train, a.data.x_train)


def test_the_original_remembers_a_random_forget_set_the_oracle_never_saw(cache_dir):
    """The point of the task: forget accuracy of the original ≫ its test accuracy ≈ the oracle's forget
    accuracy (on digits these are within ~0.015; doing nothing there is already close to the oracle)."""
    r = obliviate.unlearn("mnist1d", "gradient_ascent", "random:0.1", epochs=1, task_options=SMALL,
                          cache_dir=str(cache_dir))
    orig, oracle = r.report["metrics"]["original"], r.report["metrics"]["oracle"]
    assert orig["forget_acc"] > orig["test_acc"] + 0.3
    assert orig["forget_acc"] > oracle["forget_acc"] + 0.3
    assert abs(oracle["forget_acc"] - oracle["test_acc"]) < 0.15  # unseen rows: the oracle is at test level
    assert r.report["avg_gap"] is not None


def test_a_missing_mnist1d_package_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ObliviateError, match=r"pip install 'obliviate\[datasets\]'"):
        get_task("mnist1d", n_samples=200, data_seed=99)  # a key not in the in-process cache


def test_mnist1d_rejects_a_sample_count_below_its_minimum(cli):
    rc, _, err = cli("run", "--task", "mnist1d", "--method", "finetune", "--set", "n_samples=10", "--quiet")
    assert rc == 2 and "n_samples" in err and len(err.strip().splitlines()) == 1
