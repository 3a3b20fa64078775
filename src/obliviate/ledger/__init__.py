"""The deletion service: a durable, hash-chained ledger of deletion requests and model versions
(:mod:`~obliviate.ledger.store`), the worker that applies and verifies them (:mod:`~obliviate.ledger.worker`),
and the REST API (:mod:`~obliviate.ledger.service`). :func:`open_service` wires the three together.

>>> from obliviate.ledger import open_service                  # doctest: +SKIP
>>> svc = open_service("/tmp/obliviate-data")                  # digits MLP under SISA, SQLite ledger
>>> svc.ledger.submit(...)                                      # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from obliviate.errors import ObliviateError


def default_data_dir() -> Path:
    env = os.environ.get("OBLIVIATE_DATA")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "obliviate"


@dataclass
class Service:
    ledger: Any
    manager: Any
    worker: Any
    recovered: dict[str, Any]

    def close(self) -> None:
        self.worker.stop()
        self.ledger.close()


def open_service(data_dir: str | Path | None = None, db: str | None = None, model_dir: str | Path | None = None,
                 values: dict[str, Any] | None = None, device: str = "cpu", recover: bool = True,
                 lock: bool | None = None) -> Service:
    """Open (or create) the ledger and the deployment, train its first version when there is none, and resume
    whatever a previous process left unfinished. ``values``: DeploymentConfig fields the user gave; for an existing
    deployment they must agree with the recorded ones. ``lock`` (default: whenever ``recover``) refuses to run beside
    another process serving the same deployment from the same ledger — recovery would re-queue its running batch;
    :meth:`Service.close` releases it."""
    from obliviate.ledger.deployment import DeploymentConfig, ModelManager, deployment_config
    from obliviate.ledger.store import Ledger, sqlite_url
    from obliviate.ledger.worker import Worker

    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    values = dict(values or {})
    name = values.get("name", DeploymentConfig.name)
    # bad settings fail before anything is written; for a new deployment this is also the manager it gets
    probe = ModelManager(deployment_config(values),
                         Path(model_dir) if model_dir is not None else data_dir / "models" / name, device=device)
    ledger = Ledger(db or sqlite_url(data_dir / "ledger.sqlite"))
    if lock is None:
        lock = recover
    if lock:
        try:
            ledger.lock_worker(name)
        except ObliviateError:
            ledger.close()
            raise
    stored = ledger.deployment(name)
    if stored is not None:
        recorded = stored["config"]
        given = dataclasses.asdict(deployment_config(values))
        clash = sorted(k for k in values if given.get(k) != recorded.get(k))
        if clash:
            ledger.close()
            raise ObliviateError(f"deployment {name!r} in the ledger was created with "
                                 + ", ".join(f"{k}={json.dumps(recorded.get(k))}" for k in clash)
                                 + "; drop those options or use another --name / --db")
        cfg = deployment_config(recorded)
        mdir = Path(model_dir) if model_dir is not None else Path(stored["model_dir"])
        if mdir.resolve() != Path(stored["model_dir"]).resolve():
            ledger.close()
            raise ObliviateError(f"deployment {name!r} keeps its models in {stored['model_dir']}, not {mdir}")
    else:
        cfg = deployment_config(values)
        mdir = Path(model_dir) if model_dir is not None else data_dir / "models" / cfg.name
    try:
        same = cfg == probe.config and mdir.resolve() == probe.model_dir
        manager = probe if same else ModelManager(cfg, mdir, device=device)
        if stored is None and mdir.is_dir() and any(mdir.iterdir()):
            raise ObliviateError(f"model dir {mdir} is not empty; a new deployment needs its own --model-dir")
        if stored is not None:
            _claim_model_dir(mdir, stored)
    except ObliviateError:
        ledger.close()
        raise
    if stored is None:
        stored = ledger.create_deployment(cfg.name, cfg.task, cfg.method, manager.method.guarantee,
                                          dataclasses.asdict(cfg), str(mdir.resolve()))
        _claim_model_dir(mdir, stored)
    worker = Worker(ledger, manager)
    worker.ensure_initial()
    recovered = worker.recover() if recover else {}
    return Service(ledger, manager, worker, recovered)


def _claim_model_dir(model_dir: Path, deployment: dict[str, Any]) -> None:
    """A model directory belongs to one deployment: the worker deletes version files its ledger never recorded, so a
    second deployment (of this or another ledger) there would delete the first one's models."""
    from obliviate.atomic import atomic_write

    marker = model_dir / "deployment.json"
    mine = {"deployment": deployment["name"], "created_at": deployment["created_at"]}
    if not marker.is_file():
        atomic_write(marker, json.dumps(mine, indent=2) + "\n")
        return
    try:
        theirs = json.loads(marker.read_text())
    except ValueError:
        raise ObliviateError(f"{marker} is not valid JSON; is {model_dir} an obliviate model directory?") from None
    if theirs != mine:
        raise ObliviateError(f"model dir {model_dir} belongs to deployment {theirs.get('deployment')!r} created "
                             f"{theirs.get('created_at')}; give this deployment its own --model-dir")
