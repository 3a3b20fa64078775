"""Load benchmark of the deletion service (`obliviate serve`) on loopback, over a SQLite file and over PostgreSQL:

1. throughput: C concurrent clients (one thread and one keep-alive ``httpx.Client`` each) send M ``POST
   /v1/deletions`` each (distinct idempotency keys, 1-3 ids per request) → accepted requests per second, POST
   latency p50 / p99 / max, errors;
2. kill -9: C clients post K requests each; when 40 % of them are answered the server is SIGKILLed and restarted on
   the same data; a client whose POST fails retries it with the same idempotency key until it is answered → lost
   requests (a 202 whose id is missing from the ledger afterwards) and duplicates (a client key with two ledger
   requests, or answered with two different ids) — both must be 0 — plus the restart and unavailable time.

The worker runs throughout and is kept busy (SISA, 2 shards × 1 slice, ``verify_oracle=false``, ``batch_max`` 32:
every batch retrains and re-verifies the touched shards), so the API is measured while deletions are being applied
on the same machine — one of the two cores goes to the worker, and the client threads share the other with the
server's request threads.

3. deletion latency per method (in process, no HTTP): the default settings (oracle verification on), one
   deployment per method, R sequential requests of 10 random ids each → seconds from queued to verified, split
   into unlearn / exact re-derivation / oracle, and what the served version's guarantee is.

    .venv/bin/python benchmarks/service.py [--clients 16] [--per-client 50] [--kill-per-client 30]
                                           [--backends sqlite,postgresql] [--pg-url URL]
                                           [--methods sisa,s3t,certified,finetune,scrub] [--rounds 3]

Prints markdown tables and writes benchmarks/results/service.{json,md}. PostgreSQL: ``--pg-url`` or the test
server of ``scripts/pg-test-server.sh`` (each run gets a fresh database, dropped afterwards).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from service_fixtures import RestartableServer  # noqa: E402  (the kill -9 test's server wrapper)
OUT = REPO / "benchmarks" / "results"
TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETTINGS = ["verify_oracle=false", "batch_max=32", "shards=2", "slices=1"]
N_IDS = 1400  # digits: 1437 training examples


def body(rng: random.Random, key: str) -> dict:
    return {"ids": sorted(rng.sample(range(N_IDS), rng.randint(1, 3))), "idempotency_key": key}


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def throughput(base: str, clients: int, per_client: int, prefix: str) -> dict:
    """C clients × M POSTs, no retries: every non-202 or transport error is an error."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        rng = random.Random(c)
        with httpx.Client(base_url=base, headers=AUTH, timeout=60) as http:
            http.get("/healthz")  # open the keep-alive connection before the clock starts
            barrier.wait()
            for i in range(per_client):
                t = time.perf_counter()
                try:
                    r = http.post("/v1/deletions", json=body(rng, f"{prefix}-{c}-{i}"))
                    ok = r.status_code == 202
                except httpx.TransportError:
                    ok = False
                if ok:
                    lat[c].append(time.perf_counter() - t)
                else:
                    errors[c] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    all_lat = [x for xs in lat for x in xs]
    return {"clients": clients, "per_client": per_client, "sent": clients * per_client, "accepted": len(all_lat),
            "errors": sum(errors), "wall_s": wall, "accepted_per_s": len(all_lat) / wall,
            "p50_ms": 1e3 * pct(all_lat, 50), "p99_ms": 1e3 * pct(all_lat, 99), "max_ms": 1e3 * max(all_lat)}


def kill_run(srv: RestartableServer, clients: int, per_client: int, prefix: str, at: float = 0.4,
             deadline_s: float = 300) -> dict:
    """C clients × K POSTs; SIGKILL once ``at`` of them are answered, restart; failed POSTs retried with their
    idempotency key until answered. Returns the client-side record; the ledger check is done by the caller."""
    answered = [0] * clients
    accepted: list[dict[str, str]] = [{} for _ in range(clients)]
    retries = [0] * clients  # failed attempts (connection refused or reset while the server was down)
    interrupted = [0] * clients  # POSTs that needed at least one retry
    replayed = [0] * clients
    other = [0] * clients  # non-202 answers (must stay 0)
    first_ok_after_kill: list[float] = []
    killed_at: list[float] = []
    total = clients * per_client
    barrier = threading.Barrier(clients + 1)
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = random.Random(1000 + c)
        end = time.monotonic() + deadline_s
        with httpx.Client(base_url=srv.base, headers=AUTH, timeout=30) as http:
            barrier.wait()
            for i in range(per_client):
                key = f"{prefix}-{c}-{i}"
                b = body(rng, key)
                failed = False
                while time.monotonic() < end:
                    sent = time.monotonic()
                    try:
                        r = http.post("/v1/deletions", json=b)
                    except httpx.TransportError:
                        retries[c] += 1
                        interrupted[c] += not failed
                        failed = True
                        time.sleep(0.2)
                        continue
                    if r.status_code != 202:
                        other[c] += 1
                        time.sleep(0.2)
                        continue
                    rid = r.json()["id"]
                    if accepted[c].setdefault(key, rid) != rid:
                        other[c] += 1
                    if r.headers.get("Idempotent-Replayed") == "true":
                        replayed[c] += 1
                    with lock:
                        if killed_at and sent > killed_at[0] and not first_ok_after_kill:
                            first_ok_after_kill.append(time.monotonic())
                    answered[c] += 1
                    break

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.monotonic()
    while sum(answered) < at * total and any(t.is_alive() for t in threads):
        time.sleep(0.005)
    with lock:
        killed_at.append(time.monotonic())
        n_at_kill = sum(answered)
    srv.kill()
    restart_s = srv.start()
    for t in threads:
        t.join(deadline_s + 60)
    wall = time.monotonic() - t0
    return {"clients": clients, "per_client": per_client, "sent": total, "answered_at_kill": n_at_kill,
            "restart_s": restart_s,
            "unavailable_s": (first_ok_after_kill[0] - killed_at[0]) if first_ok_after_kill else None,
            "posts_interrupted": sum(interrupted), "retry_attempts": sum(retries), "replayed": sum(replayed),
            "non_202": sum(other),
            "unanswered": total - sum(answered), "wall_s": wall, "accepted_per_s": sum(answered) / wall,
            "accepted": {k: v for d in accepted for k, v in d.items()}}


