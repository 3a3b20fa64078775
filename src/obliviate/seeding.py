"""Where every random stream's seed comes from (one module, so two streams never collide by accident).

- :func:`seed_everything`: the global RNGs (Python, NumPy, torch) at the run seed, before a method runs.
- :func:`stream_seed` / :func:`torch_generator`: a torch stream of its own for each consumer (a method's
  ``ctx.generator(offset)``, the relearn-time fine-tuning, the relearning attack of the audit), ``seed ·
  1_000_003 + stream`` — distinct for distinct (seed, stream) pairs while streams stay below 1_000_003.
- :func:`numpy_rng`: a NumPy stream per consumer, ``default_rng([seed, tag])`` (forget sampling, fold orders,
  shuffles).
"""
from __future__ import annotations

import random

import numpy as np
import torch

#: a prime above every stream offset in use, so ``seed * STRIDE + stream`` never maps two pairs to one seed
STRIDE = 1_000_003


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, stream: int) -> int:
    return seed * STRIDE + stream


def torch_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator of its own for (``seed``, ``stream``)."""
    return torch.Generator().manual_seed(stream_seed(seed, stream))


def numpy_rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag])
