"""GUARD's decoding restriction as a ``transformers`` ``LogitsProcessor`` (the paper's decoding step).

For every row (batch item × beam) restricted by a forget record's phrases:

* hard matching — a token that completes a forbidden token sequence gets −inf; a token that extends a partial
  match loses λ_tok · matched/|phrase| (a phrase's first token too: matched = 1);
* semantic matching — the top-k remaining candidates are appended to the generated text, the last ``window``
  words are embedded with SBERT and compared with the record's phrase embeddings: s = max cosine; the candidate
  loses λ_sem · s when s > τ_sem and is dropped when s > τ_hard. Only candidates that add a letter or digit are
  scored (EOS and punctuation never are); windows are embedded in batches and cached. With ``lazy`` (default)
  only the candidates greedy or beam search could still pick are scored, best first (see :meth:`_semantic`).

Rows of items that are not restricted are returned untouched (bit for bit). A failure inside the semantic step
(the embedder) never stops generation: it is counted in ``warnings`` and the processor goes on with hard matching
only; a failure of the hard step leaves the scores unchanged and is counted too.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

try:
    from transformers import LogitsProcessor
except ImportError:  # pragma: no cover - transformers is part of the llm extra
    LogitsProcessor = object  # type: ignore[assignment,misc]

_CACHE_LIMIT = 200_000


class GuardLogitsProcessor(LogitsProcessor):
    """``row_records[b]``: the forget record index (or indices) whose phrases restrict batch item ``b``, or None.
    ``prompt_len``: width of the (left-padded) prompt; None = the width seen at the first call."""

    def __init__(self, bank, row_records: Sequence[Iterable[int] | int | None], config, prompt_len: int | None = None):
        self.bank, self.config, self.prompt_len = bank, config, prompt_len
        self.rows: list[tuple[int, ...]] = []
        for r in row_records:
            if r is None:
                self.rows.append(())
            elif isinstance(r, int):
                self.rows.append((int(r),))
            else:
                self.rows.append(tuple(int(x) for x in r))
        self.warnings = 0
        self.semantic_ok = bool(config.semantic) and bank.embedder is not None
        self.stats = {"steps": 0, "banned": 0, "penalised": 0, "semantic_dropped": 0, "semantic_penalised": 0}
        tok = bank.tokenizer
        self._special = set(getattr(tok, "all_special_ids", []) or [])
        self._piece: dict[int, str] = {}
        self._window_emb: dict[str, torch.Tensor] = getattr(bank, "window_cache", {})
        self._tables = {i: bank.prefix_map(i) for rec in self.rows for i in rec}
        self._max_prefix = {i: max((len(k) for k in t), default=0) for i, t in self._tables.items()}

    @property
    def active(self) -> list[bool]:
        return [bool(r) for r in self.rows]

    # -- per step ------------------------------------------------------------------------------------------
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not any(self.rows):
            return scores
        if self.prompt_len is None:
            self.prompt_len = int(input_ids.shape[1])
        n_rows = scores.shape[0]
        expand = max(1, n_rows // max(1, len(self.rows)))
        targets = [(row, self.rows[row // expand]) for row in range(n_rows)
                   if row // expand < len(self.rows) and self.rows[row // expand]]
        if not targets:
            return scores
        self.stats["steps"] += 1
        out = scores.clone()
        ids = input_ids.tolist()
        try:
            self._hard(ids, out, targets)
        except Exception:  # noqa: BLE001 - generation must never crash mid-stream
            self.warnings += 1
            return scores
        if self.semantic_ok and self.config.lambda_sem >= 0:
            try:
                self._semantic(ids, out, targets, expand)
            except Exception:  # noqa: BLE001
                self.warnings += 1
                self.semantic_ok = False  # hard matching only from now on
        return out

    def _hard(self, ids, out: torch.Tensor, targets) -> None:
        lam = float(self.config.lambda_tok)
        for row, recs in targets:
            seq = ids[row]
            penalty: dict[int, float] = {}
            for i in recs:
                table = self._tables[i]
                for m in range(0, min(self._max_prefix[i], len(seq)) + 1):
                    nxt = table.get(tuple(seq[len(seq) - m:]) if m else ())
                    if not nxt:
                        continue
                    for tok, frac in nxt.items():
                        value = float("inf") if frac >= 1.0 else lam * frac
                        if value > penalty.get(tok, 0.0):
                            penalty[tok] = value
            if not penalty:
                continue
            banned = [t for t, v in penalty.items() if v == float("inf") and t not in self._special]
            soft = [(t, v) for t, v in penalty.items() if v != float("inf") and v > 0 and t not in self._special]
            if banned:
                out[row, banned] = float("-inf")
                self.stats["banned"] += len(banned)
            if soft:
                toks = torch.tensor([t for t, _ in soft], device=out.device)
                out[row, toks] -= torch.tensor([v for _, v in soft], device=out.device, dtype=out.dtype)
                self.stats["penalised"] += len(soft)

    def _piece_of(self, tok: int) -> str:
        if tok not in self._piece:
            self._piece[tok] = "" if tok in self._special else self.bank.tokenizer.decode([tok])
        return self._piece[tok]

    def _semantic(self, ids, out: torch.Tensor, targets, expand: int = 1) -> None:
        """Score candidates in rounds: each round, every row's best ``m`` candidates not yet scored (m = 1 under
        greedy decoding, 2 × beams under beam search — what the decoder can pick; m = top_k when ``lazy`` is off)
        are embedded together and penalised; a row is done when its best ``m`` are all scored or ``top_k`` have
        been. Greedy and beam search thus make the choices they would make with all top-k scored."""
        cfg = self.config
        k = min(int(cfg.top_k), out.shape[-1])
        m = min(k, (1 if expand == 1 else 2 * expand) if cfg.lazy else k)
        tok = self.bank.tokenizer
        checked: dict[int, set[int]] = {row: set() for row, _ in targets}
        generated: dict[int, str] = {}
        pending = list(targets)
        while pending:
            jobs, again = [], []  # jobs: (row, candidate token, window text, records)
            for row, recs in pending:
                done = checked[row]
                if len(done) >= k:
                    continue
                scores = out[row]
                top = [v for v in torch.topk(scores, m).indices.tolist() if torch.isfinite(scores[v])]
                new = [v for v in top if v not in done][:k - len(done)]
                if not new:
                    continue
                done.update(new)
                again.append((row, recs))
                if row not in generated:
                    generated[row] = tok.decode(ids[row][self.prompt_len:], skip_special_tokens=True)
                for v in new:
                    piece = self._piece_of(v)
                    if any(ch.isalnum() for ch in piece):
                        window = " ".join((generated[row] + piece).split()[-int(cfg.window):])
                        jobs.append((row, v, window, recs))
            if jobs:
                self._score_windows(out, jobs)
            pending = again

    def _score_windows(self, out: torch.Tensor, jobs) -> None:
        cfg = self.config
        missing = list(dict.fromkeys(w for _, _, w, _ in jobs if w not in self._window_emb))
        if missing:
            if len(self._window_emb) + len(missing) > _CACHE_LIMIT:
                self._window_emb.clear()
            for w, e in zip(missing, self.bank.embedder.encode(missing)):
                self._window_emb[w] = e
        for row, v, window, recs in jobs:
            e = self._window_emb[window]
            s = max(float((self.bank.embeddings(i) @ e).max()) if len(self.bank.phrases[i]) else -1.0
                    for i in recs)
            if s > cfg.tau_hard:
                out[row, v] = float("-inf")
                self.stats["semantic_dropped"] += 1
            elif s > cfg.tau_sem:
                out[row, v] -= cfg.lambda_sem * s
                self.stats["semantic_penalised"] += 1
