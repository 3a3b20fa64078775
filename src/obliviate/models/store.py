"""Models on disk: safetensors only, each file with its sha256 recorded beside it and checked on load.

``ModelStore`` is the content-addressed cache of trained originals and oracles: the key is the hash of
everything that determines the weights (task data, training ids, recipe, seed, device type), so a
second ``run`` with the same inputs reuses the file instead of training again.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from obliviate.atomic import atomic_write
from obliviate.errors import IntegrityError, ObliviateError


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the state dict; tensors that share storage (a language model's tied input and output
    embeddings) are cloned, since safetensors refuses shared memory."""
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        if ptr is not None and ptr in seen:
            v = v.clone()
        seen.add(ptr)
        out[k] = v
    return out


def _serialize(model: torch.nn.Module, metadata: dict[str, str] | None = None) -> bytes:
    return save(cpu_state(model), metadata=metadata or {})


def state_sha256(model: torch.nn.Module) -> str:
    """The sha256 that ``save_state_file(model, path)`` (no metadata) gives, without writing anything."""
    return hashlib.sha256(_serialize(model)).hexdigest()


def save_state_file(model: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``model.state_dict()`` as safetensors (atomically) plus ``<path>.sha256``; return the hash."""
    path = Path(path)
    blob = _serialize(model, metadata)
    atomic_write(path, blob)
    digest = sha256_file(path)
    atomic_write(Path(f"{path}.sha256"), f"{digest}  {path.name}\n")
    return digest


def load_state_file(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors state dict after checking it against its recorded (or the given) sha256."""
    path = Path(path)
    if not path.is_file():
        raise ObliviateError(f"model file not found: {path}")
    if expected_sha256 is None:
        side = Path(f"{path}.sha256")
        if not side.is_file():
            raise IntegrityError(f"no recorded sha256 for {path} (expected {side})")
        expected_sha256 = side.read_text().split()[0]
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise IntegrityError(f"sha256 mismatch for {path}: recorded {expected_sha256[:12]}…, file {actual[:12]}…")
    return load_file(str(path))


def content_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("OBLIVIATE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "obliviate"


class ModelStore:
    """A directory of ``<key>.safetensors`` + ``<key>.safetensors.sha256`` + ``<key>.json`` (metadata)."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.enabled = enabled

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.safetensors", self.root / f"{key}.json"

    def get(self, key: str, model: torch.nn.Module) -> dict[str, Any] | None:
        """Fill ``model`` from the cache and return its metadata, or None on a miss.

        A file whose hash does not match is treated as a miss (and removed), never loaded.
        """
        hit = self.get_tensors(key)
        if hit is None:
            return None
        model.load_state_dict(hit[0])
        return hit[1]

    def put(self, key: str, model: torch.nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
        if not self.enabled:
            return dict(meta, sha256=state_sha256(model), key=key)
        weights, meta_path = self._paths(key)
        meta = dict(meta, sha256=save_state_file(model, weights), key=key)
        atomic_write(meta_path, json.dumps(meta, indent=2, default=str))
        return meta

    # -- whole systems (SISA/S3T checkpoints): many tensors in one safetensors file + JSON metadata ------------
    def get_tensors(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The cached tensors and metadata under ``key``, or None on a miss (a corrupted entry is removed)."""
        if not self.enabled:
            return None
        weights, meta_path = self._paths(key)
        if not (weights.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_state_file(weights, meta["sha256"])
        except (IntegrityError, ValueError, KeyError, OSError) as exc:
            for p in (weights, meta_path, Path(f"{weights}.sha256")):
                p.unlink(missing_ok=True)
            # said, not silent: the caller trains the model again, which can take long
            print(f"warning: cached entry {weights.name} in {self.root} is corrupt ({str(exc).splitlines()[0][:120]}); "
                  "removed, training it again", file=sys.stderr)
            return None
        return tensors, meta

    def put_tensors(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
        blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        digest = hashlib.sha256(blob).hexdigest()
        meta = dict(meta, sha256=digest, key=key)
        if self.enabled:
            weights, meta_path = self._paths(key)
            atomic_write(weights, blob)
            atomic_write(Path(f"{weights}.sha256"), f"{digest}  {weights.name}\n")
            atomic_write(meta_path, json.dumps(meta, indent=2, default=str))
        return meta
