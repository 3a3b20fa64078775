"""Shared fixtures: one model cache per test session (trained originals/oracles are reused across tests),
quiet output, and helpers to run the CLI in-process or as a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# Tiny nets: one intra-op thread is as fast as two and never oversubscribes the 2-core CI machine when the
# local process pool or a CLI subprocess runs beside the test process (results do not depend on it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("obliviate-cache")
    old = {k: os.environ.get(k) for k in ("OBLIVIATE_CACHE", "OBLIVIATE_QUIET")}
    os.environ["OBLIVIATE_CACHE"] = str(cache)
    os.environ["OBLIVIATE_QUIET"] = "1"
    yield cache
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def cache_dir(_session_env) -> Path:
    """The session's model cache (shared: a model trained by one test is reused by the next)."""
    return _session_env


@pytest.fixture
def cli(capsys):
    """Run ``obliviate ARGS`` in-process; returns (exit status, stdout, stderr)."""
    from obliviate.cli import main

    def run(*args: str):
        rc = main([str(a) for a in args])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


@pytest.fixture
def cli_subprocess():
    """Run ``python -m obliviate ARGS`` as a real process (exit status, stdout, stderr)."""

    def run(*args: str, cwd: str | Path | None = None, timeout: int = 300):
        proc = subprocess.run([sys.executable, "-m", "obliviate", *map(str, args)], capture_output=True, text=True,
                              cwd=cwd or REPO, timeout=timeout, env={**os.environ})
        return proc.returncode, proc.stdout, proc.stderr

    return run


# Tiny recipes that keep tests fast while still producing a real, accurate model.
FAST_DIGITS = {"epochs": 8}


# -- language: a tiny authors corpus and GPT-2, trained once per test session (cached in the session store) ---------
TINY_AUTHORS = {"authors": 12, "holdout": 4, "n_embd": 64, "n_head": 2, "n_positions": 128}
TINY_LM_TRAIN = {"epochs": 80, "batch_size": 4, "lr": 3e-3}


@pytest.fixture(scope="session")
def tiny_lm(_session_env):
    """(task, recipe, original model) of the tiny authors task; the original memorises its 12 authors."""
    import torch

    from obliviate.models.store import ModelStore
    from obliviate.oracle import train_original
    from obliviate.tasks import get_task

    task = get_task("authors", **TINY_AUTHORS)
    recipe = task.recipe(TINY_LM_TRAIN)
    model, _ = train_original(task, recipe, 0, torch.device("cpu"), ModelStore())
    return task, recipe, model
