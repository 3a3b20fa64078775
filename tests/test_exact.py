"""Exact unlearning (issue 3): the sharded training plan, SISA and S3T deletion exactness, persistence and
the model cache, executor agreement (serial, local process pool, Ray), and the ``sisa`` / ``s3t`` methods
through the API and the command line.

Exactness is checked tensor for tensor (``torch.equal``) against models trained from scratch, on CPU with
fixed seeds, on a plan rebuilt independently from the seed (SISA arXiv 1912.03817, S3T arXiv 2406.16257: the
exactness conditions first).
Configurations are tiny (digits, 2 shards × 2–3 slices, a few epochs) so the file runs in well under two
minutes on two cores, a local Ray start included.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import obliviate
from obliviate.distributed import Runtime, call_single_threaded, run_jobs
from obliviate.errors import ObliviateError
from obliviate.exact import lora
from obliviate.exact import s3t as s3t_mod
from obliviate.exact import sisa as sisa_mod
from obliviate.exact.ensemble import ShardEnsemble
from obliviate.exact.plan import ShardPlan, derive_seed
from obliviate.exact.s3t import S3TSystem, build_prefix_model, train_prefix
from obliviate.exact.sisa import SisaSystem
from obliviate.models.store import ModelStore
from obliviate.tasks import get_task
from obliviate.training import predict, train

SEED = 0
SERIAL = Runtime(executor="serial")
N_DIGITS = 1437
# the cyclic rotations of [0, 1, 2] (official S3T code, ``get_cyclic``: rotate_right(lst, i) for i < B), written
# out so the low-level tests do not depend on sequence selection
SEQS3 = [(0, 1, 2), (2, 0, 1), (1, 2, 0)]
SEQS2 = [(0, 1), (1, 0)]
S3T_CFG = {"shards": 2, "slices": 3, "rank": 4, "alpha": 8.0, "epochs": 2, "lr": 3e-3}
EXACT_KEYS = {"scheme", "deleted", "already_deleted", "shards_touched", "models_deactivated", "models_retrained",
              "retrained_shards", "examples_reprocessed", "fraction_reprocessed", "time_s", "plan"}


@pytest.fixture(scope="module", autouse=True)
def _single_threaded_torch():
    """Every executor trains shard jobs single-threaded; run this module's in-process training (oracles,
    from-scratch references) the same way. It is also much faster on small shared CPUs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits():
    return get_task("digits")


@pytest.fixture(scope="module")
def recipe(digits):
    return digits.recipe({"epochs": 6})


@pytest.fixture(scope="module")
def sisa_system(digits, recipe):
    return SisaSystem.fit(digits, np.arange(digits.n_train), 2, 3, recipe, SEED, "vote", SERIAL)


@pytest.fixture(scope="module")
def s3t_system(digits, recipe):
    return S3TSystem.fit(digits, np.arange(digits.n_train), SEQS3, S3T_CFG, recipe, SEED, SERIAL)


# -- helpers ------------------------------------------------------------------------------------------------

def assert_states_equal(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), f"tensor {k} differs"


def states_differ(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def fresh_plan(n: int, shards: int, slices: int, seed: int = SEED) -> ShardPlan:
    """The plan rebuilt independently from the seed (not the system's, which deletions mutate)."""
    return ShardPlan.build(np.arange(n), shards, slices, seed)


def surviving(plan: ShardPlan, shard: int, deleted) -> list[np.ndarray]:
    return [np.setdiff1d(part, np.asarray(list(deleted), dtype=np.int64)) for part in plan.assignment[shard]]


def pick(plan: ShardPlan, shard: int, sl: int, k: int = 0) -> int:
    return int(plan.assignment[shard][sl][k])


def sisa_from_scratch(task, slices, recipe, shard: int) -> list[dict]:
    return call_single_threaded(sisa_mod.train_shard, (task, slices, recipe, SEED, shard))


def s3t_prefix_from_scratch(task, slices, recipe, cfg, shard: int, prefix):
    """train_prefix for each sub-prefix of ``prefix`` only (no other snapshot exists), then build_prefix_model."""
    snaps: dict = {}
    for p in range(1, len(prefix) + 1):
        sub = tuple(prefix[:p])
        snaps[sub] = call_single_threaded(train_prefix, (task, slices, sub, snaps, cfg, recipe, SEED, shard))
    model = build_prefix_model(task, SEED, cfg["rank"], cfg["alpha"], snaps, tuple(prefix)).eval()
    return model, snaps


def head_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The head's parameters: every LoRA-wrapped Linear is ``.base.``, LoRA blocks are ``lora_``."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n and ".base." not in n}


def served_state(system) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in system.served_model().state_dict().items()}


def test_accuracy(model, task) -> float:
    return float((predict(model, task.data.x_test).argmax(1) == task.data.y_test).mean())


test_accuracy.__test__ = False  # a helper, not a test


# -- 1. the plan ----------------------------------------------------------------------------------------------

