"""The deletion service's worker and model versions, in process: exact and approximate deletion, verification
with fallback and scheduled retrain, no-op requests, crash recovery from every recorded state, integrity of
version files, purging of retired versions, and the `ledger verify/export` commands."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from obliviate.errors import IntegrityError, ObliviateError
from obliviate.ledger import open_service
from obliviate.ledger.deployment import ModelManager, deployment_config, read_metadata
from obliviate.ledger.store import Ledger
from obliviate.requests import ids_sha256

from doc_keys import check_documented

FAST_SISA = {"method_config": {"shards": 2, "slices": 2}, "verify_oracle": False}
FINETUNE = {"name": "ft", "method": "finetune", "method_config": {"epochs": 2}, "retrain_every": 0}


def submit(svc, ids, key=None, subject=None):
    ids = sorted(set(int(i) for i in ids))
    req, _ = svc.ledger.submit(svc.manager.config.name, ids, ids_sha256(np.array(ids)), None, subject, key,
                               f"body-{key}-{ids}")
    return req["id"]


def applied_candidate(svc, rid, ids):
    """The state a crash after the worker recorded its candidate leaves: the batch taken, the new version file
    written and recorded, the request ``applied`` — but not yet verified or served."""
    claimed = svc.ledger.claim(svc.manager.config.name, 10)
    serving = svc.ledger.serving(svc.manager.config.name)
    cand = svc.manager.apply(svc.manager.load(serving), np.array(ids))
    svc.ledger.add_version(svc.manager.config.name, cand.vid, cand.path, cand.sha256, serving["id"], cand.method,
                           cand.guarantee, cand.n_deleted, claimed.batch_id, request_ids=[rid])
    return cand


def events(ledger: Ledger, kind: str | None = None) -> list[dict]:
    out = ledger.events(after=0, limit=100_000)
    return [e for e in out if kind is None or e["kind"] == kind]


@pytest.fixture(scope="module")
def sisa_template(tmp_path_factory):
    """One trained SISA deployment, copied per test (its first version is the slow part)."""
    root = tmp_path_factory.mktemp("sisa")
    svc = open_service(root / "data", values=FAST_SISA)
    svc.ledger.close()
    return root / "data"


@pytest.fixture
def sisa(sisa_template, tmp_path):
    """A fresh copy of the template: the model dir recorded in the ledger must point into the copy, so the
    copy's ledger gets its paths rewritten."""
    data = tmp_path / "data"
    shutil.copytree(sisa_template, data)
    engine = sa.create_engine(f"sqlite:///{data / 'ledger.sqlite'}")
    with engine.begin() as conn:
        old = str(sisa_template)
        conn.execute(sa.text("UPDATE deployments SET model_dir = replace(model_dir, :a, :b)"), {"a": old, "b": str(data)})
        conn.execute(sa.text("UPDATE model_versions SET path = replace(path, :a, :b)"), {"a": old, "b": str(data)})
    engine.dispose()
    svc = open_service(data)
    yield svc
    svc.ledger.close()


def test_exact_deletion_is_verified_against_a_from_scratch_retrain(sisa):
    first = sisa.ledger.serving("digits")
    a, b = submit(sisa, [3, 5, 700], key="a"), submit(sisa, [5, 900], key="b")
    assert sisa.worker.run_until_idle() == 1  # both requests in one batch
    for rid in (a, b):
        r = sisa.ledger.request(rid)
        assert r["status"] == "verified" and r["guarantee"] == "exact" and r["method"] == "sisa"
        assert r["version_before"] == first["id"]
    served = sisa.ledger.serving("digits")
    assert served["parent"] == first["id"] and served["n_deleted"] == 4
    state = sisa.manager.load(served)
    assert state.deleted.tolist() == [3, 5, 700, 900]
    assert set(state.system.plan.deleted) == {3, 5, 700, 900}
    report = json.loads(Path(sisa.ledger.request(a)["report_path"]).read_text())
    assert report["schema"] == "obliviate.run/1" and report["guarantee"] == "exact"
    assert report["exact"]["verification"]["verified"] is True
    assert report["service"]["passed"] and set(report["service"]["requests"]) == {a, b}
    assert report["forget"]["n"] == 4
    html = Path(sisa.ledger.request(a)["report_path"]).with_suffix(".html").read_text()
    assert "deletion service verification: PASSED" in html
    assert sisa.ledger.verify()["ok"]


