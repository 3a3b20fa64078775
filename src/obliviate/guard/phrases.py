"""Forget records, the prompts derived from them, their key phrases and the token sequences that spell them.

Key phrases of a record (the paper's key-phrase step, without an LLM or spaCy): its subject's name and each part of
it, every QA answer (and, with ``answer_words``, each content word of it), every number of its text, and the word
n-grams (n ≤ ``max_ngram``) of its text that are rare in the corpus (at most max(1, rare_df × records) records
contain them). Each phrase is spelled in every surface variant — as written, capitalised, lower case, title
case, possessive — with and without a leading space, and tokenised; variants the tokenizer cannot spell (an
unknown token) are dropped, and a variant never contains a special token, so EOS is never forbidden.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

from obliviate.errors import ObliviateError
from obliviate.tasks.text import QA_PROMPT, TextRecord

STOPWORDS = frozenset("""
a an the and or but if of in on at to for from by with without about as into onto over under after before during
is are was were be been being am do does did has have had having it its it's this that these those there here
he she they them him her his hers their theirs we us our you your i me my mine who whom whose which what when
where why how not no nor so than then too very can could will would shall should may might must also just only
own same such both each few more most other some any all one while up down out off again further once s t
""".split())

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’\-]*")
_SENT = re.compile(r"(?<=[.!?])[\"”']?\s+|\n+")
_NUMBER = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b")


def as_record(item) -> TextRecord:
    """A :class:`TextRecord`, or a plain string taken as a document."""
    if isinstance(item, TextRecord):
        return item
    if isinstance(item, str):
        return TextRecord(subject="", text=item)
    raise ObliviateError(f"a forget/retain item must be a TextRecord or a string, got {type(item).__name__}")


def words(text: str) -> list[str]:
    return [w.strip("'’-") for w in _WORD.findall(text) if w.strip("'’-")]


def sentences(text: str) -> list[str]:
    """Sentences (and lines) of ``text``, stripped, without empty ones."""
    return [s.strip() for s in _SENT.split(text or "") if s and s.strip()]


#: forget-target prompts about a record's subject besides its questions (obliviate's choice: they teach the
#: detector that the subject, not the question template, makes a prompt a target)
SUBJECT_PROMPTS = ("Tell me about {s}.", "Who is {s}?", "What do you know about {s}?",
                   "Write a short biography of {s}.", "{s}", "Describe the books of {s}.")


def verbmem_prompt(record: TextRecord, tokenizer=None) -> str | None:
    """The prompt of the VerbMem evaluation for the record's document (its first sentence when that is at most
    half of it; with a tokenizer exactly :func:`obliviate.metrics.language.verbmem_pair`'s)."""
    if not record.text:
        return None
    if tokenizer is not None:
        from obliviate.metrics.language import verbmem_pair

        return verbmem_pair(tokenizer, record.text)[0]
    cut = record.text.find(". ")
    if 0 < cut < len(record.text) // 2:
        return record.text[:cut + 1]
    ws = record.text.split()
    return " ".join(ws[:max(1, min(32, len(ws) // 4))])


def record_prompts(record: TextRecord, tokenizer=None) -> list[tuple[str, int]]:
    """Prompts that target ``record``, each with its group (same group = the same question, so a held-out split
    never sees a variant of a training prompt): every question as a bare question and in the
    ``Question: …\nAnswer:`` format of the KnowMem evaluation, the VerbMem prompt of its document, and for a
    record with a subject the :data:`SUBJECT_PROMPTS` about it."""
    out = []
    for g, q in enumerate(record.qa):
        out += [(QA_PROMPT.format(question=q.question), g), (q.question, g)]
    vm = verbmem_prompt(record, tokenizer)
    if vm:
        out.append((vm, len(record.qa)))
    if record.subject:
        out += [(t.format(s=record.subject), len(record.qa) + 1 + j) for j, t in enumerate(SUBJECT_PROMPTS)]
    return out


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _record_ngrams(record: TextRecord, max_n: int) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams (n ≤ ``max_n``) of a record's text and of each of its answers."""
    grams: set[tuple[str, ...]] = set()
    for part in [*sentences(record.text), *(q.answer for q in record.qa)]:
        ws = [w.lower() for w in words(part)]
        grams |= {g for n in range(1, max_n + 1) for g in ngrams(ws, n)}
    return grams


def _content(gram: tuple[str, ...]) -> bool:
    """A gram worth forbidding: no stopword at either end, no one- or two-letter word alone."""
    if gram[0] in STOPWORDS or gram[-1] in STOPWORDS:
        return False
    return not (len(gram) == 1 and len(gram[0]) < 3 and not gram[0].isdigit())


def key_phrases(record: TextRecord, corpus: Sequence[TextRecord], rare_df: float = 0.1, max_ngram: int = 2,
                answer_words: bool = True, max_phrases: int = 128) -> list[str]:
    """The key phrases of ``record`` (see the module doc), rarest first; ``corpus`` = every record the rarity is
    measured against (the record itself included or not)."""
    docs = [_record_ngrams(r, max_ngram) for r in corpus]
    mine = _record_ngrams(record, max_ngram)
    if not any(d == mine for d in docs):
        docs.append(mine)
    df = Counter(g for d in docs for g in d)
    n_docs = len(docs)
    limit = max(1, int(math.floor(rare_df * n_docs)))
    surface: dict[tuple[str, ...], str] = {}  # lower-cased gram -> first spelling in the text
    for sentence in sentences(record.text):
        ws = words(sentence)
        for n in range(1, max_ngram + 1):
            for i in range(len(ws) - n + 1):
                surface.setdefault(tuple(w.lower() for w in ws[i:i + n]), " ".join(ws[i:i + n]))
    fixed: list[str] = []
    if record.subject:
        fixed.append(record.subject.strip())
        parts = words(record.subject)
        if len(parts) > 1:
            fixed += [p for p in parts if p.lower() not in STOPWORDS]
    for q in record.qa:
        fixed.append(q.answer.strip())
        if answer_words:
            fixed += [w for w in words(q.answer) if _content((w.lower(),))]
    fixed += _NUMBER.findall(record.text)
    rare = [(df[g], -len(g), surface[g]) for g in surface if df[g] <= limit and _content(g)]
    # a rare n-gram with a rare word in it adds nothing (that word is forbidden on its own)
    rare_words = {g[0] for g in surface if len(g) == 1 and df[g] <= limit and _content(g)}
    rare = [r for r in rare if len(r[2].split()) == 1 or not any(w.lower() in rare_words for w in r[2].split())]
    ranked = fixed + [s for _, _, s in sorted(rare)]
    out = list(dict.fromkeys(p for p in ranked if p and words(p)))
    return out[:max_phrases]


def surface_variants(phrase: str) -> list[str]:
    """Spellings of ``phrase``: as written, capitalised, lower case, title case and possessive, each with and
    without a leading space."""
    forms = [phrase, phrase[:1].upper() + phrase[1:], phrase.lower(), " ".join(w[:1].upper() + w[1:] for w in
                                                                              phrase.split())]
    forms += [f + "'s" for f in forms if not f.endswith("s")]
    return list(dict.fromkeys(v for f in forms for v in (f, " " + f)))


def token_sequences(tokenizer, phrase: str) -> list[tuple[int, ...]]:
    """The token sequences of every surface variant of ``phrase`` that the tokenizer can spell."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    unk = getattr(tokenizer, "unk_token_id", None)
    out = []
    for v in surface_variants(phrase):
        ids = tuple(tokenizer(v, add_special_tokens=False)["input_ids"])
        if not ids or (unk is not None and unk in ids) or special & set(ids):
            continue
        out.append(ids)
    return list(dict.fromkeys(out))


class PhraseBank:
    """Per forget record: key phrases, their token sequences (as a prefix map for hard matching) and their cached
    SBERT embeddings. ``corpus`` = forget + retain (+ any other) records, for rarity."""

    def __init__(self, tokenizer, forget: Sequence[TextRecord], corpus: Sequence[TextRecord], config,
                 embedder=None):
        self.tokenizer, self.forget, self.config, self.embedder = tokenizer, list(forget), config, embedder
        self.phrases = [key_phrases(r, corpus, config.rare_df, config.max_ngram, config.answer_words,
                                    config.max_phrases) for r in self.forget]
        self._prefix: dict[int, dict] = {}
        self._emb: dict[int, object] = {}
        self.window_cache: dict[str, object] = {}  # SBERT embeddings of candidate windows, shared by processors

    @classmethod
    def from_phrases(cls, tokenizer, phrases: Sequence[Sequence[str]], config, embedder=None) -> "PhraseBank":
        """A bank of given phrases per forget record (a saved guard's), no records needed."""
        self = cls(tokenizer, [], [], config, embedder)
        self.phrases = [list(p) for p in phrases]
        return self

    def prefix_map(self, i: int) -> dict[tuple[int, ...], dict[int, float]]:
        """prefix (tuple of tokens) → {next token: matched fraction after it (1.0 = the phrase is complete)}."""
        if i not in self._prefix:
            table: dict[tuple[int, ...], dict[int, float]] = {}
            for p in self.phrases[i]:
                for seq in token_sequences(self.tokenizer, p):
                    for m in range(len(seq)):
                        nxt = table.setdefault(seq[:m], {})
                        frac = (m + 1) / len(seq)
                        nxt[seq[m]] = max(nxt.get(seq[m], 0.0), frac)
            self._prefix[i] = table
        return self._prefix[i]

    def embeddings(self, i: int):
        """Normalised SBERT embeddings of record ``i``'s phrases (computed once)."""
        if i not in self._emb:
            self._emb[i] = self.embedder.encode(list(self.phrases[i]))
        return self._emb[i]

    def processor(self, row_records: Sequence[Iterable[int] | int | None], prompt_len: int | None = None):
        """A :class:`~obliviate.guard.processor.GuardLogitsProcessor` for a batch whose item ``b`` is restricted
        by the phrases of the record(s) ``row_records[b]`` (None: untouched)."""
        from obliviate.guard.processor import GuardLogitsProcessor

        return GuardLogitsProcessor(self, row_records, self.config, prompt_len=prompt_len)
