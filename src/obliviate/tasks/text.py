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
from obliviate.errors import ConfigError, SpecError
from obliviate.lm import QA_PROMPT  # the prompt layout, defined below the tasks (the tiny tokenizer uses it)
from obliviate.tasks.base import Task, TrainRecipe


@dataclass(frozen=True)
class PromptTemplate:
    """How a question becomes a prompt and an answer its completion, for training and scoring alike.

    ``prompt`` holds ``{question}``, ``answer`` holds ``{answer}``; ``chat`` renders the question as one user turn
    with the tokenizer's ``apply_chat_template`` (``add_generation_prompt=True``) and the answer as is. Built-ins:
    ``plain`` (``Question: …\nAnswer:`` + `` answer``, obliviate's layout), ``muse`` (MUSE's KnowMem layout,
    ``Question: …\nAnswer: `` with its trailing space + ``answer``), ``llama2`` (TOFU's Llama-2 layout,
    ``[INST] … [/INST]`` + ``answer``, locuslab/tofu ``config/model_config.yaml``) and ``chat``.
    """

    name: str
    prompt: str = QA_PROMPT
    answer: str = " {answer}"
    chat: bool = False

    def render_prompt(self, question: str, tokenizer=None) -> str:
        if not self.chat:
            return self.prompt.replace("{question}", question)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError("template=chat: the model's tokenizer has no chat template "
                              "(tokenizer_config.json \"chat_template\"); use template=plain or a template file")
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        bos = tokenizer.bos_token
        if bos and text.startswith(bos):  # obliviate.lm prepends the BOS id itself
            text = text[len(bos):]
        return text

    def render_answer(self, answer: str) -> str:
        return self.answer.replace("{answer}", answer)

    def pair(self, question: str, answer: str, tokenizer=None) -> tuple[str, str]:
        """The (prompt, completion) training / scoring pair of a QA pair."""
        return self.render_prompt(question, tokenizer), self.render_answer(answer)


TEMPLATES = {
    "plain": PromptTemplate("plain"),
    "muse": PromptTemplate("muse", prompt="Question: {question}\nAnswer: ", answer="{answer}"),
    "llama2": PromptTemplate("llama2", prompt="[INST] {question} [/INST]", answer="{answer}"),
    "chat": PromptTemplate("chat", prompt="", answer="{answer}", chat=True),
}
#: keys of a template file: obliviate's own, or TOFU's model_config entry (question_start_tag, …)
_TEMPLATE_KEYS = {"prompt", "answer", "question_start_tag", "question_end_tag", "answer_tag"}


def load_template(spec: str) -> PromptTemplate:
    """``plain`` | ``muse`` | ``llama2`` | ``chat`` | a JSON file: ``{"prompt": "…{question}…", "answer":
    "…{answer}…"}`` (``answer`` defaults to ``" {answer}"``), or TOFU's model-config keys
    ``{"question_start_tag": "[INST] ", "question_end_tag": " [/INST]", "answer_tag": ""}``.

    >>> load_template("llama2").pair("Who?", "Ada")
    ('[INST] Who? [/INST]', 'Ada')
    """
    from pathlib import Path

    spec = (spec or "plain").strip()
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    p = Path(spec)
    if not p.is_file():
        raise ConfigError(f"template: {spec!r} is neither one of {', '.join(TEMPLATES)} nor a template file")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"template file {p}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"template file {p}: expected a JSON object with \"prompt\" (and \"answer\")")
    unknown = sorted(set(raw) - _TEMPLATE_KEYS)
    if unknown:
        raise ConfigError(f"template file {p}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_TEMPLATE_KEYS))}")
    if not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError(f"template file {p}: every value must be a string")
    if "prompt" in raw:
        prompt, answer = raw["prompt"], raw.get("answer", " {answer}")
    else:
        prompt = raw.get("question_start_tag", "") + "{question}" + raw.get("question_end_tag", "")
        answer = raw.get("answer_tag", "") + "{answer}"
    if "{question}" not in prompt:
        raise ConfigError(f"template file {p}: the prompt has no {{question}} placeholder")
    if "{answer}" not in answer:
        raise ConfigError(f"template file {p}: the answer has no {{answer}} placeholder")
    return PromptTemplate(f"file:{p.name}", prompt=prompt, answer=answer)


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    paraphrased: str | None = None            # the correct answer reworded (TOFU truth ratio)
    perturbed: tuple[str, ...] = ()           # the paraphrase with wrong facts (TOFU truth ratio)
    attribute: str | None = None              # which fact it asks about (probe / side-effect audits)