def test_already_deleted_ids_are_a_noop_without_a_new_version(sisa):
    submit(sisa, [10, 11], key="first")
    sisa.worker.run_until_idle()
    served = sisa.ledger.serving("digits")
    again = submit(sisa, [11, 10], key="again")
    sisa.worker.run_until_idle()
    r = sisa.ledger.request(again)
    assert r["status"] == "verified" and r["version_after"] == served["id"]
    html = Path(r["report_path"]).with_suffix(".html").read_text()
    assert "already deleted" in html and again in html
    assert sisa.ledger.serving("digits")["id"] == served["id"]
    assert len(sisa.ledger.versions("digits")) == 2
    assert sisa.ledger.verify()["ok"]


def test_retired_versions_are_purged_they_still_hold_the_deleted_data(sisa):
    first = sisa.ledger.serving("digits")
    submit(sisa, [1], key="x")
    sisa.worker.run_until_idle()
    assert not Path(first["path"]).exists()
    assert Path(sisa.ledger.serving("digits")["path"]).exists()


def test_version_files_carry_the_documented_metadata(sisa):
    submit(sisa, [1, 2], key="meta")
    sisa.worker.run_until_idle()
    meta = json.loads(read_metadata(Path(sisa.ledger.serving("digits")["path"]).read_bytes())["obliviate"])
    check_documented(meta, "obliviate.version/1")
    assert meta["format"] == "obliviate.version/1" and meta["kind"] == "system" and 1 in meta["deleted"]


def test_crash_after_claim_requeues_and_applies_exactly_once(sisa):
    rid = submit(sisa, [42, 43], key="k")
    claimed = sisa.ledger.claim("digits", 10)  # the worker took the batch ... then the process died
    assert claimed is not None and sisa.ledger.request(rid)["status"] == "running"
    sisa.manager.apply(sisa.manager.load(sisa.ledger.serving("digits")), np.array([42, 43]))  # file, no record
    sisa.ledger.close()
    svc = open_service(sisa.manager.model_dir.parent.parent)  # restart: recover()
    try:
        assert svc.recovered["requeued"] == [rid]
        recorded = {Path(v["path"]).name for v in svc.ledger.versions("digits")}
        assert {p.name for p in svc.manager.versions_dir.iterdir()} <= recorded  # the orphan file is gone
        svc.worker.run_until_idle()
        r = svc.ledger.request(rid)
        assert r["status"] == "verified" and r["attempts"] == 2
        assert len(events(svc.ledger, "request.verified")) == 1
        assert len(events(svc.ledger, "request.requeued")) == 1
        assert svc.ledger.serving("digits")["n_deleted"] == 2
        assert svc.ledger.verify()["ok"]
    finally:
        svc.ledger.close()


def test_crash_after_apply_resumes_with_verification_of_the_recorded_candidate(sisa):
    rid = submit(sisa, [7], key="k")
    cand = applied_candidate(sisa, rid, [7])
    assert sisa.ledger.request(rid)["status"] == "applied"
    sisa.ledger.close()
    svc = open_service(sisa.manager.model_dir.parent.parent)
    try:
        assert svc.recovered["candidates_resumed"] == [cand.vid]
        assert svc.ledger.serving("digits")["id"] == cand.vid
        r = svc.ledger.request(rid)
        assert r["status"] == "verified" and r["attempts"] == 1  # not applied a second time
        assert len(svc.ledger.versions("digits")) == 2
        assert svc.ledger.verify()["ok"]
    finally:
        svc.ledger.close()


