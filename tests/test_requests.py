"""obliviate.requests.resolve: every forget-spec form of the README and the errors a user can cause."""
from __future__ import annotations

import numpy as np
import pytest

from obliviate.errors import ObliviateError, SpecError
from obliviate.requests import ForgetRequest, ids_sha256, resolve
from obliviate.tasks import get_task


@pytest.fixture(scope="module")
def digits():
    return get_task("digits")


@pytest.fixture(scope="module")
def friedman():
    return get_task("friedman")


@pytest.fixture(scope="module")
def cancer():
    return get_task("breast_cancer")


def _well_formed(req: ForgetRequest, n_train: int) -> None:
    ids = req.ids
    assert isinstance(ids, np.ndarray)
    assert ids.dtype == np.int64
    assert ids.ndim == 1
    assert np.all(np.diff(ids) > 0), "ids must be sorted and unique"
    assert ids.min() >= 0 and ids.max() < n_train
    assert 0 < req.n < n_train
    assert req.n == ids.size


def test_spec_error_is_obliviate_error():
    assert issubclass(SpecError, ObliviateError)


# -- random -------------------------------------------------------------------------------------------------

def test_random_fraction(digits):
    req = resolve("random:0.1", digits, seed=0)
    _well_formed(req, digits.n_train)
    assert req.n == round(0.1 * digits.n_train) == 144
    assert req.spec == "random:0.1"


def test_random_count(digits):
    req = resolve("random:50", digits, seed=0)
    _well_formed(req, digits.n_train)
    assert req.n == 50


def test_random_count_one_is_a_count_not_a_fraction(digits):
    assert resolve("random:1", digits).n == 1


def test_random_same_seed_same_ids(digits):
    a = resolve("random:0.1", digits, seed=3)
    b = resolve("random:0.1", digits, seed=3)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.sha256 == b.sha256


def test_random_same_spec_on_fresh_task_same_ids(digits):
    a = resolve("random:0.2", digits, seed=1)
    b = resolve("random:0.2", get_task("digits"), seed=1)
    np.testing.assert_array_equal(a.ids, b.ids)


def test_random_different_seed_different_ids(digits):
    a = resolve("random:0.1", digits, seed=0)
    b = resolve("random:0.1", digits, seed=1)
    assert a.n == b.n
    assert not np.array_equal(a.ids, b.ids)
    assert a.sha256 != b.sha256


def test_random_surrounding_whitespace_ignored(digits):
    np.testing.assert_array_equal(resolve("  random:50 ", digits).ids, resolve("random:50", digits).ids)


@pytest.mark.parametrize("spec, needle", [
    ("random:1.0", "(0, 1)"),
    ("random:1.5", "(0, 1)"),
    ("random:-0.1", "(0, 1)"),
    ("random:abc", "not a number"),
    ("random:", "not a number"),
    ("random:nan", "finite"),
    ("random:inf", "finite"),
    ("random:0", "no training examples"),
    ("random:0.0001", "no training examples"),   # rounds to 0 of 1437
    ("random:1437", "nothing would remain"),
    ("random:5000", "nothing would remain"),
])
def test_random_errors(digits, spec, needle):
    with pytest.raises(SpecError) as info:
        resolve(spec, digits)
    assert needle in str(info.value)


def test_random_whole_training_set_count_names_sizes(digits):
    n = digits.n_train
    with pytest.raises(SpecError) as info:
        resolve(f"random:{n}", digits)
    assert str(n) in str(info.value)


def test_negative_seed_is_usable_or_a_clean_error(digits):
    """A user can pass ``--seed -1``; it must not escape as a bare ValueError from numpy."""
    try:
        req = resolve("random:0.1", digits, seed=-1)
    except ObliviateError:
        return
    _well_formed(req, digits.n_train)


# -- class --------------------------------------------------------------------------------------------------

def test_class_single(digits):
    req = resolve("class:3", digits)
    _well_formed(req, digits.n_train)
    y = digits.data.y_train
    np.testing.assert_array_equal(req.ids, np.flatnonzero(y == 3))
    assert np.all(y[req.ids] == 3)
    assert np.sum(y == 3) == req.n


def test_class_several(digits):
    req = resolve("class:3,5", digits)
    _well_formed(req, digits.n_train)
    y = digits.data.y_train
    np.testing.assert_array_equal(req.ids, np.flatnonzero((y == 3) | (y == 5)))
    assert set(np.unique(y[req.ids])) == {3, 5}


def test_class_duplicates_and_spaces(digits):
    np.testing.assert_array_equal(resolve("class:5, 3,3", digits).ids, resolve("class:3,5", digits).ids)


def test_class_is_seed_independent(digits):
    np.testing.assert_array_equal(resolve("class:3", digits, seed=0).ids, resolve("class:3", digits, seed=9).ids)