def check_ledger(url: str, prefix: str, accepted: dict[str, str]) -> dict:
    from obliviate.ledger.store import Ledger

    ledger = Ledger(url, create=False, migrate=False)
    try:
        rows = [r for r in ledger.requests(limit=1_000_000) if (r["idempotency_key"] or "").startswith(prefix)]
        check = ledger.verify()
        counts = ledger.counts()
    finally:
        ledger.close()
    by_key: dict[str, list[str]] = {}
    for r in rows:
        by_key.setdefault(r["idempotency_key"], []).append(r["id"])
    ids = {r["id"] for r in rows}
    lost = sorted(rid for rid in accepted.values() if rid not in ids)
    dup = sorted(k for k, v in by_key.items() if len(v) > 1 or (k in accepted and accepted[k] not in v))
    unknown = sorted(k for k in by_key if k not in accepted)  # in the ledger, never answered to the client
    return {"ledger_requests": len(rows), "lost": len(lost), "duplicates": len(dup), "unanswered_in_ledger":
            len(unknown), "lost_ids": lost[:20], "duplicate_keys": dup[:20], "ledger_verify_ok": check["ok"],
            "ledger_events": check["events"], "status_counts": counts}


def run_backend(name: str, db: str | None, args) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"obliviate-bench-{name}-"))
    data = work / "data"
    srv = RestartableServer(data, db, SETTINGS, TOKEN, work)
    try:
        first_start = srv.start()
        load = throughput(srv.base, args.clients, args.per_client, f"{name}-load")
        kill = kill_run(srv, args.clients, args.kill_per_client, f"{name}-kill")
        srv.stop()
        accepted = kill.pop("accepted")
        url = db or f"sqlite:///{(data / 'ledger.sqlite').resolve()}"
        kill.update(check_ledger(url, f"{name}-kill", accepted))
        return {"backend": name, "first_start_s": first_start, "load": load, "kill": kill}
    finally:
        srv.kill()
        shutil.rmtree(work, ignore_errors=True)