def test_a_corrupted_candidate_is_rejected_and_its_requests_requeued(sisa):
    rid = submit(sisa, [8], key="k")
    serving = sisa.ledger.serving("digits")
    cand = applied_candidate(sisa, rid, [8])
    blob = bytearray(Path(cand.path).read_bytes())
    blob[-1] ^= 0xFF
    Path(cand.path).write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="sha256"):
        sisa.manager.load(sisa.ledger.version(cand.vid))
    sisa.worker.recover()
    assert sisa.ledger.version(cand.vid)["status"] == "rejected"
    assert sisa.ledger.serving("digits")["id"] == serving["id"]
    sisa.worker.run_until_idle()
    assert sisa.ledger.request(rid)["status"] == "verified"
    assert sisa.ledger.serving("digits")["n_deleted"] == 1
    assert sisa.ledger.verify()["ok"]


def test_version_file_carries_the_deleted_ids_under_its_sha256(sisa):
    submit(sisa, [20, 21, 22], key="k")
    sisa.worker.run_until_idle()
    v = sisa.ledger.serving("digits")
    meta = json.loads(read_metadata(Path(v["path"]).read_bytes())["obliviate"])
    assert meta["deleted"] == [20, 21, 22] and meta["kind"] == "system"


# -- approximate deployments ---------------------------------------------------------------------------------

@pytest.fixture
def finetune(tmp_path):
    svc = open_service(tmp_path, values=dict(FINETUNE, verify_oracle=True))
    yield svc
    svc.ledger.close()


def test_approximate_deletion_moves_forget_accuracy_toward_the_oracle(finetune):
    y = finetune.manager.task.data.y_train
    ids = np.flatnonzero(y == 3)  # a whole class: the oracle cannot recognise it
    rid = submit(finetune, ids, key="c3")
    finetune.worker.run_until_idle()
    r = finetune.ledger.request(rid)
    report = json.loads(Path(r["report_path"]).read_text())
    m = report["metrics"]
    assert report["guarantee"] == r["guarantee"]
    before = abs(m["original"]["forget_acc"] - m["oracle"]["forget_acc"])
    after = abs(m["unlearned"]["forget_acc"] - m["oracle"]["forget_acc"])
    assert before > 0.05 and after < before
    assert r["status"] == "verified"


def test_failed_verification_falls_back_to_an_exact_retrain(tmp_path):
    svc = open_service(tmp_path, values=dict(FINETUNE, max_forget_gap=0.0, min_forget_check=1,
                                             method_config={"epochs": 1, "lr": 1e-6}))
    try:
        rid = submit(svc, np.arange(0, 400, 10), key="k")
        svc.worker.run_until_idle()
        r = svc.ledger.request(rid)
        assert r["status"] == "verified" and r["method"] == "retrain" and r["guarantee"] == "exact"
        statuses = [(v["method"], v["status"]) for v in svc.ledger.versions("ft")]
        assert ("finetune", "rejected") in statuses and statuses[0] == ("retrain", "serving")
        assert any("verification failed" in e["payload"].get("reason", "")
                   for e in events(svc.ledger, "version.rejected"))
        assert svc.ledger.verify()["ok"]
    finally:
        svc.ledger.close()


def test_failed_verification_without_fallback_fails_and_keeps_serving(tmp_path):
    svc = open_service(tmp_path, values=dict(FINETUNE, max_forget_gap=0.0, min_forget_check=1,
                                             fallback_retrain=False, method_config={"epochs": 1, "lr": 1e-6}))
    try:
        before = svc.ledger.serving("ft")
        rid = submit(svc, np.arange(0, 400, 10), key="k")
        svc.worker.run_until_idle()
        r = svc.ledger.request(rid)
        assert r["status"] == "failed" and "verification failed" in r["error"]
        assert svc.ledger.serving("ft")["id"] == before["id"]
        assert json.loads(Path(r["report_path"]).read_text())["service"]["passed"] is False
        assert svc.ledger.verify()["ok"]
    finally:
        svc.ledger.close()


