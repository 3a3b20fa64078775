"""S3T sequence selection (Chowdhury et al., ICLR 2025, "Sequence selection"): cyclic, bms, prior, random.

Expected outputs marked "official" were produced by the official S3T code (brcsomnath/S3T, commit 3ecb73b:
``get_cyclic`` of src/sequence_selection.py, ``bms`` of src/inference.py, ``bms_selection`` of
src/sequence_selection.py); the cyclic B <= L cases are also derivable by hand from the rotation rule.
"""
from __future__ import annotations

import itertools
import math

import pytest

from obliviate.errors import ObliviateError
from obliviate.exact.sequences import bms, cyclic, prior, prior_score, random_sequences, rotate_right, select


def is_latin_square(rows) -> bool:
    L = len(rows)
    return (all(sorted(r) == list(range(L)) for r in rows)
            and all(sorted(col) == list(range(L)) for col in zip(*rows)))


def assert_valid(seqs, L, B):
    assert len(seqs) == B
    assert len(set(seqs)) == B, "sequences must be distinct"
    assert all(isinstance(s, tuple) and sorted(s) == list(range(L)) for s in seqs)
    assert all(type(x) is int for s in seqs for x in s), "plain ints, not numpy scalars"


# -- cyclic ----------------------------------------------------------------------------------------------------

def test_rotate_right_matches_the_official_helper():
    assert rotate_right([0, 1, 2, 3], 0) == [0, 1, 2, 3]
    assert rotate_right([0, 1, 2, 3], 1) == [3, 0, 1, 2]
    assert rotate_right([0, 1, 2, 3], 5) == [3, 0, 1, 2]


def test_cyclic_4_by_4_is_the_rotation_latin_square():
    assert cyclic(4, 4) == [(0, 1, 2, 3), (3, 0, 1, 2), (2, 3, 0, 1), (1, 2, 3, 0)]
    assert is_latin_square(cyclic(4, 4))


@pytest.mark.parametrize("L", [1, 2, 5, 7])
def test_cyclic_within_L_takes_the_first_B_right_rotations(L):
    full = cyclic(L, L)
    for B in range(1, L + 1):
        assert cyclic(L, B) == full[:B]
        assert cyclic(L, B) == [tuple(rotate_right(list(range(L)), i)) for i in range(B)]


def test_cyclic_beyond_L_reproduces_the_official_recursion():
    # official: print(get_cyclic(4, 13)) at the bottom of src/sequence_selection.py
    assert [list(p) for p in cyclic(4, 13)] == [
        [0, 1, 2, 3], [0, 1, 3, 2], [0, 2, 3, 1], [0, 3, 1, 2], [1, 0, 2, 3], [1, 2, 3, 0], [1, 3, 0, 2],
        [2, 0, 1, 3], [2, 1, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2], [3, 1, 2, 0], [3, 2, 0, 1]]
    # hand-derived: B = 2L keeps the L rotations' first slice and rotates each suffix once more (no sort)
    assert cyclic(3, 6) == [(0, 1, 2), (0, 2, 1), (2, 0, 1), (2, 1, 0), (1, 2, 0), (1, 0, 2)]


@pytest.mark.parametrize("L", [1, 2, 3, 4, 5])
def test_cyclic_gives_distinct_permutations_for_every_budget_up_to_L_factorial(L):
    for B in range(1, math.factorial(L) + 1):
        assert_valid(cyclic(L, B), L, B)
    assert set(cyclic(L, math.factorial(L))) == set(itertools.permutations(range(L)))


# -- bms -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 2, 3, 4, 5, 6, 7, 9, 12])
def test_bms_is_a_latin_square(L):
    rows = bms(L)
    assert_valid(rows, L, L)
    assert is_latin_square(rows), "each slice at each position exactly once"
    assert [r[0] for r in rows] == list(range(L)), "row i starts from the partial sequence [i]"


def test_bms_matches_the_official_output():
    # official bms(4) and bms(5) of src/inference.py (networkx max_weight_matching)
    assert bms(4) == [(0, 3, 2, 1), (1, 2, 3, 0), (2, 1, 0, 3), (3, 0, 1, 2)]
    assert bms(5) == [(0, 4, 2, 1, 3), (1, 2, 3, 4, 0), (2, 3, 4, 0, 1), (3, 1, 0, 2, 4), (4, 0, 1, 3, 2)]


def test_bms_budget_is_a_prefix_of_the_square():
    for B in range(1, 7):
        assert bms(6, B) == bms(6)[:B]


def test_bms_beyond_L_adds_latin_square_blocks_of_new_sequences():
    L = 4
    seqs = bms(L, 24)
    assert_valid(seqs, L, 24)
    assert set(seqs) == set(itertools.permutations(range(L))), "B = L! covers every permutation"
    for start in range(0, 24, L):
        assert is_latin_square(seqs[start:start + L]), f"block {start // L} is a Latin square"
    assert bms(L, 10) == seqs[:10]
    assert_valid(bms(5, 57), 5, 57)


