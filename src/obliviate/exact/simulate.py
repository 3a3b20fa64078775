"""S3T deletion-capability simulator: how many random deletion requests a sharded, sliced system absorbs
before some retraining is unavoidable everywhere (S3T, arXiv 2406.16257, Figs. 5–8; the ``s3t()`` procedure of
the official ``src/deletion.py``, brcsomnath/S3T commit 3ecb73b; read from its Jupyter autosave copy
``src/.ipynb_checkpoints/deletion-checkpoint.py``, the only copy of that file available when this was written).

Official procedure, reproduced by :func:`replay` on an explicit request stream:

    while some shard still has a sequence:
        d = uniform integer in [0, m*L - 1]          # with replacement, also slices already deleted
        shard, slice = divmod(d, L)
        every sequence of that shard containing the slice is cut just before it; empty ones are dropped
        count += 1
    return count                                     # includes the request that empties the last shard

Why the fast path is exact: a sequence is dropped exactly when its *first* slice is deleted (a cut before any
later slice leaves a non-empty prefix), so a shard is empty once every distinct first slice of its sequences has
been hit, and the count is the (1-based) time at which the last such (shard, first slice) pair is first hit. The
simulator draws one request stream per trial (numpy ``default_rng(seed)``, in fixed-size chunks that do not
depend on the budget, so every budget sees the same streams: common random numbers, and a pathwise comparison
of budgets) and takes the maximum of those first-hit times. The tests replay the same streams through
:func:`replay` and get identical counts.

Consequences worth knowing: under uniform requests only the number n of distinct (shard, first slice) pairs
matters and the count is a coupon collector over n of the N = m*L ids, mean N * H_n (H_n the n-th harmonic
number; :func:`exact_uniform`). Cyclic and bms with B <= L have B distinct first slices per shard and so the same
distribution, N * H_(m*B); SISA (B = 1) gives N * H_m. Budgets B > L add nothing over B = L in this measure (there
are only L first slices); their value is longer surviving prefixes, i.e. accuracy, which this simulator does not
model.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from obliviate.errors import ObliviateError
from obliviate.exact.sequences import SELECTIONS, _as_int, check_probs, check_slices_budget, select

SCHEMA = "obliviate.s3t-simulate/1"
MAX_TRIALS = 1_000_000
_CHUNK_ELEMENTS = 4_000_000  # request ids drawn per chunk (trials x columns), bounds memory at ~32 MB
_MAX_EXPECTED = 1e8          # refuse set-ups whose expected number of requests makes a trial effectively endless


# -- validation ------------------------------------------------------------------------------------------------

def _check_shape(shards: Any, slices: Any) -> tuple[int, int]:
    m = _as_int(shards, "shards")
    if m < 1:
        raise ObliviateError(f"shards={m}: expected at least 1 shard")
    L = _as_int(slices, "slices")
    if L < 1:
        raise ObliviateError(f"slices={L}: expected at least 1 slice per shard")
    return m, L


def _check_trials(trials: Any) -> int:
    n = _as_int(trials, "trials")
    if not 1 <= n <= MAX_TRIALS:
        raise ObliviateError(f"trials={n}: expected an integer between 1 and {MAX_TRIALS}")
    return n


def _check_selection(selection: Any) -> str:
    if not isinstance(selection, str) or selection.strip().lower() not in SELECTIONS:
        raise ObliviateError(f"unknown selection {selection!r}: expected one of {', '.join(SELECTIONS)}")
    return selection.strip().lower()


def _request_probs(probs: Any, m: int, L: int) -> tuple[np.ndarray | None, list | None]:
    """Per-(shard, slice) request probabilities as an (m, L) matrix summing to 1 (None for uniform), and the
    normalised prior as given (a list, or a list of rows) for the report.

    ``probs`` is either L per-slice probabilities shared by all shards (each shard equally likely) or an (m, L)
    matrix of per-shard priors (normalised as a whole, so shards may differ in how often they are hit).
    """
    if probs is None:
        return None, None
    try:
        arr = np.asarray(probs, dtype=float)
    except (TypeError, ValueError):
        raise ObliviateError(f"deletion probabilities {probs!r}: expected {L} non-negative numbers") from None
    if arr.ndim == 2:
        if arr.shape != (m, L):
            raise ObliviateError(f"per-shard deletion probabilities: expected shape (shards={m}, slices={L}), "
                                 f"got {arr.shape}")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ObliviateError("per-shard deletion probabilities: expected finite non-negative numbers")
        empty = [s for s in range(m) if arr[s].sum() <= 0]
        if empty:
            raise ObliviateError(f"per-shard deletion probabilities: shard {empty[0]} has all-zero probabilities; "
                                 f"expected a positive sum in every shard")
        joint = arr / arr.sum()
        return joint, joint.tolist()
    p = check_probs(arr, L)
    return np.tile(p, (m, 1)) / m, p.tolist()


def _shard_sequences(selection: str, m: int, L: int, B: int, joint: np.ndarray | None,
                     seed: int) -> list[list[tuple[int, ...]]]:
    """The B sequences of every shard: the same in each shard, except ``prior`` with per-shard priors."""
    if selection == "prior" and joint is not None:
        per_shard = [select("prior", L, B, probs=joint[s] / joint[s].sum()) for s in range(m)]
        return per_shard
    seqs = select(selection, L, B, probs=None if joint is None else joint[0] / joint[0].sum(), seed=seed)
    return [seqs] * m  # the official get_budgeted_models: the same sequences in every shard


# -- the official procedure, literally ------------------------------------------------------------------------

def replay(sequences: Sequence[Sequence[Sequence[int]]], requests: Sequence[int], slices: int) -> int | None:
    """Official ``s3t()`` on an explicit stream of request ids ``shard * slices + slice``.

    Returns the number of requests consumed when the last shard lost its last sequence (that request counted),
    or None if the stream ran out first. Slow and literal: the reference the vectorised simulator is tested
    against.
    """
    models = {s: [list(p) for p in seqs] for s, seqs in enumerate(sequences)}
    for count, d in enumerate(requests, start=1):
        shard, k = divmod(int(d), slices)
        kept = []
        for p in models[shard]:
            if k in p:
                p = p[:p.index(k)]
            if p:
                kept.append(p)
        models[shard] = kept
        if not any(models.values()):
            return count
    return None


# -- vectorised simulator --------------------------------------------------------------------------------------

def _targets(sequences: list[list[tuple[int, ...]]], L: int) -> np.ndarray:
    """Request ids whose first hit drops a sequence: (shard, first slice) of every sequence, deduplicated."""
    return np.array(sorted({s * L + seq[0] for s, seqs in enumerate(sequences) for seq in seqs}), dtype=np.int64)


def _request_chunks(trials: int, n_ids: int, flat_p: np.ndarray | None, seed: int) -> Iterator[np.ndarray]:
    """Endless (trials, width) blocks of request ids; row t of the concatenated blocks is trial t's stream.

    The width depends only on (n_ids, trials, probabilities), never on the budget or the selection, so every
    budget run with the same seed sees the same streams.
    """
    rng = np.random.default_rng(seed)
    if flat_p is None:
        expected_all = n_ids * sum(1.0 / i for i in range(1, n_ids + 1))
    else:
        expected_all = float(np.sum(1.0 / flat_p[flat_p > 0]))
    width = int(min(max(16, math.ceil(1.25 * expected_all)), max(1, _CHUNK_ELEMENTS // trials)))
    while True:
        if flat_p is None:
            yield rng.integers(0, n_ids, size=(trials, width))
        else:
            yield rng.choice(n_ids, size=(trials, width), p=flat_p)


def _counts_from_chunks(targets: np.ndarray, chunks: Iterable[np.ndarray]) -> np.ndarray:
    """Per trial (row), 1 + the first time at which every target id has been requested at least once."""
    hit: np.ndarray | None = None
    offset = 0
    for chunk in chunks:
        if hit is None:
            hit = np.full((chunk.shape[0], targets.size), -1, dtype=np.int64)
        for j, target in enumerate(targets):
            need = np.flatnonzero(hit[:, j] < 0)
            if need.size == 0:
                continue
            match = chunk[need] == target
            found = match.any(axis=1)
            hit[need[found], j] = offset + match[found].argmax(axis=1)
        offset += chunk.shape[1]
        if (hit >= 0).all():
            return hit.max(axis=1) + 1
    raise RuntimeError("request streams ended before every shard ran out of sequences")


def exact_uniform(n_targets: int, n_ids: int) -> tuple[float, float]:
    """Mean and standard deviation of the count under uniform requests (coupon collector over n_targets of n_ids).

    With i targets still unhit each request hits one with probability i/N, a geometric wait: mean N/i, variance
    (1 - i/N) / (i/N)^2. Summing i = 1..n gives the exact moments the simulation must agree with.
    """
    mean = sum(n_ids / i for i in range(1, n_targets + 1))
    var = sum((1 - i / n_ids) / (i / n_ids) ** 2 for i in range(1, n_targets + 1))
    return mean, math.sqrt(var)


def _run(m: int, L: int, B: int, selection: str, trials: int, seed: int,
         joint: np.ndarray | None) -> dict[str, Any]:
    sequences = _shard_sequences(selection, m, L, B, joint, seed)
    targets = _targets(sequences, L)
    flat_p = None if joint is None else joint.ravel()
    if flat_p is not None:
        dead = [int(t) for t in targets if flat_p[t] <= 0]
        if dead:
            s, k = divmod(dead[0], L)
            raise ObliviateError(f"slice {k} of shard {s} starts a sequence but has deletion probability 0, so that "
                                 f"shard never runs out of sequences; give every such slice a positive probability")
        bound = float(np.sum(1.0 / flat_p[targets]))
        if bound > _MAX_EXPECTED:
            raise ObliviateError(f"the deletion probabilities make a trial last up to ~{bound:.3g} requests; expected "
                                 f"at most {_MAX_EXPECTED:.0e} (raise the smallest probabilities)")
    counts = _counts_from_chunks(targets, _request_chunks(trials, m * L, flat_p, seed))
    out: dict[str, Any] = {"budget": B, "mean_deletions": float(counts.mean()), "std": float(counts.std()),
                           "min": int(counts.min()), "max": int(counts.max()),
                           "distinct_first_slices": int(targets.size)}
    if joint is None:
        mean, std = exact_uniform(int(targets.size), m * L)
        out["exact_mean"], out["exact_std"] = mean, std
    return out


def simulate(shards: int, slices: int, budget: int, selection: str = "cyclic", trials: int = 1000, seed: int = 0,
             probs: Any = None) -> dict[str, Any]:
    """Deletion capability of S3T with ``shards`` x ``slices`` and ``budget`` sequences per shard.

    Returns ``{"budget", "mean_deletions", "std", "min", "max"}`` over ``trials`` seeded trials (std is numpy's
    population std, as the official script prints), plus ``distinct_first_slices`` (the coupon count) and, for
    uniform requests, ``exact_mean`` / ``exact_std`` from :func:`exact_uniform`.

    Requests are uniform over the m*L slices, as in the official code. With ``probs`` (L per-slice
    probabilities, or an (m, L) matrix) requests follow those probabilities instead -- the official simulator has
    no such mode; it is how a prior-aware selection is meant to be judged -- and ``selection="prior"`` builds its
    sequences from them (per shard for a matrix). SISA is ``budget=1`` with ``selection="cyclic"`` (identity order).
    """
    m, L = _check_shape(shards, slices)
    L, B = check_slices_budget(L, budget)
    selection = _check_selection(selection)
    trials = _check_trials(trials)
    seed = _as_int(seed, "seed")
    return _run(m, L, B, selection, trials, seed, _request_probs(probs, m, L)[0])


def simulate_range(shards: int, slices: int, budgets: Sequence[int], selection: str = "cyclic", trials: int = 1000,
                   seed: int = 0, probs: Any = None) -> dict[str, Any]:
    """The ``obliviate.s3t-simulate/1`` document (README, "Exact unlearning: SISA and S3T") for several budgets,
    plus a SISA baseline.

    Everything is validated before any simulation runs. All budgets and the baseline use the same seed and so
    the same request streams. ``sisa`` is B = 1 with the identity order under the same requests (equal to the
    cyclic B = 1 row), the denominator of "deletions absorbed relative to SISA".
    """
    m, L = _check_shape(shards, slices)
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence) or len(budgets) == 0:
        raise ObliviateError(f"budgets={budgets!r}: expected a non-empty list of budgets")
    checked = [check_slices_budget(L, b)[1] for b in budgets]
    if len(set(checked)) != len(checked):
        raise ObliviateError(f"budgets {checked}: expected each budget once")
    selection = _check_selection(selection)
    trials = _check_trials(trials)
    seed = _as_int(seed, "seed")
    joint, prior_doc = _request_probs(probs, m, L)
    results = [_run(m, L, b, selection, trials, seed, joint) for b in checked]
    sisa = _run(m, L, 1, "cyclic", trials, seed, joint)
    sisa.pop("budget")
    doc: dict[str, Any] = {
        "schema": SCHEMA, "shards": m, "slices": L, "selection": selection, "trials": trials,
        "results": results,
        "seed": seed,
        "requests": "uniform" if joint is None else "prior",
        "prior": prior_doc,
        "sisa": sisa,
    }
    return doc


_BUDGET_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_budget(text: str) -> list[int]:
    """``"3"`` -> [3], ``"1-6"`` -> [1, ..., 6], ``"1-3,6"`` -> [1, 2, 3, 6] (sorted, each budget once).

    Only the form is checked here; the bound B <= L! needs L and is checked by the simulator.
    """
    raw = str(text).strip()
    if not raw:
        raise ObliviateError("--budget '': expected a positive integer B or a range A-B such as 1-6")
    out: set[int] = set()
    for item in raw.split(","):
        item = item.strip().replace(" ", "")
        match = _BUDGET_ITEM.match(item)
        if not match:
            raise ObliviateError(f"--budget {raw!r}: expected a positive integer B or a range A-B such as 1-6")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if lo < 1:
            raise ObliviateError(f"--budget {raw!r}: budgets start at 1 (one sequence per shard, i.e. SISA)")
        if hi < lo:
            raise ObliviateError(f"--budget {raw!r}: range {lo}-{hi} is empty; expected A-B with A <= B")
        if hi - lo >= 100_000:
            raise ObliviateError(f"--budget {raw!r}: expected at most 100000 budgets in a range")
        out.update(range(lo, hi + 1))
    return sorted(out)
