"""The ``tofu`` task: TOFU (Maini et al. 2024, arXiv 2401.06121) read from its own files, on a given model.

``--set data=DIR`` holds the files of the ``locuslab/TOFU`` dataset as published — each a JSON array, JSON lines,
parquet, or a ``datasets.save_to_disk`` directory of the same name:

- ``forgetXX`` (``XX`` = 01 | 05 | 10, ``--set split=forget10``) and ``retainYY`` (YY = 100 − XX): the QA pairs
  (``question``, ``answer``) the model was fine-tuned on. TOFU defines an author as a block of 20 consecutive
  questions (``author_size``); one author is one example id: the retain authors first (ids 0…), then the
  forget authors, in file order, as in TOFU's ``full`` split. The ``forget-file`` spec (the default) selects the
  forget authors. TOFU trains on QA pairs, so an author's 20 pairs are the methods' training data.
- ``forgetXX_perturbed`` (``paraphrased_answer``, ``perturbed_answer``; matched to the forget questions) and
  ``retain_perturbed`` (matched to the retain questions): the pairs the forget / retain metrics score;
  ``real_authors_perturbed`` and ``world_facts_perturbed``: the other two utility sets (truth ratio against the
  answer itself, probability normalised over the options, as TOFU's ``aggregate_eval_stat.py`` does).
- ``holdoutXX`` (optional): QA pairs never trained on, the non-members of the MIAs and PrivLeak.

``--set model=DIR`` is the fine-tuned target; ``--set oracle=DIR`` the model fine-tuned on ``retainYY`` only
(forget quality is the KS test of the two truth-ratio distributions), or ``--set retain_logs=FILE`` its
per-question truth ratios from an earlier evaluation: OpenUnlearning's ``TOFU_EVAL.json`` (``forget_truth_ratio``
→ ``value_by_index``) or TOFU's ``eval_log_forget.json`` (``avg_paraphrased_loss``, ``average_perturb_loss``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from obliviate.errors import ConfigError, ObliviateError
from obliviate.tasks import register_task
from obliviate.tasks.files import check_keys, field_str, field_strings, find_table, read_json_any, read_rows
from obliviate.tasks.hf import GivenModelTask, LoadOptions
from obliviate.tasks.text import QA, TextData, TextRecord

SPLITS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
#: every field of TOFU's files (locuslab/TOFU); other keys are refused
TOFU_KEYS = {"question", "answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer",
             "perturbed_question", "option1", "option2", "option3", "option4"}


@dataclass
class TOFUOptions(LoadOptions):
    model: str = field(default="", metadata={
        "help": "local HF causal LM directory fine-tuned on TOFU's full split (the target; required)"})
    data: str = field(default="", metadata={
        "help": "directory of TOFU's files as published (forget10.json, retain90.json, *_perturbed.json, …; "
                "JSON, JSON lines, parquet or save_to_disk copies; required)"})
    split: Literal["forget01", "forget05", "forget10"] = field(default="forget10", metadata={
        "help": "the forget split; its complement retainYY is the retain set"})
    oracle: str = field(default="", metadata={
        "help": "local directory of the model fine-tuned on the retain split only (TOFU's retain model)"})
    retain_logs: str = field(default="", metadata={
        "help": "the retain model's evaluation JSON (OpenUnlearning TOFU_EVAL.json or TOFU eval_log_forget.json): "
                "forget quality without an oracle directory"})
    template: str = field(default="plain", metadata={
        "help": "prompt layout: plain, llama2 (TOFU's [INST] … [/INST]), chat (the tokenizer's chat template, as "
                "OpenUnlearning) or a JSON template file (TOFU's question_start_tag / question_end_tag / "
                "answer_tag accepted)"})
    author_size: int = field(default=20, metadata={"help": "questions per author (TOFU: 20)", "min": 1})
    rouge_new_tokens: int = field(default=200, metadata={
        "help": "greedy tokens generated per question for ROUGE (OpenUnlearning: 200)", "min": 1})
    max_length: int = field(default=0, metadata={
        "help": "longest sequence in tokens (0 = the model's context length)", "min": 0})
    icl_shots: int = field(default=0, metadata={"help": "few-shot pairs in KnowMem prompts (TOFU: none)",
                                                "min": 0})

    def validate(self) -> None:
        for key, what in (("model", "DIR (the fine-tuned TOFU model)"), ("data", "DIR (TOFU's files)")):
            if not getattr(self, key):
                raise ConfigError(f"task tofu needs --set {key}={what}")
        if self.oracle and self.retain_logs:
            raise ConfigError("task tofu: give --set oracle=DIR or --set retain_logs=FILE, not both")


def _table(root: Path, stem: str, required: bool = True) -> Path | None:
    p = find_table(root, stem)
    if p is None and required:
        raise ObliviateError(f"TOFU data directory {root} has no {stem} file ({stem}.json, .jsonl, .parquet "
                             "or a save_to_disk directory)")
    return p


def _qa_rows(p: Path) -> tuple[list[tuple[str, dict]], str]:
    rows, digest = read_rows(p)
    out = []
    for n, row in enumerate(rows, start=1):
        where = f"{p} row {n}"
        check_keys(row, TOFU_KEYS, where)
        field_str(row, "question", where)
        field_str(row, "answer", where)
        out.append((where, row))
    return out, digest


def _perturbed_qa(where: str, row: dict, paraphrase_is_answer: bool = False) -> QA:
    answer = field_str(row, "answer", where)
    para = field_str(row, "paraphrased_answer", where, required=not paraphrase_is_answer)
    perturbed = field_strings(row, "perturbed_answer", where)
    if not perturbed:
        raise ObliviateError(f"{where}: missing \"perturbed_answer\" (a list of wrong answers)")
    # real authors / world facts: TOFU's truth ratio compares the answer itself with the wrong options
    return QA(question=row["question"], answer=answer, paraphrased=answer if paraphrase_is_answer else para,
              perturbed=perturbed)


def retain_log_truth_ratios(path: str) -> np.ndarray:
    """The retain model's forget-set truth ratios (OpenUnlearning convention p_wrong / p_correct) from its logs."""
    p = Path(path)
    if not p.is_file():
        raise ObliviateError(f"retain_logs file not found: {p}")
    doc, _ = read_json_any(p)
    if not isinstance(doc, dict):
        raise ObliviateError(f"retain_logs {p}: expected a JSON object (TOFU_EVAL.json or eval_log_forget.json)")
    try:
        if "forget_truth_ratio" in doc:  # OpenUnlearning: {"forget_truth_ratio": {"value_by_index": {i: {"score"}}}}
            by_index = doc["forget_truth_ratio"]["value_by_index"]
            values = [v["score"] for v in by_index.values() if v is not None and v.get("score") is not None]
            tr = np.asarray(values, dtype=np.float64)
        elif "avg_paraphrased_loss" in doc:  # TOFU: per-index losses, TR = exp(para − mean(perturbed))
            para = doc["avg_paraphrased_loss"]
            pert = doc["average_perturb_loss"]
            keys = sorted(para, key=lambda k: int(k))
            tr = np.exp(np.array([para[k] for k in keys], dtype=np.float64)
                        - np.array([np.mean(pert[k]) for k in keys], dtype=np.float64))
        else:
            raise KeyError("forget_truth_ratio")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ObliviateError(f"retain_logs {p}: no per-question forget truth ratios ({exc!s}); expected "
                             "OpenUnlearning's forget_truth_ratio.value_by_index or TOFU's "
                             "avg_paraphrased_loss / average_perturb_loss") from None
    if tr.size == 0 or not np.isfinite(tr).all() or (tr < 0).any():
        raise ObliviateError(f"retain_logs {p}: the forget truth ratios are empty or not finite non-negative numbers")
    return tr


