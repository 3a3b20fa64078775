"""``obliviate serve`` and ``obliviate ledger verify|export``."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from obliviate.errors import ObliviateError

ledger_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="The deletion ledger: check its hash chain, export the audit trail")
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DbOpt = typer.Option(None, "--db", help="ledger URL: sqlite:///path/ledger.sqlite (default: DATA_DIR/ledger.sqlite) "
                                        "or postgresql+psycopg://user:pass@host/db")
DataOpt = typer.Option(None, "--data-dir", help="service data directory (default $OBLIVIATE_DATA or "
                                                "~/.local/share/obliviate)")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _db_url(db: str | None, data_dir: str | None) -> str:
    from obliviate.ledger import default_data_dir
    from obliviate.ledger.store import sqlite_url

    base = Path(data_dir) if data_dir else default_data_dir()
    return db or sqlite_url(base / "ledger.sqlite")


def _check_port(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ObliviateError(f"--port must be 1..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ObliviateError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _route_sets(pairs: dict[str, str], task: str | None) -> dict:
    """``--set`` pairs → DeploymentConfig fields, the task's options, and (the rest) the method's config."""
    import dataclasses

    from obliviate.ledger.deployment import DeploymentConfig
    from obliviate.tasks import task_class

    fields = set(DeploymentConfig.__dataclass_fields__) - {"method_config", "task_options"}
    task_keys = {f.name for f in dataclasses.fields(task_class(task or DeploymentConfig.task).options_class)}
    values: dict = {}
    for k, v in pairs.items():
        if k in fields:
            values[k] = v
        elif k in task_keys:
            values.setdefault("task_options", {})[k] = v
        else:
            values.setdefault("method_config", {})[k] = v
    return values


def serve(db: Optional[str] = DbOpt,
          model_dir: Optional[str] = typer.Option(None, "--model-dir", help="where model versions and reports live "
                                                  "(default: DATA_DIR/models/NAME)"),
          data_dir: Optional[str] = DataOpt,
          host: str = typer.Option("127.0.0.1", "--host", help="address to bind (loopback by default)"),
          port: int = typer.Option(8000, "--port", help="TCP port"),
          insecure_dev: bool = typer.Option(False, "--insecure-dev", help="run without a token (loopback only; "
                                            "never in production)"),
          name: Optional[str] = typer.Option(None, "--name", help="deployment name (default digits)"),
          task: Optional[str] = typer.Option(None, "--task", help="task of a new deployment (default digits)"),
          method: Optional[str] = typer.Option(None, "--method", help="unlearning method of a new deployment "
                                               "(default sisa: exact)"),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="deployment setting (retrain_every=5, "
                                                   "batch_max=16, verify_oracle=false, ...) or method config key"),
          max_body: int = typer.Option(1 << 20, "--max-body", help="largest accepted request body, bytes"),
          quiet: bool = typer.Option(False, "--quiet", help="only errors on stderr")) -> None:
    """The deletion service: REST API + worker on embedded defaults (SQLite ledger, the digits model under SISA).
    The bearer token comes from $OBLIVIATE_API_TOKEN."""
    import logging

    import uvicorn

    from obliviate.config import split_overrides
    from obliviate.ledger import open_service
    from obliviate.ledger.service import create_app

    token = os.environ.get("OBLIVIATE_API_TOKEN") or None
    if token is None and not insecure_dev:
        raise ObliviateError("no API token: set OBLIVIATE_API_TOKEN (or pass --insecure-dev for a local trial)")
    if insecure_dev and host not in LOOPBACK:
        raise ObliviateError(f"--insecure-dev serves without a token and only binds to loopback, not {host}")
    if insecure_dev:
        token = None
    if max_body < 1024:
        raise ObliviateError(f"--max-body must be at least 1024 bytes, got {max_body}")
    _check_port(host, port)
    from obliviate.atomic import check_cache_dir

    check_cache_dir(data_dir, "--data-dir")  # before the first start trains the model into them
    check_cache_dir(model_dir, "--model-dir")
    values = _route_sets(split_overrides(set_ or []), task)
    for k, v in (("name", name), ("task", task), ("method", method)):
        if v is not None:
            values[k] = v
    if not quiet:
        err.print("[bold]obliviate serve[/bold]: opening the ledger (the first start trains the model)")
    svc = open_service(data_dir, db, model_dir, values, lock=True)
    app = create_app(svc.ledger, svc.manager, svc.worker, token=token, max_body=max_body)
    cfg = svc.manager.config
    served = svc.ledger.serving(cfg.name)
    if not quiet:
        rec = svc.recovered
        err.print(f"deployment {cfg.name}: {cfg.task} under {cfg.method} ({svc.manager.method.guarantee}); serving "
                  f"{served['id']} (sha256 {served['sha256'][:12]}…)")
        if rec.get("requeued") or rec.get("candidates_resumed"):
            err.print(f"resumed after a stop: {len(rec['requeued'])} request(s) re-queued, "
                      f"{len(rec['candidates_resumed'])} candidate version(s) finished")
        err.print(f"listening on http://{host}:{port} (OpenAPI docs at /docs)"
                  + (" — INSECURE: no token" if token is None else ""))
    logging.basicConfig(level=logging.WARNING)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal; under the default handler that kills
    # the process before the ``finally`` below, so the worker would die mid-batch and the ledger stay open. End with
    # a clean exit (status 0) instead.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    svc.worker.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning" if not quiet else "error", access_log=False)
    finally:
        svc.worker.stop()
        svc.ledger.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(_signum, _frame) -> None:
    raise SystemExit(0)


@ledger_app.command("verify")
def verify_cmd(db: Optional[str] = DbOpt, data_dir: Optional[str] = DataOpt,
               json_out: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Recompute the event log's hash chain and check every request and version row against it; exit 0 when
    intact, 1 when anything was edited, deleted or reordered."""
    from obliviate.ledger.store import Ledger

    ledger = Ledger(_db_url(db, data_dir), create=False, migrate=False)
    try:
        result = ledger.verify()
    finally:
        ledger.close()
    if json_out:
        print(json.dumps(result, indent=2))
    elif result["ok"]:
        print(f"ledger intact: {result['events']} events, {result['requests']} requests, {result['versions']} "
              f"versions; head {result['head_seq']} {result['head_hash']}")
    else:
        print(f"LEDGER TAMPERED: {len(result['problems'])} problem(s)")
        for p in result["problems"]:
            print(f"- {p}")
    raise typer.Exit(0 if result["ok"] else 1)