def test_plan_covers_every_id_once_shuffled_with_lineage():
    ids = np.arange(100) + 1000
    plan = ShardPlan.build(ids, 3, 4, seed=7)
    assert len(plan.assignment) == 3 and all(len(row) == 4 for row in plan.assignment)
    parts = [p for row in plan.assignment for p in row]
    assert sorted(np.concatenate(parts).tolist()) == ids.tolist()       # every id exactly once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert plan.n_alive == 100
    # shuffled with the seed: shard 0 is not the first contiguous block of ids
    assert set(plan.shard_ids(0).tolist()) != set(ids[:len(plan.shard_ids(0))].tolist())
    lineage = plan.lineage()
    assert len(lineage) == 100
    for s, row in enumerate(plan.assignment):
        for sl, part in enumerate(row):
            for i in part:
                assert lineage[int(i)] == (s, sl)
    summary = plan.summary()
    assert summary["shards"] == 3 and summary["slices"] == 4 and summary["deleted"] == 0
    assert summary["sizes"] == [[len(p) for p in row] for row in plan.assignment]
    assert len(summary["lineage_sha256"]) == 64


def test_plan_is_a_function_of_the_seed():
    a, b = ShardPlan.build(np.arange(60), 2, 3, 5), ShardPlan.build(np.arange(60), 2, 3, 5)
    assert a.to_json() == b.to_json() and a.lineage_sha256() == b.lineage_sha256()
    c = ShardPlan.build(np.arange(60), 2, 3, 6)
    assert c.to_json()["assignment"] != a.to_json()["assignment"]
    assert c.lineage_sha256() != a.lineage_sha256()


def test_derive_seed_is_deterministic_and_separates_streams():
    assert derive_seed(0, "sisa", 1, 2) == derive_seed(0, "sisa", 1, 2)
    seeds = {derive_seed(0, "sisa", s, r) for s in range(3) for r in range(3)}
    assert len(seeds) == 9
    assert derive_seed(0, "s3t", 0, (0, 1)) != derive_seed(0, "s3t", 0, (1, 0))
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_plan_rejects_more_parts_than_examples():
    ShardPlan.build(np.arange(12), 3, 4, 0)  # exactly one example per part is fine
    with pytest.raises(ObliviateError, match="exceed"):
        ShardPlan.build(np.arange(11), 3, 4, 0)
    with pytest.raises(ObliviateError):
        ShardPlan.build(np.arange(11), 0, 4, 0)
    with pytest.raises(ObliviateError):
        ShardPlan.build(np.arange(11), 2, 0, 0)


def test_plan_locate_groups_by_shard_and_rejects_unknown_ids():
    plan = ShardPlan.build(np.arange(50), 2, 2, 3)
    a, b, c = pick(plan, 0, 1), pick(plan, 1, 0), pick(plan, 1, 1)
    by_shard, already = plan.locate(np.array([a, b, c]))
    assert by_shard == {0: [(1, a)], 1: [(0, b), (1, c)]} and already == []
    for bogus in (50, -1, 10_000):
        with pytest.raises(ObliviateError, match="never trained"):
            plan.locate(np.array([a, bogus]))


def test_plan_remove_then_already_deleted_and_json_roundtrip():
    plan = ShardPlan.build(np.arange(50), 2, 2, 3)
    sha = plan.lineage_sha256()
    doc = json.loads(json.dumps(plan.to_json()))
    back = ShardPlan.from_json(doc)
    assert back.to_json() == plan.to_json() and back.lineage_sha256() == sha and back.summary() == plan.summary()

    a, b = pick(plan, 0, 1, 2), pick(plan, 1, 0)
    plan.remove(0, [a])
    assert plan.n_alive == 49 and a not in plan.lineage() and plan.lineage_sha256() != sha
    by_shard, already = plan.locate(np.array([a, b]))
    assert already == [a] and by_shard == {1: [(0, b)]}
    assert plan.summary()["deleted"] == 1

    back = ShardPlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert back.deleted == {a} and back.lineage_sha256() == plan.lineage_sha256()
    assert back.locate(np.array([a]))[1] == [a]  # the deletion survives the round trip


# -- building blocks: LoRA wrapping and the ensemble ----------------------------------------------------------

def test_lora_inject_wraps_the_body_and_deactivation_is_exact(digits):
    model = digits.make_model(1).eval()
    x = torch.as_tensor(digits.data.x_test[:16])
    base_out = model(x).detach().clone()
    layers = [layer for _, _, layer in lora.linear_layers(model)]
    wrappers, head = lora.inject(model, 4, 8.0)
    assert len(wrappers) == 2 and all(isinstance(w, lora.LoRALinear) for w in wrappers)
    assert head is layers[-1] and [w.base for w in wrappers] == layers[:-1]  # every Linear but the head
    assert math.isclose(wrappers[0].scale, 8.0 / math.sqrt(4))
    gen = torch.Generator().manual_seed(0)
    for w in wrappers:
        w.add_adapter(gen)
        w.active = 1
    assert torch.equal(model(x), base_out)  # B starts at zero: a new block changes nothing
    with torch.no_grad():
        for w in wrappers:
            w.lora_B[0].normal_()
    assert not torch.allclose(model(x), base_out)
    for w in wrappers:
        w.active = 0
    assert torch.equal(model(x), base_out)  # switching a block off restores the base exactly (no merge)


