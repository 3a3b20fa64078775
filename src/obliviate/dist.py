"""Data parallelism across processes: ``accelerate launch --multi_gpu --num_processes N -m obliviate run ...``
(or ``torchrun``) starts N copies of the command; each holds the whole model, takes its share of every
optimiser step's sequences and of the evaluation batches, and the gradients are summed across processes
before each step — DDP's semantics, so every process applies the same update and N processes give the
weights one process gives for the same global batch. Only the main process (rank 0) writes files or prints.

The process group is initialised here from the launcher's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when CUDA is visible, gloo otherwise (CPU runs, tests).
Without a launcher everything below is the single-process no-op.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched() -> bool:
    """True under a multi-process launcher (``WORLD_SIZE`` > 1)."""
    return world_size() > 1


def init() -> None:
    """Join the launcher's process group (once); a no-op for a single process."""
    if not launched():
        return
    import torch.distributed as td

    if td.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        td.init_process_group("nccl")
    else:
        td.init_process_group("gloo")


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0) if launched() else 0


def is_main() -> bool:
    """The process that writes reports, models and terminal output."""
    return rank() == 0


def device_for(requested: str) -> str:
    """Under a launcher on CUDA each process uses its own GPU (``cuda:LOCAL_RANK``)."""
    if launched() and requested in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return requested


def sum_gradients(params: Sequence[torch.nn.Parameter], bucket_bytes: int = 64 << 20) -> None:
    """Sum every parameter's gradient over the processes (missing gradients count as zeros), in flat buckets
    so a large model needs few collective calls."""
    if not launched():
        return
    import torch.distributed as td

    init()
    bucket: list[torch.nn.Parameter] = []
    size = 0

    def flush():
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])
        td.all_reduce(flat, op=td.ReduceOp.SUM)
        offset = 0
        for p in bucket:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n
        bucket, size = [], 0

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        if bucket and (p.grad.dtype != bucket[0].grad.dtype or size + p.grad.numel() * p.grad.element_size() > bucket_bytes):
            flush()
        bucket.append(p)
        size += p.grad.numel() * p.grad.element_size()
    flush()


def my_share(n: int) -> list[int]:
    """The indices 0..n−1 this process handles (round robin): evaluation batches are split this way."""
    return list(range(rank(), n, world_size())) if launched() else list(range(n))


def gather(local: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Every process's (index, value) pairs, on every process (picklable values)."""
    if not launched():
        return local
    import torch.distributed as td

    init()
    parts: list = [None] * world_size()
    td.all_gather_object(parts, local)
    return [item for part in parts for item in part]


def finish() -> None:
    """End of a launched command: every process waits for the others (rank 0 writes after the last collective),
    then the process group is destroyed — a process exiting while its peers still hold gloo connections aborts."""
    import torch.distributed as td

    if launched() and td.is_initialized():
        td.barrier()
        td.destroy_process_group()
