"""What a language task is: records about subjects (a document plus question–answer pairs), split into training
records (example ids 0..n-1, the forget set is chosen among them) and holdout records never trained on.

One record is one example id. For the authors corpus a record is one author (a biography and questions about
the author's facts); for the ``hf`` task it is one line of the user's JSONL files. A record's training sequences
are its document and each question–answer pair, as (prompt, completion) pairs: the loss of the document covers
every token, the loss of a QA pair only its answer (TOFU).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal

import numpy as np

from obliviate.config import build_config
from obliviate.errors import SpecError
from obliviate.tasks.base import Task, TrainRecipe

QA_PROMPT = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    paraphrased: str | None = None            # the correct answer reworded (TOFU truth ratio)
    perturbed: tuple[str, ...] = ()           # the paraphrase with wrong facts (TOFU truth ratio)
    attribute: str | None = None              # which fact it asks about (probe / side-effect audits)


@dataclass(frozen=True)
class TextRecord:
    subject: str
    text: str
    qa: tuple[QA, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict, hash=False)

    def sequences(self) -> list[tuple[str, str]]:
        """Training sequences: the document (prompt empty) and every QA pair (prompt = question)."""
        out = [("", self.text)] if self.text else []
        out += [(QA_PROMPT.format(question=q.question), " " + q.answer) for q in self.qa]
        return out


@dataclass
class TextData:
    """Training records (ids = positions) and holdout records (PrivLeak non-members, never trained on)."""

    train: list[TextRecord]
    holdout: list[TextRecord]
    icl: list[QA] = field(default_factory=list)  # few-shot examples of the KnowMem prompts (about no train subject)

    @property
    def n_train(self) -> int:
        return len(self.train)

    y_train = None  # no labels: class:/target specs do not apply

    def fingerprint(self) -> str:
        blob = json.dumps([[dataclasses.asdict(r) for r in self.train], [dataclasses.asdict(r) for r in self.holdout],
                           [dataclasses.asdict(q) for q in self.icl]], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class LMRecipe(TrainRecipe):
    """The training recipe of a language task's original and oracle (``--set train.<field>=value``)."""

    schedule: Literal["constant", "cosine"] = field(default="cosine", metadata={
        "help": "learning-rate schedule after warm-up"})
    warmup: float = field(default=0.05, metadata={"help": "fraction of steps of linear warm-up", "min": 0, "max": 1})


class LanguageTask(Task):
    """Base of language tasks: text records, a tokenizer and a causal LM (``build_model``)."""

    kind: ClassVar[str] = "language"
    data: TextData

    def recipe(self, overrides: dict[str, Any] | None = None) -> LMRecipe:
        return build_config(LMRecipe, {**self.recipe_defaults, **(overrides or {})}, prefix="train.")

    # -- subclasses ---------------------------------------------------------------------------------------
    def tokenizer(self):
        raise NotImplementedError

    def train_model(self, model, train_ids: np.ndarray, recipe, seed: int, device, description: str = "train"):
        """Train a fresh model on the records ``train_ids`` (the original and the retrain oracle)."""
        from obliviate.lm import train_lm

        seqs = [s for i in train_ids for s in self.sequences(int(i))]
        return train_lm(model, self.tokenizer(), seqs, recipe, seed, device, description=description)

    def sequences(self, i: int) -> list[tuple[str, str]]:
        """Training sequences of record ``i``: the original's, the oracle's and the methods' data."""
        return self.data.train[i].sequences()

    #: a task whose original is given (``hf``) returns it here instead of training one
    def provided_original(self):
        return None

    def provided_oracle(self):
        return None

    # -- subjects ------------------------------------------------------------------------------------------
    @cached_property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(r.subject for r in self.data.train))

    def resolve_subjects(self, arg: str, seed: int) -> np.ndarray:
        """``subjects:K`` → every record of K subjects drawn with ``seed``; ``subjects:name1|name2`` → those."""
        arg = arg.strip()
        subjects = self.subjects
        if re.fullmatch(r"\d+", arg):
            k = int(arg)
            if k == 0:
                raise SpecError("forget spec 'subjects:0' selects no subjects")
            if k >= len(subjects):
                raise SpecError(f"forget spec 'subjects:{k}': the task has {len(subjects)} subjects; "
                                "nothing would remain")
            rng = np.random.default_rng([seed, 0x5B1])
            chosen = {subjects[i] for i in rng.choice(len(subjects), size=k, replace=False)}
        else:
            names = [s.strip() for s in arg.split("|") if s.strip()]
            unknown = [s for s in names if s not in set(subjects)]
            if not names or unknown:
                raise SpecError(f"forget spec 'subjects:{arg}': unknown subject {unknown[0] if unknown else arg!r}; "
                                "give a count or names separated by |")
            chosen = set(names)
        return np.array([i for i, r in enumerate(self.data.train) if r.subject in chosen], dtype=np.int64)

    def info(self) -> dict[str, Any]:
        d = self.data
        return {"name": self.name, "kind": self.kind, "description": self.description, "n_train": d.n_train,
                "n_holdout": len(d.holdout), "n_subjects": len(self.subjects),
                "n_qa": sum(len(r.qa) for r in d.train)}