def test_shard_ensemble_aggregations():
    torch.manual_seed(0)
    members = [torch.nn.Linear(3, 4) for _ in range(3)]
    x = torch.randn(5, 3)
    outs = torch.stack([m(x) for m in members])
    logits = ShardEnsemble(members, "classification", "logits")(x)
    assert torch.allclose(logits, torch.log_softmax(outs.mean(0), -1))
    soft = ShardEnsemble(members, "classification", "softmax")(x)
    assert torch.allclose(soft.exp(), torch.softmax(outs, -1).mean(0), atol=1e-6)
    vote = ShardEnsemble(members, "classification", "vote")(x)
    counts = torch.nn.functional.one_hot(outs.argmax(-1), 4).sum(0)
    top = counts.max(-1).values
    assert all(counts[i, vote[i].argmax()] == top[i] for i in range(5))  # the plurality wins
    reg = [torch.nn.Linear(3, 1) for _ in range(2)]
    assert torch.allclose(ShardEnsemble(reg, "regression")(x), torch.stack([m(x) for m in reg]).mean(0))
    with pytest.raises(ValueError):
        ShardEnsemble([], "classification")


# -- 2. SISA exactness ------------------------------------------------------------------------------------------

def test_sisa_slice_schedule():
    assert sisa_mod.slice_epochs(6, 3) == [3, 3, 3]
    sched = sisa_mod.slice_epochs(20, 4)
    avg = 2 * 4 / 5 * 20 / 4
    assert len(sched) == 4 and sum(sched) == int(4 * avg) and all(e >= 1 for e in sched)


def test_sisa_fit_is_train_shard_on_the_seeded_plan(sisa_system, digits, recipe):
    plan = fresh_plan(digits.n_train, 2, 3)
    assert sisa_system.plan.lineage_sha256() == plan.lineage_sha256()
    assert [len(row) for row in sisa_system.checkpoints] == [3, 3]
    assert_states_equal(sisa_system.checkpoints[1][2], sisa_from_scratch(digits, plan.assignment[1], recipe, 1)[2])
    assert test_accuracy(sisa_system.served_model(), digits) > 0.8


def test_sisa_deletion_retrains_only_later_slices_of_its_shard_exactly(sisa_system, digits, recipe):
    system = sisa_system.copy()
    plan = fresh_plan(digits.n_train, 2, 3)
    target = pick(plan, 0, 1, 3)
    before = [list(row) for row in system.checkpoints]
    cost = system.delete(np.array([target]), SERIAL)

    expected = sisa_from_scratch(digits, surviving(plan, 0, [target]), recipe, 0)
    for got, exp in zip(system.checkpoints[0], expected):
        assert_states_equal(got, exp)
    assert system.checkpoints[0][0] is before[0][0]                  # slice 0 was not retrained
    assert states_differ(system.checkpoints[0][2], before[0][2])      # slices >= 1 were
    assert all(a is b for a, b in zip(system.checkpoints[1], before[1]))  # the other shard is untouched

    assert EXACT_KEYS <= set(cost)
    assert cost["scheme"] == "sisa" and cost["deleted"] == 1 and cost["already_deleted"] == []
    assert cost["shards_touched"] == [0] and cost["retrained_shards"] == [0]
    assert cost["slices_retrained"] == {0: 2}
    assert cost["models_retrained"] == 1 and cost["models_deactivated"] == 0
    shard0 = sum(len(p) for p in system.plan.assignment[0])
    assert cost["examples_reprocessed"] == shard0
    assert math.isclose(cost["fraction_reprocessed"], shard0 / digits.n_train)
    assert cost["plan"]["deleted"] == 1 and sum(map(sum, cost["plan"]["sizes"])) == digits.n_train - 1
    assert cost["time_s"] >= 0
    assert system.retrain_count == [1, 0]


def test_sisa_sequential_and_multi_shard_deletions_stay_exact(sisa_system, digits, recipe):
    system = sisa_system.copy()
    plan = fresh_plan(digits.n_train, 2, 3)
    first, second = pick(plan, 1, 2), pick(plan, 1, 0)
    c1 = system.delete(np.array([first]), SERIAL)
    assert c1["shards_touched"] == [1] and c1["slices_retrained"] == {1: 1}
    before0 = list(system.checkpoints[0])
    c2 = system.delete(np.array([second]), SERIAL)
    assert c2["slices_retrained"] == {1: 3}
    expected = sisa_from_scratch(digits, surviving(plan, 1, [first, second]), recipe, 1)
    for got, exp in zip(system.checkpoints[1], expected):
        assert_states_equal(got, exp)
    assert all(a is b for a, b in zip(system.checkpoints[0], before0))

    # one request hitting both shards in different slices
    a, b = pick(plan, 0, 2, 1), pick(plan, 1, 1, 1)
    before1_0 = system.checkpoints[1][0]
    c3 = system.delete(np.array([b, a]), SERIAL)
    assert c3["shards_touched"] == [0, 1] and c3["slices_retrained"] == {0: 1, 1: 2}
    assert c3["deleted"] == 2 and c3["models_retrained"] == 2
    assert system.checkpoints[1][0] is before1_0
    for shard, gone in ((0, [a]), (1, [first, second, b])):
        expected = sisa_from_scratch(digits, surviving(plan, shard, gone), recipe, shard)
        for got, exp in zip(system.checkpoints[shard], expected):
            assert_states_equal(got, exp)
    assert system.retrain_count == [1, 3]


def test_sisa_deleting_a_whole_first_slice_then_resuming_stays_exact(sisa_system, digits, recipe):
    """The normaliser moves to the next non-empty slice; a later resume must not refit it."""
    system = sisa_system.copy()
    plan = fresh_plan(digits.n_train, 2, 3)
    whole = plan.assignment[0][0].tolist()
    cost = system.delete(np.array(whole), SERIAL)
    assert cost["slices_retrained"] == {0: 3} and cost["deleted"] == len(whole)
    later = pick(plan, 0, 2)
    system.delete(np.array([later]), SERIAL)
    expected = sisa_from_scratch(digits, surviving(plan, 0, whole + [later]), recipe, 0)
    for got, exp in zip(system.checkpoints[0], expected):
        assert_states_equal(got, exp)


