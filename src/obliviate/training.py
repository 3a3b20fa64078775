"""One deterministic training loop, shared by the original model, the retrain oracle and ``retrain``."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from obliviate.errors import ObliviateError
from obliviate.seeding import seed_everything


def resolve_device(device: str = "cpu") -> torch.device:
    """``cpu`` (default), ``cuda`` (error if absent) or ``auto`` (cuda when one is visible); under a multi-process
    launcher ``cuda`` is each process's own GPU (:func:`obliviate.dist.device_for`)."""
    from obliviate.dist import device_for

    device = device_for(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ObliviateError(f"--device {device}: no CUDA device is visible (use --device cpu or auto)")
        return torch.device(device)
    raise ObliviateError(f"--device must be cpu, cuda or auto, got {device!r}")


def per_example_loss(kind: str, model: torch.nn.Module, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classification; squared error in standardised target units for regression."""
    if kind == "classification":
        return F.cross_entropy(out, y, reduction="none")
    scale = getattr(model, "y_std", None)
    return ((out - y) / (scale if scale is not None else 1.0)) ** 2


def task_loss(kind: str, model: torch.nn.Module, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return per_example_loss(kind, model, out, y).mean()


def gradient_norm_penalty(loss: torch.Tensor, params: list[torch.Tensor], norm: str = "per_tensor") -> torch.Tensor:
    """IAU's gradient restriction term (Liu et al. 2025, official ``train_model.py``): Σ_tensors ‖∇_θ loss‖₂ (``per_tensor``, the official
    ``train_model.py``) or ‖∇_θ loss‖₂ over all parameters at once (``global``, the README's formula).

    The gradient is taken with ``create_graph=True`` so the penalty itself can be back-propagated.
    """
    grads = [g for g in torch.autograd.grad(loss, params, create_graph=True, allow_unused=True) if g is not None]
    if not grads:
        return loss.new_zeros(())
    if norm == "per_tensor":
        return torch.stack([torch.linalg.vector_norm(g) for g in grads]).sum()
    if norm == "global":
        return torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
    raise ObliviateError(f"unknown grad_restriction_norm {norm!r}; expected per_tensor or global")


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ObliviateError(f"unknown optimizer {name!r}; expected adam or sgd")


def batches(n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def to_tensors(x: np.ndarray, y: np.ndarray | None, device: torch.device):
    xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32, device=device)
    if y is None:
        return xt, None
    dtype = torch.long if np.issubdtype(np.asarray(y).dtype, np.integer) else torch.float32
    return xt, torch.as_tensor(np.ascontiguousarray(y), dtype=dtype, device=device)


def progress_enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("OBLIVIATE_QUIET") and not os.environ.get("CI")


@contextmanager
def progress_bar(description: str, total: int, detail: str | None = None):
    """A rich progress bar on a terminal; piped or logged (not a TTY), one plain stderr line at the start and one
    with the seconds at the end, so a log shows what ran; nothing under ``--quiet`` / OBLIVIATE_QUIET or in CI."""
    if not progress_enabled():
        if sys.stderr.isatty() or os.environ.get("OBLIVIATE_QUIET") or os.environ.get("CI"):
            yield lambda n=1: None
            return
        from obliviate.dist import is_main

        if not is_main():  # under a launcher, rank 0 speaks for every process
            yield lambda n=1: None
            return
        label = description if description.startswith("train") else f"train {description}"
        what = detail or f"{total} steps"
        many = " shard " in f" {description} "  # one of an exact system's many sub-models: one line, at the end
        if not many:
            _line(f"{label}: {what} …")
        start = time.perf_counter()
        yield lambda n=1: None
        _line(f"{label}: {what + ', ' if many else ''}done in {time.perf_counter() - start:.1f} s")
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=True) as prog:
        tid = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(tid, n)


def _line(text: str) -> None:
    """One write per line: shard workers share the terminal's stderr, and must not interleave mid-line."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, recipe, kind: str, seed: int,
          device: torch.device | str = "cpu", description: str = "train", *, epochs: int | None = None,
          fit_normalizer: bool = True) -> torch.nn.Module:
    """Train ``model`` (fresh, seeded by the caller) on ``(x, y)`` with ``recipe``; deterministic on CPU.

    The data order depends only on ``seed`` and ``len(x)``, so a model trained on the retain set is a
    function of the retain set alone. Only parameters with ``requires_grad`` are optimised (S3T freezes
    all but one LoRA block and the head); ``epochs`` overrides the recipe's (SISA's per-slice schedule).
    """
    device = torch.device(device)
    seed_everything(seed)
    epochs = recipe.epochs if epochs is None else epochs
    if fit_normalizer and hasattr(model, "fit_normalizer"):
        model.fit_normalizer(x, y)
    model.to(device).train()
    xt, yt = to_tensors(x, y, device)
    opt = make_optimizer(model.parameters(), recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum)
    gen = torch.Generator().manual_seed(seed)
    n = len(xt)
    if n == 0 or epochs == 0:
        return model.eval()
    steps_per_epoch = (n + recipe.batch_size - 1) // recipe.batch_size
    # IAU gradient restriction (off by default; the plain path below is unchanged when it is off)
    gr_alpha = float(getattr(recipe, "grad_restriction", 0.0) or 0.0)
    gr_norm = getattr(recipe, "grad_restriction_norm", "per_tensor")
    gr_params = [p for p in model.parameters() if p.requires_grad] if gr_alpha > 0 else []
    detail = (f"seed {seed}, " if seed < 1000 else "") + f"{epochs} epochs"  # derived shard seeds are long
    with progress_bar(description, epochs * steps_per_epoch, detail) as advance:
        for _ in range(epochs):
            for idx in batches(n, recipe.batch_size, gen):
                idx = idx.to(device)
                loss = task_loss(kind, model, model(xt[idx]), yt[idx])
                if gr_alpha > 0:
                    loss = loss + gr_alpha * gradient_norm_penalty(loss, gr_params, gr_norm)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                advance()
    return model.eval()


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, device: torch.device | str = "cpu",
            batch_size: int = 4096) -> np.ndarray:
    """Raw outputs (logits, or predictions in target units for regression) as float64 numpy."""
    model.eval()
    xt, _ = to_tensors(x, None, torch.device(device))
    outs = [model(xt[i:i + batch_size]).double().cpu() for i in range(0, len(xt), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0,))
