"""GUARD around any Hugging Face causal LM (Deng et al. 2025, arXiv 2505.13312): detect prompts that target forgotten records,
retrieve the nearest forget record, and decode under a restriction that forbids its key phrases.

>>> guard = Guard(model, tokenizer, forget=forget_records, retain=retain_records)   # doctest: +SKIP
>>> guard.detector_metrics["precision"], guard.detector_metrics["recall"]           # doctest: +SKIP
>>> guard.generate(["Question: Where was Jennifer Bates born?\\nAnswer:"])          # doctest: +SKIP
>>> guarded = guard.wrap()      # an nn.Module: forward = the model's, generate = guarded  # doctest: +SKIP
>>> guard = Guard.for_task(model, tok, task, forget_ids, retain_ids)   # + its evaluation's layouts # doctest: +SKIP

This is **suppression**: weights are untouched, so teacher-forced scores (PrivLeak, truth ratio, forget
probability) stay the original model's; only generated text changes, and only for detected prompts — every
other prompt decodes bit for bit as the unguarded model.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from obliviate.errors import ObliviateError
from obliviate.guard.config import GuardConfig
from obliviate.guard.detector import fit_detector, id_features, pad_id, prompt_features
from obliviate.guard.embedder import load_embedder
from obliviate.guard.phrases import SUBJECT_PROMPTS, PhraseBank, as_record, record_prompts, sentences


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def row_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    """The real tokens of each row of a (left- or right-padded) generation batch."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    return [ids[m.bool()].tolist() for ids, m in zip(input_ids.cpu(), attention_mask.cpu())]


def row_prompts(tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[str]:
    """The text of each row of a generation batch, special tokens removed (a word the tokenizer does not know
    decodes to nothing: text is for retrieval and filtering, the detector reads the token ids themselves)."""
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in row_ids(input_ids, attention_mask)]