def test_sisa_deleting_twice_is_a_reported_noop(sisa_system, digits):
    system = sisa_system.copy()
    target = pick(system.plan, 1, 1)
    system.delete(np.array([target]), SERIAL)
    served = served_state(system)
    checkpoints = [list(row) for row in system.checkpoints]
    cost = system.delete(np.array([target]), SERIAL)
    assert cost["already_deleted"] == [target] and cost["deleted"] == 0
    assert cost["shards_touched"] == [] and cost["models_retrained"] == 0 and cost["examples_reprocessed"] == 0
    assert_states_equal(served_state(system), served)
    assert all(a is b for ra, rb in zip(system.checkpoints, checkpoints) for a, b in zip(ra, rb))


def test_sisa_deleting_an_unknown_id_is_an_error_and_changes_nothing(sisa_system, digits):
    system = sisa_system.copy()
    sha = system.plan.lineage_sha256()
    valid = pick(system.plan, 0, 0)
    with pytest.raises(ObliviateError, match="never trained"):
        system.delete(np.array([valid, digits.n_train + 3]), SERIAL)
    assert system.plan.lineage_sha256() == sha and not system.plan.deleted
    assert all(a is b for ra, rb in zip(system.checkpoints, sisa_system.checkpoints) for a, b in zip(ra, rb))


# -- 3. S3T exactness -------------------------------------------------------------------------------------------

def test_s3t_fit_trains_each_prefix_once_and_serves_the_longest(s3t_system, digits, recipe):
    prefixes = {q[:p] for q in SEQS3 for p in range(1, 4)}
    assert len(prefixes) == 9
    for s in range(2):
        assert set(s3t_system.snapshots[s]) == prefixes
        assert s3t_system.lengths[s] == [3, 3, 3]
        assert s3t_system.best_prefix(s) == (0, 1, 2)
    snap = s3t_system.snapshots[0][(2, 0)]
    assert {"lora0.A", "lora0.B", "lora1.A", "lora1.B"} <= set(snap)
    assert any(k.startswith("rest.") and "x_mean" in k for k in snap)  # the normaliser travels with the prefix
    assert s3t_system.budget() == [{"shard": s, "sequences_alive": 3, "served_prefix": 3} for s in range(2)]

    plan = fresh_plan(digits.n_train, 2, 3)
    model, _ = s3t_prefix_from_scratch(digits, plan.assignment[1], recipe, S3T_CFG, 1, (0, 1, 2))
    assert_states_equal(s3t_system.shard_model(1).state_dict(), model.state_dict())


def test_s3t_deletion_serves_the_exact_surviving_prefix_without_training(s3t_system, digits, recipe, monkeypatch):
    system = s3t_system.copy()
    plan = fresh_plan(digits.n_train, 2, 3)
    target = pick(plan, 0, 1, 2)
    old_snaps = dict(system.snapshots[0])
    shard1 = dict(system.snapshots[1])

    def no_training(*args, **kwargs):
        raise AssertionError("S3T trained during a deletion that a surviving sequence absorbs")

    monkeypatch.setattr(s3t_mod, "train", no_training)
    monkeypatch.setattr(s3t_mod, "train_prefix", no_training)
    cost = system.delete(np.array([target]), SERIAL)
    monkeypatch.undo()

    # every sequence containing slice 1 is truncated just before it
    assert system.lengths[0] == [1, 2, 0] and system.lengths[1] == [3, 3, 3]
    assert system.best_prefix(0) == (2, 0) and system.best_prefix(1) == (0, 1, 2)
    assert EXACT_KEYS <= set(cost) and cost["scheme"] == "s3t"
    assert cost["deleted"] == 1 and cost["shards_touched"] == [0]
    assert cost["models_deactivated"] == 2 + 1 + 3
    assert cost["models_retrained"] == 0 and cost["retrained_shards"] == []
    assert cost["examples_reprocessed"] == 0 and cost["fraction_reprocessed"] == 0
    assert cost["budget_left"] == [{"shard": 0, "sequences_alive": 2, "served_prefix": 2},
                                   {"shard": 1, "sequences_alive": 3, "served_prefix": 3}]

    # the served model of shard 0 is, parameter for parameter, one trained from scratch on slices (2, 0)
    expected, expected_snaps = s3t_prefix_from_scratch(digits, surviving(plan, 0, [target]), recipe, S3T_CFG, 0, (2, 0))
    served = system.shard_model(0)
    assert_states_equal(served.state_dict(), expected.state_dict())
    x = torch.as_tensor(digits.data.x_test[:32])
    assert torch.equal(served(x), expected(x))
    for prefix, snap in expected_snaps.items():
        assert_states_equal(system.snapshots[0][prefix], snap)

    # snapshots trained on the deleted slice are gone from the system, and so are their tensors
    assert set(system.snapshots[0]) == {(0,), (2,), (2, 0)}
    tensors = system.tensors()
    assert not any(1 in tuple(int(t) for t in key.split("/")[1][1:].split("-")) for key in tensors if key.startswith("s0/"))
    dropped = {id(v) for prefix, snap in old_snaps.items() if 1 in prefix for v in snap.values()}
    assert dropped and not dropped & {id(v) for v in tensors.values()}
    # the other shard is untouched
    assert system.snapshots[1].keys() == shard1.keys()
    assert all(system.snapshots[1][p] is shard1[p] for p in shard1)