@pytest.mark.parametrize("spec", ["class:10", "class:-1", "class:3,42"])
def test_class_that_does_not_exist(digits, spec):
    with pytest.raises(SpecError) as info:
        resolve(spec, digits)
    assert "does not exist" in str(info.value)
    assert "0..9" in str(info.value)


def test_class_on_binary_task(cancer):
    req = resolve("class:0", cancer)
    np.testing.assert_array_equal(req.ids, np.flatnonzero(cancer.data.y_train == 0))
    with pytest.raises(SpecError, match="class 2 does not exist"):
        resolve("class:2", cancer)


def test_class_covering_every_class_is_whole_set(digits):
    with pytest.raises(SpecError, match="whole training set"):
        resolve("class:" + ",".join(map(str, range(10))), digits)


@pytest.mark.parametrize("spec, needle", [("class:", "no class given"), ("class:x", "no class named 'x'; classes: 0, 1"),
                                          ("class:1.5", "no class named '1.5'"), ("class:３", "no class named '３'")])
def test_class_malformed(digits, spec, needle):
    with pytest.raises(SpecError, match=needle):
        resolve(spec, digits)


def test_class_on_regression_task(friedman):
    with pytest.raises(SpecError) as info:
        resolve("class:1", friedman)
    assert "classification" in str(info.value)
    assert "friedman" in str(info.value)


# -- ids ----------------------------------------------------------------------------------------------------

def test_ids_inline(digits):
    req = resolve("ids:4,8,15", digits)
    assert req.ids.tolist() == [4, 8, 15]
    assert req.ids.dtype == np.int64


def test_ids_inline_sorted_and_unique(digits):
    req = resolve("ids:15, 4,8,4,15", digits)
    assert req.ids.tolist() == [4, 8, 15]
    _well_formed(req, digits.n_train)


def test_ids_boundaries_accepted(digits):
    n = digits.n_train
    assert resolve(f"ids:0,{n - 1}", digits).ids.tolist() == [0, n - 1]


@pytest.mark.parametrize("content", ["4\n8\n15\n", "4, 8, 15", "15 4\t8", "  4,\n8 ,15\n\n", "8,4,15,4"])
def test_ids_file(digits, tmp_path, content):
    path = tmp_path / "forget.txt"
    path.write_text(content)
    req = resolve(f"ids@{path}", digits)
    assert req.ids.tolist() == [4, 8, 15]
    assert req.ids.dtype == np.int64