def test_scheduled_retrain_after_n_approximate_deletions(tmp_path):
    svc = open_service(tmp_path, values=dict(FINETUNE, retrain_every=2, verify_oracle=False))
    try:
        submit(svc, [1, 2], key="a")
        svc.worker.run_until_idle()
        assert svc.ledger.serving("ft")["method"] == "finetune"
        assert svc.ledger.deployment("ft")["approx_since_exact"] == 1
        submit(svc, [3], key="b")
        svc.worker.run_until_idle()
        served = svc.ledger.serving("ft")
        assert served["method"] == "retrain" and served["guarantee"] == "exact" and served["n_deleted"] == 3
        assert svc.ledger.deployment("ft")["approx_since_exact"] == 0
        assert svc.manager.load(served).deleted.tolist() == [1, 2, 3]
        assert svc.ledger.verify()["ok"]
    finally:
        svc.ledger.close()


# -- configuration ----------------------------------------------------------------------------------------------

def test_reopening_with_a_different_method_is_refused(sisa_template, tmp_path):
    svc = open_service(tmp_path, values={"method": "finetune"})
    svc.ledger.close()
    with pytest.raises(ObliviateError, match="method"):
        open_service(tmp_path, values={"method": "sisa"})


def test_language_tasks_and_path_like_names_are_refused(tmp_path):
    with pytest.raises(ObliviateError, match="classification and regression"):
        ModelManager(deployment_config({"task": "authors", "method": "npo"}), tmp_path)
    with pytest.raises(ObliviateError, match="no paths"):
        deployment_config({"name": "../etc"})


# -- CLI: ledger verify / export ------------------------------------------------------------------------------

def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "obliviate", *args], capture_output=True, text=True, timeout=120, **kw)