def test_s3t_head_is_trained_at_every_position_and_restored_with_the_prefix(s3t_system, digits):
    """S3T exactness (arXiv 2406.16257; brcsomnath/S3T ``get_layers``): the head (the last Linear, never
    LoRA-wrapped) is trained at every position and snapshotted; the backbone stays at its seeded initialisation
    and only LoRA blocks adapt it."""
    system = s3t_system.copy()
    init = digits.make_model(derive_seed(SEED, "s3t", "backbone"))
    init_head = head_state(init)
    models = {p: build_prefix_model(digits, SEED, 4, 8.0, system.snapshots[0], p) for p in [(0,), (0, 1), (2, 0)]}
    for prefix, model in models.items():
        assert states_differ(head_state(model), init_head), f"head of prefix {prefix} was never trained"
        for name, value in model.state_dict().items():  # backbone Linears are frozen at the seeded init
            if ".base." in name:
                assert torch.equal(value, init.state_dict()[name.replace(".base.", ".")]), name
    assert states_differ(head_state(models[(0,)]), head_state(models[(0, 1)]))
    assert not any(".base." in k for snap in system.snapshots[0].values() for k in snap)

    head_longest = head_state(system.shard_model(0))  # prefix (0, 1, 2)
    system.delete(np.array([pick(system.plan, 0, 1)]), SERIAL)
    served = head_state(system.shard_model(0))       # prefix (2, 0)
    assert_states_equal(served, head_state(models[(2, 0)]))
    assert states_differ(served, head_longest)


def test_s3t_sequential_deletions_until_the_shard_is_retrained(s3t_system, digits, recipe):
    system = s3t_system.copy()
    plan = fresh_plan(digits.n_train, 2, 3)
    shard1 = dict(system.snapshots[1])
    gone = [pick(plan, 0, 1)]
    system.delete(np.array(gone), SERIAL)
    assert system.lengths[0] == [1, 2, 0]

    # another id of slice 1: already truncated everywhere, nothing changes (the official simulator still counts it)
    served = served_state(system)
    gone.append(pick(plan, 0, 1, 1))
    cost = system.delete(np.array(gone[-1:]), SERIAL)
    assert cost["deleted"] == 1 and cost["models_deactivated"] == 0 and cost["models_retrained"] == 0
    assert system.lengths[0] == [1, 2, 0]
    assert_states_equal(served_state(system), served)

    # slice 0: (0,) dies, (2, 0) is cut to (2,)
    gone.append(pick(plan, 0, 0))
    cost = system.delete(np.array(gone[-1:]), SERIAL)
    assert system.lengths[0] == [0, 1, 0] and system.best_prefix(0) == (2,)
    assert cost["models_deactivated"] == 2 and cost["models_retrained"] == 0 and cost["retrained_shards"] == []
    assert cost["budget_left"][0] == {"shard": 0, "sequences_alive": 1, "served_prefix": 1}
    expected, _ = s3t_prefix_from_scratch(digits, surviving(plan, 0, gone), recipe, S3T_CFG, 0, (2,))
    assert_states_equal(system.shard_model(0).state_dict(), expected.state_dict())
    assert set(system.snapshots[0]) == {(2,)}

    # slice 2: no sequence survives, the shard is retrained on its remaining data
    gone.append(pick(plan, 0, 2))
    cost = system.delete(np.array(gone[-1:]), SERIAL)
    assert cost["retrained_shards"] == [0] and cost["models_deactivated"] == 1
    assert cost["models_retrained"] == 9  # every distinct prefix of the three sequences
    remaining = sum(len(p) for p in surviving(plan, 0, gone))
    assert cost["examples_reprocessed"] == remaining
    assert math.isclose(cost["fraction_reprocessed"], remaining / digits.n_train)
    assert cost["budget_left"][0] == {"shard": 0, "sequences_alive": 3, "served_prefix": 3}
    assert system.lengths[0] == [3, 3, 3] and system.retrain_count == [1, 0]
    fresh = call_single_threaded(s3t_mod.train_shard,
                                 (digits, surviving(plan, 0, gone), SEQS3, S3T_CFG, recipe, SEED, 0))
    assert set(system.snapshots[0]) == set(fresh)
    for prefix in fresh:
        assert_states_equal(system.snapshots[0][prefix], fresh[prefix])
    expected, _ = s3t_prefix_from_scratch(digits, surviving(plan, 0, gone), recipe, S3T_CFG, 0, (0, 1, 2))
    assert_states_equal(system.shard_model(0).state_dict(), expected.state_dict())
    assert all(system.snapshots[1][p] is shard1[p] for p in shard1)

    # and it keeps absorbing deletions afterwards
    gone.append(pick(plan, 0, 2, 1))
    cost = system.delete(np.array(gone[-1:]), SERIAL)
    assert cost["models_retrained"] == 0 and system.lengths[0] == [2, 0, 1]


