"""The deletion-request ledger (``obliviate.ledger.store`` / ``chain``) on both backends: SQLite (a WAL file) and
PostgreSQL (a fresh database per test on the local test server). Migrations agree with the ORM, the hash chain
catches every kind of tampering, idempotency holds under concurrency, claims are ordered batches, pagination
has no gaps, and closed requests keep evidence (sha256, count) but not the example ids."""
from __future__ import annotations

import hashlib
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from obliviate.ledger.chain import GENESIS, canonical, check_chain, entry_hash
from obliviate.ledger.schema import Base
from obliviate.ledger.store import ConflictError, Ledger, LedgerError, NotFound, sha256_text, sqlite_url
from doc_keys import check_documented

DEP = "digits"


# -- backends -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _pg_base_url():
    from pgserver import postgres_url

    return postgres_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    """A URL of an empty ledger database: a SQLite file in tmp_path, or a fresh PostgreSQL database (dropped
    after the test)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "ledger.sqlite")
        return
    base = request.getfixturevalue("_pg_base_url")
    if base is None:
        pytest.skip("no PostgreSQL server could be started (tests/pgserver.py: postgres_url() returned None)")
    from pgserver import drop_database, fresh_database

    url = fresh_database(base)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def ledger(ledger_url):
    led = Ledger(ledger_url)
    yield led
    led.close()


# -- helpers ------------------------------------------------------------------------------------------------------
def fetch(led: Ledger, stmt: str, **params) -> list[dict]:
    with led.engine.begin() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(stmt), params)]


def execute(led: Ledger, *stmts: str, **params) -> None:
    """Raw SQL behind the ledger's back (one transaction)."""
    with led.engine.begin() as conn:
        for stmt in stmts:
            conn.execute(sa.text(stmt), params)


def ids_sha(ids: list[int]) -> str:
    return sha256_text(canonical(sorted(ids)))


def submit(led: Ledger, ids: list[int], key: str | None = None, subject: str | None = None, spec: str | None = None):
    body = canonical({"ids": ids, "subject": subject, "spec": spec})
    return led.submit(DEP, ids, ids_sha(ids), spec, subject, key, sha256_text(body))


def new_deployment(led: Ledger, serving: bool = True) -> None:
    led.create_deployment(DEP, "digits", "sisa", "exact", {"shards": 4, "seed": 0}, "/models/digits")
    if serving:
        led.add_version(DEP, "v1", "/models/digits/v1.pt", "a" * 64, None, "sisa", "exact", 0, None, serving=True)


def scenario(led: Ledger) -> dict:
    """Real operations: deployment, served initial version, 3 submits, a claim of 2, their candidate, promote.
    14 events: 1 deployment + 2 (v1 created, serving) + 3 received + 2 running + 3 (v2 created, 2 applied)
    + 3 (v2 serving, 2 verified)."""
    new_deployment(led)
    reqs = [submit(led, [10 * i + 1, 10 * i + 2], key=f"k{i}")[0] for i in range(3)]
    claimed = led.claim(DEP, 2)
    batch = [r["id"] for r in claimed.requests]
    led.add_version(DEP, "v2", "/models/digits/v2.pt", "b" * 64, "v1", "sisa", "exact", 4, claimed.batch_id,
                    request_ids=batch)
    led.promote(DEP, "v2", batch, "/reports/v2.json", "c" * 64, approximate=False)
    return {"requests": [r["id"] for r in reqs], "batch": batch, "queued": reqs[2]["id"]}


SCENARIO_EVENTS = 14


# -- 1. migrations and opening ------------------------------------------------------------------------------------
def test_migration_matches_orm(ledger_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    led = Ledger(ledger_url)
    try:
        with led.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == [], f"ORM and migrations disagree: {diff}"
            tables = set(sa.inspect(conn).get_table_names())
        assert set(Base.metadata.tables) | {"alembic_version"} == tables
        assert fetch(led, "SELECT version_num FROM alembic_version") == [{"version_num": "0001"}]
    finally:
        led.close()


def _schema_snapshot(led: Ledger) -> dict:
    with led.engine.connect() as conn:
        insp = sa.inspect(conn)
        return {t: (sorted((c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)),
                    sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(t)))
                for t in insp.get_table_names()}


