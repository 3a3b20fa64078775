"""Crash safety of the deletion service, end to end: a request accepted with ``202`` is never lost, and after
``kill -9`` at any moment (right after a 202, while a batch is being applied, while its candidate version is being
verified, during the restart's own recovery, while POSTs are in flight) the restarted server finishes every
unfinished request exactly once, the served version deletes every requested id, and ``ledger verify`` passes.

The server is the real ``obliviate serve`` subprocess on a loopback port, over SQLite and over PostgreSQL. The kill
moments come from a seeded RNG and from watching request states through the API, so each kill lands in a known
phase (a kill that finds the worker idle is allowed; the test asserts that at least one hit unfinished work).

Two in-process tests pin the recovery bugs this suite found: requests left ``applied`` to a candidate that was
rejected just before the crash, and a relative ``--data-dir`` whose served model was deleted on restart.
"""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from obliviate.ledger.deployment import read_metadata
from obliviate.ledger.store import Ledger, sqlite_url
from obliviate.requests import ids_sha256
from service_fixtures import RestartableServer

TOKEN = "crash-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# ~1-2 s per batch on 2 cores: no oracle retrain, two SISA shards of one slice; small batches → many batches
SETTINGS = ["verify_oracle=false", "batch_max=3", "shards=2", "slices=1"]
N_IDS = 1400  # digits has 1437 training examples
FAST = {"verify_oracle": False, "method_config": {"shards": 2, "slices": 1}}


