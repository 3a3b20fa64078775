"""MNIST-1D (Greydanus 2020): 1-D "digits" generated from code by the ``mnist1d`` package, never downloaded.

Why this task: on digits an MLP generalises so well that the original's forget accuracy is within ~0.015 of the
retrain oracle's, so random forgetting barely moves anything. On MNIST-1D an MLP memorises its training set
(train accuracy 1) while test accuracy stays near 0.6, so a random forget set is fitted by the original and
*not* by the oracle: "do nothing" has a large gap and unlearning methods have something to close.

The data are generated with the package's own ``make_dataset`` under ``data_seed`` (default 42, the package's
published data set) and split with the package's ``train_split``; the arrays are cached in memory per
option set, since generation takes ~1 s per 5,000 rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from obliviate.config import Validated
from obliviate.errors import ObliviateError
from obliviate.models.nets import MLP, TabularNet
from obliviate.tasks import register_task
from obliviate.tasks.base import TabularData, Task

_CACHE: dict[tuple, tuple[np.ndarray, ...]] = {}


def generate(n_samples: int, data_seed: int, train_split: float) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)`` of MNIST-1D from ``mnist1d.data.make_dataset`` (40 features,
    10 balanced classes). The package seeds numpy's *global* RNG; the caller's state is restored."""
    key = (n_samples, data_seed, train_split)
    if key not in _CACHE:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError:
            raise ObliviateError("task mnist1d needs the mnist1d package: pip install 'obliviate[datasets]'") from None
        args = get_dataset_args()
        args.num_samples, args.seed, args.train_split = n_samples, data_seed, train_split
        import random

        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        _CACHE[key] = (d["x"].astype(np.float32), d["y"].astype(np.int64),
                       d["x_test"].astype(np.float32), d["y_test"].astype(np.int64))
    return tuple(a.copy() for a in _CACHE[key])


@dataclass
class Mnist1dOptions(Validated):
    n_samples: int = field(default=5000, metadata={
        "help": "rows generated (train + test; the package's default 5,000)", "min": 100})
    train_split: float = field(default=0.8, metadata={"help": "fraction of rows in the training split "
                                                              "(package default 0.8)", "gt": 0, "max": 0.95})
    data_seed: int = field(default=42, metadata={"help": "seed of the generator (42: the package's published set)"})
    hidden: tuple[int, ...] = field(default=(256, 256), metadata={"help": "MLP hidden widths"})


@register_task
class Mnist1d(Task):
    name = "mnist1d"
    kind = "classification"
    description = ("MNIST-1D generated from code (5,000 1-D signals of 40 points, 10 classes; needs obliviate"
                   "[datasets]); an MLP that memorises its training set, so random forgetting is measurable")
    options_class = Mnist1dOptions
    # 60 epochs of Adam 1e-3 without regularisation: train accuracy reaches 1.0, test stays ~0.6 (measured in the
    # module's tests and benchmarks/gap.py), the regime where a forgotten example is visibly "remembered".
    recipe_defaults = {"epochs": 60, "lr": 1e-3, "batch_size": 64, "optimizer": "adam"}

    def load(self) -> TabularData:
        o = self.options
        xtr, ytr, xte, yte = generate(o.n_samples, o.data_seed, o.train_split)
        if len(np.unique(ytr)) < 10:
            raise ObliviateError(f"mnist1d: n_samples={o.n_samples} leaves a class out of the training split")
        return TabularData(xtr, ytr, xte, yte, [f"t{i}" for i in range(xtr.shape[1])], [str(c) for c in range(10)])

    def build_model(self) -> torch.nn.Module:
        in_dim = self.data.x_train.shape[1]
        return TabularNet(MLP(in_dim, self.options.hidden, 10), in_dim)
