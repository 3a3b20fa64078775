"""S3T sequence selection: which B orderings ("sequences") of a shard's L slices to train.

A deletion in slice k truncates every sequence of its shard just before k, and a shard must be retrained only
once every sequence has been truncated to length 0. Which orderings are trained therefore decides how many
deletions the system absorbs and how long the served prefixes stay. The selections here follow the official
S3T code (brcsomnath/S3T, commit 3ecb73b, ``src/sequence_selection.py`` and ``src/inference.py``):

- ``cyclic``  -- ``get_cyclic(L, B)`` of ``src/sequence_selection.py`` / ``src/deletion.py``, output for output
  (including its recursive scheme for B > L);
- ``bms``     -- ``bms(num_slices)`` of ``src/inference.py`` (bipartite matching with networkx), a Latin square;
- ``prior``   -- ``bms_selection(probs)`` of ``src/sequence_selection.py`` (assignment on a deletion-prior score);
- ``random``  -- distinct random permutations, the baseline (``random_sampling`` / ``get_random_perms``).

Every function returns a list of distinct tuples, each a permutation of ``range(L)``. Where the official code
stops (it has no budget for ``bms_selection`` and no B > L for either matching selection) the extension is
documented on the function.
"""
from __future__ import annotations

import itertools
import math
import operator
from typing import Any, Sequence

import numpy as np

from obliviate.errors import ObliviateError

SELECTIONS = ("cyclic", "bms", "prior", "random")
PRIOR_EXPONENT = 100  # ``t`` of the official get_score; large t makes only early, unlikely-deleted slices count

Perm = tuple[int, ...]


# -- validation ------------------------------------------------------------------------------------------------

def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ObliviateError(f"{name}={value!r}: expected a positive integer")
    try:
        return operator.index(value)
    except TypeError:
        raise ObliviateError(f"{name}={value!r}: expected a positive integer") from None


def _factorial_at_least(n: int, bound: int) -> bool:
    """Whether n! >= bound, without computing a huge factorial for large n."""
    acc = 1
    for k in range(2, n + 1):
        acc *= k
        if acc >= bound:
            return True
    return acc >= bound


def check_slices_budget(L: Any, B: Any) -> tuple[int, int]:
    """Validate the number of slices L and the budget B (1 <= B <= L!); return them as ints.

    B > L! cannot be met with distinct sequences, and the official ``get_cyclic`` loops forever (or fails on an
    empty rotation) when asked to, so it is refused up front.
    """
    L = _as_int(L, "L (slices)")
    B = _as_int(B, "B (budget)")
    if L < 1:
        raise ObliviateError(f"L={L}: expected at least 1 slice per shard")
    if B < 1:
        raise ObliviateError(f"budget B={B}: expected at least 1 sequence per shard")
    if not _factorial_at_least(L, B):
        raise ObliviateError(f"budget B={B} exceeds L!={math.factorial(L)} distinct sequences of L={L} slices")
    return L, B


def check_probs(probs: Any, L: int) -> np.ndarray:
    """Validate per-slice deletion probabilities: L finite non-negative numbers with a positive sum.

    Returned normalised to sum 1. Values that already sum to 1 (to 1e-12) are passed through untouched, so the
    assignment sees exactly the floats the official code would and breaks near-ties the same way.
    """
    try:
        p = np.asarray(probs, dtype=float)
    except (TypeError, ValueError):
        raise ObliviateError(f"deletion probabilities {probs!r}: expected {L} non-negative numbers") from None
    if p.ndim != 1 or p.shape[0] != L:
        got = p.shape[0] if p.ndim == 1 else f"an array of shape {p.shape}"
        raise ObliviateError(f"deletion probabilities: expected L={L} values (one per slice), got {got}")
    if not np.all(np.isfinite(p)):
        raise ObliviateError(f"deletion probabilities {p.tolist()}: expected finite numbers")
    if np.any(p < 0):
        raise ObliviateError(f"deletion probabilities {p.tolist()}: expected non-negative numbers")
    total = float(p.sum())
    if total <= 0:
        raise ObliviateError(f"deletion probabilities {p.tolist()}: expected a positive sum (they are normalised)")
    if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=1e-12):
        p = p / total
    return p


# -- cyclic rotation -------------------------------------------------------------------------------------------

def rotate_right(seq: Sequence[int], k: int) -> list[int]:
    """``rotate_right([0, 1, 2, 3], 1) == [3, 0, 1, 2]`` (the official helper; k is taken modulo len)."""
    seq = list(seq)
    if not seq:
        return seq
    k %= len(seq)
    return seq[len(seq) - k:] + seq[:len(seq) - k]


def _rotations(seq: Sequence[int]) -> list[list[int]]:
    return [rotate_right(seq, i) for i in range(len(seq))]