def test_ids_file_missing(digits, tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(SpecError) as info:
        resolve(f"ids@{path}", digits)
    assert "not found" in str(info.value)
    assert "nope.txt" in str(info.value)


def test_ids_file_is_a_directory(digits, tmp_path):
    with pytest.raises(SpecError, match="not found"):
        resolve(f"ids@{tmp_path}", digits)


def test_ids_file_empty(digits, tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n")
    with pytest.raises(SpecError, match="no ids given"):
        resolve(f"ids@{path}", digits)


def test_ids_file_bad_token(digits, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1\n2\nthree\n")
    with pytest.raises(SpecError) as info:
        resolve(f"ids@{path}", digits)
    assert "'three'" in str(info.value)
    assert "not an integer" in str(info.value)


def test_ids_file_binary_content(digits, tmp_path):
    path = tmp_path / "bin.txt"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(SpecError):
        resolve(f"ids@{path}", digits)


def test_ids_file_out_of_range(digits, tmp_path):
    path = tmp_path / "big.txt"
    path.write_text(f"1 {digits.n_train}")
    with pytest.raises(SpecError, match="out of range"):
        resolve(f"ids@{path}", digits)


@pytest.mark.parametrize("spec, needle", [
    ("ids:1437", "id 1437 out of range"),
    ("ids:3,99999", "id 99999 out of range"),
    ("ids:-1", "id -1 out of range"),
    ("ids:4,-7", "id -7 out of range"),
    ("ids:1.5", "'1.5' is not an integer"),
    ("ids:4,x", "'x' is not an integer"),
    ("ids:0x10", "not an integer"),
    ("ids:", "no ids given"),
    ("ids: , ,", "no ids given"),
])
def test_ids_errors(digits, spec, needle):
    with pytest.raises(SpecError) as info:
        resolve(spec, digits)
    assert needle in str(info.value)


def test_out_of_range_message_gives_valid_range(digits):
    with pytest.raises(SpecError) as info:
        resolve("ids:5000", digits)
    assert f"0..{digits.n_train - 1}" in str(info.value)


def test_ids_covering_all_is_whole_set(digits, tmp_path):
    n = digits.n_train
    path = tmp_path / "all.txt"
    path.write_text("\n".join(map(str, range(n))))
    with pytest.raises(SpecError) as info:
        resolve(f"ids@{path}", digits)
    assert "whole training set" in str(info.value)
    assert "nothing would remain" in str(info.value)
    with pytest.raises(SpecError, match="whole training set"):
        resolve("ids:" + ",".join(map(str, range(n))), digits)


def test_ids_all_but_one_is_fine(digits):
    n = digits.n_train
    req = resolve("ids:" + ",".join(map(str, range(1, n))), digits)
    assert req.n == n - 1
    assert req.ids[0] == 1


# -- target -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, op", [
    ("target<=10", lambda y: y <= 10),
    ("target>=20", lambda y: y >= 20),
    ("target<10", lambda y: y < 10),
    ("target>20", lambda y: y > 20),
    ("target <= 12.5", lambda y: y <= 12.5),
    ("target>=2.5e1", lambda y: y >= 25),
])
def test_target_cohorts(friedman, spec, op):
    y = friedman.data.y_train
    req = resolve(spec, friedman)
    _well_formed(req, friedman.n_train)
    np.testing.assert_array_equal(req.ids, np.flatnonzero(op(y)))


def test_target_strict_vs_inclusive_at_an_existing_value(friedman):
    y = friedman.data.y_train
    v = float(np.sort(y)[100])  # a value present in the data: <= includes it, < does not
    le = resolve(f"target<={v!r}", friedman)
    lt = resolve(f"target<{v!r}", friedman)
    ge = resolve(f"target>={v!r}", friedman)
    gt = resolve(f"target>{v!r}", friedman)
    hit = int(np.sum(y == np.float32(v)))
    assert hit >= 1
    assert le.n == lt.n + hit
    assert ge.n == gt.n + hit
    assert le.n + gt.n == friedman.n_train


@pytest.mark.parametrize("spec", ["target<=-1000", "target<0", "target>1000"])
def test_target_empty_cohort(friedman, spec):
    with pytest.raises(SpecError) as info:
        resolve(spec, friedman)
    assert "selects no training examples" in str(info.value)


@pytest.mark.parametrize("spec", ["target>=-1e9", "target<1e9", "target>-5"])
def test_target_whole_set(friedman, spec):
    with pytest.raises(SpecError) as info:
        resolve(spec, friedman)
    assert "whole training set" in str(info.value)


@pytest.mark.parametrize("spec, needle", [("target<=abc", "not a number"), ("target>=nan", "finite"),
                                          ("target<inf", "finite"),
                                          ("target<=", "not a number")])
def test_target_bad_value(friedman, spec, needle):
    with pytest.raises(SpecError, match=needle):
        resolve(spec, friedman)


def test_target_on_classification_task(digits):
    with pytest.raises(SpecError) as info:
        resolve("target<=3", digits)
    assert "regression" in str(info.value)
    assert "class:N" in str(info.value)


def test_random_and_ids_work_on_regression(friedman):
    assert resolve("random:0.1", friedman).n == round(0.1 * friedman.n_train)
    assert resolve("ids:1,2", friedman).ids.tolist() == [1, 2]


# -- other forms and general errors -------------------------------------------------------------------------

@pytest.mark.parametrize("task_name", ["digits", "friedman"])
def test_subjects_rejected_on_tabular(task_name, digits, friedman):
    task = {"digits": digits, "friedman": friedman}[task_name]
    with pytest.raises(SpecError) as info:
        resolve("subjects:3", task)
    assert "subjects" in str(info.value)
    assert "text task" in str(info.value)


@pytest.mark.parametrize("spec", ["", "   ", None])
def test_empty_spec(digits, spec):
    with pytest.raises(SpecError) as info:
        resolve(spec, digits)
    assert "empty forget spec" in str(info.value)
    assert "random:0.1" in str(info.value)  # says what is expected


@pytest.mark.parametrize("spec", ["everything", "rand:0.1", "Random:0.1", "class=3", "target=5", "ids 1,2",
                                  "id:3", "target>"])
def test_unknown_spec(digits, spec):
    with pytest.raises(SpecError) as info:
        resolve(spec, digits)
    assert "unknown forget spec" in str(info.value)
    assert repr(spec.strip()) in str(info.value)


# -- ForgetRequest ------------------------------------------------------------------------------------------

def test_sha256_changes_with_ids(digits):
    a = resolve("ids:4,8,15", digits)
    b = resolve("ids:4,8,16", digits)
    c = resolve("ids:15,8,4", digits)
    assert a.sha256 != b.sha256
    assert a.sha256 == c.sha256  # same resolved ids, whatever the spelling
    assert len(a.sha256) == 64
    assert a.sha256 == ids_sha256(np.array([4, 8, 15]))


def test_sha256_depends_on_ids_not_spec():
    a = ForgetRequest("ids:1,2", np.array([1, 2], dtype=np.int64))
    b = ForgetRequest("random:2", np.array([1, 2], dtype=np.int64))
    c = ForgetRequest("ids:1,3", np.array([1, 3], dtype=np.int64))
    assert a.sha256 == b.sha256
    assert a.sha256 != c.sha256


def test_summary(digits):
    req = resolve("ids:4,8,15", digits)
    assert req.summary() == {"spec": "ids:4,8,15", "n": 3, "sha256": req.sha256}
