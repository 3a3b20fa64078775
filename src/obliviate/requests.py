"""Forget specs: parse a user's request and resolve it to a sorted array of stable example ids.

Specs (README, "Forget specs"): ``random:0.1`` (fraction), ``random:50`` (count), ``class:3`` / ``class:3,5`` /
``class:malignant`` (a class index, or its name),
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
# ASCII digits only: Python's \d and float() also accept full-width and Arabic-Indic digits, which a forget request
# in a ledger must not (the same id would have several spellings)
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_ECHO = 80  # characters of a bad spec quoted back in an error


def _q(text: str) -> str:
    """``text`` quoted for an error line, cut to its first characters (a 10 MB spec is not echoed whole)."""
    text = str(text)
    return repr(text) if len(text) <= _ECHO else repr(text[:_ECHO]) + f"… ({len(text):,} characters)"
SPEC_HELP = ("random:0.1 | random:50 | class:3[,5] | class:NAME | ids:4,8,15 | ids@file.txt | target<=30 | target>=2.5 | "
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
        if not _INT.fullmatch(t):
            raise SpecError(f"{what}: {_q(t)} is not an integer id (ASCII digits 0-9)")
        if len(t) > 18:  # beyond any training set, and beyond int64
            raise SpecError(f"{what}: id {t[:24]}… out of range")
        out.append(int(t))
    return out


def _ids(text: str, what: str, task) -> np.ndarray:
    """Training ids of ``ids:`` / ``ids@``: positions, or the keys of a csv task's ``id_column``."""
    if getattr(getattr(task, "options", None), "id_column", ""):
        keys = [t for t in re.split(r"[\s,]+", text.strip()) if t]
        if not keys:
            raise SpecError(f"{what}: no ids given")
        return task.resolve_keys(keys)
    return np.array(_parse_ints(text, what), dtype=np.int64)


def _parse_classes(text: str, names: list[str], spec: str) -> list[int]:
    """Class indices of ``class:`` — an ASCII integer is an index (README, "Forget specs"), anything else a class name
    (``class:malignant``; exact, else case-insensitive when that is unambiguous)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise SpecError(f"bad forget spec {_q(spec)}: no class given")
    out = []
    for t in items:
        if _INT.fullmatch(t):
            out.append(int(t) if len(t) <= 18 else -1)
            continue
        folded = [i for i, name in enumerate(names) if name.casefold() == t.casefold()]
        exact = [i for i, name in enumerate(names) if name == t]
        match = exact or (folded if len(folded) == 1 else [])
        if not match:
            shown = ", ".join(names[:12]) + (f", … ({len(names)} classes)" if len(names) > 12 else "")
            raise SpecError(f"forget spec {_q(spec)}: no class named {_q(t)}; classes: {shown or 'none'}")
        out.append(match[0])
    return out


def _parse_number(text: str, spec: str) -> float:
    if not _NUMBER.fullmatch(text.strip()):
        finite = "finite " if text.strip().lstrip("+-").lower() in ("inf", "infinity", "nan") else ""
        raise SpecError(f"bad forget spec {_q(spec)}: {_q(text)} is not a {finite}number (ASCII digits, e.g. 0.1)")
    value = float(text)
    if not np.isfinite(value):
        raise SpecError(f"bad forget spec {_q(spec)}: {_q(text)} is not a finite number")
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
        ids = _ids(text, f"forget ids file {path}", task)
    elif spec.startswith("ids:"):
        ids = _ids(spec[4:], f"bad forget spec {_q(spec)}", task)
    elif spec.startswith("random:"):
        ids = _random(spec, spec[7:], n, seed)
    elif spec.startswith("class:"):
        if kind != "classification":
            raise SpecError(f"forget spec {_q(spec)} needs a classification task; task {task.name!r} is {kind}")
        classes = _parse_classes(spec[6:], task.data.class_names or [], spec)
        n_classes = task.data.n_classes
        bad = [c for c in classes if not 0 <= c < n_classes]
        if bad:
            raise SpecError(f"forget spec {_q(spec)}: class {bad[0]} does not exist (classes are 0..{n_classes - 1})")
        ids = np.flatnonzero(np.isin(y, classes)).astype(np.int64)
    elif m := _TARGET.match(spec):
        if kind != "regression":
            raise SpecError(f"forget spec {_q(spec)} needs a regression task; task {task.name!r} is {kind} (use class:N)")
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
            raise SpecError(f"forget spec {_q(spec)} needs a text task with subjects; task {task.name!r} has none")
        ids = task.resolve_subjects(spec[9:], seed)
    else:
        raise SpecError(f"unknown forget spec {_q(spec)}; expected one of: {SPEC_HELP}")

    out_of_range = ids[(ids < 0) | (ids >= n)]
    if out_of_range.size:
        raise SpecError(f"forget spec {_q(spec)}: id {int(out_of_range[0])} out of range (training ids are 0..{n - 1})")
    ids = np.unique(ids)
    if ids.size == 0:
        raise SpecError(f"forget spec {_q(spec)} selects no training examples")
    if ids.size == n:
        raise SpecError(f"forget spec {_q(spec)} selects the whole training set ({n} examples); nothing would remain")
    return ForgetRequest(spec, ids)


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SpecError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _random(spec: str, arg: str, n: int, seed: int) -> np.ndarray:
    arg = arg.strip()
    if _INT.fullmatch(arg) and not arg.startswith(("+", "-")):
        count = int(arg)
        if count >= n:
            raise SpecError(f"forget spec {_q(spec)}: asks for {count} of {n} training examples; nothing would remain")
    else:
        frac = _parse_number(arg, spec)
        if not 0 < frac < 1:
            raise SpecError(f"forget spec {_q(spec)}: a fraction must be in (0, 1), got {arg}")
        count = int(round(frac * n))
    if count == 0:
        raise SpecError(f"forget spec {_q(spec)} selects no training examples")
    rng = np.random.default_rng([seed, 0x0B11])
    return np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)