@ledger_app.command("export")
def export_cmd(out_path: str = typer.Option(..., "--out", help="file to write (.json or .csv)"),
               fmt: Optional[str] = typer.Option(None, "--format", help="json (everything) or csv (one row per "
                                                 "request); default from --out's suffix"),
               db: Optional[str] = DbOpt, data_dir: Optional[str] = DataOpt) -> None:
    """The audit trail for an auditor: requests (evidence, never the deleted ids), model versions, the event log
    and the chain check."""
    from obliviate.ledger.store import Ledger
    from obliviate.atomic import atomic_write, check_writable

    fmt = (fmt or Path(out_path).suffix.lstrip(".") or "json").lower()
    if fmt not in ("json", "csv"):
        raise ObliviateError(f"--format must be json or csv, got {fmt!r}")
    check_writable(out_path, "--out")
    ledger = Ledger(_db_url(db, data_dir), create=False, migrate=False)
    try:
        doc = ledger.export()
    finally:
        ledger.close()
    if fmt == "json":
        atomic_write(out_path, json.dumps(doc, indent=2) + "\n")
    else:
        buf = io.StringIO()
        cols = ["id", "status", "deployment", "spec", "n_ids", "ids_sha256", "subject_sha256", "idempotency_key",
                "method", "guarantee", "version_before", "version_after", "report_sha256", "attempts", "error",
                "created_at", "finished_at"]
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in doc["requests"]:
            w.writerow(r)
        atomic_write(out_path, buf.getvalue())
    chain = doc["chain"]
    print(f"wrote {out_path}: {len(doc['requests'])} requests, {len(doc['versions'])} versions, "
          f"{len(doc['events'])} events; chain {'intact' if chain['ok'] else 'TAMPERED'} (head {chain['head_hash'][:16]}…)")