@dataclass(frozen=True)
class TextRecord:
    """One example id: a document and QA pairs about its subject.

    ``qa`` are the pairs the metrics score; ``train_qa`` the pairs trained on, when they differ: ``None`` = the
    same as ``qa`` (authors corpus), ``()`` = QA pairs are evaluation only (``hf``, MUSE), or TOFU's 20 pairs of
    an author while ``qa`` holds the ones its ``*_perturbed`` files evaluate.
    """

    subject: str
    text: str
    qa: tuple[QA, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict, hash=False)
    train_qa: tuple[QA, ...] | None = None

    def sequences(self, template: "PromptTemplate | None" = None, tokenizer=None) -> list[tuple[str, str]]:
        """Training sequences: the document (prompt empty) and every trained QA pair (prompt = the question in
        ``template``'s layout, plain by default)."""
        t = template or TEMPLATES["plain"]
        out = [("", self.text)] if self.text else []
        trained = self.qa if self.train_qa is None else self.train_qa
        out += [t.pair(q.question, q.answer, tokenizer) for q in trained]
        return out


@dataclass
class TextData:
    """Training records (ids = positions) and holdout records (PrivLeak non-members, never trained on)."""

    train: list[TextRecord]
    holdout: list[TextRecord]
    icl: list[QA] = field(default_factory=list)  # few-shot examples of the KnowMem prompts (about no train subject)
    #: evaluation QA sets not tied to records: MUSE's knowmem ``forget`` / ``retain`` (replacing the records' QA
    #: for those metrics), TOFU's ``real_authors`` / ``world_facts``; each a list of QA
    qa_sets: dict[str, list[QA]] = field(default_factory=dict)
    #: few-shot examples per QA set (MUSE's ``*_icl.json``); a set without one uses ``icl``
    qa_icl: dict[str, list[QA]] = field(default_factory=dict)
    #: VerbMem (prompt, ground truth) pairs (MUSE's ``verbmem/forget.json``); empty = prefixes of forget documents
    verbmem: list[tuple[str, str]] = field(default_factory=list)
    #: MIA / PrivLeak texts per split (MUSE's ``privleak/{forget,retain,holdout}.json``); empty = forget records'
    #: documents vs ``holdout``
    privleak: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.train)

    y_train = None  # no labels: class:/target specs do not apply

    def fingerprint(self) -> str:
        extra = {"qa_sets": {k: [dataclasses.asdict(q) for q in v] for k, v in self.qa_sets.items()},
                 "qa_icl": {k: [dataclasses.asdict(q) for q in v] for k, v in self.qa_icl.items()},
                 "verbmem": self.verbmem, "privleak": self.privleak}
        blob = json.dumps([[dataclasses.asdict(r) for r in self.train], [dataclasses.asdict(r) for r in self.holdout],
                           [dataclasses.asdict(q) for q in self.icl]]
                          + ([extra] if any(map(bool, extra.values())) else []),
                          sort_keys=True)
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

    #: how QA pairs become (prompt, completion) pairs; a task with a ``template`` option loads it from there
    @cached_property
    def template(self) -> PromptTemplate:
        return load_template(getattr(self.options, "template", "") or self.default_template)

    default_template: ClassVar[str] = "plain"

    def sequences(self, i: int) -> list[tuple[str, str]]:
        """Training sequences of record ``i``: the original's, the oracle's and the methods' data."""
        t = self.template
        return self.data.train[i].sequences(t, self.tokenizer() if t.chat else None)

    def qa_pair(self, question: str, answer: str) -> tuple[str, str]:
        """A QA pair as (prompt, completion) in the task's template: what is scored and trained."""
        t = self.template
        return t.pair(question, answer, self.tokenizer() if t.chat else None)

    def qa_prompt(self, question: str) -> str:
        t = self.template
        return t.render_prompt(question, self.tokenizer() if t.chat else None)

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
