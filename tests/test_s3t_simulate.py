"""S3T deletion-capability simulator (Chowdhury et al., ICLR 2025; official brcsomnath/S3T src/deletion.py ``s3t()``) and
``obliviate s3t simulate`` (schema ``obliviate.s3t-simulate/1``, docs/report-formats.md).

Tolerances on simulated means are 5 standard errors (std / sqrt(trials)) around a mean derived by hand; the
simulator is seeded, so these are fixed numbers, but the bound is what any seed should meet.
"""
from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pytest

from obliviate.errors import ObliviateError
from obliviate.exact.sequences import bms, cyclic, random_sequences
from obliviate.exact.simulate import (SCHEMA, _counts_from_chunks, _targets, exact_uniform, parse_budget, replay,
                                      simulate, simulate_range)

RESULT = {"type": "object", "required": ["budget", "mean_deletions", "std"],
          "properties": {"budget": {"type": "integer", "minimum": 1},
                         "mean_deletions": {"type": "number", "minimum": 1},
                         "std": {"type": "number", "minimum": 0}}}
DOC_SCHEMA = {
    "type": "object",
    "required": ["schema", "shards", "slices", "selection", "trials", "results"],
    "properties": {"schema": {"const": SCHEMA},
                   "shards": {"type": "integer", "minimum": 1},
                   "slices": {"type": "integer", "minimum": 1},
                   "selection": {"enum": ["cyclic", "bms", "prior", "random"]},
                   "trials": {"type": "integer", "minimum": 1},
                   "results": {"type": "array", "minItems": 1, "items": RESULT}},
}


def harmonic(n: int) -> float:
    return sum(1.0 / i for i in range(1, n + 1))


def within_5_se(result: dict, expected: float, trials: int) -> bool:
    return abs(result["mean_deletions"] - expected) <= 5 * result["std"] / math.sqrt(trials) + 1e-12


# -- hand-checked cases ----------------------------------------------------------------------------------------

def test_one_shard_one_slice_needs_exactly_one_request():
    r = simulate(1, 1, 1, trials=50)
    assert (r["mean_deletions"], r["std"], r["min"], r["max"]) == (1.0, 0.0, 1, 1)


def test_sisa_one_shard_two_slices_is_geometric_with_mean_2():
    # identity order [0, 1]: the shard empties exactly when slice 0 is hit; P = 1/2 per request (a hit on slice 1
    # only truncates to [0] and is still counted) -> geometric: mean 1/p = 2, std sqrt(1-p)/p = sqrt(2)
    trials = 4000
    r = simulate(1, 2, 1, trials=trials, seed=1)
    assert r["std"] == pytest.approx(math.sqrt(2), rel=0.1)
    assert within_5_se(r, 2.0, trials)
    assert r["min"] == 1
    assert exact_uniform(1, 2) == pytest.approx((2.0, math.sqrt(2)))


def test_full_budget_one_shard_two_slices_is_a_two_coupon_collector():
    # [0,1] and [1,0] die only when both slices were hit: 1 + 2 = 3 requests on average, never fewer than 2
    trials = 4000
    r = simulate(1, 2, 2, trials=trials, seed=2)
    assert r["min"] == 2
    assert within_5_se(r, 3.0, trials)
    assert exact_uniform(2, 2) == pytest.approx((3.0, math.sqrt(2)))


def test_m5_L6_means_match_the_coupon_collector_values():
    # cyclic B <= L has B distinct first slices per shard: mean = m*L*H_(m*B); SISA (B=1) = 30*H_5 = 68.5
    trials = 2000
    doc = simulate_range(5, 6, [1, 3, 6], trials=trials)
    for r in doc["results"]:
        expected = 30 * harmonic(5 * r["budget"])
        assert r["exact_mean"] == pytest.approx(expected)
        assert within_5_se(r, expected, trials), (r, expected)
    assert doc["results"][0]["exact_mean"] == pytest.approx(68.5)


# -- agreement with the literal official procedure -------------------------------------------------------------

@pytest.mark.parametrize("m, L, make", [
    (1, 1, lambda: [cyclic(1, 1)]),
    (2, 3, lambda: [[(0, 1, 2)]] * 2),                      # SISA
    (3, 4, lambda: [cyclic(4, 2)] * 3),
    (2, 4, lambda: [cyclic(4, 9)] * 2),                     # B > L: repeated first slices
    (2, 5, lambda: [bms(5, 3), random_sequences(5, 4, seed=1)]),  # different sequences per shard
])
def test_vectorised_counts_equal_the_official_loop_on_the_same_streams(m, L, make):
    sequences = make()
    rng = np.random.default_rng(7)
    chunks = [rng.integers(0, m * L, size=(200, 40)) for _ in range(25)]
    fast = _counts_from_chunks(_targets(sequences, L), iter(chunks))
    streams = np.concatenate(chunks, axis=1)
    slow = [replay(sequences, row, L) for row in streams]
    assert fast.tolist() == slow