class Guard:
    """GUARD for ``model`` (frozen, never changed) and ``tokenizer``.

    ``forget``: the records to suppress (:class:`~obliviate.tasks.text.TextRecord` or plain documents);
    ``retain``: records whose prompts are negatives of the detector and whose text sets phrase rarity;
    ``general``: more negative prompts (strings) or records. The detector is trained at construction.
    ``layouts``: per record of ``forget``, ``retain`` and the general records (a dict of those three keys, each a
    list aligned with its records) the (prompt, question) pairs of the prompt layouts an evaluation sends (few-shot
    KnowMem prompts, a task's template), trained on beside the bare forms: a detector trained on bare questions
    alone misreads few-shot prompts, whose shared prefix dominates the pooled state (:meth:`for_task` builds them).
    """

    def __init__(self, model, tokenizer, forget: Sequence, retain: Sequence = (), general: Sequence = (),
                 config: GuardConfig | None = None, seed: int = 0, embedder=None,
                 layouts: dict[str, Sequence[Sequence[tuple[str, str]]]] | None = None):
        self.config = cfg = config if config is not None else GuardConfig()
        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        self.forget = [as_record(r) for r in (forget or [])]
        self.retain = [as_record(r) for r in (retain or [])]
        if not self.forget:
            raise ObliviateError("GUARD needs at least one forget record (the forget set is empty)")
        general_records = [as_record(g) for g in general if not isinstance(g, str)]
        general_prompts = [g for g in general if isinstance(g, str)]
        layouts = layouts or {}
        for key, recs in (("forget", self.forget), ("retain", self.retain), ("general", general_records)):
            if layouts.get(key) is not None and len(layouts[key]) != len(recs):
                raise ObliviateError(f"GUARD layouts[{key!r}] has {len(layouts[key])} entries for {len(recs)} "
                                     f"{key} records (one list of (prompt, question) pairs per record)")
        pos = _prompts_of(self.forget, "f", tokenizer, layouts.get("forget"))
        neg = _prompts_of(self.retain + general_records, "r", tokenizer,
                          [*(layouts.get("retain") or [()] * len(self.retain)),
                           *(layouts.get("general") or [()] * len(general_records))] if layouts else None)
        neg += [(p, ("g", j, 0)) for j, p in enumerate(general_prompts)]
        if len(pos) < cfg.min_prompts or len(neg) < cfg.min_prompts:
            raise ObliviateError(
                f"GUARD's detector needs at least {cfg.min_prompts} forget-target prompts and {cfg.min_prompts} "
                f"other prompts (--set min_prompts=N); the {len(self.forget)} forget record(s) give {len(pos)} and "
                f"the retain/general data {len(neg)} (a record gives two prompts per question, its document's first "
                f"sentence and, with a subject, {len(SUBJECT_PROMPTS)} prompts about it)")
        self.embedder = embedder if embedder is not None else load_embedder(cfg.embedder, _device(model))
        self.prompts = [p for p, _ in pos + neg]
        self.labels = np.array([1] * len(pos) + [0] * len(neg), dtype=np.int64)
        groups = [g for _, g in pos + neg]
        start = time.perf_counter()
        feats = prompt_features(model, tokenizer, self.prompts)
        features_s = time.perf_counter() - start
        self.detector, metrics = fit_detector(feats, self.labels, groups, cfg, seed)
        self.detector.to(_device(model))
        metrics["features_s"] = features_s
        self.detector_metrics: dict[str, Any] = metrics
        self.bank = PhraseBank(tokenizer, self.forget, self.forget + self.retain + general_records, cfg,
                               self.embedder)
        # retrieval keys: per forget record its questions (and its layouts' questions), its sentences and subject
        asked = layouts.get("forget") or [()] * len(self.forget)
        keys = [(i, k) for i, r in enumerate(self.forget)
                for k in dict.fromkeys([q.question for q in r.qa] + [q for _, q in asked[i]] + sentences(r.text)
                                       + ([r.subject] if r.subject else []))]
        self._key_owner = np.array([i for i, _ in keys], dtype=np.int64)
        self._key_emb = self.embedder.encode([k for _, k in keys])
        self.stats: dict[str, Any] = {"detector": metrics, "generation": {"calls": 0, "rows": 0, "detected": 0,
                                                                         "warnings": 0}}

    @property
    def n_forget(self) -> int:
        """Number of forget records (retrieval candidates; phrase sets)."""
        return len(self.bank.phrases)

    @classmethod
    def restore(cls, model, tokenizer, config: GuardConfig, detector_state: dict[str, torch.Tensor], dim: int,
                hidden: int, phrases: Sequence[Sequence[str]], key_emb: torch.Tensor, key_owner, *,
                metrics: dict[str, Any] | None = None, subjects: Sequence[str] | None = None,
                embedder=None) -> "Guard":
        """A guard from its saved parts (:func:`obliviate.guard.saving.load_guarded`): the trained detector, the
        forget records' key phrases and the retrieval keys' embeddings. No forget record is needed (``forget``
        holds placeholders with their subjects), nothing is retrained: it decides as the saved guard did."""
        from obliviate.guard.detector import Detector
        from obliviate.tasks.text import TextRecord

        phrases = [list(p) for p in phrases]
        owner = np.asarray(key_owner, dtype=np.int64)
        if not phrases or (owner.size and (owner.min() < 0 or owner.max() >= len(phrases))):
            raise ObliviateError("a saved guard needs phrases for every forget record its retrieval keys name")
        width = int(prompt_features(model, tokenizer, [""]).shape[1])
        if width != dim:
            raise ObliviateError(f"the saved guard's detector reads {dim}-dimensional states; this model's are "
                                 f"{width}: it was trained on another model")
        self = cls.__new__(cls)
        self.config, self.model, self.tokenizer, self.seed = config, model, tokenizer, None
        subjects = list(subjects or [])
        self.forget = [TextRecord(subjects[i] if i < len(subjects) else "", "") for i in range(len(phrases))]
        self.retain, self.prompts, self.labels = [], [], np.zeros(0, dtype=np.int64)
        det = Detector(dim, hidden, config.detector_dropout)
        det.load_state_dict(detector_state)
        self.detector = det.eval().to(_device(model))
        self.detector_metrics = dict(metrics or {})
        self.embedder = embedder if embedder is not None else load_embedder(config.embedder, _device(model))
        self.bank = PhraseBank.from_phrases(tokenizer, phrases, config, self.embedder)
        self._key_owner = owner
        self._key_emb = key_emb.float().cpu()
        self.stats = {"detector": self.detector_metrics, "restored": True,
                      "generation": {"calls": 0, "rows": 0, "detected": 0, "warnings": 0}}
        return self

    @classmethod
    def for_task(cls, model, tokenizer, task, forget_ids, retain_ids, config: GuardConfig | None = None,
                 seed: int = 0, embedder=None) -> "Guard":
        """GUARD for the records ``forget_ids`` of a language ``task`` (negatives: ``retain_ids`` and the task's
        holdout records), trained on the prompt layouts the task's evaluation sends (:func:`task_layouts`)."""
        recs = task.data.train
        holdout = list(getattr(task.data, "holdout", []) or [])
        forget = [recs[int(i)] for i in forget_ids]
        retain = [recs[int(i)] for i in retain_ids]
        layouts = {"forget": task_layouts(task, forget_ids, "forget"),
                   "retain": task_layouts(task, retain_ids, "retain"),
                   "general": [_layouts_of(task, [q.question for q in r.qa], None) for r in holdout]}
        # a QA set of its own (MUSE's knowmem files: about the corpus, tied to no chunk) is one more record of
        # its side, so the questions KnowMem asks are the detector's positives / negatives too
        from obliviate.tasks.text import TextRecord

        for role, records in (("forget", forget), ("retain", retain)):
            qa = (getattr(task.data, "qa_sets", None) or {}).get(role)
            if qa:
                records.append(TextRecord(subject=f"{role} QA set", text="", qa=tuple(qa)))
                layouts[role].append(_layouts_of(task, [q.question for q in qa], role))
        return cls(model, tokenizer, forget=forget, retain=retain, general=holdout, config=config, seed=seed,
                   embedder=embedder, layouts=layouts)

    # -- detection and retrieval --------------------------------------------------------------------------
    def detect_proba(self, prompts: Sequence[str]) -> np.ndarray:
        if not len(prompts):
            return np.zeros(0)
        return self.detector.prob(prompt_features(self.model, self.tokenizer, list(prompts))).numpy()

    def detect(self, prompts: Sequence[str]) -> np.ndarray:
        """Boolean per prompt: a forget target (p(f|z) > threshold)."""
        return self.detect_proba(prompts) > self.config.threshold

    def retrieve(self, prompts: Sequence[str], k: int | None = None) -> list[tuple[int, ...]]:
        """For each prompt, the ``k`` (``retrieve_k``) nearest forget records by SBERT max-cosine over their
        questions, sentences and subject."""
        k = min(k or self.config.retrieve_k, self.n_forget)
        if not len(prompts):
            return []
        sim = self.embedder.encode(list(prompts)) @ self._key_emb.T  # [n, keys]
        tails = [last_block(p) for p in prompts]
        if any(t != p for t, p in zip(tails, prompts)):
            # a few-shot prompt: its question is the last block (the embedder may not even read that far)
            sim = torch.maximum(sim, self.embedder.encode(tails) @ self._key_emb.T)
        per_record = torch.full((sim.shape[0], self.n_forget), -2.0)
        owner = torch.as_tensor(self._key_owner)
        per_record = per_record.scatter_reduce(1, owner.expand(sim.shape[0], -1), sim, reduce="amax")
        return [tuple(int(i) for i in row) for row in torch.topk(per_record, k, dim=1).indices.tolist()]

    def phrases(self, record: int) -> list[str]:
        """The forbidden key phrases of forget record ``record``."""
        return list(self.bank.phrases[record])

    def processor(self, row_records, prompt_len: int | None = None):
        """The decoding restriction for a batch (``row_records[b]``: record index/indices or None)."""
        return self.bank.processor(row_records, prompt_len)

    # -- generation ---------------------------------------------------------------------------------------
    def detect_ids(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """:meth:`detect` on token ids (rows of a generation batch; BOS is added where the tokenizer has one and
        the row lacks it, as in training)."""
        bos = self.tokenizer.bos_token_id
        rows = [list(r) if bos is None or (r and r[0] == bos) else [bos, *r] for r in rows]
        if not rows:
            return np.zeros(0, dtype=bool)
        z = id_features(self.model, rows, pad_id(self.tokenizer))
        return self.detector.prob(z).numpy() > self.config.threshold

    def plan(self, prompts: Sequence[str], rows: Sequence[Sequence[int]] | None = None
             ) -> list[tuple[int, ...] | None]:
        """Per prompt: the forget records whose phrases restrict its decoding, or None (not detected). With
        ``rows`` (the prompts' token ids) the detector reads those instead of re-encoding the text."""
        hits = self.detect(prompts) if rows is None else self.detect_ids(rows)
        found = self.retrieve([p for p, h in zip(prompts, hits) if h])
        it = iter(found)
        return [next(it) if h else None for h in hits]

    def wrap(self) -> "GuardedModel":
        """The guarded model: an ``nn.Module`` that scores like the model and generates under GUARD."""
        return GuardedModel(self)

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32, num_beams: int = 1, batch_size: int = 32,
                 stop: str | None = None) -> list[str]:
        """Guarded greedy (or beam) continuations, as :func:`obliviate.lm.generate` makes them."""
        from obliviate.lm import generate

        return generate(self.wrap(), self.tokenizer, prompts, _device(self.model), max_new_tokens=max_new_tokens,
                        batch_size=batch_size, stop=stop, num_beams=num_beams)