def test_ledger_verify_and_export_commands(sisa, tmp_path):
    submit(sisa, [1, 2], key="a", subject="customer-1")
    sisa.worker.run_until_idle()
    data = sisa.manager.model_dir.parent.parent
    ok = _cli("ledger", "verify", "--data-dir", str(data))
    assert ok.returncode == 0 and "ledger intact" in ok.stdout
    out = tmp_path / "trail.csv"
    ex = _cli("ledger", "export", "--data-dir", str(data), "--out", str(out))
    assert ex.returncode == 0, ex.stderr
    text = out.read_text()
    assert "customer-1" not in text and "verified" in text.splitlines()[1]
    js = tmp_path / "trail.json"
    assert _cli("ledger", "export", "--data-dir", str(data), "--out", str(js)).returncode == 0
    doc = json.loads(js.read_text())
    assert doc["chain"]["ok"] and len(doc["events"]) == doc["chain"]["events"]
    engine = sa.create_engine(f"sqlite:///{data / 'ledger.sqlite'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE events SET payload = replace(payload, 'verified', 'failed') "
                             "WHERE kind = 'request.verified'"))
    engine.dispose()
    bad = _cli("ledger", "verify", "--data-dir", str(data))
    assert bad.returncode == 1 and "edited" in bad.stdout
    missing = _cli("ledger", "verify", "--data-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no ledger" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("values, guarantee, check", [
    ({"name": "cr", "method": "certified"}, "certified", "retain accuracy drop vs the previous version"),
    ({"name": "fr", "task": "friedman", "method": "finetune", "method_config": {"epochs": 2}},
     "approximate", "relative test MAE growth vs the oracle"),
])
def test_certified_and_regression_deployments(tmp_path, values, guarantee, check):
    svc = open_service(tmp_path, values=values)
    try:
        rid = submit(svc, [1, 2, 3], key="k")
        svc.worker.run_until_idle()
        r = svc.ledger.request(rid)
        assert r["status"] == "verified" and r["guarantee"] == guarantee and r["method"] == values["method"]
        report = json.loads(Path(r["report_path"]).read_text())
        assert [c["check"] for c in report["service"]["checks"]][0] == check
        if guarantee == "certified":
            assert report["exact"]["certified"] and report["exact"]["budget_satisfied"]
        assert svc.manager.load(svc.ledger.serving(values["name"])).deleted.tolist() == [1, 2, 3]
    finally:
        svc.ledger.close()


def test_an_unexpected_error_is_retried_then_fails_and_never_serves(sisa, monkeypatch):
    before = sisa.ledger.serving("digits")
    real_verify = sisa.manager.verify
    calls = {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk hiccup")
        return real_verify(*args, **kw)

    monkeypatch.setattr(sisa.manager, "verify", flaky)
    rid = submit(sisa, [30], key="flaky")
    sisa.worker.run_until_idle()
    r = sisa.ledger.request(rid)
    assert r["status"] == "verified" and r["attempts"] == 2
    assert [v["status"] for v in sisa.ledger.versions("digits")].count("rejected") == 1

    monkeypatch.setattr(sisa.manager, "apply", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("always")))
    served = sisa.ledger.serving("digits")
    bad = submit(sisa, [31], key="broken")
    sisa.worker.run_until_idle()
    r = sisa.ledger.request(bad)
    assert r["status"] == "failed" and r["attempts"] == 3 and "internal error: RuntimeError: always" in r["error"]
    assert sisa.ledger.serving("digits")["id"] == served["id"] != before["id"]
    assert sisa.ledger.verify()["ok"]


def test_a_bad_request_does_not_sink_its_batch(sisa, monkeypatch):
    real_apply = sisa.manager.apply

    def picky(state, new_ids):
        if 666 in set(new_ids.tolist()):
            raise ObliviateError("id 666 cannot be deleted here")
        return real_apply(state, new_ids)

    monkeypatch.setattr(sisa.manager, "apply", picky)
    a, b, c = submit(sisa, [1], key="a"), submit(sisa, [666], key="b"), submit(sisa, [2], key="c")
    sisa.worker.run_until_idle()
    status = {rid: sisa.ledger.request(rid) for rid in (a, b, c)}
    assert [status[r]["status"] for r in (a, b, c)] == ["verified", "failed", "verified"]
    assert "id 666 cannot be deleted" in status[b]["error"]
    failed_report = json.loads(Path(status[b]["report_path"]).read_text())
    assert failed_report["service"]["passed"] is False and "not deleted" in failed_report["service"]["note"]
    assert sisa.manager.load(sisa.ledger.serving("digits")).deleted.tolist() == [1, 2]
    assert sisa.ledger.verify()["ok"]


def test_deleting_everything_left_is_refused_with_a_reason(sisa):
    n = sisa.manager.n_train
    rid = submit(sisa, range(n - 1), key="most")
    last = submit(sisa, [n - 1], key="last")
    sisa.worker.run_until_idle()
    assert "leave no training data" in sisa.ledger.request(last)["error"]
    assert sisa.ledger.request(rid)["status"] in ("verified", "failed")  # its own fate, decided alone
    assert sisa.ledger.verify()["ok"]


def test_an_unreadable_serving_model_blocks_without_failing_requests(sisa):
    path = Path(sisa.ledger.serving("digits")["path"])
    blob = path.read_bytes()
    path.write_bytes(blob[:-10])
    rid = submit(sisa, [5], key="k")
    from obliviate.ledger.worker import _Blocked

    with pytest.raises(_Blocked):
        sisa.worker.step()
    r = sisa.ledger.request(rid)
    assert r["status"] == "queued" and r["attempts"] == 0  # the service's fault: the attempt does not count
    assert "unreadable" in sisa.worker.last_error
    path.write_bytes(blob)
    sisa.worker.run_until_idle()
    assert sisa.ledger.request(rid)["status"] == "verified"


def test_recovery_survives_a_candidate_that_cannot_be_verified(sisa, monkeypatch):
    rid = submit(sisa, [9], key="k")
    cand = applied_candidate(sisa, rid, [9])
    monkeypatch.setattr(sisa.manager, "verify", lambda *a, **k: (_ for _ in ()).throw(MemoryError("out of memory")))
    out = sisa.worker.recover()  # must not raise: the service has to come up
    assert out["candidates_resumed"] == [cand.vid]
    assert sisa.ledger.version(cand.vid)["status"] == "rejected"
    assert sisa.ledger.request(rid)["status"] == "queued"
    monkeypatch.undo()
    sisa.worker.run_until_idle()
    assert sisa.ledger.request(rid)["status"] == "verified"


def test_an_idle_worker_resumes_a_batch_an_earlier_step_left_running(sisa):
    rid = submit(sisa, [12], key="k")
    sisa.ledger.claim("digits", 10)  # e.g. the database went away while the batch was being abandoned
    assert sisa.worker.run_until_idle() >= 1
    assert sisa.ledger.request(rid)["status"] == "verified"


def test_a_rejected_retrain_neither_loops_nor_falls_back_to_itself(tmp_path, monkeypatch):
    svc = open_service(tmp_path, values=dict(FINETUNE, retrain_every=1, verify_oracle=False))
    try:
        submit(svc, [1], key="a")
        svc.worker.run_until_idle()
        served = svc.ledger.serving("ft")
        assert served["method"] == "retrain"  # the scheduled retrain ran before anything else
        real = svc.manager._checks

        def failing(*args, **kw):
            return real(*args, **kw) + [{"check": "forced", "value": 1.0, "threshold": 0.0, "passed": False}]

        monkeypatch.setattr(svc.manager, "_checks", failing)
        rid = submit(svc, [2], key="b")
        steps = svc.worker.run_until_idle(max_steps=20)
        assert steps < 20  # it went idle
        r = svc.ledger.request(rid)
        assert r["status"] == "failed" and "forced" in r["error"]
        methods = [(v["method"], v["status"]) for v in svc.ledger.versions("ft")]
        assert methods.count(("retrain", "rejected")) == 1  # one fallback, not a fallback of the fallback
        assert svc.ledger.serving("ft")["id"] == served["id"]
        assert svc.ledger.verify()["ok"]
    finally:
        svc.ledger.close()


def test_a_due_retrain_is_not_starved_by_new_requests(tmp_path):
    svc = open_service(tmp_path, values=dict(FINETUNE, retrain_every=1, verify_oracle=False))
    try:
        submit(svc, [1], key="a")
        svc.worker.step()  # the approximate deletion
        submit(svc, [2], key="b")
        svc.worker.step()  # the retrain is due: it goes before request b
        assert svc.ledger.serving("ft")["method"] == "retrain"
        assert svc.ledger.request(svc.ledger.requests()[-1]["id"])["status"] == "queued"
    finally:
        svc.ledger.close()


def test_a_model_dir_belongs_to_one_deployment(tmp_path):
    shared = tmp_path / "models"
    a = open_service(tmp_path / "a", model_dir=shared, values={"name": "a", "method": "finetune"})
    a.close()
    with pytest.raises(ObliviateError, match="not empty"):  # another deployment of another ledger
        open_service(tmp_path / "b", model_dir=shared, values={"name": "b", "method": "finetune"})
    with pytest.raises(ObliviateError, match="not empty"):  # another deployment of the same ledger
        open_service(tmp_path / "a", model_dir=shared, values={"name": "c", "method": "finetune"})
    again = open_service(tmp_path / "a", values={"name": "a"})  # the owner reopens it
    assert again.ledger.serving("a") is not None
    again.close()


def test_a_crashing_scheduled_retrain_does_not_block_deletions(tmp_path, monkeypatch):
    svc = open_service(tmp_path, values=dict(FINETUNE, retrain_every=1, verify_oracle=False))
    try:
        monkeypatch.setattr(svc.manager, "retrain", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
        a = submit(svc, [1], key="a")
        svc.worker.run_until_idle(max_steps=20)
        b = submit(svc, [2], key="b")
        assert svc.worker.run_until_idle(max_steps=20) < 20
        assert [svc.ledger.request(r)["status"] for r in (a, b)] == ["verified", "verified"]
        assert "scheduled retrain failed" in svc.worker.last_error
        assert svc.ledger.serving("ft")["method"] == "finetune" and svc.ledger.verify()["ok"]
    finally:
        svc.close()