def test_replay_counts_the_request_that_empties_the_last_shard_and_wasted_requests():
    seqs = [[(0, 1)], [(0, 1)]]
    # shard 0 slice 1 (truncate), shard 0 slice 1 again (no-op, still counted), shard 0 slice 0 (shard 0 empty),
    # shard 0 slice 0 (no-op), shard 1 slice 0 (last shard empty) -> 5 requests
    assert replay(seqs, [1, 1, 0, 0, 2, 3], 2) == 5
    assert replay(seqs, [1, 0], 2) is None


# -- properties ------------------------------------------------------------------------------------------------

def test_more_budget_never_absorbs_fewer_deletions_and_beyond_L_adds_nothing():
    doc = simulate_range(5, 6, list(range(1, 9)), selection="cyclic", trials=2000)
    means = [r["mean_deletions"] for r in doc["results"]]
    assert all(a <= b for a, b in zip(means, means[1:])), means
    assert means[5] > means[0] * 1.5, "B = L absorbs clearly more than SISA"
    # cyclic(6, 7) and (6, 8) still have the 6 first slices of B = 6: same streams, same counts
    assert means[6] == means[5] and means[7] == means[5]
    assert doc["results"][0]["mean_deletions"] == doc["sisa"]["mean_deletions"]


def test_cyclic_and_bms_agree_within_L():
    a = simulate_range(5, 6, [6], "cyclic", trials=500)["results"][0]
    b = simulate_range(5, 6, [6], "bms", trials=500)["results"][0]
    assert a["mean_deletions"] == b["mean_deletions"], "both Latin squares: all 6 first slices in every shard"


def test_deterministic_and_seed_dependent():
    a = simulate_range(3, 4, [1, 2, 4], "bms", trials=300, seed=5)
    assert a == simulate_range(3, 4, [1, 2, 4], "bms", trials=300, seed=5)
    assert a != simulate_range(3, 4, [1, 2, 4], "bms", trials=300, seed=6)
    assert simulate(3, 4, 2, "bms", trials=300, seed=5) == a["results"][1]


def test_prior_selection_beats_cyclic_when_requests_follow_the_prior():
    probs = [0.9] + [0.02] * 5
    cyc = simulate(5, 6, 1, "cyclic", trials=1000, probs=probs)
    pri = simulate(5, 6, 1, "prior", trials=1000, probs=probs)
    # cyclic B=1 starts with the hot slice 0; prior B=1 starts with a slice of probability 0.02
    assert pri["mean_deletions"] > 5 * cyc["mean_deletions"]
    assert "exact_mean" not in pri


def test_per_shard_priors():
    probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.05, 0.9]])
    doc = simulate_range(2, 3, [1, 2], "prior", trials=200, probs=probs)
    assert doc["requests"] == "prior" and np.allclose(np.sum(doc["prior"]), 1.0)
    with pytest.raises(ObliviateError, match=r"expected shape \(shards=2, slices=3\), got \(3, 2\)"):
        simulate(2, 3, 1, probs=probs.T)
    with pytest.raises(ObliviateError, match="shard 1 has all-zero probabilities"):
        simulate(2, 3, 1, probs=[[1, 1, 1], [0, 0, 0]])


def test_a_first_slice_that_is_never_deleted_is_refused_not_looped_on():
    # cyclic(3, 2) = [0,1,2], [2,0,1]: first slices 0 and 2; slice 1 may be never deleted, slice 0 may not
    assert simulate(2, 3, 2, "cyclic", trials=50, probs=[0.5, 0.0, 0.5])["min"] >= 4
    with pytest.raises(ObliviateError, match="slice 0 of shard 0 starts a sequence but has deletion probability 0"):
        simulate(2, 3, 2, "cyclic", probs=[0.0, 0.5, 0.5])
    # prior ranks the zero-probability slices first, so one shard could never fail
    with pytest.raises(ObliviateError, match="deletion probability 0"):
        simulate(1, 3, 1, "prior", probs=[1.0, 0.0, 0.0])


# -- the JSON document -----------------------------------------------------------------------------------------

def test_document_schema():
    doc = simulate_range(5, 6, [1, 2, 3], "bms", trials=100, seed=3)
    jsonschema.validate(doc, DOC_SCHEMA)
    assert (doc["schema"], doc["shards"], doc["slices"], doc["selection"], doc["trials"], doc["seed"]) == \
        ("obliviate.s3t-simulate/1", 5, 6, "bms", 100, 3)
    assert [r["budget"] for r in doc["results"]] == [1, 2, 3]
    assert all(r["min"] <= r["mean_deletions"] <= r["max"] for r in doc["results"])
    assert json.loads(json.dumps(doc)) == doc, "plain JSON types only"


# -- validation ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("3", [3]), ("1-6", [1, 2, 3, 4, 5, 6]), (" 2 - 4 ", [2, 3, 4]),
                                            ("1-3,6", [1, 2, 3, 6]), ("5-5", [5])])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text, message", [
    ("0", "budgets start at 1"), ("0-3", "budgets start at 1"), ("6-1", "range 6-1 is empty"),
    ("abc", "expected a positive integer B or a range A-B"), ("1-", "expected a positive integer B or a range"),
    ("", "expected a positive integer B"), ("-2", "expected a positive integer B"), ("1.5", "or a range A-B"),
])
def test_parse_budget_errors(text, message):
    with pytest.raises(ObliviateError, match=message):
        parse_budget(text)


