"""The served model of the deletion service: its versions on disk, deletion (exact SISA/S3T or an approximate
method), the scheduled full retrain, and the verification report of each new version.

A version is one safetensors file: the weights (or a SISA/S3T system's checkpoints) plus, in the file's
metadata, the sorted ids deleted so far — so the file's sha256, recorded in the ledger, covers both. Files are
written atomically (temp file, fsync, rename, fsync of the directory); a version is never modified.
"""
from __future__ import annotations

import json
import re
import secrets
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from obliviate.atomic import atomic_write
from obliviate.config import as_dict, build_config
from obliviate.distributed import Runtime
from obliviate.errors import ConfigError, IntegrityError, ObliviateError
from obliviate.requests import ForgetRequest, ids_sha256

FORMAT = "obliviate.version/1"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


@dataclass
class DeploymentConfig:
    """What the service serves and how it deletes. Defaults: the digits MLP under SISA (exact deletion)."""

    name: str = field(default="digits", metadata={"help": "deployment name (letters, digits, '_', '.', '-')"})
    task: str = field(default="digits", metadata={"help": "a classification or regression task"})
    method: str = field(default="sisa", metadata={"help": "sisa / s3t (exact) or an approximate method"})
    method_config: dict = field(default_factory=dict, metadata={"help": "the method's --set values"})
    task_options: dict = field(default_factory=dict, metadata={"help": "the task's options"})
    seed: int = field(default=0, metadata={"help": "training and unlearning seed", "min": 0})
    retrain_every: int = field(default=10, metadata={
        "help": "approximate deletions (requests) after which a full retrain replaces the model; 0 = never",
        "min": 0})
    batch_max: int = field(default=32, metadata={"help": "most requests applied together in one batch", "min": 1})
    verify_oracle: bool = field(default=True, metadata={
        "help": "verification retrains an oracle on the remaining data (affordable for small tabular models)"})
    verify_exact: bool = field(default=True, metadata={
        "help": "exact methods: also retrain the touched system from scratch and compare weights"})
    max_utility_drop: float = field(default=0.05, metadata={
        "help": "verification fails if test accuracy falls below the oracle's (without an oracle: retain "
                "accuracy below the previous version's) by more; for regression the relative MAE growth", "min": 0})
    max_forget_gap: float = field(default=0.1, metadata={
        "help": "approximate methods: verification fails if the forget metric is further from the oracle's",
        "min": 0})
    min_forget_check: int = field(default=20, metadata={
        "help": "fewest newly deleted ids for the forget-metric check (on fewer it is noise and is skipped)",
        "min": 1})
    fallback_retrain: bool = field(default=True, metadata={
        "help": "when an approximate deletion fails verification, delete by full retrain instead of failing"})
    keep_retired: int = field(default=0, metadata={
        "help": "retired versions kept on disk (they still contain deleted data; 0 = purge when replaced)",
        "min": 0})


def deployment_config(values: dict[str, Any]) -> DeploymentConfig:
    cfg = build_config(DeploymentConfig, values)
    if not re.match(NAME_PATTERN, cfg.name):
        raise ConfigError(f"deployment name {cfg.name!r}: use 1-64 letters, digits, '_', '.', '-' (no paths)")
    return cfg


@dataclass
class VersionState:
    """A loaded version: the served model, the SISA/S3T system when there is one, and the deleted ids."""

    model: torch.nn.Module
    deleted: np.ndarray
    system: Any = None
    sha256: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Candidate:
    vid: str
    path: str
    sha256: str
    method: str
    guarantee: str
    n_deleted: int


def new_version_id(prefix: str = "v") -> str:
    return f"{prefix}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


def read_metadata(blob: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]).get("__metadata__", {}) or {}