def cyclic(L: int, B: int) -> list[Perm]:
    """The official ``get_cyclic(L, B)``: iterative cyclic rotation (paper Alg. 1).

    For B <= L: the first B right-rotations of [0..L-1], so slice j sits at depths j, j+1, ... and with B = L every
    slice occupies every position once. For B > L the official recursion is reproduced output for output: at level
    ``n`` each current sequence keeps its first ``n`` elements and contributes ``B // len(current)`` rotations of its
    suffix; if that does not yet reach B (and the level is not exhausted), ``B % len(current)`` further sequences are
    taken as the next suffix rotation of every ``len(current) // L``-th sequence (wrapping with an increasing start)
    and the level's list is sorted. The official code re-sorts after every addition; sorting once after the last
    one gives the same list (additions are chosen from the previous level, never from the list being sorted) and
    keeps B ~ L! fast.
    """
    L, B = check_slices_budget(L, B)
    perms: list[list[int]] = []
    n_iter = 0
    cum_len = 1
    while len(perms) < B:
        branch_fact = len(perms) // L
        cum_len *= L - n_iter
        if n_iter == 0:
            perms = _rotations(list(range(L)))[:B]
        else:
            per_perm = B // len(perms)
            level: list[list[int]] = []
            for p in perms:
                prefix = p[:n_iter]
                level.extend(prefix + suffix for suffix in _rotations(p[n_iter:])[:per_perm])
            if len(level) < cum_len:
                rem = B % len(perms)
                total = start = start_counter = 0
                added = False
                while total < rem:
                    if start >= len(perms):
                        start_counter += 1
                        start = start_counter
                    p = perms[start]
                    level.append(p[:n_iter] + _rotations(p[n_iter:])[per_perm])
                    added = True
                    start += branch_fact
                    total += 1
                if added:
                    level.sort()
            perms = level
        n_iter += 1
    return [tuple(p) for p in perms]


# -- bipartite-matching selection -----------------------------------------------------------------------------

def _extend_square(square: list[list[int]], B: int) -> list[Perm]:
    """Sequences ``0..B-1`` built from a Latin square of L rows; the first L are the square itself.

    Sequence b is row ``b % L`` with fixed rotations applied to its suffixes: writing ``b // L`` in mixed radix
    (L-1, L-2, ..., 2), digit r_k rotates positions k..L-1 right by r_k, for k = 1, 2, .... Every rotation is a fixed
    re-indexing of positions, so each complete block of L consecutive sequences is again a Latin square; position 0
    is never moved and the digits are recoverable from the sequence, so b -> sequence is one-to-one on [0, L!) and
    all sequences are distinct. This is how ``bms`` and ``prior`` go past B = L (the official code has no such
    case: ``inference.py`` falls back to all L! permutations and ``bms_selection`` always returns L).
    """
    L = len(square)
    out: list[Perm] = []
    for b in range(B):
        seq = list(square[b % L])
        q = b // L
        for k in range(1, L - 1):
            if q == 0:
                break
            q, r = divmod(q, L - k)
            seq[k:] = rotate_right(seq[k:], r)
        out.append(tuple(int(x) for x in seq))
    return out


def _bms_square(L: int) -> list[list[int]]:
    """The official ``bms(num_slices)`` of ``src/inference.py``.

    Start from [0], ..., [L-1]; at each step connect the last slice of every partial sequence (node ``p[-1]``) to
    every slice j it does not yet contain (node ``j + L``) with weight 1, take ``networkx.max_weight_matching`` and
    append each matched slice. The partial sequences always form a Latin rectangle, so the bipartite graph is
    regular, a perfect matching exists (Hall), and the result is a Latin square. Graph construction and edge order
    are the official ones, so networkx returns the same matching and the same square.
    """
    import networkx as nx  # a dependency of torch; imported here so that cyclic/random do not need it

    perms = [[x] for x in range(L)]
    for _ in range(L - 1):  # the official loop runs L times; the last pass has no edges and changes nothing
        graph = nx.Graph()
        graph.add_weighted_edges_from([(p[-1], j + L, 1) for p in perms for j in range(L) if j not in p])
        matching = nx.max_weight_matching(graph)
        if len(matching) != L:  # cannot happen for a Latin rectangle; refuse rather than return a wrong square
            raise RuntimeError(f"bms: matching of size {len(matching)} for L={L}; expected a perfect matching")
        row_of_last = {p[-1]: i for i, p in enumerate(perms)}
        for a, b in matching:
            last, cand = (b, a) if a >= L else (a, b)
            perms[row_of_last[last]].append(cand - L)
    return perms


def bms(L: int, B: int | None = None) -> list[Perm]:
    """Bipartite-matching selection (paper Alg. 2), budgeted as ``bms(L)[:B]`` like the official inference code.

    B defaults to L (the full Latin square). For B > L the square is extended by :func:`_extend_square` (further
    Latin squares of new sequences); the official code supports B > L only as "all L! permutations".
    """
    L, B = check_slices_budget(L, L if B is None else B)
    return _extend_square(_bms_square(L), B)