def test_s3t_deleting_twice_or_an_unknown_id(s3t_system, digits):
    system = s3t_system.copy()
    target = pick(system.plan, 1, 2)
    system.delete(np.array([target]), SERIAL)
    served, lengths = served_state(system), [list(r) for r in system.lengths]
    cost = system.delete(np.array([target]), SERIAL)
    assert cost["already_deleted"] == [target] and cost["deleted"] == 0
    assert cost["models_deactivated"] == 0 and cost["models_retrained"] == 0 and cost["shards_touched"] == []
    assert system.lengths == lengths
    assert_states_equal(served_state(system), served)
    sha = system.plan.lineage_sha256()
    with pytest.raises(ObliviateError, match="never trained"):
        system.delete(np.array([pick(system.plan, 0, 0), digits.n_train]), SERIAL)
    assert system.plan.lineage_sha256() == sha and system.lengths == lengths


def test_s3t_exact_on_regression():
    task = get_task("friedman", n_samples=300)
    rec = task.recipe({"epochs": 4})
    cfg = {"shards": 2, "slices": 2, "rank": 4, "alpha": 8.0, "epochs": 2, "lr": 3e-3}
    system = S3TSystem.fit(task, np.arange(task.n_train), SEQS2, cfg, rec, SEED, SERIAL)
    plan = fresh_plan(task.n_train, 2, 2)
    target = pick(plan, 1, 0)
    cost = system.delete(np.array([target]), SERIAL)
    assert system.lengths[1] == [0, 1] and cost["models_retrained"] == 0
    expected, _ = s3t_prefix_from_scratch(task, surviving(plan, 1, [target]), rec, cfg, 1, (1,))
    assert_states_equal(system.shard_model(1).state_dict(), expected.state_dict())
    out = predict(system.served_model(), task.data.x_test)
    assert out.shape == (len(task.data.x_test),) and np.isfinite(out).all()


# -- 4. persistence and the cache --------------------------------------------------------------------------------

def _store_roundtrip(system, tmp_path, key):
    store = ModelStore(tmp_path)
    store.put_tensors(key, system.tensors(), {"system": system.meta()})
    tensors, meta = store.get_tensors(key)
    return tensors, meta["system"]


def test_sisa_restore_gives_the_same_system(sisa_system, digits, recipe, tmp_path):
    system = sisa_system.copy()
    system.delete(np.array([pick(system.plan, 0, 1)]), SERIAL)
    tensors, meta = _store_roundtrip(system, tmp_path, "sisa")
    restored = SisaSystem.restore(digits, recipe, SEED, tensors, meta)
    assert_states_equal(served_state(restored), served_state(system))
    assert restored.plan.to_json() == system.plan.to_json() and restored.retrain_count == system.retrain_count
    assert restored.aggregation == "vote"
    nxt = np.array([pick(system.plan, 0, 0)])
    c1, c2 = system.delete(nxt, SERIAL), restored.delete(nxt, SERIAL)
    assert c1["slices_retrained"] == c2["slices_retrained"] == {0: 3}
    assert_states_equal(restored.tensors(), system.tensors())
    # the already-deleted id stays deleted after a restore
    assert restored.delete(np.array(sorted(system.plan.deleted)[:1]), SERIAL)["already_deleted"]


def test_s3t_restore_gives_the_same_system(s3t_system, digits, recipe, tmp_path):
    system = s3t_system.copy()
    system.delete(np.array([pick(system.plan, 0, 1)]), SERIAL)
    tensors, meta = _store_roundtrip(system, tmp_path, "s3t")
    restored = S3TSystem.restore(digits, recipe, SEED, tensors, meta)
    assert_states_equal(served_state(restored), served_state(system))
    assert restored.lengths == system.lengths and restored.budget() == system.budget()
    assert set(restored.snapshots[0]) == set(system.snapshots[0])
    # kill shard 0 in both: the retrained shards (seeded by prefix) agree across the restore
    nxt = np.array([pick(system.plan, 0, 0), pick(system.plan, 0, 2)])
    c1, c2 = system.delete(nxt, SERIAL), restored.delete(nxt, SERIAL)
    assert c1["retrained_shards"] == c2["retrained_shards"] == [0]
    assert_states_equal(restored.tensors(), system.tensors())


METHOD_ARGS = {"sisa": {"shards": 2, "slices": 2},
               "s3t": {"shards": 2, "slices": 2, "budget": 2, "epochs": 2, "rank": 4}}


@pytest.mark.parametrize("method", ["sisa", "s3t"])
def test_method_reuses_the_cached_system_and_rejects_a_corrupted_one(method, tmp_path):
    def run():
        return obliviate.unlearn("digits", method, "random:5", seed=0, train={"epochs": 6}, oracle=False,
                                 cache_dir=str(tmp_path), executor="serial", **METHOD_ARGS[method]).report

    first, second = run(), run()
    assert first["models"]["original"]["cached"] is False
    assert second["models"]["original"]["cached"] is True
    assert second["metrics"] == first["metrics"]
    assert second["models"]["unlearned"]["sha256"] == first["models"]["unlearned"]["sha256"]
    assert second["models"]["original"]["sha256"] == first["models"]["original"]["sha256"]
    strip = lambda e: {k: v for k, v in e.items() if k != "time_s"}  # noqa: E731
    assert strip(second["exact"]) == strip(first["exact"])

    # a corrupted checkpoint is never loaded: the system is refitted and gives the same answer
    weights = list(tmp_path.glob("*.safetensors"))
    assert len(weights) == 1
    blob = bytearray(weights[0].read_bytes())
    blob[-5] ^= 0xFF
    weights[0].write_bytes(bytes(blob))
    third = run()
    assert third["models"]["original"]["cached"] is False
    assert third["metrics"] == first["metrics"]
    assert third["models"]["unlearned"]["sha256"] == first["models"]["unlearned"]["sha256"]


