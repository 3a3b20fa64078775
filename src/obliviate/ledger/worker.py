"""The worker: takes queued requests in arrival order, batches them, deletes, verifies, and switches the served
version only after verification passes. Every step is recorded in the ledger before the next one starts, so a
restart after ``kill -9`` knows exactly where each request stood:

- ``running`` (the batch was taken, no version recorded): the half-done work was never served; the requests go
  back to the queue and the next batch applies them to the serving version — once.
- ``applied`` (a candidate version is recorded): the candidate is verified and promoted, or rejected and its
  requests re-queued when it no longer descends from the serving version.
- a candidate with no requests (a scheduled retrain) is verified and promoted the same way.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from obliviate.atomic import atomic_write
from obliviate.errors import IntegrityError, ObliviateError
from obliviate.ledger.deployment import ModelManager, VersionState
from obliviate.ledger.store import MAX_ATTEMPTS, OPEN, Claimed, Ledger, LedgerError, sha256_text
from obliviate.pipeline import run_report

log = logging.getLogger("obliviate.worker")


class _Blocked(Exception):
    """The serving version cannot be loaded: no request can be processed until an operator fixes it."""


class Worker:
    def __init__(self, ledger: Ledger, manager: ModelManager, poll_s: float = 0.5):
        self.ledger, self.manager = ledger, manager
        self.name = manager.config.name
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed_batches = 0
        self.last_error: str | None = None
        self._retrain_rejected_at: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def ensure_initial(self) -> dict[str, Any]:
        """The deployment's first version (trained now) when the ledger has none."""
        serving = self.ledger.serving(self.name)
        if serving is not None:
            return serving
        cand = self.manager.initial()
        return self.ledger.add_version(self.name, cand.vid, cand.path, cand.sha256, None, cand.method,
                                       cand.guarantee, 0, None, serving=True)

    def recover(self) -> dict[str, Any]:
        """Resume after a crash (see the module docstring); remove version files the ledger never recorded."""
        state = self.ledger.recover(self.name)
        resumed = []
        for v in self.ledger.candidates(self.name):
            rids = self.ledger.applied_batches(self.name).get(v["id"], [])
            try:
                self._finish_candidate(v, rids, v["batch_id"])
            except Exception as exc:  # noqa: BLE001 — a restart must come up, whatever one candidate does
                self._abandon(rids, v, exc)
            resumed.append(v["id"])
        # a crash between rejecting a candidate and re-queuing (or failing, or re-applying) its requests leaves
        # them ``applied`` to a version that is no longer a candidate, which nothing would ever finish
        stranded = [rid for rids in self.ledger.applied_batches(self.name).values() for rid in rids]
        if stranded:
            self.ledger.requeue(stranded, "its candidate version was rejected before its requests were re-queued")
            state = {**state, "requeued": state["requeued"] + stranded}
        self._cleanup_orphans()
        self._purge_retired()
        return {**state, "candidates_resumed": resumed}

    def _cleanup_orphans(self) -> None:
        known = {str(Path(p).resolve()) for p in self.ledger.version_paths(self.name)}
        vdir = self.manager.versions_dir
        if not vdir.is_dir():
            return
        for f in vdir.iterdir():
            if f.name.startswith(".") and f.name.endswith(".tmp"):
                f.unlink(missing_ok=True)  # an interrupted atomic write
            elif f.suffix == ".safetensors" and str(f.resolve()) not in known:
                f.unlink(missing_ok=True)  # written, but the crash came before the ledger recorded it

    def _purge_retired(self) -> None:
        """Retired versions still contain the deleted data: remove their files (keeping ``keep_retired``)."""
        keep = self.manager.config.keep_retired
        old = [v for v in self.ledger.versions(self.name, limit=1_000_000) if v["status"] in ("retired", "rejected")]
        kept = 0
        for v in old:  # newest first
            if v["status"] == "retired" and kept < keep:
                kept += 1
                continue
            Path(v["path"]).unlink(missing_ok=True)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.loop, name="obliviate-worker", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    def loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except _Blocked:
                busy = False
                self._wake.wait(self.poll_s * 20)  # the serving model is unreadable: an operator must look
            except Exception as exc:  # never let the thread die: record, back off, retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("worker step failed: %s\n%s", exc, traceback.format_exc())
                busy = False
            if not busy:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def run_until_idle(self, max_steps: int = 1000) -> int:
        """Process until nothing is queued and no retrain is due (tests, benchmarks, scripts)."""
        steps = 0
        while steps < max_steps and self.step():
            steps += 1
        return steps

    # -- one step -------------------------------------------------------------------------------------------
    def step(self) -> bool:
        """One unit of work: a due scheduled retrain first (so steady traffic cannot postpone it forever), else
        the next batch; when idle, anything an earlier step left unfinished (a database outage in mid-batch)."""
        if self._maybe_retrain():
            return True
        claimed = self.ledger.claim(self.name, self.manager.config.batch_max)
        if claimed is None:
            counts = self.ledger.counts(self.name)
            if counts.get("running") or counts.get("applied") or self.ledger.candidates(self.name):
                self.recover()  # this process holds the deployment's lock: nothing else is running them
                return True
            return False
        self._process(claimed)
        self.processed_batches += 1
        return True

    def _process(self, claimed: Claimed) -> None:
        rids = [r["id"] for r in claimed.requests]
        version = None
        try:
            serving = self.ledger.serving(self.name)
            try:
                state = self.manager.load(serving)
            except Exception as exc:  # the service's fault, not the requests': they wait, and their attempt is void
                self.last_error = f"serving version {serving['id']} unreadable: {exc}"
                log.error("%s", self.last_error)
                self.ledger.requeue(rids, self.last_error, refund=True)
                raise _Blocked(self.last_error) from exc
            ids = np.unique(np.concatenate([np.asarray(i, dtype=np.int64) for i in claimed.ids]))
            new = np.setdiff1d(ids, state.deleted)
            if new.size == 0:
                self._noop(claimed, serving)
                return
            cand = self.manager.apply(state, new)
            version = self.ledger.add_version(self.name, cand.vid, cand.path, cand.sha256, serving["id"],
                                              cand.method, cand.guarantee, cand.n_deleted, claimed.batch_id,
                                              request_ids=rids)
            self._finish_candidate(version, rids, claimed.batch_id, before=state)
        except _Blocked:
            raise
        except Exception as exc:  # noqa: BLE001 — the batch must end in a recorded state whatever went wrong
            self._abandon(rids, version, exc)

    def _abandon(self, rids: list[str], version: dict[str, Any] | None, exc: Exception) -> None:
        """A batch that raised: its candidate (if any) is rejected, never served. A request the method cannot
        satisfy fails with the reason; an unexpected error is retried up to ``MAX_ATTEMPTS`` times, then fails."""
        expected = isinstance(exc, (ObliviateError, LedgerError))
        reason = str(exc) if expected else f"internal error: {type(exc).__name__}: {exc}"
        if not expected:
            self.last_error = reason
            log.error("batch failed: %s\n%s", reason, traceback.format_exc())
        if version is not None and (self.ledger.version(version["id"]) or {}).get("status") == "candidate":
            self.ledger.reject(version["id"], reason)
        still_open = [r for r in (self.ledger.request(rid) for rid in rids) if r["status"] in OPEN]
        if len(still_open) > 1:  # which request is at fault is unknown: each is retried alone
            retry = [r["id"] for r in still_open if r["attempts"] < MAX_ATTEMPTS]
        else:
            retry = [r["id"] for r in still_open if not expected and r["attempts"] < MAX_ATTEMPTS]
        give_up = [r["id"] for r in still_open if r["id"] not in retry]
        if retry:
            self.ledger.requeue([r for r in retry if self.ledger.request(r)["status"] != "queued"], reason)
        if give_up:
            report = run_report(self.manager.task, self.manager.method.name, self.manager.method.guarantee,
                                {"spec": "failed request", "n": 0, "sha256": sha256_text("")},
                                metrics={}, gap={}, avg_gap=None,
                                service={"deployment": self.name, "requests": give_up, "checks": [],
                                         "passed": False, "note": f"not deleted: {reason}"})
            path, sha = self._write_report(f"failed-{secrets.token_hex(6)}", report)
            self.ledger.fail(give_up, reason, path, sha)

    def _noop(self, claimed: Claimed, serving: dict[str, Any]) -> None:
        """Every id was already deleted by earlier requests: nothing to train; the report says so."""
        rids = [r["id"] for r in claimed.requests]
        report = run_report(self.manager.task, serving["method"], serving["guarantee"],
                            {"spec": f"deletion batch {claimed.batch_id}", "n": 0, "sha256": sha256_text("")},
                            metrics={}, gap={}, avg_gap=None,
                            service={"deployment": self.name, "batch_id": claimed.batch_id, "requests": rids,
                                     "version_before": serving["id"], "version_after": serving["id"],
                                     "checks": [], "passed": True,
                                     "note": "every id was already deleted from the serving version"})
        path, sha = self._write_report(f"noop-{claimed.batch_id}", report)
        self.ledger.close_noop(rids, serving, path, sha)

    def _finish_candidate(self, version: dict[str, Any], rids: list[str], batch_id: str | None,
                          before: VersionState | None = None) -> None:
        """Verify ``version`` against its parent; promote it, or reject it (fallback retrain / fail / requeue)."""
        serving = self.ledger.serving(self.name)
        if serving is None or version["parent"] != serving["id"]:
            self.ledger.reject(version["id"], "stale: it does not descend from the serving version")
            if rids:
                self.ledger.requeue(rids, "its candidate version was stale")
            return
        try:
            before = before or self.manager.load(serving)
            after = self.manager.load(version)
        except IntegrityError as exc:
            self.ledger.reject(version["id"], str(exc))
            if rids:
                self.ledger.requeue(rids, f"candidate unreadable: {exc}")
            return
        report, passed = self.manager.verify(before, after, version, rids, batch_id)
        path, sha = self._write_report(version["id"], report)
        if passed:
            self.ledger.promote(self.name, version["id"], rids, path, sha,
                                approximate=version["guarantee"] != "exact")
            self._purge_retired()
            return
        failed = "; ".join(f"{c['check']} = {c['value']:.4g} > {c['threshold']:.4g}"
                           for c in report["service"]["checks"] if not c["passed"])
        self.ledger.reject(version["id"], f"verification failed: {failed}")
        if rids and self.manager.config.fallback_retrain and not self.manager.method.trains_original \
                and version["method"] != "retrain":
            cand = self.manager.retrain(before, np.setdiff1d(after.deleted, before.deleted))
            fallback = self.ledger.add_version(self.name, cand.vid, cand.path, cand.sha256, serving["id"],
                                               cand.method, cand.guarantee, cand.n_deleted, batch_id,
                                               request_ids=rids)
            self._finish_candidate(fallback, rids, batch_id, before=before)
            return
        if rids:
            self.ledger.fail(rids, f"verification failed: {failed}", path, sha)

    def _maybe_retrain(self) -> bool:
        """The scheduled full retrain once ``retrain_every`` approximate deletions have been served. (SISA/S3T are
        exact already; certified removal retrains its own system when its budget runs out.)"""
        every = self.manager.config.retrain_every
        if self.manager.method.trains_original or every == 0:
            return False
        d = self.ledger.deployment(self.name)
        if d is None or d["approx_since_exact"] < every or self._retrain_rejected_at == d["serving_version"]:
            return False  # not due, or this serving version's retrain failed: wait for the next deletion
        serving = self.ledger.serving(self.name)
        version = None
        try:
            state = self.manager.load(serving)
            cand = self.manager.retrain(state)
            version = self.ledger.add_version(self.name, cand.vid, cand.path, cand.sha256, serving["id"],
                                              cand.method, cand.guarantee, cand.n_deleted, None)
            self._finish_candidate(version, [], None, before=state)
            failed = self.ledger.version(version["id"])["status"] == "rejected"
        except Exception as exc:  # noqa: BLE001 — a failing retrain must not block the deletions behind it
            self.last_error = f"scheduled retrain failed: {type(exc).__name__}: {exc}"
            log.error("%s\n%s", self.last_error, traceback.format_exc())
            if version is not None and self.ledger.version(version["id"])["status"] == "candidate":
                self.ledger.reject(version["id"], self.last_error)
            failed = True
        if failed:
            self._retrain_rejected_at = serving["id"]
        return True

    def _write_report(self, stem: str, report: dict[str, Any]) -> tuple[str, str]:
        from obliviate.report import json_safe, render_run_html

        text = json.dumps(json_safe(report), indent=2, default=str) + "\n"
        path = self.manager.reports_dir / f"{stem}.json"
        atomic_write(path, text)
        atomic_write(self.manager.reports_dir / f"{stem}.html", render_run_html(report))
        return str(path), sha256_text(text)