# -- BMS with deletion priors ----------------------------------------------------------------------------------

def prior_score(probs_in_order: Sequence[float], t: int = PRIOR_EXPONENT) -> float:
    """Official ``get_score``: sum over positions n (1-based) of n * (1 - c_n)^t, c_n the cumulative prior.

    A sequence scores high when the slices it meets first are unlikely to be deleted: its long prefixes then
    survive. Summed sequentially in Python floats, exactly as the official code does.
    """
    c = 0.0
    score = 0.0
    for n, p in enumerate(probs_in_order, start=1):
        c += p
        score += n * (1 - c) ** t
    return score


def _prior_square(p: np.ndarray, t: int) -> list[list[int]]:
    """Official ``bms_selection(probs)``: L-1 rounds of a maximum-score assignment of one new slice per sequence."""
    from scipy.optimize import linear_sum_assignment

    L = len(p)
    probs = [float(x) for x in p]
    perms = [[e] for e in range(L)]
    for _ in range(L - 1):
        cost = np.empty((L, L))
        for i, perm in enumerate(perms):
            for j in range(L):
                cost[i, j] = -np.inf if j in perm else prior_score([probs[e] for e in perm + [j]], t)
        rows, cols = linear_sum_assignment(cost, maximize=True)
        for i, c in zip(rows, cols):
            perms[i].append(int(c))
    return perms


def prior(probs: Sequence[float], B: int | None = None, t: int = PRIOR_EXPONENT) -> list[Perm]:
    """BMS with deletion priors: the official ``bms_selection`` square, budgeted by score.

    The official function always returns all L rows, in the order of their first slice. Taking ``[:B]`` of that
    would keep the row that starts with slice 0 whatever its prior, so the rows are ordered by
    :func:`prior_score` (highest first, ties by row) and the first B kept: with most of the mass on one slice, the
    kept sequences put it last, last-but-one, .... ``prior(p, B) == prior(p, L)[:B]`` for B <= L. For B > L further
    Latin-square blocks follow as in :func:`_extend_square` (each block also ordered by score); these extra blocks
    are not prior-optimised. ``probs`` are normalised; ``t`` is the official exponent 100.
    """
    p = check_probs(probs, len(probs) if hasattr(probs, "__len__") else -1)
    L, B = check_slices_budget(len(p), len(p) if B is None else B)
    square = _prior_square(p, t)
    plist = [float(x) for x in p]
    extended = _extend_square(square, math.ceil(B / L) * L)
    out: list[Perm] = []
    for start in range(0, len(extended), L):
        block = extended[start:start + L]
        order = sorted(range(len(block)), key=lambda i: (-prior_score([plist[e] for e in block[i]], t), i))
        out.extend(block[i] for i in order)
    return out[:B]


# -- random baseline -------------------------------------------------------------------------------------------

def random_sequences(L: int, B: int, seed: int = 0) -> list[Perm]:
    """B distinct uniformly random permutations (numpy ``default_rng(seed)``), the baseline selection.

    Rejection sampling as in the official ``random_sampling``; when B is more than half of L! the permutations are
    enumerated and B of them drawn without replacement instead, so the loop never crawls.
    """
    L, B = check_slices_budget(L, B)
    rng = np.random.default_rng(seed)
    if not _factorial_at_least(L, 2 * B + 1):
        everything = list(itertools.permutations(range(L)))
        pick = rng.choice(len(everything), size=B, replace=False)
        return [tuple(int(x) for x in everything[i]) for i in pick]
    seen: set[Perm] = set()
    out: list[Perm] = []
    while len(out) < B:
        perm = tuple(int(x) for x in rng.permutation(L))
        if perm not in seen:
            seen.add(perm)
            out.append(perm)
    return out


# -- dispatch --------------------------------------------------------------------------------------------------

def select(selection: str, L: int, B: int, probs: Sequence[float] | None = None, seed: int = 0) -> list[Perm]:
    """B distinct sequences (permutations of range(L)) chosen by ``selection``: cyclic | bms | prior | random.

    ``probs`` (per-slice deletion probabilities) are used by ``prior`` only, and default to uniform there (the
    official score then yields a plain Latin square); the other selections ignore them. ``seed`` is used by
    ``random`` only.
    """
    if not isinstance(selection, str) or selection.strip().lower() not in SELECTIONS:
        raise ObliviateError(f"unknown selection {selection!r}: expected one of {', '.join(SELECTIONS)}")
    selection = selection.strip().lower()
    L, B = check_slices_budget(L, B)
    if selection == "cyclic":
        return cyclic(L, B)
    if selection == "bms":
        return bms(L, B)
    if selection == "prior":
        p = check_probs(np.full(L, 1.0 / L) if probs is None else probs, L)
        return prior(p, B)
    return random_sequences(L, B, seed=_as_int(seed, "seed"))