def last_block(prompt: str) -> str:
    """The text after the last blank line (a few-shot prompt's own question), or the prompt itself."""
    tail = prompt.rsplit("\n\n", 1)[-1].strip()
    return tail or prompt


def _layouts_of(task, questions: Sequence[str], role: str | None) -> list[tuple[str, str]]:
    """(prompt, question) of each question in every layout the task's evaluation sends it in: the few-shot
    KnowMem prompt (with the QA set's own few-shot pool when the task has one) and the template's bare prompt."""
    from obliviate.metrics.language import knowmem_prompts

    questions = list(questions)
    if not questions:
        return []
    out = list(zip(knowmem_prompts(task, questions), questions))
    if role is not None and role in (getattr(task.data, "qa_icl", None) or {}):
        out += list(zip(knowmem_prompts(task, questions, role=role), questions))
    if hasattr(task, "qa_prompt"):
        out += [(task.qa_prompt(q), q) for q in questions]
    return list(dict.fromkeys(out))


def task_layouts(task, ids, role: str | None = None) -> list[list[tuple[str, str]]]:
    """Per record of ``ids``: :func:`_layouts_of` its evaluation questions
    (:func:`obliviate.metrics.language.eval_qa`); ``role`` (``forget`` / ``retain``) picks a QA set's few-shot
    pool."""
    from obliviate.metrics.language import eval_qa

    return [_layouts_of(task, [q.question for q in eval_qa(task, [int(i)])], role) for i in ids]


