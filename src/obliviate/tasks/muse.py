"""The ``muse`` task: MUSE (Shi et al., ICLR 2025, arXiv 2407.06460) read from its own layout, on a given model.

``--set data=DIR`` is one corpus directory of MUSE's data (``data/news`` or ``data/books`` of swj0419/muse_bench,
or the ``muse-bench/MUSE-*`` files), every part as published:

- ``raw/forget.txt``, ``raw/retain1.txt`` (``--set retain=retain1,retain2`` for more), ``raw/holdout.txt``: the
  corpora. A ``.txt`` file is one token stream cut into chunks as MUSE's ``DefaultDataset`` does (BOS + the next
  ``max_length`` − 2 tokens, the last chunk filled up with the stream's start; one token less than MUSE so the
  EOS obliviate appends fits); one chunk is one example id — the forget chunks first, then the retain ones; a
  chunk is kept as its decoded text (MUSE's ``strings``) and re-tokenised for training, which reproduces MUSE's
  token ids except, possibly, at the seam of the filled-up last chunk. A
  ``.json`` file (a list of strings or of ``{"text": …}``) gives one record per document, chunked only if
  longer than the context (never truncated). The ``forget-file`` spec (the default) selects the forget chunks.
- ``knowmem/forget_qa.json``, ``knowmem/retain_qa.json`` (``question``, ``answer``) and their few-shot
  ``*_icl.json``: KnowMem with MUSE's prompt (``Question: …\\nAnswer: `` with its trailing space, the
  ``muse`` template); Books has no KnowMem files in MUSE's code, and then KnowMem is not reported.
- ``verbmem/forget.json`` (``prompt``, ``gt``): VerbMem — greedy 128-token continuations against the ground
  truth cut to 128 tokens of ``tokenizer(gt)`` (special tokens included, so 127 text tokens with a BOS-adding
  tokenizer such as Llama's, 128 without: MUSE's own cut).
- ``privleak/forget.json``, ``privleak/retain.json``, ``privleak/holdout.json``: PrivLeak's Min-40 % attack
  (forget vs holdout) and the MIAs. Without ``--set oracle=DIR`` the reference AUC is MUSE's published retrain
  value (``constants.AUC_RETRAIN``: News 0.4772, Books 0.5393; ``--set corpus=news|books``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from obliviate.errors import ConfigError, ObliviateError
from obliviate.tasks import register_task
from obliviate.tasks.files import check_keys, field_str, read_json_any, read_rows
from obliviate.tasks.hf import GivenModelTask, LoadOptions
from obliviate.tasks.text import QA, TextData, TextRecord


@dataclass
class MUSEOptions(LoadOptions):
    model: str = field(default="", metadata={
        "help": "local HF causal LM directory trained on the corpus (MUSE's *_target; required)"})
    data: str = field(default="", metadata={
        "help": "MUSE corpus directory (raw/, knowmem/, verbmem/, privleak/ as published; required)"})
    corpus: Literal["news", "books"] = field(default="news", metadata={
        "help": "which MUSE corpus: sets the published retrain AUC used without an oracle"})
    oracle: str = field(default="", metadata={
        "help": "local directory of the model trained without the forget set (MUSE's *_retrain)"})
    retain: str = field(default="retain1", metadata={
        "help": "comma-separated raw retain files the methods may use (MUSE's regularisers use retain1)"})
    template: str = field(default="muse", metadata={
        "help": "prompt layout of KnowMem: muse (MUSE's exact prompt), plain, llama2, chat or a template file"})
    icl_shots: int = field(default=10, metadata={
        "help": "few-shot pairs from knowmem/*_icl.json (MUSE uses all of them: 10 on News)", "min": 0})
    max_length: int = field(default=0, metadata={
        "help": "tokens per chunk of the raw corpora and longest scored sequence (0 = the model's context; "
                "MUSE's unlearning uses 2048)", "min": 0})

    def validate(self) -> None:
        for key, what in (("model", "DIR (the MUSE target model)"), ("data", "DIR (a MUSE corpus directory)")):
            if not getattr(self, key):
                raise ConfigError(f"task muse needs --set {key}={what}")
        names = [s.strip() for s in self.retain.split(",")]
        if not all(names):
            raise ConfigError(f"retain: expected comma-separated raw file names (e.g. retain1,retain2), got "
                              f"{self.retain!r}")


def muse_chunks(tokenizer, text: str, max_len: int) -> list[str]:
    """A corpus as MUSE's ``DefaultDataset`` cuts a ``.txt`` file: the whole text tokenised (no special tokens),
    windows of ``max_len`` − 1 tokens (each trained after a BOS), the last window filled up with the stream's
    first tokens; decoded without special tokens (MUSE's ``self.strings``)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return []
    has_bos = tokenizer.bos_token_id is not None
    size = max_len - 1 if has_bos else max_len
    if size < 1:
        raise ConfigError(f"max_length {max_len} leaves no room for text in a chunk")
    windows = [ids[i:i + size] for i in range(0, len(ids), size)]
    if len(windows[-1]) < size:  # MUSE rotates: the last chunk is completed with the first tokens
        windows[-1] = (windows[-1] + ids)[:size]
    return [tokenizer.decode(w, skip_special_tokens=True) for w in windows]


def _texts(p: Path) -> tuple[list[str], str]:
    """The strings of a JSON list of strings or of ``{"text": …}`` objects (MUSE's json formats)."""
    doc, digest = read_json_any(p)
    if isinstance(doc, dict):
        raise ObliviateError(f"{p}: expected a list of strings or of {{\"text\": ...}} objects, got one object")
    out = []
    for n, item in enumerate(doc, start=1):
        where = f"{p} item {n}"
        if isinstance(item, dict):
            check_keys(item, {"text"}, where)
            out.append(field_str(item, "text", where))
        elif isinstance(item, str) and item.strip():
            out.append(item)
        else:
            raise ObliviateError(f"{where}: expected a non-empty string or {{\"text\": ...}}")
    if not out:
        raise ObliviateError(f"{p} has no texts")
    return out, digest


@register_task
class MUSE(GivenModelTask):
    name = "muse"
    description = ("MUSE from its own layout (--set data=DIR corpus=news|books) on your target model "
                   "(--set model=DIR; oracle=DIR optional): VerbMem, KnowMem, PrivLeak, MIAs")
    options_class = MUSEOptions
    path_options = ("model", "oracle", "data")
    default_template = "muse"
    mia_samples = "privleak"

    def _raw(self, root: Path, name: str, role: str, required: bool = True) -> list[TextRecord]:
        tok = self.tokenizer()
        txt, js = root / "raw" / f"{name}.txt", root / "raw" / f"{name}.json"
        if txt.is_file():
            blob = txt.read_bytes()
            try:
                text = blob.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ObliviateError(f"{txt} is not UTF-8 text (byte {exc.start})") from None
            self.file_sha256[f"raw/{name}"] = hashlib.sha256(blob).hexdigest()
            # one token of each chunk is left for the EOS obliviate appends to a trained document
            chunks = muse_chunks(tok, text, self.context - 1)
        elif js.is_file():
            chunks, self.file_sha256[f"raw/{name}"] = _texts(js)
        elif required:
            raise ObliviateError(f"MUSE data directory {root} has no raw/{name}.txt (nor raw/{name}.json)")
        else:
            return []
        if not chunks:
            raise ObliviateError(f"raw/{name} of {root} has no text")
        return [TextRecord(subject=f"{name}:{k}", text=c, train_qa=()) for k, c in enumerate(chunks)]

    def _qa(self, p: Path) -> list[QA]:
        rows, self.file_sha256[str(p.relative_to(Path(self.options.data).expanduser()))] = read_rows(p)
        out = []
        for n, row in enumerate(rows, start=1):
            where = f"{p} row {n}"
            check_keys(row, {"question", "answer"}, where)
            out.append(QA(question=field_str(row, "question", where), answer=field_str(row, "answer", where)))
        return out

    def load_data(self) -> TextData:
        o = self.options
        root = Path(o.data).expanduser()
        if not root.is_dir():
            raise ObliviateError(f"MUSE data directory not found: {root}")
        forget = self._raw(root, "forget", "forget")
        retain = [r for name in (s.strip() for s in o.retain.split(",")) for r in self._raw(root, name, "retain")]
        holdout = self._raw(root, "holdout", "holdout", required=False)
        qa_sets: dict[str, list[QA]] = {}
        qa_icl: dict[str, list[QA]] = {}
        for role in ("forget", "retain"):
            p = root / "knowmem" / f"{role}_qa.json"
            if p.is_file():
                qa_sets[role] = self._qa(p)
                icl = root / "knowmem" / f"{role}_qa_icl.json"
                if icl.is_file():
                    qa_icl[role] = self._qa(icl)
        verbmem: list[tuple[str, str]] = []
        vp = root / "verbmem" / "forget.json"
        if vp.is_file():
            rows, self.file_sha256["verbmem/forget"] = read_rows(vp)
            for n, row in enumerate(rows, start=1):
                where = f"{vp} row {n}"
                check_keys(row, {"prompt", "gt"}, where)
                verbmem.append((field_str(row, "prompt", where), field_str(row, "gt", where)))
        privleak: dict[str, list[str]] = {}
        for split in ("forget", "retain", "holdout"):
            p = root / "privleak" / f"{split}.json"
            if p.is_file():
                privleak[split], self.file_sha256[f"privleak/{split}"] = _texts(p)
        if privleak and not {"forget", "holdout"} <= set(privleak):
            raise ObliviateError(f"{root / 'privleak'}: PrivLeak needs both forget.json and holdout.json")
        self.forget_ids = np.arange(len(forget), dtype=np.int64)
        return TextData(train=forget + retain, holdout=holdout, qa_sets=qa_sets, qa_icl=qa_icl, verbmem=verbmem,
                        privleak=privleak)

    @property
    def reference_auc(self) -> float:
        """MUSE's published AUC of the retrained model on ``forget_holdout_Min-40%`` (constants.AUC_RETRAIN)."""
        from obliviate.metrics.muse import AUC_RETRAIN

        return AUC_RETRAIN["News" if self.options.corpus == "news" else "Books"]["forget_holdout_Min-40%"]

    def info(self) -> dict[str, Any]:
        d = self.data
        return {**super().info(), "corpus": self.options.corpus, "n_chunks_forget": len(self.forget_ids),
                "n_knowmem_forget": len(d.qa_sets.get("forget", [])), "n_knowmem_retain": len(d.qa_sets.get("retain", [])),
                "n_verbmem": len(d.verbmem), "privleak_splits": sorted(d.privleak)}


__all__ = ["MUSE", "MUSEOptions", "muse_chunks"]