# -- prior -----------------------------------------------------------------------------------------------------

def test_prior_score_by_hand():
    # n * (1 - c_n)^t: t=1, [0.5, 0.5] -> 1 * 0.5 + 2 * 0.0
    assert prior_score([0.5, 0.5], t=1) == pytest.approx(0.5)
    # t=2, [0.1, 0.2, 0.7] -> 1*0.81 + 2*0.49 + 3*0
    assert prior_score([0.1, 0.2, 0.7], t=2) == pytest.approx(0.81 + 0.98)
    # the likely-deleted slice late scores higher than early (what the selection rewards)
    assert prior_score([0.1, 0.9]) > prior_score([0.9, 0.1])


def test_prior_square_matches_the_official_bms_selection():
    # official print(bms_selection(probs=[0.4, 0.3, 0.2, 0.1])): rows in order of their first slice
    official = [(0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0)]
    ours = prior([0.4, 0.3, 0.2, 0.1])
    assert sorted(ours) == official
    assert is_latin_square(ours)


def test_prior_puts_the_likely_deleted_slice_late():
    L = 6
    probs = [0.9] + [0.02] * 5
    seqs = prior(probs, L)
    assert is_latin_square(seqs), "still a Latin square: slice 0 is first in exactly one sequence"
    # ranked by score: the i-th kept sequence has slice 0 at position L-1-i (last, last but one, ...)
    assert [s.index(0) for s in seqs] == [5, 4, 3, 2, 1, 0]
    for B in range(1, L + 1):
        assert prior(probs, B) == seqs[:B]
        assert all(s[0] != 0 for s in prior(probs, min(B, L - 1)))


def test_prior_normalises_and_uniform_prior_is_a_latin_square():
    assert prior([4, 3, 2, 1], 4) == prior([0.4, 0.3, 0.2, 0.1], 4)
    assert is_latin_square(prior([1, 1, 1, 1, 1]))
    assert select("prior", 5, 5) == prior([0.2] * 5, 5), "select('prior') without probs uses a uniform prior"


def test_prior_beyond_L_stays_distinct():
    seqs = prior([0.5, 0.2, 0.2, 0.1], 12)
    assert_valid(seqs, 4, 12)
    assert seqs[:4] == prior([0.5, 0.2, 0.2, 0.1], 4)


# -- random ----------------------------------------------------------------------------------------------------

def test_random_is_seeded_distinct_and_covers_all_at_L_factorial():
    a = random_sequences(6, 20, seed=3)
    assert_valid(a, 6, 20)
    assert a == random_sequences(6, 20, seed=3)
    assert a != random_sequences(6, 20, seed=4)
    full = random_sequences(4, 24, seed=0)
    assert set(full) == set(itertools.permutations(range(4)))
    assert select("random", 6, 20, seed=3) == a


# -- dispatch and validation -----------------------------------------------------------------------------------

def test_select_dispatches():
    assert select("cyclic", 5, 3) == cyclic(5, 3)
    assert select("bms", 5, 3) == bms(5, 3)
    assert select("prior", 4, 2, probs=[0.1, 0.2, 0.3, 0.4]) == prior([0.1, 0.2, 0.3, 0.4], 2)
    assert select(" BMS ", 3, 3) == bms(3)


@pytest.mark.parametrize("args, kwargs, message", [
    (("cyclic", 0, 1), {}, "L=0: expected at least 1 slice"),
    (("cyclic", 3, 0), {}, "budget B=0: expected at least 1"),
    (("cyclic", 3, 7), {}, "budget B=7 exceeds L!=6 distinct sequences"),
    (("bms", 4, 25), {}, "budget B=25 exceeds L!=24"),
    (("random", 1, 2), {}, "budget B=2 exceeds L!=1"),
    (("cyclic", 3.0, 2), {}, "expected a positive integer"),
    (("cyclic", True, 1), {}, "expected a positive integer"),
    (("sisa", 3, 1), {}, "unknown selection 'sisa': expected one of cyclic, bms, prior, random"),
    (("prior", 3, 2), {"probs": [0.5, 0.5]}, "expected L=3 values (one per slice), got 2"),
    (("prior", 3, 2), {"probs": [0.5, -0.1, 0.6]}, "expected non-negative numbers"),
    (("prior", 3, 2), {"probs": [0, 0, 0]}, "expected a positive sum"),
    (("prior", 3, 2), {"probs": [0.5, float("nan"), 0.5]}, "expected finite numbers"),
    (("prior", 2, 1), {"probs": ["a", "b"]}, "expected 2 non-negative numbers"),
])
def test_select_validation_messages(args, kwargs, message):
    with pytest.raises(ObliviateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select(*args, **kwargs)


def test_large_L_budget_check_does_not_compute_huge_factorials():
    assert cyclic(1000, 3)[2][0] == 998
