"""Content filter against in-context re-introduction of forgotten content (UnUnlearning, Shumailov et al. 2024, arXiv 2407.00106).

A prompt is split into sentences (and lines). A sentence of at least ``min_words`` words is flagged when

* n-gram overlap: at least ``tau_ngram`` of its word ``ngram``-grams are *distinctive* n-grams of a forget record
  — n-grams of the record's text or answers that no retain record contains (so a retain passage written on the
  same template as a forget one shares none) — or
* semantic similarity: its SBERT cosine with a sentence of a forget record's text exceeds ``tau_semantic``.

A flagged prompt is then, per ``action``: ``refuse`` — nothing is generated (EOS at once); ``redact`` — the flagged
sentences are removed from the prompt before generating; ``guard`` — decoding runs under GUARD's restriction of the
matched record's key phrases (§25.2). Unflagged prompts decode bit for bit as the model alone.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch

from obliviate.config import as_dict
from obliviate.errors import ObliviateError
from obliviate.guard.config import FilterConfig
from obliviate.guard.core import GenerationWrapper, row_ids
from obliviate.guard.embedder import load_embedder
from obliviate.guard.phrases import PhraseBank, as_record, ngrams, sentences, words

_SPLIT_KEEP = re.compile(r"(?<=[.!?])[\"”']?\s+|\n+")


def _spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences/lines of ``text`` (separators excluded)."""
    out, pos = [], 0
    for m in _SPLIT_KEEP.finditer(text):
        if m.start() > pos:
            out.append((pos, m.start()))
        pos = m.end()
    if pos < len(text):
        out.append((pos, len(text)))
    return [(a, b) for a, b in out if text[a:b].strip()]


class InContextFilter:
    """``check(prompt)`` flags prompts that re-introduce forget records; ``wrap(model)`` filters generation.

    ``forget_records``: TextRecords (or documents); ``retain_records``: records whose n-grams are not
    distinctive; ``guard``: a :class:`~obliviate.guard.core.Guard` built on the same forget records whose phrase
    bank and embedder are reused (without one, ``action=guard`` builds a phrase bank from this config — no
    detector is needed: the filter has matched the record)."""

    def __init__(self, tokenizer, forget_records: Sequence, config: FilterConfig | None = None, guard=None,
                 retain_records: Sequence = (), embedder=None, device: str | torch.device = "cpu"):
        self.config = cfg = config if config is not None else FilterConfig()
        self.tokenizer, self.guard = tokenizer, guard
        self.forget = [as_record(r) for r in (forget_records or [])]
        self.retain = [as_record(r) for r in (retain_records or [])]
        if not self.forget:
            raise ObliviateError("the in-context filter needs at least one forget record (the forget set is empty)")
        self.embedder = (embedder if embedder is not None else guard.embedder if guard is not None
                         else load_embedder(cfg.embedder, device))
        n = cfg.ngram
        common = set()
        for r in self.retain:
            for part in [r.text, *(q.answer for q in r.qa)]:
                common |= set(ngrams([w.lower() for w in words(part)], n))
        self._grams = []
        for r in self.forget:
            mine = set()
            for part in [r.text, *(q.answer for q in r.qa)]:
                mine |= set(ngrams([w.lower() for w in words(part)], n))
            self._grams.append(mine - common)
        keys = [(i, s) for i, r in enumerate(self.forget) for s in sentences(r.text)]
        self._key_owner = np.array([i for i, _ in keys], dtype=np.int64)
        self._key_emb = self.embedder.encode([s for _, s in keys]) if keys else torch.zeros(0, 1)
        if guard is not None and [r.text for r in guard.forget] != [r.text for r in self.forget]:
            raise ObliviateError("the filter's guard must be built on the same forget records, in the same order")
        self._bank = guard.bank if guard is not None else None
        self.stats: dict[str, Any] = {"action": cfg.action, "config": as_dict(cfg), "calls": 0, "rows": 0,
                                      "flagged": 0, "warnings": 0}

    @property
    def bank(self) -> PhraseBank:
        if self._bank is None:
            self._bank = PhraseBank(self.tokenizer, self.forget, self.forget + self.retain, self.config,
                                    self.embedder)
        return self._bank

    # -- detection ----------------------------------------------------------------------------------------
    def _sentence_scores(self, texts: list[str]) -> list[dict[str, Any]]:
        cfg = self.config
        out = []
        emb = self.embedder.encode(texts) if texts and len(self._key_owner) else None
        for j, s in enumerate(texts):
            ws = [w.lower() for w in words(s)]
            g = set(ngrams(ws, cfg.ngram))
            ng = np.array([len(g & d) / len(g) if g else 0.0 for d in self._grams])
            if emb is not None:
                sim = (self._key_emb @ emb[j]).numpy()
                sem = np.full(len(self.forget), -1.0)
                np.maximum.at(sem, self._key_owner, sim)
            else:
                sem = np.full(len(self.forget), -1.0)
            score = np.maximum(ng, sem)
            best = int(score.argmax())
            long_enough = len(ws) >= cfg.min_words
            flagged = long_enough and (float(ng.max()) >= cfg.tau_ngram or float(sem.max()) > cfg.tau_semantic)
            out.append({"flagged": bool(flagged), "ngram": float(ng.max()), "semantic": float(sem.max()),
                        "score": float(score.max()), "record": best})
        return out

    def check(self, prompt: str) -> dict[str, Any]:
        """``{"flagged", "score", "ngram", "semantic", "record", "subject", "spans"}``: the prompt's highest
        sentence scores, the index (in the forget records) of the best-matching record (None when not
        flagged), its subject and the character spans of the flagged sentences."""
        spans = _spans(prompt)
        rows = self._sentence_scores([prompt[a:b] for a, b in spans])
        flagged = [(sp, r) for sp, r in zip(spans, rows) if r["flagged"]]
        if not rows:
            return {"flagged": False, "score": 0.0, "ngram": 0.0, "semantic": 0.0, "record": None,
                    "subject": None, "spans": []}
        top = max(flagged or list(zip(spans, rows)), key=lambda x: x[1]["score"])[1]
        record = top["record"] if flagged else None
        return {"flagged": bool(flagged), "score": max(r["score"] for r in rows),
                "ngram": max(r["ngram"] for r in rows), "semantic": max(r["semantic"] for r in rows),
                "record": record, "subject": self.forget[record].subject if record is not None else None,
                "spans": [sp for sp, _ in flagged]}

    def redact(self, prompt: str, result: dict[str, Any] | None = None) -> str:
        """``prompt`` without its flagged sentences (the text around them, separators included, is kept)."""
        result = result if result is not None else self.check(prompt)
        out, pos = [], 0
        for a, b in result["spans"]:
            out.append(prompt[pos:a])
            pos = b
        out.append(prompt[pos:])
        return "".join(out)

    def wrap(self, model) -> "FilteredModel":
        return FilteredModel(self, model)