class ModelManager:
    """Loads, deletes from, retrains and verifies the deployment's model versions under ``model_dir``."""

    def __init__(self, config: DeploymentConfig, model_dir: str | Path, device: str = "cpu"):
        from obliviate.api import build_method
        from obliviate.tasks import get_task

        self.config = config
        self.model_dir = Path(model_dir).resolve()  # recorded version paths must not depend on the cwd
        self.versions_dir = self.model_dir / "versions"
        self.reports_dir = self.model_dir / "reports"
        self.task = get_task(config.task, **config.task_options)
        if self.task.kind not in ("classification", "regression"):
            raise ObliviateError(f"the deletion service manages classification and regression models; task "
                                 f"{config.task!r} is a {self.task.kind} task")
        self.method = build_method(config.method, dict(config.method_config), self.task)
        self.recipe = self.task.recipe(None)
        self.device = torch.device(device)
        self.runtime = Runtime(device=self.device, executor="serial")

    @property
    def n_train(self) -> int:
        return self.task.n_train

    # -- files ------------------------------------------------------------------------------------------------
    def _write(self, vid: str, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> tuple[str, str]:
        import hashlib

        blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                       metadata={"obliviate": json.dumps({"format": FORMAT, **info}, sort_keys=True)})
        path = self.versions_dir / f"{vid}.safetensors"
        atomic_write(path, blob)
        return str(path), hashlib.sha256(blob).hexdigest()

    def load(self, version: dict[str, Any]) -> VersionState:
        """The version's model, checked against the sha256 the ledger recorded (never a pickle)."""
        import hashlib

        path = Path(version["path"])
        if not path.is_file():
            raise IntegrityError(f"model file of version {version['id']} is missing: {path}")
        blob = path.read_bytes()
        actual = hashlib.sha256(blob).hexdigest()
        if actual != version["sha256"]:
            raise IntegrityError(f"model file of version {version['id']} does not match the ledger's sha256 "
                                 f"(recorded {version['sha256'][:12]}…, file {actual[:12]}…)")
        info = json.loads(read_metadata(blob)["obliviate"])
        tensors = st_load(blob)
        deleted = np.asarray(info["deleted"], dtype=np.int64)
        if info["kind"] == "system":
            system = self.method.restore(self.task, self.recipe, self.config.seed, tensors, info["system"])
            return VersionState(system.served_model().to(self.device).eval(), deleted, system, actual, info)
        model = self.task.make_model(self.config.seed)
        model.load_state_dict(tensors)
        return VersionState(model.to(self.device).eval(), deleted, None, actual, info)

    def _save_model(self, vid: str, model: torch.nn.Module, deleted: np.ndarray, method: str,
                    **extra: Any) -> tuple[str, str]:
        from obliviate.models.store import cpu_state

        return self._write(vid, cpu_state(model), {"kind": "model", "method": method,
                                                    "deleted": np.asarray(deleted).tolist(), **extra})

    def _save_system(self, vid: str, system, deleted: np.ndarray, **extra: Any) -> tuple[str, str]:
        return self._write(vid, system.tensors(), {"kind": "system", "method": self.method.name,
                                                   "system": system.meta(), "deleted": np.asarray(deleted).tolist(),
                                                   **extra})

    # -- building versions ---------------------------------------------------------------------------------------
    def initial(self) -> Candidate:
        """The first version: trained on the whole training set (by the method itself for SISA/S3T)."""
        from obliviate.models.store import ModelStore
        from obliviate.oracle import train_original

        vid = new_version_id()
        none = np.zeros(0, dtype=np.int64)
        if self.method.trains_original:
            system = self.method.fit(self.task, np.arange(self.n_train), self.recipe, self.config.seed,
                                     self.runtime)
            path, sha = self._save_system(vid, system, none)
            method, guarantee = self.method.name, self.method.guarantee
        else:
            model, _ = train_original(self.task, self.recipe, self.config.seed, self.device,
                                      ModelStore(enabled=False))
            path, sha = self._save_model(vid, model, none, "train")
            method, guarantee = "train", "exact"
        return Candidate(vid, path, sha, method, guarantee, 0)

    def alive(self, deleted: np.ndarray) -> np.ndarray:
        return np.setdiff1d(np.arange(self.n_train), deleted)

    def apply(self, state: VersionState, new_ids: np.ndarray) -> Candidate:
        """Delete ``new_ids`` from ``state`` with the configured method into a new version file."""
        from obliviate.pipeline import apply_method, build_context

        vid = new_version_id()
        deleted = np.union1d(state.deleted, new_ids)
        if deleted.size >= self.n_train:
            raise ObliviateError(f"deleting these {len(new_ids)} ids would leave no training data "
                                 f"({self.n_train} examples, {state.deleted.size} deleted before)")
        request = ForgetRequest(f"ids ({len(new_ids)})", np.asarray(new_ids, dtype=np.int64))
        ctx = build_context(self.task, self.method, state.model, request, self.recipe, self.config.seed, self.device,
                       self.runtime, retain_ids=self.alive(deleted), system=state.system)
        out = apply_method(self.method, ctx, request)
        model, seconds, cost = out.model, out.seconds, out.blocks.get("exact")
        if state.system is not None:
            path, sha = self._save_system(vid, state.system, deleted, cost=cost, unlearn_s=seconds)
        else:
            path, sha = self._save_model(vid, model, deleted, self.method.name, unlearn_s=seconds)
        return Candidate(vid, path, sha, self.method.name, self.method.guarantee, int(deleted.size))

    def retrain(self, state: VersionState, new_ids: np.ndarray | None = None) -> Candidate:
        """A full retrain on every remaining example (exact): the scheduled replacement of approximately
        unlearned models, and the fallback when an approximate deletion fails verification."""
        from obliviate.oracle import train_cached
        from obliviate.models.store import ModelStore

        vid = new_version_id()
        deleted = state.deleted if new_ids is None else np.union1d(state.deleted, new_ids)
        start = time.perf_counter()
        model, _ = train_cached(self.task, self.alive(deleted), self.recipe, self.config.seed, self.device,
                                ModelStore(enabled=False), "retrain")
        seconds = time.perf_counter() - start
        path, sha = self._save_model(vid, model, deleted, "retrain", unlearn_s=seconds)
        return Candidate(vid, path, sha, "retrain", "exact", int(deleted.size))

    # -- verification --------------------------------------------------------------------------------------------
    def verify(self, before: VersionState, after: VersionState, version: dict[str, Any],
               request_ids: list[str], batch_id: str | None) -> tuple[dict[str, Any], bool]:
        """The ``obliviate.run/1`` report of one new version: metrics of the previous version (``original``),
        the new one (``unlearned``) and, where affordable, a model retrained without everything deleted so far
        (``oracle``), on the ids this version newly deleted; plus the service's pass/fail checks."""
        from obliviate.models.store import ModelStore
        from obliviate.oracle import retrain_oracle
        from obliviate.pipeline import evaluate_model, oracle_gap, run_report, software_versions

        task, seed, dev = self.task, self.config.seed, self.device
        forget = np.setdiff1d(after.deleted, before.deleted)
        if forget.size == 0:
            forget = after.deleted  # a scheduled retrain: evaluate on everything deleted so far
        retain = self.alive(after.deleted)
        cost = after.info.get("cost")
        times: dict[str, float] = {"unlearn": (cost or {}).get("time_s", after.info.get("unlearn_s"))}
        exact_check = self.exact_verification(after) if cost is not None else None
        if exact_check is not None:
            cost = dict(cost, verification=exact_check)
            times["verify_exact"] = exact_check["time_s"]
        oracle = None
        if self.config.verify_oracle and forget.size:
            start = time.perf_counter()
            oracle, _ = retrain_oracle(task, retain, self.recipe, seed, dev, ModelStore(enabled=False))
            times["oracle"] = time.perf_counter() - start
        metrics: dict[str, dict[str, float]] = {}
        if forget.size:
            metrics["original"] = evaluate_model(task, before.model, forget, retain, seed, dev, False, oracle)[0]
            metrics["unlearned"] = evaluate_model(task, after.model, forget, retain, seed, dev, False, oracle)[0]
            if oracle is not None:
                metrics["oracle"] = evaluate_model(task, oracle, forget, retain, seed, dev, False, oracle)[0]
        gap, avg = oracle_gap(metrics, task.kind)
        checks = self._checks(metrics, gap, version["guarantee"], cost, int(forget.size), version["method"])
        passed = all(c["passed"] for c in checks)
        report = run_report(
            task, version["method"], version["guarantee"],
            {"spec": f"deletion batch {batch_id}" if batch_id else "scheduled retrain", "n": int(forget.size),
             "sha256": ids_sha256(forget)},
            seed=seed, device=dev.type, retain_n=retain.size,
            config=as_dict(self.method.config) if version["method"] == self.method.name else {},
            train=as_dict(self.recipe), task_options=as_dict(task.options), metrics=metrics, gap=gap,
            avg_gap=avg, time_s=times,
            models={"original": {"sha256": before.sha256, "version": version.get("parent")},
                    "unlearned": {"sha256": after.sha256, "version": version["id"]}},
            versions=software_versions(task.kind),
            service={"deployment": self.config.name, "batch_id": batch_id, "requests": list(request_ids),
                     "version_before": version.get("parent"), "version_after": version["id"],
                     "n_deleted_total": int(after.deleted.size), "checks": checks, "passed": passed},
            exact=cost or None)
        return report, passed

    def _checks(self, metrics, gap, guarantee: str, cost, n_forget: int, version_method: str) -> list[dict[str, Any]]:
        c = self.config
        out = []
        # a SISA/S3T ensemble or a certified linear model is not the oracle's model class: its utility is
        # compared with its own previous version, and its forget set is not held to the oracle's numbers
        system = self.method.trains_original and version_method == self.method.name
        retrain = version_method == "retrain"  # the reference itself: held only to the oracle, when there is one
        if "unlearned" in metrics and not (retrain and "oracle" not in metrics):
            # utility against the oracle when there is one (deleting a whole cohort lowers test accuracy for the
            # oracle too); otherwise on the remaining training data, which a deletion should not disturb
            ref_role = "oracle" if "oracle" in metrics and not system else "original"
            split = "test" if ref_role == "oracle" else "retain"
            ref, after = metrics[ref_role], metrics["unlearned"]
            label = "the oracle" if ref_role == "oracle" else "the previous version"
            if self.task.kind == "classification":
                drop = ref[f"{split}_acc"] - after[f"{split}_acc"]
                out.append({"check": f"{split} accuracy drop vs {label}", "value": drop,
                            "threshold": c.max_utility_drop, "passed": drop <= c.max_utility_drop})
            else:
                growth = after[f"{split}_mae"] / max(ref[f"{split}_mae"], 1e-12) - 1
                out.append({"check": f"relative {split} MAE growth vs {label}", "value": growth,
                            "threshold": c.max_utility_drop, "passed": growth <= c.max_utility_drop})
        key = "forget_acc" if self.task.kind == "classification" else "forget_mae"
        if guarantee != "exact" and key in gap and not system:
            if n_forget >= c.min_forget_check:
                out.append({"check": f"|{key} − oracle's|", "value": gap[key], "threshold": c.max_forget_gap,
                            "passed": gap[key] <= c.max_forget_gap})
            else:
                out.append({"check": f"|{key} − oracle's| (skipped: {n_forget} ids < min_forget_check "
                                     f"{c.min_forget_check})", "value": gap[key], "threshold": None, "passed": True})
        if cost and "verification" in cost:
            v = cost["verification"]
            out.append({"check": "served weights identical to a from-scratch retrain of the touched system",
                        "value": v["max_abs_diff"], "threshold": 0.0, "passed": bool(v["verified"])})
        return out

    def exact_verification(self, state: VersionState) -> dict[str, Any] | None:
        if state.system is None or not self.config.verify_exact or not hasattr(state.system, "verify"):
            return None
        return state.system.verify(self.runtime)