class Clients:
    """The client side: every key it ever sent, the body sent with it, and the id of each 202."""

    def __init__(self, base: str, rng: random.Random):
        self.http = httpx.Client(base_url=base, headers=AUTH, timeout=30)
        self.rng = rng
        self.bodies: dict[str, list[int]] = {}
        self.accepted: dict[str, str] = {}  # idempotency key → request id (from a 202)
        self.pending: set[str] = set()  # keys whose POST got no answer (the server died): retried after restart
        self.replayed = 0
        self.n = 0
        self.lock = threading.Lock()

    def new_body(self, ids: list[int] | None = None) -> str:
        with self.lock:
            key = f"crash-{self.n:03d}"
            self.n += 1
            self.bodies[key] = sorted(ids if ids is not None else self.rng.sample(range(N_IDS), self.rng.randint(1, 4)))
        return key

    def post(self, key: str, http: httpx.Client | None = None) -> httpx.Response | None:
        try:
            r = (http or self.http).post("/v1/deletions", json={"ids": self.bodies[key], "idempotency_key": key})
        except httpx.TransportError:
            with self.lock:
                self.pending.add(key)
            return None
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        with self.lock:
            assert self.accepted.setdefault(key, rid) == rid, f"key {key}: a second request for one key"
            self.pending.discard(key)
            if r.headers.get("Idempotent-Replayed") == "true":
                self.replayed += 1
        return r

    def submit(self, n: int) -> list[str]:
        keys = [self.new_body() for _ in range(n)]
        for k in keys:
            self.post(k)
        return keys

    def resubmit(self, n: int) -> None:
        """The same key and body again: the same request, marked as a replay."""
        for key in self.rng.sample(sorted(self.accepted), n):
            r = self.post(key)
            assert r is not None and r.headers.get("Idempotent-Replayed") == "true"
            assert r.json()["id"] == self.accepted[key]

    def retry_pending(self) -> None:
        for key in sorted(self.pending):
            assert self.post(key) is not None

    def wait_for(self, status: str, timeout: float = 40) -> bool:
        """Poll until some request is in ``status`` (the worker is mid-batch)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.http.get("/v1/deletions", params={"status": status, "limit": 1})
            if r.status_code == 200 and r.json()["items"]:
                return True
            time.sleep(0.02)
        return False

    def drain(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.http.get("/v1/status").json()["requests"]
            if set(counts) == {"verified"} and counts["verified"] == len(self.accepted):
                return
            time.sleep(0.2)
        pytest.fail(f"requests not all verified after {timeout} s: {counts}")


def ledger_url(data: Path, db: str | None) -> str:
    return db or sqlite_url(data / "ledger.sqlite")


def snapshot(data: Path, db: str | None, accepted: dict[str, str]) -> dict[str, int]:
    """With the server dead: every 202 so far is in the ledger; the request counts at the moment of the kill."""
    ledger = Ledger(ledger_url(data, db), create=False, migrate=False)
    try:
        ids = {r["id"] for r in ledger.requests(limit=100_000)}
        lost = sorted(set(accepted.values()) - ids)
        assert not lost, f"accepted (202) requests missing from the ledger after kill -9: {lost}"
        return ledger.counts()
    finally:
        ledger.close()


def candidates(data: Path, db: str | None) -> list[str]:
    ledger = Ledger(ledger_url(data, db), create=False, migrate=False)
    try:
        return [v["id"] for v in ledger.candidates("digits")]
    finally:
        ledger.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request):
    if request.param == "sqlite":
        yield None
        return
    from pgserver import drop_database, fresh_database, postgres_url

    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server available (set OBLIVIATE_TEST_PG_URL or install postgresql)")
    fresh = fresh_database(url)
    yield fresh
    drop_database(fresh)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_at_any_moment_loses_no_request_and_applies_each_exactly_once(tmp_path, db):
    t_start = time.monotonic()
    data = tmp_path / "data"
    srv = RestartableServer(data, db, SETTINGS, TOKEN, tmp_path)
    rng = random.Random(20261128)
    cl = Clients(srv.base, rng)
    kills: list[dict] = []

    def kill(moment: str, observed: bool | None = None) -> None:
        srv.kill()
        with cl.lock:
            accepted = dict(cl.accepted)
        counts = snapshot(data, db, accepted)
        kills.append({"moment": moment, "observed": observed, "counts": counts,
                      "unfinished": sum(counts.get(s, 0) for s in ("queued", "running", "applied"))})

    def restart() -> None:
        srv.start()
        cl.retry_pending()

    try:
        srv.start()
        cl.submit(5)
        # 1. mid-batch: the batch is claimed (running), its candidate not yet recorded
        seen = cl.wait_for("running")
        time.sleep(rng.uniform(0.0, 0.1))
        kill("running", seen)

        restart()
        cl.submit(2)
        cl.resubmit(2)
        # 2. right after a POST returned 202
        key = cl.submit(1)[0]
        kill("right after a 202")
        restart()
        assert cl.http.get(f"/v1/deletions/{cl.accepted[key]}").status_code == 200

        # 3. the candidate version is recorded (applied) and being verified
        cl.post(cl.new_body(list(cl.bodies[key])))  # the same ids under a new key: a no-op batch later
        cl.submit(1)
        seen = cl.wait_for("applied")
        time.sleep(rng.uniform(0.0, 0.3))
        kill("applied", seen)

        # 4. during start-up: the restart's recovery has verified that candidate and written its report, and is
        # promoting it (the server is not listening yet)
        cands = candidates(data, db)
        srv.spawn()
        seen = bool(cands) and srv.wait_file(data / "models" / "digits" / "reports" / f"{cands[0]}.json")
        time.sleep(rng.uniform(0.0, 0.05))
        kill("in recovery, candidate verified", seen)

        restart()
        cl.submit(2)
        cl.resubmit(2)
        # 5. a random moment while POSTs are in flight from another client
        stop = threading.Event()

        errors: list[BaseException] = []

        def poster():
            with httpx.Client(base_url=srv.base, headers=AUTH, timeout=30) as http:
                for _ in range(4):
                    if stop.is_set():
                        return
                    try:
                        cl.post(cl.new_body(), http)
                    except BaseException as exc:  # an assertion in the thread must fail the test
                        errors.append(exc)
                    time.sleep(0.2)

        t = threading.Thread(target=poster)
        t.start()
        time.sleep(rng.uniform(0.3, 1.2))
        kill("random, POSTs in flight")
        stop.set()
        t.join(60)
        assert not errors, errors

        restart()
        cl.submit(2)
        # 6. mid-batch again
        seen = cl.wait_for("running")
        time.sleep(rng.uniform(0.0, 0.1))
        kill("running", seen)

        restart()
        cl.submit(1)
        cl.resubmit(2)
        cl.drain()
        # the final restart: after a kill of the idle server its recovery must leave nothing behind
        kill("idle, drained")
        srv.start()
        srv.stop()
    finally:
        srv.kill()
        cl.http.close()
    elapsed = time.monotonic() - t_start

    url = ledger_url(data, db)
    ledger = Ledger(url, create=False, migrate=False)
    try:
        requests = ledger.requests(limit=100_000)
        versions = sorted(ledger.versions("digits", limit=100_000), key=lambda v: v["seq"])
        events, after = [], 0
        while page := ledger.events(after=after, limit=1000):
            events += page
            after = page[-1]["seq"]
        check = ledger.verify()
    finally:
        ledger.close()

    # every 202 is in the ledger, and nothing else is: one request per idempotency key
    by_id = {r["id"]: r for r in requests}
    assert not cl.pending
    assert set(by_id) == set(cl.accepted.values())
    keys = [r["idempotency_key"] for r in requests]
    assert len(keys) == len(set(keys)) == len(cl.accepted)
    assert {r["idempotency_key"]: r["id"] for r in requests} == cl.accepted
    assert cl.replayed >= 6  # the resubmissions (and any POST whose answer the kill swallowed)
    # every request verified, exactly once
    assert {r["status"] for r in requests} == {"verified"}
    n_verified = {rid: 0 for rid in by_id}
    n_received = dict(n_verified)
    for e in events:
        if e["kind"] == "request.verified":
            n_verified[e["request_id"]] += 1
        elif e["kind"] == "request.received":
            n_received[e["request_id"]] += 1
    assert set(n_verified.values()) == {1} and set(n_received.values()) == {1}
    # at least one kill interrupted unfinished work, and its requests were resumed
    requeued = sum(e["kind"] == "request.requeued" for e in events)
    retried = sum(r["attempts"] > 1 for r in requests)
    assert requeued >= 1 and retried >= 1, kills
    assert any(k["unfinished"] for k in kills), kills

    # lineage: the served and retired versions form one chain from the initial version
    chain = [v for v in versions if v["status"] in ("serving", "retired")]
    assert chain[0]["parent"] is None and chain[-1]["status"] == "serving"
    assert [v["status"] for v in chain].count("serving") == 1
    for prev, v in zip(chain, chain[1:]):
        assert v["parent"] == prev["id"]
    assert {v["status"] for v in versions} <= {"serving", "retired", "rejected"}  # no candidate left over
    chain_ids = {v["id"] for v in chain}
    assert all(r["version_after"] in chain_ids for r in requests)

    # the served version deletes every requested id, under the sha256 the ledger recorded
    serving = chain[-1]
    blob = Path(serving["path"]).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == serving["sha256"]
    deleted = json.loads(read_metadata(blob)["obliviate"])["deleted"]
    union = sorted(set().union(*(cl.bodies[k] for k in cl.accepted)))
    assert deleted == union and serving["n_deleted"] == len(union)
    # each verified request's report is on disk, matching its recorded sha256
    for r in requests:
        report = Path(by_id[r["id"]]["report_path"])
        assert hashlib.sha256(report.read_bytes()).hexdigest() == r["report_sha256"]

    # the hash chain and every row agree; the CLI says so too
    assert check["ok"], check["problems"]
    args = [sys.executable, "-m", "obliviate", "ledger", "verify", "--data-dir", str(data)]
    args += ["--db", db] if db else []
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # no interrupted writes and no unrecorded (or retired, still holding deleted data) model files
    vdir = Path(serving["path"]).parent
    assert not [f.name for f in vdir.iterdir() if f.name.endswith(".tmp")]
    assert {f.name for f in vdir.iterdir()} == {Path(serving["path"]).name}

    print(f"\n[{'postgresql' if db else 'sqlite'}] {elapsed:.1f} s, {srv.starts} starts, {len(requests)} requests, "
          f"{len(versions)} versions, {requeued} requeued, {retried} retried, {cl.replayed} replays")
    for k in kills:
        seen = "-" if k["observed"] is None else str(k["observed"])
        print(f"  kill at {k['moment']:<32} observed={seen:<5} counts={k['counts']}")


# -- in process: the recovery bugs found by the test above ---------------------------------------------------------
def _submit(svc, ids, key):
    ids = sorted(ids)
    req, _ = svc.ledger.submit("digits", ids, ids_sha256(np.array(ids)), None, None, key, f"body-{key}")
    return req["id"]


def test_requests_of_a_candidate_rejected_just_before_a_crash_are_requeued(tmp_path):
    """``_finish_candidate`` rejects a version and then re-queues (or fails, or re-applies) its requests in a
    second transaction: a crash in between left them ``applied`` to a rejected version, never finished."""
    from obliviate.ledger import open_service

    svc = open_service(tmp_path / "data", values=FAST)
    rid = _submit(svc, [5, 6], "k")
    claimed = svc.ledger.claim("digits", 10)
    serving = svc.ledger.serving("digits")
    cand = svc.manager.apply(svc.manager.load(serving), np.array([5, 6]))
    svc.ledger.add_version("digits", cand.vid, cand.path, cand.sha256, serving["id"], cand.method, cand.guarantee,
                           cand.n_deleted, claimed.batch_id, request_ids=[rid])
    svc.ledger.reject(cand.vid, "verification failed: simulated")  # ... and the process died here
    svc.ledger.close()
    svc = open_service(tmp_path / "data")
    try:
        assert svc.recovered["requeued"] == [rid]
        svc.worker.run_until_idle()
        r = svc.ledger.request(rid)
        assert r["status"] == "verified" and r["attempts"] == 2
        assert svc.ledger.serving("digits")["n_deleted"] == 2
        assert sum(e["kind"] == "request.verified" for e in svc.ledger.events(limit=10_000)) == 1
        assert svc.ledger.verify()["ok"]
    finally:
        svc.ledger.close()


def test_a_relative_data_dir_keeps_the_served_model_across_restarts(tmp_path, monkeypatch):
    """Version paths were recorded relative to the cwd and the restart's orphan sweep (absolute paths) deleted
    the served model as unrecorded."""
    from obliviate.ledger import open_service

    monkeypatch.chdir(tmp_path)
    svc = open_service("data", values=FAST)
    path = Path(svc.ledger.serving("digits")["path"])
    svc.ledger.close()
    assert path.is_absolute()
    svc = open_service("data")
    try:
        assert path.is_file()
        svc.manager.load(svc.ledger.serving("digits"))
    finally:
        svc.ledger.close()