def _row_pieces(tokenizer, ids: list[int], special: set[int]) -> list[str]:
    """Each token's text; a special token (BOS, and the unknown token of a word-level tokenizer, whose text is
    lost) reads as a line break, i.e. a sentence boundary."""
    return ["\n" if t in special else tokenizer.decode([t]) for t in ids]


def _redact_ids(ids: list[int], pieces: list[str], spans: list[tuple[int, int]]) -> list[int]:
    """``ids`` without the tokens whose text lies in a flagged span (everything else, separators and tokens
    without text included, is kept as it was)."""
    keep, pos = [], 0
    for t, piece in zip(ids, pieces):
        start, pos = pos, pos + len(piece)
        a = start + len(piece) - len(piece.lstrip())
        b = start + len(piece.rstrip())
        if b > a:
            drop = any(lo <= a < hi for lo, hi in spans)
        else:  # whitespace only: dropped when inside a flagged sentence
            drop = any(lo < start and pos <= hi for lo, hi in spans)
        if not drop:
            keep.append(t)
    return keep


class _RefuseProcessor:
    """Forces EOS at once on the given batch items (rows = items × beams)."""

    def __init__(self, rows: list[bool], eos: int):
        self.rows, self.eos = rows, eos

    def __call__(self, input_ids, scores):
        expand = max(1, scores.shape[0] // max(1, len(self.rows)))
        idx = [r for r in range(scores.shape[0]) if r // expand < len(self.rows) and self.rows[r // expand]]
        if not idx:
            return scores
        out = scores.clone()
        out[idx] = float("-inf")
        out[idx, self.eos] = 0.0
        return out


class FilteredModel(GenerationWrapper):
    """``model`` behind the in-context filter; same contract as :class:`~obliviate.guard.core.GuardedModel`:
    ``forward`` is the model's, ``generate`` filters each row's prompt. The returned sequences keep each row's
    original input ids in front of the generated tokens (also when the prompt was redacted), so callers that cut
    the output at the input width get the continuation."""

    def __init__(self, flt: InContextFilter, model):
        super().__init__(model)
        self._filter = flt

    @property
    def filter(self) -> InContextFilter:
        return self._filter

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 logits_processor=None, **kwargs):
        from transformers import LogitsProcessorList

        flt = self._filter
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            raise ObliviateError("FilteredModel.generate needs input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if kwargs.get("num_return_sequences", 1) != 1:
            raise ObliviateError("the in-context filter supports num_return_sequences=1 only")
        tok = flt.tokenizer
        special = set(getattr(tok, "all_special_ids", []) or [])
        rows = row_ids(input_ids, attention_mask)
        pieces = [_row_pieces(tok, r, special) for r in rows]
        prompts = ["".join(p) for p in pieces]
        checks = [flt.check(p) for p in prompts]
        flags = [c["flagged"] for c in checks]
        flt.stats["calls"] += 1
        flt.stats["rows"] += len(prompts)
        flt.stats["flagged"] += sum(flags)
        if not any(flags):
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask,
                                      logits_processor=logits_processor, **kwargs)
        action = flt.config.action
        eos = tok.eos_token_id if tok.eos_token_id is not None else kwargs.get("eos_token_id")
        pad = kwargs.get("pad_token_id", tok.pad_token_id if tok.pad_token_id is not None else eos)
        extra = list(logits_processor or [])
        if action == "guard":
            proc = flt.bank.processor([c["record"] if c["flagged"] else None for c in checks],
                                      prompt_len=int(input_ids.shape[1]))
            try:
                return self.base.generate(input_ids=input_ids, attention_mask=attention_mask,
                                          logits_processor=LogitsProcessorList([*extra, proc]), **kwargs)
            finally:
                flt.stats["warnings"] += proc.warnings
        # refuse (and the flagged rows of redact): the batch runs as it is, flagged rows end at once, so unflagged
        # rows decode exactly as without the filter
        if eos is None:
            raise ObliviateError("the filter's refuse/redact actions need a tokenizer with an EOS token")
        width = int(input_ids.shape[1])
        out = self.base.generate(input_ids=input_ids, attention_mask=attention_mask,
                                 logits_processor=LogitsProcessorList([*extra, _RefuseProcessor(flags, eos)]),
                                 **kwargs)
        if action == "refuse":
            return out
        # redact: generate the flagged rows again from their redacted prompts
        flagged_rows = [i for i, f in enumerate(flags) if f]
        enc = [_redact_ids(rows[i], pieces[i], checks[i]["spans"]) or [eos] for i in flagged_rows]
        w2 = max(len(e) for e in enc)
        ids2 = torch.full((len(enc), w2), pad, dtype=torch.long)
        mask2 = torch.zeros((len(enc), w2), dtype=torch.long)
        for r, e in enumerate(enc):
            ids2[r, w2 - len(e):] = torch.tensor(e)
            mask2[r, w2 - len(e):] = 1
        kw = dict(kwargs)
        if "max_length" in kw:  # keep the number of new tokens, not the total length
            kw["max_length"] = int(kw["max_length"]) - width + w2
        out2 = self.base.generate(input_ids=ids2.to(input_ids.device), attention_mask=mask2.to(input_ids.device),
                                  logits_processor=LogitsProcessorList(extra) if extra else None, **kw)
        new2 = out2[:, w2:]
        new1 = out[:, width:]
        n = max(new1.shape[1], new2.shape[1])
        merged = torch.full((out.shape[0], width + n), pad, dtype=out.dtype, device=out.device)
        merged[:, :width] = input_ids
        merged[:, width:width + new1.shape[1]] = new1
        for r, i in enumerate(flagged_rows):
            merged[i, width:] = pad
            merged[i, width:width + new2.shape[1]] = new2[r]
        return merged

    def save_pretrained(self, path, **kwargs):
        import json
        from pathlib import Path

        from obliviate.config import as_dict

        self.base.save_pretrained(path, **kwargs)
        meta = {"layer": "filter", "config": as_dict(self._filter.config),
                "note": "the weights are the unfiltered model's; the filter acts at generation time only"}
        Path(path, "filter.json").write_text(json.dumps(meta, indent=2, default=str))