def test_s3t_fit_with_selected_sequences_matches_explicit_ones(digits, recipe):
    """Seeds derive from the prefix tuples: selection output must seed exactly like plain-int tuples
    (else a restored system, whose sequences come back from JSON, would retrain differently)."""
    from obliviate.exact.sequences import select

    seqs = select("cyclic", 2, 2, seed=SEED)
    assert sorted(seqs) == sorted(SEQS2)
    cfg = {"shards": 1, "slices": 2, "rank": 4, "alpha": 8.0, "epochs": 1, "lr": 3e-3}
    a = S3TSystem.fit(digits, np.arange(200), seqs, cfg, recipe, SEED, SERIAL)
    b = S3TSystem.fit(digits, np.arange(200), [tuple(int(i) for i in q) for q in json.loads(json.dumps(seqs))],
                      cfg, recipe, SEED, SERIAL)
    assert_states_equal(a.tensors(), b.tensors())


# -- 5. executors -------------------------------------------------------------------------------------------------

def _small_fits(task, rec, runtime, deletions: bool = True):
    """Fitted SISA and S3T tensors and, with ``deletions``, the tensors after a deletion that retrains both
    SISA shards and one that kills S3T shard 0 (so its retraining runs on the executor too)."""
    ids = np.arange(600)
    sisa = SisaSystem.fit(task, ids, 2, 2, rec, SEED, "vote", runtime)
    cfg = {"shards": 2, "slices": 2, "rank": 4, "alpha": 8.0, "epochs": 2, "lr": 3e-3}
    s3t = S3TSystem.fit(task, ids, SEQS2, cfg, rec, SEED, runtime)
    fitted = (sisa.tensors(), s3t.tensors())
    if not deletions:
        return fitted, None
    p = fresh_plan(600, 2, 2)
    sisa.delete(np.array([pick(p, 0, 1), pick(p, 1, 0)]), runtime)
    s3t.delete(np.array([pick(p, 0, 0), pick(p, 0, 1), pick(p, 1, 1)]), runtime)
    assert s3t.retrain_count == [1, 0] and s3t.lengths[1] == [1, 0]
    return fitted, (sisa.tensors(), s3t.tensors())


@pytest.fixture(scope="module")
def serial_fits(digits):
    return _small_fits(digits, digits.recipe({"epochs": 4}), SERIAL)


def test_local_executor_agrees_with_serial(digits, serial_fits):
    # fits only: every run_jobs call starts a fresh spawn pool, which costs seconds on a small machine
    local, _ = _small_fits(digits, digits.recipe({"epochs": 4}), Runtime(executor="local", workers=2), False)
    for got, expected in zip(local, serial_fits[0]):
        assert_states_equal(got, expected)


@pytest.mark.slow
def test_ray_executor_agrees_with_serial(digits, serial_fits):
    import ray

    assert not ray.is_initialized()
    try:
        fitted, deleted = _small_fits(digits, digits.recipe({"epochs": 4}), Runtime(executor="ray", workers=2))
        assert ray.is_initialized()  # the jobs really went through a (local) Ray instance
        assert ray.cluster_resources().get("CPU") == 2
    finally:
        ray.shutdown()
    for got, expected in zip(fitted + deleted, serial_fits[0] + serial_fits[1]):
        assert_states_equal(got, expected)


def test_runtime_validation():
    with pytest.raises(ObliviateError, match="local, serial, ray"):
        Runtime(executor="dask")
    with pytest.raises(ObliviateError, match="--executor ray"):
        Runtime(executor="local", ray_address="127.0.0.1:6379")
    with pytest.raises(ObliviateError, match="workers"):
        Runtime(executor="local", workers=0)
    assert run_jobs(max, [], Runtime(executor="local")) == []
    assert run_jobs(max, [(1, 3), (4, 2)], SERIAL) == [3, 4]


# -- 6. the methods through the CLI and the API -------------------------------------------------------------------

CLI_COMMON = ("--task", "digits", "--forget", "random:5", "--set", "shards=2", "--set", "slices=2",
              "--set", "train.epochs=6", "--executor", "serial")


def _check_exact_block(report, method):
    assert report["guarantee"] == "exact" and report["method"] == method and report["executor"] == "serial"
    e = report["exact"]
    assert EXACT_KEYS <= set(e) and e["scheme"] == method
    assert e["deleted"] == 5 and e["already_deleted"] == []
    assert report["time_s"]["unlearn"] == e["time_s"]
    assert 0 <= e["fraction_reprocessed"] <= 1
    assert math.isclose(e["fraction_reprocessed"], e["examples_reprocessed"] / N_DIGITS)
    plan = e["plan"]
    assert plan["shards"] == 2 and plan["slices"] == 2
    assert len(plan["sizes"]) == 2 and all(len(r) == 2 for r in plan["sizes"])
    assert sum(map(sum, plan["sizes"])) == N_DIGITS - 5
    # the recorded lineage is the seeded plan minus the forget set
    expected = fresh_plan(N_DIGITS, 2, 2)
    by_shard, _ = expected.locate(np.array(report["per_example"]["forget_ids"]))
    for s, hits in by_shard.items():
        expected.remove(s, [i for _, i in hits])
    assert plan["lineage_sha256"] == expected.lineage_sha256()
    assert e["shards_touched"] == sorted(by_shard)
    sizes = {s: sum(plan["sizes"][s]) for s in range(2)}
    assert e["examples_reprocessed"] == sum(sizes[s] for s in e["retrained_shards"])
    return e, by_shard


