"""What a task is: its data with stable example ids, its model factory and its training recipe."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from obliviate.config import Validated, build_config

TaskKind = Literal["classification", "regression", "language"]


@dataclass
class TrainRecipe(Validated):
    """The training recipe shared by the original model, the retrain oracle and ``retrain``.

    Overridable with ``--set train.<field>=value``; any change gives a different cache key.
    """

    epochs: int = field(default=30, metadata={"help": "passes over the training data", "min": 1})
    lr: float = field(default=1e-3, metadata={"help": "learning rate", "gt": 0})
    batch_size: int = field(default=64, metadata={"help": "mini-batch size", "min": 1})
    optimizer: Literal["adam", "sgd"] = field(default="adam", metadata={"help": "adam or sgd"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay", "min": 0})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum", "min": 0, "max": 1})
    grad_restriction: float = field(default=0.0, metadata={
        "help": "IAU gradient restriction alpha: train on loss + alpha*||grad loss|| (0 = off; official 0.005)",
        "min": 0})
    grad_restriction_norm: Literal["per_tensor", "global"] = field(default="per_tensor", metadata={
        "help": "per_tensor: sum of per-tensor L2 norms (IAU code); global: one L2 norm over all (IAU README)"})


@dataclass
class TabularData:
    """Arrays of one task. Example ids are row positions in ``x_train``: 0..n_train-1, stable per task."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str] = field(default_factory=list)
    class_names: list[str] | None = None

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
            a = np.ascontiguousarray(arr)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        return h.hexdigest()


class Task:
    """Base class of every task. Subclasses set the class attributes and implement ``load``/``build_model``.

    ``options_class`` is a dataclass of the task's own ``--set`` keys (e.g. ``data``, ``target``, ``model``).
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind]
    description: ClassVar[str] = ""
    options_class: ClassVar[type]
    recipe_defaults: ClassVar[dict[str, Any]] = {}
    #: the forget spec used when none is given
    default_forget: ClassVar[str] = "random:0.1"
    #: per-method config values suited to the task's model (e.g. a learning rate for a tiny net), applied
    #: before the user's ``--set`` values and recorded in the report's ``config``
    method_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, options: Any | None = None, **overrides: Any):
        self.options = options if options is not None else build_config(self.options_class, overrides)
        self.data: TabularData = self.load()

    # -- subclasses -------------------------------------------------------------------------------
    def load(self) -> TabularData:
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------
    def make_model(self, seed: int) -> torch.nn.Module:
        """A freshly initialised model; the same seed always gives the same initial weights."""
        torch.manual_seed(seed)
        return self.build_model()

    def recipe(self, overrides: dict[str, Any] | None = None) -> TrainRecipe:
        return build_config(TrainRecipe, {**self.recipe_defaults, **(overrides or {})}, prefix="train.")

    @property
    def n_train(self) -> int:
        return self.data.n_train

    def fingerprint(self) -> str:
        """Hash of the data and of every option that shapes data or model (cache key component)."""
        opts = dataclasses.asdict(self.options)
        return hashlib.sha256(f"{self.name}|{sorted(opts.items())}|{self.data.fingerprint()}".encode()).hexdigest()

    def info(self) -> dict[str, Any]:
        d = self.data
        out = {"name": self.name, "kind": self.kind, "description": self.description,
               "n_train": d.n_train, "n_test": int(d.x_test.shape[0]), "n_features": int(d.x_train.shape[1])}
        if d.class_names is not None:
            out["n_classes"] = d.n_classes
        return out
