"""Executors for independent jobs (shard training, oracle ensembles): ``serial``, ``local`` (a process
pool, the default) or ``ray`` (a local Ray instance started here, or a cluster at ``ray_address``).

Each job runs single-threaded (``torch.set_num_threads(1)``) whichever executor runs it, so results are
bit-identical across executors on CPU.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from obliviate.errors import ObliviateError

EXECUTORS = ("local", "serial", "ray")


@dataclass
class Runtime:
    """Where work runs: the torch device and the executor for parallel jobs."""

    device: Any = "cpu"
    executor: str = "local"
    ray_address: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ObliviateError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.ray_address and self.executor != "ray":
            raise ObliviateError("--ray-address needs --executor ray")
        if self.workers is not None and self.workers < 1:
            raise ObliviateError(f"workers must be >= 1, got {self.workers}")


def call_single_threaded(fn: Callable, args: tuple) -> Any:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(previous)


def run_jobs(fn: Callable, jobs: Sequence[tuple], runtime: Runtime | None = None) -> list[Any]:
    """``[fn(*args) for args in jobs]``, in parallel on the runtime's executor; order is preserved.

    ``fn`` must be a module-level function and its arguments picklable.
    """
    runtime = runtime or Runtime()
    jobs = list(jobs)
    if not jobs:
        return []
    workers = min(len(jobs), runtime.workers or os.cpu_count() or 1)
    if runtime.executor == "serial" or (runtime.executor == "local" and workers == 1):
        return [call_single_threaded(fn, args) for args in jobs]
    if runtime.executor == "local":
        pool = _local_pool(workers)
        futures = [pool.submit(call_single_threaded, fn, args) for args in jobs]
        return [f.result() for f in futures]
    return _run_ray(fn, jobs, runtime, workers)


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _local_pool(workers: int) -> ProcessPoolExecutor:
    """One process pool per worker count, kept for the life of the process: spawning interpreters that
    import torch costs seconds, more than training a shard of a small task."""
    pool = _POOLS.get(workers)
    if pool is None:
        # spawn: a clean interpreter per worker, no inherited OpenMP/thread-pool state from the parent
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        _POOLS[workers] = pool
        if len(_POOLS) == 1:
            atexit.register(shutdown_pools)
    return pool


def shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=True, cancel_futures=True)
    _POOLS.clear()


def _run_ray(fn: Callable, jobs: list[tuple], runtime: Runtime, workers: int) -> list[Any]:
    try:
        import ray
    except ImportError:
        raise ObliviateError("--executor ray needs the 'distributed' extra: pip install 'obliviate[distributed]'") from None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False, "include_dashboard": False}
        if runtime.ray_address:
            kwargs["address"] = runtime.ray_address
        else:
            kwargs["num_cpus"] = workers
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ObliviateError(f"cannot start or reach Ray ({runtime.ray_address or 'local'}): "
                                 f"{str(exc).splitlines()[0]}") from None
    remote = ray.remote(num_cpus=1)(call_single_threaded)
    return ray.get([remote.remote(fn, args) for args in jobs])
