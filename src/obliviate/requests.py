"""Forget specs: parse a user's request and resolve it to a sorted array of stable example ids.

Specs (DESIGN.md): ``random:0.1`` (fraction), ``random:50`` (count), ``class:3`` / ``class:3,5``,
``ids:4,8,15`` / ``ids@file.txt``, ``target<=30`` / ``target>=2.5`` (also ``<`` and ``>``),
``subjects:3`` (text tasks), ``forget-file`` (the hf task's forget file). The same spec, task and seed always give the same ids.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from obliviate.errors import SpecError

_TARGET = re.compile(r"^target\s*(<=|>=|<|>)\s*(.+)$")
SPEC_HELP = ("random:0.1 | random:50 | class:3[,5] | ids:4,8,15 | ids@file.txt | target<=30 | target>=2.5 | "
             "subjects:3 | forget-file")


@dataclass(frozen=True)
class ForgetRequest:
    spec: str
    ids: np.ndarray  # sorted, unique, int64

    @property
    def n(self) -> int:
        return int(self.ids.size)

    @property
    def sha256(self) -> str:
        """Hash of the resolved ids: identifies the request without storing the ids themselves."""
        return ids_sha256(self.ids)

    def summary(self) -> dict:
        return {"spec": self.spec, "n": self.n, "sha256": self.sha256}


def ids_sha256(ids: np.ndarray) -> str:
    return hashlib.sha256(",".join(map(str, np.asarray(ids, dtype=np.int64).tolist())).encode()).hexdigest()


def _parse_ints(text: str, what: str) -> list[int]:
    items = [t for t in re.split(r"[\s,]+", text.strip()) if t]
    if not items:
        raise SpecError(f"{what}: no ids given")
    out = []
    for t in items:
        if not re.fullmatch(r"[+-]?\d+", t):
            raise SpecError(f"{what}: {t!r} is not an integer id")
        if len(t) > 18:  # beyond any training set, and beyond int64
            raise SpecError(f"{what}: id {t[:24]}… out of range")
        out.append(int(t))
    return out


def _parse_number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"bad forget spec {spec!r}: {text!r} is not a number") from None
    if not np.isfinite(value):
        raise SpecError(f"bad forget spec {spec!r}: {text!r} is not a finite number")
    return value


def resolve(spec: str, task, seed: int = 0) -> ForgetRequest:
    """Resolve ``spec`` against ``task`` (its training split) with ``seed`` for random specs."""
    check_seed(seed)
    spec = (spec or "").strip()
    if not spec:
        raise SpecError(f"empty forget spec; expected one of: {SPEC_HELP}")
    n = task.n_train
    kind = task.kind
    y = task.data.y_train
    if spec.startswith("ids@"):
        path = Path(spec[4:])
        if not path.is_file():
            raise SpecError(f"forget ids file not found: {path}")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"cannot read forget ids file {path}: {exc}") from None
        ids = np.array(_parse_ints(text, f"forget ids file {path}"), dtype=np.int64)
    elif spec.startswith("ids:"):
        ids = np.array(_parse_ints(spec[4:], f"bad forget spec {spec!r}"), dtype=np.int64)
    elif spec.startswith("random:"):
        ids = _random(spec, spec[7:], n, seed)
    elif spec.startswith("class:"):
        if kind != "classification":
            raise SpecError(f"forget spec {spec!r} needs a classification task; task {task.name!r} is {kind}")
        classes = _parse_ints(spec[6:], f"bad forget spec {spec!r}")
        n_classes = task.data.n_classes
        bad = [c for c in classes if not 0 <= c < n_classes]
        if bad:
            raise SpecError(f"forget spec {spec!r}: class {bad[0]} does not exist (classes are 0..{n_classes - 1})")
        ids = np.flatnonzero(np.isin(y, classes)).astype(np.int64)
    elif m := _TARGET.match(spec):
        if kind != "regression":
            raise SpecError(f"forget spec {spec!r} needs a regression task; task {task.name!r} is {kind} (use class:N)")
        op, value = m.group(1), _parse_number(m.group(2), spec)
        mask = {"<=": y <= value, ">=": y >= value, "<": y < value, ">": y > value}[op]
        ids = np.flatnonzero(mask).astype(np.int64)
    elif spec == "forget-file":
        if not hasattr(task, "resolve_forget_file"):
            raise SpecError(f"forget spec 'forget-file' needs a task with a forget file (hf); task {task.name!r} "
                            "has none")
        ids = np.asarray(task.resolve_forget_file(), dtype=np.int64)
    elif spec.startswith("subjects:"):
        subjects = getattr(task, "subjects", None)
        if subjects is None:
            raise SpecError(f"forget spec {spec!r} needs a text task with subjects; task {task.name!r} has none")
        ids = task.resolve_subjects(spec[9:], seed)
    else:
        raise SpecError(f"unknown forget spec {spec!r}; expected one of: {SPEC_HELP}")

    out_of_range = ids[(ids < 0) | (ids >= n)]
    if out_of_range.size:
        raise SpecError(f"forget spec {spec!r}: id {int(out_of_range[0])} out of range (training ids are 0..{n - 1})")
    ids = np.unique(ids)
    if ids.size == 0:
        raise SpecError(f"forget spec {spec!r} selects no training examples")
    if ids.size == n:
        raise SpecError(f"forget spec {spec!r} selects the whole training set ({n} examples); nothing would remain")
    return ForgetRequest(spec, ids)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SpecError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _random(spec: str, arg: str, n: int, seed: int) -> np.ndarray:
    arg = arg.strip()
    if re.fullmatch(r"\d+", arg):
        count = int(arg)
        if count >= n:
            raise SpecError(f"forget spec {spec!r}: asks for {count} of {n} training examples; nothing would remain")
    else:
        frac = _parse_number(arg, spec)
        if not 0 < frac < 1:
            raise SpecError(f"forget spec {spec!r}: a fraction must be in (0, 1), got {arg}")
        count = int(round(frac * n))
    if count == 0:
        raise SpecError(f"forget spec {spec!r} selects no training examples")
    rng = np.random.default_rng([seed, 0x0B11])
    return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)