def test_reopen_is_a_noop(ledger_url):
    led = Ledger(ledger_url)
    scenario(led)
    before = (_schema_snapshot(led), fetch(led, "SELECT * FROM alembic_version"),
              fetch(led, "SELECT * FROM events ORDER BY seq"), fetch(led, "SELECT * FROM chain_head"))
    led.migrate()  # again, on the open ledger
    led.close()
    for kwargs in ({}, {"create": False}, {"migrate": False}):
        again = Ledger(ledger_url, **kwargs)
        try:
            after = (_schema_snapshot(again), fetch(again, "SELECT * FROM alembic_version"),
                     fetch(again, "SELECT * FROM events ORDER BY seq"), fetch(again, "SELECT * FROM chain_head"))
            assert after == before
            check = again.verify()
            assert check["ok"], check["problems"]
            assert check["events"] == SCENARIO_EVENTS
        finally:
            again.close()


def test_migrate_false_on_an_empty_database_is_refused(ledger_url):
    with pytest.raises(LedgerError, match="not an obliviate ledger.*missing tables: deployments"):
        Ledger(ledger_url, migrate=False)


def test_create_false_on_a_missing_sqlite_file(tmp_path):
    path = tmp_path / "sub" / "ledger.sqlite"
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger(sqlite_url(path), create=False)
    assert not path.exists() and not path.parent.exists()


@pytest.mark.parametrize("url, message", [
    ("not a database url", "is not a database URL"),
    ("sqlite://", "needs a SQLite file"),
    ("sqlite:///:memory:", "needs a SQLite file"),
    ("mysql://u:pw@localhost/db", "unsupported database 'mysql'"),
    ("postgresql+psycopg://u:s3cret@127.0.0.1:1/db", "cannot open the ledger at postgresql"),
])
def test_bad_urls_raise_one_line_ledger_errors(url, message):
    with pytest.raises(LedgerError, match=message) as info:
        Ledger(url)
    text = str(info.value)
    assert "\n" not in text.strip()
    assert "s3cret" not in text  # a password never reaches a message


# -- 2. the hash chain --------------------------------------------------------------------------------------------
def test_operations_chain_verifies(ledger):
    s = scenario(ledger)
    check = ledger.verify()
    assert check["ok"], check["problems"]
    assert (check["events"], check["head_seq"], check["requests"], check["versions"]) == (SCENARIO_EVENTS,
                                                                                          SCENARIO_EVENTS, 3, 2)
    events = ledger.events(limit=1000)
    assert [e["seq"] for e in events] == list(range(1, SCENARIO_EVENTS + 1))
    assert events[0]["prev_hash"] == GENESIS and events[-1]["hash"] == check["head_hash"]
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(events, events[1:]))
    assert [e["kind"] for e in events] == [
        "deployment.created", "version.created", "version.serving", "request.received", "request.received",
        "request.received", "request.running", "request.running", "version.created", "request.applied",
        "request.applied", "version.serving", "request.verified", "request.verified"]
    assert ledger.serving(DEP)["id"] == "v2" and ledger.version("v1")["status"] == "retired"
    assert [ledger.request(r)["status"] for r in s["requests"]] == ["verified", "verified", "queued"]
    assert ledger.counts() == {"verified": 2, "queued": 1}


def _swap_seq(a: int, b: int) -> list[str]:
    return [f"UPDATE events SET seq = -1 WHERE seq = {a}", f"UPDATE events SET seq = {a} WHERE seq = {b}",
            f"UPDATE events SET seq = {b} WHERE seq = -1"]