def _prompts_of(records, side: str, tokenizer, layouts=None) -> list[tuple[str, tuple]]:
    """(prompt, group) of every record's bare prompts (:func:`record_prompts`) and of its ``layouts[i]``; a layout
    prompt of a question joins that question's group (a held-out split never sees a variant of a training
    prompt), a prompt already there is not repeated."""
    out = []
    for i, r in enumerate(records):
        bare = record_prompts(r, tokenizer)
        out += [(p, (side, i, g)) for p, g in bare]
        if not layouts or not layouts[i]:
            continue
        seen = {p for p, _ in bare}
        group_of = {}
        for g, q in enumerate(r.qa):
            group_of.setdefault(q.question, g)
        for p, q in layouts[i]:
            if p not in seen:
                seen.add(p)
                out.append((p, (side, i, group_of.get(q, ("q", q)))))
    return out


def _penultimate_block(model):
    """The decoder block whose output is ``hidden_states[-2]`` (GPT-2 ``transformer.h``, Llama-style
    ``model.layers``), or None when the layout is unknown or there is a single block."""
    backbone = getattr(model, "base_model", model)
    for name in ("h", "layers", "blocks"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) >= 2:
            return blocks[len(blocks) - 2]
    return None


class GenerationWrapper(torch.nn.Module):
    """A model seen through a generation-time layer: ``forward`` and every attribute (``config``,
    ``generation_config``, ...) are the wrapped ``base`` model's; subclasses override ``generate``."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, *args, **kwargs):
        return self.base(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name in self._modules:
                raise
            return getattr(self._modules["base"], name)


class GuardedModel(GenerationWrapper):
    """The model under GUARD, usable wherever the model is: ``forward`` (and so every teacher-forced score) is
    the base model's; ``generate(input_ids=, attention_mask=, ...)`` decodes each row's prompt, runs the
    detector, and applies the decoding restriction to the detected rows only. Other attributes (``config``,
    ``generation_config``, ``obliviate_max_length``, ...) are the base model's. ``save_pretrained`` writes the
    base model (weights are untouched: suppression cannot be saved into them) plus the guard (``guard.json`` and
    ``guard.safetensors``; :func:`obliviate.guard.load_guarded` restores it)."""

    def __init__(self, guard: Guard):
        super().__init__(guard.model)
        self.detector = guard.detector
        self._guard = guard

    @property
    def guard(self) -> Guard:
        return self._guard

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 logits_processor=None, **kwargs):
        from transformers import LogitsProcessorList

        guard = self._guard
        if input_ids is None:
            input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            raise ObliviateError("GuardedModel.generate needs input_ids")
        block = _penultimate_block(self.base)
        if block is not None and int(kwargs.get("num_beams") or 1) == 1:
            return self._generate_detecting_in_prefill(block, input_ids, attention_mask, logits_processor, **kwargs)
        rows = row_ids(input_ids, attention_mask)
        prompts = [guard.tokenizer.decode(r, skip_special_tokens=True) for r in rows]
        plan = guard.plan(prompts, rows)
        gen = guard.stats["generation"]
        gen["calls"] += 1
        gen["rows"] += len(prompts)
        gen["detected"] += sum(p is not None for p in plan)
        if not any(p is not None for p in plan):
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask,
                                      logits_processor=logits_processor, **kwargs)
        proc = guard.processor(plan, prompt_len=int(input_ids.shape[1]))
        procs = LogitsProcessorList([*(logits_processor or []), proc])
        try:
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, logits_processor=procs,
                                      **kwargs)
        finally:
            gen["warnings"] += proc.warnings

    def _generate_detecting_in_prefill(self, block, input_ids, attention_mask, logits_processor, **kwargs):
        """Greedy generation whose prefill forward also feeds the detector: a hook keeps the penultimate layer's
        states of the prompt, and a processor decides at the first step (before any token is chosen) which rows
        to restrict — no second forward pass over the prompt (retain prompts run at nearly full speed)."""
        from transformers import LogitsProcessor, LogitsProcessorList

        guard, model = self._guard, self
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        captured: dict[str, torch.Tensor] = {}

        def keep(_module, _inputs, output):
            if "h" not in captured:
                captured["h"] = output[0] if isinstance(output, tuple) else output

        class Lazy(LogitsProcessor):
            inner = None
            decided = False

            def __call__(self, ids, scores):
                if not self.decided:
                    self.decided = True
                    self.inner = model._decide(captured.get("h"), input_ids, mask)
                return scores if self.inner is None else self.inner(ids, scores)

        lazy = Lazy()
        handle = block.register_forward_hook(keep)
        try:
            return self.base.generate(input_ids=input_ids, attention_mask=attention_mask,
                                      logits_processor=LogitsProcessorList([*(logits_processor or []), lazy]),
                                      **kwargs)
        finally:
            handle.remove()
            if lazy.inner is not None:
                guard.stats["generation"]["warnings"] += lazy.inner.warnings

    def _decide(self, hidden, input_ids, mask):
        """The detector on the captured prompt states; the restriction for the detected rows, or None."""
        guard = self._guard
        gen = guard.stats["generation"]
        gen["calls"] += 1
        gen["rows"] += int(input_ids.shape[0])
        if hidden is None or hidden.shape[1] != input_ids.shape[1]:  # no prefill seen: detect from the ids
            rows = row_ids(input_ids, mask)
            hits = guard.detect_ids(rows)
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            z = ((hidden * m).sum(1) / m.sum(1).clamp_min(1)).float().cpu()
            hits = guard.detector.prob(z).numpy() > guard.config.threshold
        gen["detected"] += int(hits.sum())
        if not hits.any():
            return None
        prompts = row_prompts(guard.tokenizer, input_ids, mask)
        found = iter(guard.retrieve([p for p, h in zip(prompts, hits) if h]))
        plan = [next(found) if h else None for h in hits]
        return guard.processor(plan, prompt_len=int(input_ids.shape[1]))

    def save_pretrained(self, path, **kwargs):
        """The base model as ``save_pretrained`` writes it, then the guard beside it (safetensors + JSON with its
        sha256; :mod:`obliviate.guard.saving`)."""
        from obliviate.guard.saving import save_guard

        self.base.save_pretrained(path, **kwargs)
        save_guard(self._guard, path)