def test_cli_s3t_run_reports_the_exact_cost(cli, tmp_path):
    out = tmp_path / "out.json"
    rc, _, err = cli("run", *CLI_COMMON, "--method", "s3t", "--set", "budget=2", "--set", "epochs=2",
                     "--json", out)
    assert rc == 0, err
    report = json.loads(out.read_text())
    e, by_shard = _check_exact_block(report, "s3t")
    assert {"oracle", "original", "unlearned"} <= set(report["metrics"])
    assert len(e["budget_left"]) == 2
    for b in e["budget_left"]:
        assert 0 <= b["sequences_alive"] <= 2 and 0 <= b["served_prefix"] <= 2
        if b["shard"] in e["retrained_shards"]:
            assert b["sequences_alive"] == 2 and b["served_prefix"] == 2
    if e["retrained_shards"]:
        assert e["models_retrained"] > 0
    else:
        assert e["models_retrained"] == 0 and e["examples_reprocessed"] == 0
    assert 1 <= e["models_deactivated"] <= 2 * 2 * 2
    untouched = [s for s in range(2) if s not in by_shard]
    for s in untouched:
        assert e["budget_left"][s] == {"shard": s, "sequences_alive": 2, "served_prefix": 2}


def test_cli_sisa_run_reports_the_exact_cost(cli, tmp_path):
    out = tmp_path / "out.json"
    rc, _, err = cli("run", *CLI_COMMON, "--method", "sisa", "--json", out)
    assert rc == 0, err
    report = json.loads(out.read_text())
    e, by_shard = _check_exact_block(report, "sisa")
    assert e["retrained_shards"] == sorted(by_shard) and e["models_retrained"] == len(by_shard)
    assert e["models_deactivated"] == 0
    for s, hits in by_shard.items():
        assert e["slices_retrained"][str(s)] == 2 - min(sl for sl, _ in hits)


def test_sisa_forgets_a_whole_class():
    r = obliviate.unlearn("digits", "sisa", "class:3", seed=0, train={"epochs": 6}, oracle=False,
                          executor="serial", shards=2, slices=2).report
    e = r["exact"]
    assert e["retrained_shards"] == [0, 1] and e["slices_retrained"] == {0: 2, 1: 2}
    assert r["metrics"]["original"]["forget_acc"] >= 0.8
    assert r["metrics"]["unlearned"]["forget_acc"] <= 0.05
    assert r["metrics"]["unlearned"]["retain_acc"] >= 0.8


def test_s3t_on_friedman_through_the_api():
    r = obliviate.unlearn("friedman", "s3t", "random:5", seed=0, train={"epochs": 6}, oracle=False,
                          task_options={"n_samples": 400}, executor="serial",
                          shards=2, slices=2, budget=2, epochs=2, rank=4).report
    assert r["task_kind"] == "regression" and r["guarantee"] == "exact" and r["exact"]["scheme"] == "s3t"
    assert r["exact"]["deleted"] == 5
    assert all(np.isfinite(r["metrics"]["unlearned"][k]) for k in ("forget_mae", "retain_mae", "test_mae"))


@pytest.mark.parametrize("args, needle", [
    (("--method", "s3t", "--set", "slices=2", "--set", "budget=3"), "budget"),
    (("--method", "s3t", "--set", "shards=40", "--set", "slices=40"), "exceed"),
    (("--method", "sisa", "--set", "shards=40", "--set", "slices=40"), "exceed"),
    (("--method", "s3t", "--set", "selection=prior"), "prior"),
    (("--method", "s3t", "--set", "slices=2", "--set", "budget=2", "--set", "selection=prior",
      "--set", "prior=0.2,0.3,0.5"), "prior"),
    (("--method", "sisa", "--executor", "dask"), "executor"),
    (("--method", "sisa", "--ray-address", "127.0.0.1:6379"), "--executor ray"),
], ids=["budget>L!", "s3t-parts>n", "sisa-parts>n", "prior-missing", "prior-length", "executor", "ray-address"])
def test_cli_bad_input_exits_2_with_one_line(cli, tmp_path, args, needle):
    out = tmp_path / "bad.json"
    rc, stdout, err = cli("run", "--task", "digits", "--forget", "random:5", "--set", "train.epochs=6",
                          *args, "--json", out)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err + stdout
    assert not out.exists()


# -- 7. accuracy sanity -------------------------------------------------------------------------------------------

def test_s3t_accuracy_before_deletion_is_close_to_the_plain_model(digits):
    plain = digits.make_model(SEED)
    train(plain, digits.data.x_train, digits.data.y_train, digits.recipe(), digits.kind, SEED)
    cfg = {"shards": 5, "slices": 4, "rank": 8, "alpha": 16.0, "epochs": 10, "lr": 3e-3}  # method defaults
    # budget 1 serves the same model as any cyclic budget before deletions: the identity order
    system = S3TSystem.fit(digits, np.arange(digits.n_train), [(0, 1, 2, 3)], cfg, digits.recipe(), SEED, SERIAL)
    acc_plain, acc_s3t = test_accuracy(plain, digits), test_accuracy(system.served_model(), digits)
    assert acc_plain > 0.9
    assert acc_s3t >= acc_plain - 0.03, (acc_s3t, acc_plain)