@register_task
class TOFU(GivenModelTask):
    name = "tofu"
    description = ("TOFU from its own files (--set data=DIR split=forget10) on your fine-tuned model "
                   "(--set model=DIR; oracle=DIR or retain_logs=FILE optional): forget quality, 9-part model utility")
    options_class = TOFUOptions
    path_options = ("model", "oracle", "data", "retain_logs")
    #: the metrics whose sets this task supplies (besides the records' QA)
    mia_samples = "qa"

    def _authors(self, rows: list[tuple[str, dict]], p: Path, first: int) -> list[TextRecord]:
        k = self.options.author_size
        if len(rows) % k:
            raise ObliviateError(f"{p} has {len(rows)} questions, not a multiple of {k}: TOFU defines an author as "
                                 f"{k} consecutive questions (--set author_size=N for another block size)")
        out = []
        for a in range(len(rows) // k):
            block = tuple(QA(question=r["question"], answer=r["answer"]) for _, r in rows[a * k:(a + 1) * k])
            out.append(TextRecord(subject=f"author {first + a}", text="", qa=(), train_qa=block))
        return out

    def _attach(self, records: list[TextRecord], path: Path, role: str) -> list[TextRecord]:
        """The scored (perturbed) pairs of ``path`` joined to the record whose trained questions contain them."""
        rows, self.file_sha256[role] = _qa_rows(path)
        where_is = {q.question: i for i, r in enumerate(records) for q in r.train_qa}
        attached: list[list[QA]] = [[] for _ in records]
        for where, row in rows:
            i = where_is.get(row["question"])
            if i is None:
                raise ObliviateError(f"{where}: question {row['question'][:60]!r} is in no author of the "
                                     f"{role.split('_')[0]} split")
            attached[i].append(_perturbed_qa(where, row))
        return [TextRecord(r.subject, r.text, tuple(q), r.attributes, r.train_qa) for r, q in zip(records, attached)]

    def load_data(self) -> TextData:
        o = self.options
        root = Path(o.data).expanduser()
        if not root.is_dir():
            raise ObliviateError(f"TOFU data directory not found: {root}")
        forget_name, retain_name = o.split, SPLITS[o.split]
        forget_path, retain_path = _table(root, forget_name), _table(root, retain_name)
        forget_rows, self.file_sha256["forget"] = _qa_rows(forget_path)
        retain_rows, self.file_sha256["retain"] = _qa_rows(retain_path)
        retain = self._authors(retain_rows, retain_path, 0)
        forget = self._authors(forget_rows, forget_path, len(retain))
        forget = self._attach(forget, _table(root, f"{forget_name}_perturbed"), "forget_perturbed")
        retain = self._attach(retain, _table(root, "retain_perturbed"), "retain_perturbed")
        qa_sets: dict[str, list[QA]] = {}
        for role in ("real_authors", "world_facts"):
            rows, self.file_sha256[role] = _qa_rows(_table(root, f"{role}_perturbed"))
            qa_sets[role] = [_perturbed_qa(w, r, paraphrase_is_answer=True) for w, r in rows]
        holdout_path = _table(root, f"holdout{forget_name[-2:]}", required=False)
        if holdout_path is not None:
            rows, self.file_sha256["holdout"] = _qa_rows(holdout_path)
            qa_sets["holdout"] = [QA(question=r["question"], answer=r["answer"]) for _, r in rows]
        self.retain_log_tr = None
        if o.retain_logs:
            self.retain_log_tr = retain_log_truth_ratios(o.retain_logs)
            self.file_sha256["retain_logs"] = hashlib.sha256(Path(o.retain_logs).read_bytes()).hexdigest()
        self.forget_ids = np.arange(len(retain), len(retain) + len(forget), dtype=np.int64)
        return TextData(train=retain + forget, holdout=[], qa_sets=qa_sets)

    def info(self) -> dict[str, Any]:
        sets = self.data.qa_sets
        return {**super().info(), "split": self.options.split, "n_authors": self.data.n_train,
                "n_real_authors": len(sets.get("real_authors", [])), "n_world_facts": len(sets.get("world_facts", [])),
                "n_holdout_qa": len(sets.get("holdout", [])),
                "forget_quality_reference": ("oracle" if self.oracle_dir is not None else
                                             "retain_logs" if self.retain_log_tr is not None else None)}


__all__ = ["TOFU", "TOFUOptions", "retain_log_truth_ratios"]
