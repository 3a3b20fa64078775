"""Trained originals and retrain oracles, cached by the content hash of what determines their weights.

The oracle is the same recipe and seed on the retain set only: the gold standard every method is
measured against. A second run with the same (task data, training ids, recipe, seed, device type)
loads the stored safetensors file (checked against its sha256) instead of training again.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from obliviate.models.store import ModelStore, content_key
from obliviate.requests import ids_sha256
from obliviate.training import train

STORE_FORMAT = 1


def train_cached(task, train_ids: np.ndarray, recipe, seed: int, device: torch.device,
                 store: ModelStore, role: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train (or load) ``task``'s model on the training rows ``train_ids``; return it with its metadata."""
    key_parts = {"format": STORE_FORMAT, "task": task.fingerprint(), "ids": ids_sha256(train_ids),
                 "n": int(len(train_ids)), "recipe": dataclasses.asdict(recipe), "seed": seed,
                 "device": device.type}

    key = content_key(key_parts)
    model = task.make_model(seed)
    meta = store.get(key, model)
    if meta is not None:
        return model.to(device).eval(), dict(meta, cached=True)
    start = time.perf_counter()
    if task.kind == "language":
        task.train_model(model, train_ids, recipe, seed, device, description=f"{role} ({task.name})")
    else:
        x, y = task.data.x_train[train_ids], task.data.y_train[train_ids]
        train(model, x, y, recipe, task.kind, seed, device, description=f"{role} ({task.name})")
    elapsed = time.perf_counter() - start
    meta = store.put(key, model, {"role": role, "task": task.name, "seed": seed, "n_train": int(len(train_ids)),
                                  "train_time_s": elapsed, **{f"recipe.{k}": v for k, v in
                                                              dataclasses.asdict(recipe).items()}})
    return model.eval(), dict(meta, cached=False)


def train_original(task, recipe, seed, device, store):
    return train_cached(task, np.arange(task.n_train), recipe, seed, device, store, "original")


def retrain_oracle(task, retain_ids, recipe, seed, device, store):
    return train_cached(task, retain_ids, recipe, seed, device, store, "oracle")