def method_latency(methods: list[str], rounds: int) -> list[dict]:
    """Queued → verified for each method's deployment on default settings (SQLite, worker in process)."""
    from obliviate.ledger import open_service
    from obliviate.requests import ids_sha256

    rows = []
    for method in methods:
        work = Path(tempfile.mkdtemp(prefix=f"obliviate-bench-{method}-"))
        try:
            start = time.perf_counter()
            svc = open_service(work, values={"name": method, "method": method, "retrain_every": 0})
            first = time.perf_counter() - start
            rng = np.random.default_rng(7)
            seconds, parts, served = [], {"unlearn": [], "verify_exact": [], "oracle": []}, []
            for r in range(rounds):
                ids = sorted(rng.choice(N_IDS, size=10, replace=False).tolist())
                req, _ = svc.ledger.submit(method, ids, ids_sha256(np.array(ids)), None, None, f"m{r}", f"m{r}")
                start = time.perf_counter()
                svc.worker.run_until_idle()
                seconds.append(time.perf_counter() - start)
                done = svc.ledger.request(req["id"])
                report = json.loads(Path(done["report_path"]).read_text())
                for k in parts:
                    parts[k].append(report["time_s"].get(k) or 0.0)
                served.append((done["status"], done["method"], done["guarantee"]))
            svc.ledger.close()
            rows.append({"method": method, "first_version_s": first, "rounds": rounds,
                         "queued_to_verified_s": float(np.mean(seconds)),
                         **{f"{k}_s": float(np.mean(v)) for k, v in parts.items()},
                         "statuses": sorted({s[0] for s in served}), "served_by": sorted({s[1] for s in served}),
                         "guarantee": sorted({s[2] for s in served})})
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def markdown(res: dict) -> str:
    f = lambda v, d=1: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = ["### Deletion service under load (loopback)", "",
             "| backend | clients × POSTs | accepted/s | p50 ms | p99 ms | max ms | errors |",
             "|---|---|---|---|---|---|---|"]
    for b in res["backends"]:
        x = b["load"]
        lines.append(f"| {b['backend']} | {x['clients']} × {x['per_client']} | {f(x['accepted_per_s'], 0)} | "
                     f"{f(x['p50_ms'])} | {f(x['p99_ms'])} | {f(x['max_ms'])} | {x['errors']} |")
    lines += ["", "### kill -9 mid-load, restart, clients retry with their idempotency keys", "",
              "| backend | clients × POSTs | answered at kill | restart s | unavailable s | POSTs retried "
              "(attempts) | replayed | lost | duplicates | ledger verify |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for b in res["backends"]:
        x = b["kill"]
        lines.append(f"| {b['backend']} | {x['clients']} × {x['per_client']} | {x['answered_at_kill']} | "
                     f"{f(x['restart_s'])} | {f(x['unavailable_s'])} | "
                     f"{x['posts_interrupted']} ({x['retry_attempts']}) | "
                     f"{x['replayed']} | **{x['lost']}** | **{x['duplicates']}** | "
                     f"{'ok' if x['ledger_verify_ok'] else 'FAILED'} |")
    if res.get("methods"):
        lines += ["", "### Deletion latency per method (10 ids per request, default settings, oracle verification on)",
                  "", "| method | guarantee served | served by | first version s | queued → verified s | unlearn s | "
                  "exact re-derivation s | oracle s | status |", "|---|---|---|---|---|---|---|---|---|"]
        for x in res["methods"]:
            lines.append(f"| {x['method']} | {', '.join(x['guarantee'])} | {', '.join(x['served_by'])} | "
                         f"{f(x['first_version_s'])} | {f(x['queued_to_verified_s'], 2)} | {f(x['unlearn_s'], 2)} | "
                         f"{f(x['verify_exact_s'], 2)} | {f(x['oracle_s'], 2)} | {', '.join(x['statuses'])} |")
    m = res["machine"]
    lines += ["", f"Machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}, loopback; server and clients "
              f"on the same machine. Server: `obliviate serve --set {' --set '.join(res['settings'])}` (SQLite "
              "WAL + synchronous=FULL; PostgreSQL with fsync on), one uvicorn process; its worker runs "
              "throughout and is kept busy applying and verifying SISA deletions (one core), so the API shares the "
              "other core with the client threads. Latency is measured at the client, per POST, over keep-alive "
              "connections; a POST is answered 202 only after its request is committed. \"unavailable\": from the "
              "kill to the first 202 of a POST sent after it. \"POSTs retried\": POSTs the kill interrupted or "
              "refused, retried every 0.2 s with the same idempotency key. \"replayed\": retried POSTs answered "
              "with the request committed before the kill (Idempotent-Replayed); \"lost\": 202 ids missing "
              "from the ledger after the restart; \"duplicates\": client keys with more than one ledger request "
              "or answered with two ids.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=50)
    ap.add_argument("--kill-per-client", type=int, default=30)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--pg-url", default=None, help="PostgreSQL server URL (default: scripts/pg-test-server.sh)")
    ap.add_argument("--methods", default="sisa,s3t,certified,finetune,scrub",
                    help="deployments timed end to end ('' to skip)")
    ap.add_argument("--rounds", type=int, default=3, help="requests per method deployment")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()
    t0 = time.monotonic()
    results = []
    for name in [b for b in args.backends.split(",") if b]:
        if name == "sqlite":
            results.append(run_backend(name, None, args))
        elif name == "postgresql":
            from pgserver import drop_database, fresh_database, postgres_url

            server = args.pg_url or postgres_url()
            if server is None:
                print("no PostgreSQL server: skipping (give --pg-url or install postgresql)", file=sys.stderr)
                continue
            db = fresh_database(server)
            try:
                results.append(run_backend(name, db, args))
            finally:
                drop_database(db)
        else:
            raise SystemExit(f"unknown backend {name!r}")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    res = {"schema": "obliviate.benchmark-service/1", "settings": SETTINGS,
           "machine": {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
                       "network": "loopback"},
           "backends": results,
           "methods": method_latency([m for m in args.methods.split(",") if m], args.rounds),
           "wall_s": time.monotonic() - t0}
    md = markdown(res)
    print(md)
    if not args.no_write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "service.json").write_text(json.dumps(res, indent=2) + "\n")
        (OUT / "service.md").write_text(md)
    bad = [b["backend"] for b in results if b["kill"]["lost"] or b["kill"]["duplicates"]
           or not b["kill"]["ledger_verify_ok"]]
    if bad:
        raise SystemExit(f"lost or duplicated requests, or a broken ledger: {', '.join(bad)}")


if __name__ == "__main__":
    main()