@pytest.mark.parametrize("kwargs, message", [
    ({"shards": 0}, "shards=0: expected at least 1 shard"),
    ({"slices": 0}, "slices=0: expected at least 1 slice"),
    ({"budget": 7, "slices": 3}, "budget B=7 exceeds L!=6"),
    ({"trials": 0}, "trials=0: expected an integer between 1 and"),
    ({"selection": "sisa"}, "unknown selection 'sisa'"),
    ({"probs": [1, 2]}, "expected L=6 values"),
])
def test_simulate_validation(kwargs, message):
    args = {"shards": 5, "slices": 6, "budget": 2, **kwargs}
    with pytest.raises(ObliviateError, match=message):
        simulate(**args)


def test_simulate_range_validates_every_budget_before_running():
    with pytest.raises(ObliviateError, match="budget B=7 exceeds L!=6"):
        simulate_range(2, 3, [1, 2, 7])
    with pytest.raises(ObliviateError, match="expected each budget once"):
        simulate_range(2, 3, [1, 1])
    with pytest.raises(ObliviateError, match="expected a non-empty list"):
        simulate_range(2, 3, [])


# -- command line ----------------------------------------------------------------------------------------------

@pytest.fixture
def s3t_cli(cli):
    """``obliviate s3t ...`` through the real ``obliviate.cli.main`` (its one-line errors, exit 2); registers
    ``s3t_app`` on the main app for the test if the main CLI does not wire it yet."""
    from obliviate import cli as main_cli
    from obliviate.exact.cli_s3t import s3t_app

    groups = main_cli.app.registered_groups
    saved = list(groups)
    if not any(g.name == "s3t" for g in groups):
        main_cli.app.add_typer(s3t_app, name="s3t")
    yield lambda *args: cli("s3t", "simulate", *args)
    groups[:] = saved


def test_cli_simulate_writes_json_and_html(s3t_cli, tmp_path):
    out_json, out_html = tmp_path / "sim.json", tmp_path / "sub" / "sim.html"
    rc, out, err = s3t_cli("--shards", "5", "--slices", "6", "--budget", "1-6", "--trials", "300",
                           "--json", out_json, "--html", out_html)
    assert rc == 0, err
    doc = json.loads(out_json.read_text())
    jsonschema.validate(doc, DOC_SCHEMA)
    assert doc["trials"] == 300 and [r["budget"] for r in doc["results"]] == [1, 2, 3, 4, 5, 6]
    assert doc == simulate_range(5, 6, list(range(1, 7)), trials=300)
    page = out_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "obliviate.s3t-simulate/1" in page
    assert "× SISA" in out and "mean deletions" in out
    assert "1.00" in out, "B=1 is SISA: ratio 1.00"


def test_cli_prior(s3t_cli, tmp_path):
    rc, out, err = s3t_cli("--shards", "2", "--slices", "3", "--budget", "2", "--selection", "prior",
                           "--prior", "0.8,0.1,0.1", "--trials", "100", "--json", tmp_path / "p.json")
    assert rc == 0, err
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["requests"] == "prior" and doc["prior"] == pytest.approx([0.8, 0.1, 0.1])


@pytest.mark.parametrize("args, message", [
    (["--budget", "0"], "budgets start at 1"),
    (["--budget", "6-1"], "range 6-1 is empty"),
    (["--budget", "abc"], "expected a positive integer B or a range A-B"),
    (["--budget", "1-"], "expected a positive integer B or a range A-B"),
    (["--budget", "7", "--slices", "3"], "budget B=7 exceeds L!=6"),
    (["--selection", "sisa"], "unknown selection 'sisa'"),
    (["--prior", "0.5,0.5"], "expected 6 values"),
    (["--prior", "a,b,c,d,e,f"], "expected 6 comma-separated non-negative numbers"),
    (["--prior", "1,0,0,0,0,-1"], "expected non-negative numbers"),
    (["--shards", "0"], "shards=0"),
    (["--trials", "0"], "trials=0"),
])
def test_cli_errors_exit_2_with_one_line(s3t_cli, args, message):
    base = {"--shards": "5", "--slices": "6", "--budget": "1-2", "--trials": "10"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    rc, out, err = s3t_cli(*[x for kv in base.items() for x in kv])
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and message in err


def test_cli_checks_output_paths_before_computing(s3t_cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    rc, out, err = s3t_cli("--shards", "5", "--slices", "6", "--budget", "1", "--json", tmp_path,
                           "--html", tmp_path / "never.html")
    assert rc == 2 and "is a directory, expected a file path" in err
    assert not (tmp_path / "never.html").exists()
    rc, out, err = s3t_cli("--shards", "5", "--slices", "6", "--budget", "1", "--json", tmp_path / "afile" / "x.json")
    assert rc == 2 and "is not a directory" in err