# (name, SQL given the scenario's ids, the expected problem as a regex)
TAMPERING = {
    "edit_payload": (lambda s: ["UPDATE events SET payload = replace(payload, '\"n_ids\"\\:2', '\"n_ids\"\\:3') "
                                "WHERE seq = 4"],
                     r"event 4 \(request\.received\): content does not match its hash"),
    "delete_middle": (lambda s: ["DELETE FROM events WHERE seq = 7"],
                      r"event 7: missing \(next entry is 8\)"),
    "truncate_last": (lambda s: [f"DELETE FROM events WHERE seq = {SCENARIO_EVENTS}"],
                      rf"chain head says event {SCENARIO_EVENTS} but the log ends at event {SCENARIO_EVENTS - 1}"),
    # a careful forger also rewinds the head: the chain is then consistent, but the rows outlive their events
    "truncate_and_rewind_head": (lambda s: [f"DELETE FROM events WHERE seq = {SCENARIO_EVENTS}",
                                            "UPDATE chain_head SET seq = seq - 1, "
                                            "hash = (SELECT hash FROM events WHERE seq = chain_head.seq - 1)"],
                                 r"request {batch1}: status, report_sha256 differ from the log \(row status='verified'.*log status='applied'"),
    "reorder": (lambda s: _swap_seq(5, 6), r"event 5: prev_hash does not match entry 4: deleted or reordered"),
    "queued_to_verified": (lambda s: [f"UPDATE deletion_requests SET status = 'verified' WHERE id = '{s['queued']}'"],
                           r"request {queued}: status.* differ from the log \(row status='verified'.*log status='queued'"),
    "failed_to_verified": (lambda s: [f"UPDATE deletion_requests SET status = 'verified' WHERE id = '{s['queued']}'"],
                           r"request {queued}: status.* differ from the log \(row status='verified'.*log status='failed'"),
    "version_sha256": (lambda s: [f"UPDATE model_versions SET sha256 = '{'d' * 64}' WHERE id = 'v2'"],
                       r"version v2: sha256 differ from the log"),
    "delete_version": (lambda s: ["DELETE FROM model_versions WHERE id = 'v1'"],
                       r"version v1: in the log but its row is missing"),
    "delete_request": (lambda s: [f"DELETE FROM deletion_requests WHERE id = '{s['batch'][0]}'"],
                       r"request {batch0}: in the log but its row is missing"),
    "delete_head": (lambda s: ["DELETE FROM chain_head"], r"chain head missing"),
    "serving_version": (lambda s: ["UPDATE deployments SET serving_version = 'v1'"],
                        r"deployment digits: serving_version differ from the log \(row serving_version='v1'; log serving_version='v2'\)"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_tampering_is_detected(ledger, kind):
    s = scenario(ledger)
    if kind == "failed_to_verified":
        ledger.fail([s["queued"]], "boom")
    assert ledger.verify()["ok"]
    sql, pattern = TAMPERING[kind]
    execute(ledger, *sql(s))
    check = ledger.verify()
    assert check["ok"] is False
    pattern = pattern.format(queued=s["queued"], batch0=s["batch"][0], batch1=s["batch"][1])
    assert any(re.search(pattern, p) for p in check["problems"]), check["problems"]
    if kind == "truncate_and_rewind_head":  # the chain itself is intact: only the rows give it away
        assert not any(p.startswith(("event ", "chain head")) for p in check["problems"]), check["problems"]


def _chain(n: int) -> list[SimpleNamespace]:
    out, prev = [], GENESIS
    for seq in range(1, n + 1):
        e = SimpleNamespace(seq=seq, ts=f"2026-01-01T00:00:0{seq}", kind="request.received", request_id=f"r{seq}",
                            version_id=None, payload=canonical({"n": seq}), prev_hash=prev)
        e.hash = entry_hash(e.seq, e.ts, e.kind, e.request_id, e.version_id, e.payload, e.prev_hash)
        out.append(e)
        prev = e.hash
    return out


def _rehash(e: SimpleNamespace) -> None:
    e.hash = entry_hash(e.seq, e.ts, e.kind, e.request_id, e.version_id, e.payload, e.prev_hash)


def test_check_chain_intact():
    assert check_chain([], None) == []
    assert check_chain([], (0, GENESIS)) == []
    c = _chain(5)
    assert check_chain(c, (5, c[-1].hash)) == []
    assert check_chain(c, [5, c[-1].hash]) == []  # a head read back as a list


@pytest.mark.parametrize("field, value", [("ts", "2027-01-01"), ("kind", "request.verified"), ("request_id", "rX"),
                                          ("version_id", "v9"), ("payload", canonical({"n": 99}))])
def test_check_chain_edited_entry(field, value):
    c = _chain(4)
    setattr(c[1], field, value)
    kind = value if field == "kind" else "request.received"
    assert check_chain(c, (4, c[-1].hash)) == [
        f"event 2 ({kind}): content does not match its hash: the entry was edited"]


def test_check_chain_edited_and_rehashed_entry_breaks_the_next_link():
    c = _chain(4)
    c[1].payload = canonical({"n": 99})
    _rehash(c[1])  # the forger recomputes its hash, but the next entry still points at the old one
    assert check_chain(c, (4, c[-1].hash)) == [
        "event 3: prev_hash does not match entry 2: deleted or reordered entries"]


def test_check_chain_deletions_reorders_and_head():
    c = _chain(5)
    problems = check_chain(c[:2] + c[3:], (5, c[-1].hash))
    assert problems[0] == "event 3: missing (next entry is 4): an entry was deleted"
    assert "event 4: prev_hash does not match entry 3: deleted or reordered entries" in problems
    assert check_chain(c[1:], (5, c[-1].hash))[0] == "event 1: missing (next entry is 2): an entry was deleted"
    # the last entry deleted: every link is intact, only the head notices
    assert check_chain(c[:4], (5, c[-1].hash)) == [
        "chain head says event 5 but the log ends at event 4: entries were deleted from (or added to) the end"]
    # the head's hash differs with the right seq (a rewritten last entry)
    assert len(check_chain(c, (5, "f" * 64))) == 1
    # an entry appended past the head
    extra = _chain(6)
    assert check_chain(extra, (5, extra[4].hash))[0].startswith("chain head says event 5 but the log ends at event 6")
    # the head record deleted
    assert check_chain(c, None) == ["chain head missing: the head record was deleted"]
    # reordered: seq values swapped (the hash covers seq, so both entries also fail their own hash)
    r = _chain(4)
    r[1].seq, r[2].seq = 3, 2
    r[1], r[2] = r[2], r[1]
    problems = check_chain(r, (4, r[-1].hash))
    assert "event 2: prev_hash does not match entry 1: deleted or reordered entries" in problems
    assert any("content does not match its hash" in p for p in problems)


def test_entry_hash_covers_every_field():
    args = dict(seq=1, ts="t", kind="k", request_id="r", version_id="v", payload="{}", prev_hash=GENESIS)
    base = entry_hash(**args)
    assert base == entry_hash(**args) and len(base) == 64
    for k, v in [("seq", 2), ("ts", "u"), ("kind", "j"), ("request_id", None), ("version_id", None),
                 ("payload", '{"a":1}'), ("prev_hash", "1" * 64)]:
        assert entry_hash(**{**args, k: v}) != base, k
    assert canonical({"b": 1, "a": [2, 1]}) == canonical({"a": [2, 1], "b": 1}) == '{"a":[2,1],"b":1}'


# -- 3. idempotency and concurrency -------------------------------------------------------------------------------
def test_idempotency(ledger):
    new_deployment(ledger)
    first, created = submit(ledger, [1, 2, 3], key="abc")
    assert created and first["status"] == "queued" and first["n_ids"] == 3
    again, created = submit(ledger, [1, 2, 3], key="abc")
    assert created is False and again["id"] == first["id"]
    with pytest.raises(ConflictError, match="idempotency key 'abc' was used for a different request"):
        submit(ledger, [1, 2, 4], key="abc")
    a, ca = submit(ledger, [7])
    b, cb = submit(ledger, [7])
    assert ca and cb and a["id"] != b["id"]
    rows = fetch(ledger, "SELECT id, idempotency_key FROM deletion_requests ORDER BY seq")
    assert [(r["id"], r["idempotency_key"]) for r in rows] == [(first["id"], "abc"), (a["id"], None), (b["id"], None)]
    kinds = [e["kind"] for e in ledger.events(limit=100)]
    assert kinds.count("request.received") == 3  # the replay and the conflict logged nothing
    assert ledger.verify()["ok"]


def test_concurrent_submits(ledger):
    new_deployment(ledger, serving=False)
    n_threads, per_thread = 8, 25
    barrier = threading.Barrier(2 * n_threads)

    def distinct(t: int):
        barrier.wait()
        return [submit(ledger, [t * 1000 + i], key=f"t{t}-{i}")[0]["id"] for i in range(per_thread)]

    def same(t: int):
        barrier.wait()
        r, created = submit(ledger, [424242], key="shared")
        return r["id"], created

    with ThreadPoolExecutor(2 * n_threads) as pool:
        fd = [pool.submit(distinct, t) for t in range(n_threads)]
        fs = [pool.submit(same, t) for t in range(n_threads)]
        distinct_ids = [i for f in fd for i in f.result()]
        shared = [f.result() for f in fs]
    assert len(set(distinct_ids)) == n_threads * per_thread
    assert len({rid for rid, _ in shared}) == 1 and sum(created for _, created in shared) == 1
    total = n_threads * per_thread + 1
    assert fetch(ledger, "SELECT count(*) AS n FROM deletion_requests") == [{"n": total}]
    check = ledger.verify()
    assert check["ok"], check["problems"][:5]
    assert check["requests"] == total and check["events"] == total + 1
    seqs = [e["seq"] for e in ledger.events(limit=10_000)]
    assert seqs == list(range(1, total + 2))
    req_seqs = [r["seq"] for r in ledger.requests(limit=10_000)]
    assert len(req_seqs) == total and req_seqs == sorted(set(req_seqs))


def test_verify_is_consistent_during_concurrent_writes(ledger):
    """verify reads the log, the head and the rows as one snapshot: writes committed meanwhile never show up as
    a truncated log or a request without its event."""
    new_deployment(ledger, serving=False)
    stop = threading.Event()

    def writer(t: int):
        i = 0
        while not stop.is_set():
            submit(ledger, [t, i])
            i += 1
        return i

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(writer, t) for t in range(3)]
        try:
            bad = []
            for _ in range(15):
                check = ledger.verify()
                if not check["ok"]:
                    bad.append(check["problems"][:3])
        finally:
            stop.set()
        written = sum(f.result() for f in futures)
    assert written > 0
    assert bad == [], bad
    assert ledger.verify()["ok"]


# -- 4. claims ----------------------------------------------------------------------------------------------------
def test_claim_order_batches_and_recover(ledger):
    new_deployment(ledger)
    reqs = [submit(ledger, [100 + i, 200 + i])[0] for i in range(5)]
    ids = [r["id"] for r in reqs]

    first = ledger.claim(DEP, 2)
    assert [r["id"] for r in first.requests] == ids[:2]
    assert first.ids == [[100, 200], [101, 201]]
    for r in first.requests:
        assert (r["status"], r["attempts"], r["batch_id"], r["version_before"]) == ("running", 1, first.batch_id, "v1")
    second = ledger.claim(DEP, 2)
    assert [r["id"] for r in second.requests] == ids[2:4] and second.batch_id != first.batch_id
    assert [ledger.request(i)["status"] for i in ids] == ["running"] * 4 + ["queued"]
    assert ledger.claim("other-deployment", 10) is None

    rec = ledger.recover(DEP)
    assert sorted(rec["requeued"]) == sorted(ids[:4]) and rec["applied"] == []
    assert [ledger.request(i)["status"] for i in ids] == ["queued"] * 5
    assert all(ledger.request(i)["batch_id"] is None for i in ids)
    requeued = [e for e in ledger.events(limit=100) if e["kind"] == "request.requeued"]
    assert sorted(e["request_id"] for e in requeued) == sorted(ids[:4])
    assert all(e["payload"]["status"] == "queued" for e in requeued)
    check = ledger.verify()
    assert check["ok"], check["problems"]

    # a request tried before is retried alone (it must not sink a batch twice), still in arrival order
    singles = [ledger.claim(DEP, 10) for _ in range(4)]
    assert [[r["id"] for r in c.requests] for c in singles] == [[i] for i in ids[:4]]
    assert [c.requests[0]["attempts"] for c in singles] == [2, 2, 2, 2]
    last = ledger.claim(DEP, 10)
    assert [r["id"] for r in last.requests] == ids[4:] and last.requests[0]["attempts"] == 1
    assert ledger.claim(DEP, 10) is None
    assert ledger.recover(DEP)["requeued"] and ledger.verify()["ok"]


def test_lifecycle_reject_requeue_fail(ledger):
    new_deployment(ledger)
    a, b = (submit(ledger, [i])[0]["id"] for i in (1, 2))
    batch = ledger.claim(DEP, 2)
    ledger.add_version(DEP, "v2", "/m/v2.pt", "b" * 64, "v1", "sisa", "exact", 2, batch.batch_id, request_ids=[a, b])
    assert ledger.request(a)["status"] == "applied" and ledger.request(a)["version_after"] == "v2"
    assert ledger.applied_batches(DEP) == {"v2": [a, b]}
    assert ledger.recover(DEP) == {"requeued": [], "applied": [a, b], "failed": []}
    assert [c["id"] for c in ledger.candidates(DEP)] == ["v2"]
    ledger.reject("v2", "verification failed")
    ledger.requeue([a, b], "candidate rejected")
    assert ledger.version("v2")["status"] == "rejected" and ledger.candidates(DEP) == []
    assert [ledger.request(i)["status"] for i in (a, b)] == ["queued", "queued"]
    assert ledger.request(a)["version_after"] is None
    retried = [ledger.claim(DEP, 5) for _ in range(2)]  # tried before: one at a time
    assert [[r["id"] for r in c.requests] for c in retried] == [[a], [b]]
    ledger.fail([a, b], "gave up", report_path="/r.json", report_sha256="e" * 64)
    with pytest.raises(LedgerError, match="cannot become queued"):
        ledger.requeue([a], "a closed request never changes again")
    assert [ledger.request(i)["status"] for i in (a, b)] == ["failed", "failed"]
    assert ledger.request(a)["error"] == "gave up" and ledger.request(a)["finished_at"]
    assert fetch(ledger, "SELECT pending_ids FROM deletion_requests") == [{"pending_ids": None}] * 2
    assert ledger.serving(DEP)["id"] == "v1"
    with pytest.raises(NotFound):
        ledger.request("del_missing")
    check = ledger.verify()
    assert check["ok"], check["problems"]


# -- 5. pagination and filters ------------------------------------------------------------------------------------
def test_pagination_and_filters(ledger):
    new_deployment(ledger)
    subjects = ["alice@example.com", "bob@example.com"]
    ids = [submit(ledger, [i], subject=subjects[i % 2])[0]["id"] for i in range(7)]
    seen, after, pages = [], 0, 0
    while True:
        page = ledger.requests(limit=3, after=after)
        if not page:
            break
        assert len(page) <= 3
        seen += [r["id"] for r in page]
        after = page[-1]["seq"]
        pages += 1
    assert seen == ids and pages == 3

    ledger.claim(DEP, 3)  # the 3 oldest: alice, bob, alice
    assert [r["id"] for r in ledger.requests(status="running")] == ids[:3]
    assert [r["id"] for r in ledger.requests(status="queued")] == ids[3:]
    assert [r["id"] for r in ledger.requests(status="queued", limit=2, after=ledger.request(ids[4])["seq"])] \
        == ids[5:7]
    alice = [r["id"] for r in ledger.requests(subject=subjects[0])]
    assert alice == ids[0::2]
    assert [r["id"] for r in ledger.requests(subject=subjects[1], status="queued")] == [ids[3], ids[5]]
    assert ledger.requests(subject="carol@example.com") == []
    assert ledger.requests(status="verified") == []

    # the subject is stored only as its sha256: nowhere in the rows or the log in plain text
    for r in fetch(ledger, "SELECT * FROM deletion_requests"):
        assert r["subject_sha256"] in {hashlib.sha256(s.encode()).hexdigest() for s in subjects}
        assert not any("example.com" in str(v) for v in r.values())
    assert not any("example.com" in str(v) for row in fetch(ledger, "SELECT * FROM events") for v in row.values())
    assert "example.com" not in json.dumps(ledger.export())


# -- 6. evidence, not data ----------------------------------------------------------------------------------------
def test_pending_ids_purged_and_export_has_evidence_only(ledger):
    s = scenario(ledger)
    rows = {r["id"]: r for r in fetch(ledger, "SELECT id, pending_ids, ids_sha256, n_ids, status "
                                                "FROM deletion_requests")}
    for rid in s["batch"]:
        assert rows[rid]["status"] == "verified" and rows[rid]["pending_ids"] is None
        assert rows[rid]["n_ids"] == 2 and len(rows[rid]["ids_sha256"]) == 64
    assert rows[s["batch"][0]]["ids_sha256"] == ids_sha([1, 2])
    assert json.loads(rows[s["queued"]]["pending_ids"]) == [21, 22]  # still open: the worker needs them

    marker = 987654321
    rid = submit(ledger, [marker])[0]["id"]
    ledger.claim(DEP, 5)
    ledger.fail([rid, s["queued"]], "boom")
    assert fetch(ledger, "SELECT count(*) AS n FROM deletion_requests WHERE pending_ids IS NOT NULL") == [{"n": 0}]

    export = ledger.export()
    check_documented(export, "obliviate.ledger-export/1")

    def keys(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield k
                yield from keys(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from keys(v)

    assert "pending_ids" not in set(keys(export))
    assert str(marker) not in json.dumps(export)
    assert export["chain"]["ok"] is True and export["chain"]["problems"] == []
    assert export["chain"]["events"] == len(export["events"])
    assert {r["id"]: r["n_ids"] for r in export["requests"]}[rid] == 1
    assert [v["id"] for v in export["versions"]] == ["v1", "v2"]
    assert export["deployments"][0]["serving_version"] == "v2"

    execute(ledger, f"UPDATE deletion_requests SET status = 'verified' WHERE id = '{rid}'")
    assert ledger.export()["chain"]["ok"] is False  # the export carries the failing check


# -- 7. promote guard and no-op closing ---------------------------------------------------------------------------
def test_promote_requires_the_serving_parent(ledger):
    new_deployment(ledger)
    a, b = (submit(ledger, [i])[0]["id"] for i in (1, 2))
    first = ledger.claim(DEP, 1)
    ledger.add_version(DEP, "v2", "/m/v2.pt", "b" * 64, "v1", "sisa", "exact", 1, first.batch_id, request_ids=[a])
    second = ledger.claim(DEP, 1)
    ledger.add_version(DEP, "v3", "/m/v3.pt", "c" * 64, "v1", "sisa", "exact", 1, second.batch_id, request_ids=[b])
    ledger.promote(DEP, "v2", [a], None, None, approximate=True)
    assert ledger.deployment(DEP)["approx_since_exact"] == 1
    events_before = len(ledger.events(limit=1000))

    with pytest.raises(LedgerError, match="version v3 descends from v1, not from the serving v2"):
        ledger.promote(DEP, "v3", [b], None, None, approximate=False)
    with pytest.raises(LedgerError, match=r"version v2 is not a candidate \(status serving\)"):
        ledger.promote(DEP, "v2", [a], None, None, approximate=False)
    with pytest.raises(LedgerError, match=r"version v9 is not a candidate \(status missing\)"):
        ledger.promote(DEP, "v9", [b], None, None, approximate=False)
    # refused: nothing changed, nothing logged
    assert ledger.serving(DEP)["id"] == "v2" and ledger.version("v3")["status"] == "candidate"
    assert ledger.request(b)["status"] == "applied" and ledger.request(b)["version_after"] == "v3"
    assert len(ledger.events(limit=1000)) == events_before
    check = ledger.verify()
    assert check["ok"], check["problems"]


def test_close_noop(ledger):
    new_deployment(ledger)
    reqs = [submit(ledger, [5, 6])[0]["id"], submit(ledger, [6])[0]["id"]]
    ledger.claim(DEP, 5)
    serving = ledger.serving(DEP)
    ledger.close_noop(reqs, serving, "/reports/noop.json", "f" * 64)
    for rid in reqs:
        r = ledger.request(rid)
        assert (r["status"], r["version_after"], r["method"], r["guarantee"], r["report_sha256"]) == \
            ("verified", "v1", "sisa", "exact", "f" * 64)
        assert r["finished_at"] and r["report_path"] == "/reports/noop.json"
    assert fetch(ledger, "SELECT count(*) AS n FROM deletion_requests WHERE pending_ids IS NOT NULL") == [{"n": 0}]
    kinds = [(e["kind"], e["payload"].get("noop")) for e in ledger.events(limit=100) if e["request_id"] == reqs[0]]
    assert kinds == [("request.received", None), ("request.running", None), ("request.applied", True),
                     ("request.verified", None)]
    assert ledger.serving(DEP)["id"] == "v1" and ledger.versions(DEP)[0]["id"] == "v1"
    check = ledger.verify()
    assert check["ok"], check["problems"]


def test_one_serving_process_per_deployment(ledger_url):
    """A second worker on the same ledger and deployment is refused (it would re-queue the first one's running
    batch); another deployment is not blocked; closing (or the process dying) releases the lock."""
    first, second = Ledger(ledger_url), Ledger(ledger_url)
    try:
        first.lock_worker("digits")
        with pytest.raises(LedgerError, match="another obliviate serve"):
            second.lock_worker("digits")
        second.lock_worker("other")
        first.close()
        third = Ledger(ledger_url)
        third.lock_worker("digits")
        third.close()
    finally:
        first.close()
        second.close()


def test_requests_and_idempotency_keys_are_scoped_per_deployment(ledger):
    """A second deployment in the same ledger sees none of the first one's requests, and may reuse its keys."""
    new_deployment(ledger)
    ledger.create_deployment("hr", "digits", "finetune", "approximate", {}, "/models/hr")
    mine, created = submit(ledger, [1], key="ticket-1", subject="employee-12")
    theirs, created2 = ledger.submit("hr", [1], ids_sha([1]), None, "employee-12", "ticket-1", "other-body")
    assert created and created2 and mine["id"] != theirs["id"]  # same key, different deployments: no 409
    assert [r["id"] for r in ledger.requests(deployment=DEP)] == [mine["id"]]
    assert [r["id"] for r in ledger.requests(deployment="hr", subject="employee-12")] == [theirs["id"]]
    assert ledger.counts(DEP) == {"queued": 1} and ledger.counts() == {"queued": 2}
    with pytest.raises(NotFound):
        ledger.request(theirs["id"], DEP)
    assert ledger.request(theirs["id"], "hr")["id"] == theirs["id"]
    assert ledger.verify()["ok"]


def test_a_request_the_worker_keeps_dying_under_is_dead_lettered(ledger):
    """recover() re-queues a running request after each crash, and after MAX_CRASHES closes it as failed."""
    from obliviate.ledger.store import MAX_CRASHES

    new_deployment(ledger)
    rid = submit(ledger, [4])[0]["id"]
    for crash in range(1, MAX_CRASHES + 1):
        claimed = ledger.claim(DEP, 10)
        assert [r["id"] for r in claimed.requests] == [rid] and claimed.requests[0]["attempts"] == crash
        out = ledger.recover(DEP)  # the process died mid-batch; this is the restart
        if crash < MAX_CRASHES:
            assert out["requeued"] == [rid] and ledger.request(rid)["status"] == "queued"
    assert out["failed"] == [rid]
    r = ledger.request(rid)
    assert r["status"] == "failed" and f"stopped {MAX_CRASHES} times" in r["error"]
    assert ledger.claim(DEP, 10) is None
    assert ledger.verify()["ok"]
