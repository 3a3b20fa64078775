"""Causal-LM plumbing shared by language tasks, methods and metrics: encode (prompt, completion) pairs, batch
them with the right padding side and masks, train, score and generate.

Training and scoring pad on the right with labels −100 on the prompt and the padding; generation pads on
the left so every row's last real token is adjacent to the generated ones. Scoring and generation run under
``torch.inference_mode`` in length-sorted batches; generation uses the KV cache (``use_cache=True``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from obliviate import dist
from obliviate.training import make_optimizer, progress_bar, seed_everything

IGNORE = -100
#: the prompt of a question-answer pair (the answer is the completion); here, below the tasks and the tiny models,
#: because the text tasks, the metrics and the tiny tokenizer's corpus all lay questions out the same way
QA_PROMPT = "Question: {question}\nAnswer:"


def quiet_transformers() -> None:
    """transformers warns about padding whenever pad = BOS = EOS (GPT-2 style), even with an attention mask."""
    from transformers.utils import logging

    logging.set_verbosity_error()
Pair = tuple[str, str]  # (prompt, completion)


@dataclass
class Encoded:
    ids: list[int]
    n_prompt: int  # tokens before the completion (BOS included); labels start after them


def eval_batch_size(model) -> int:
    """Sequences per forward pass when scoring or generating: the task's ``eval_batch_size`` (set on the model it
    loads as ``obliviate_eval_batch_size``), else 32."""
    return int(getattr(model, "obliviate_eval_batch_size", None) or 32)


def max_length(model) -> int:
    """The longest sequence scored or generated: the task's cap (``obliviate_max_length``) or the context."""
    cap = getattr(model, "obliviate_max_length", None)
    if cap:
        return int(cap)
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1024)


def encode_chunks(tokenizer, prompt: str, completion: str, limit: int, eos: bool = True) -> list[Encoded]:
    """BOS + prompt + completion (+ EOS), tokenised separately so the completion's tokens never merge with the
    prompt's, as sequences of at most ``limit`` tokens — nothing is silently dropped:

    - a document (empty prompt) longer than ``limit`` is cut into consecutive chunks of ``limit`` − 1 tokens,
      each after its own BOS (MUSE's chunking, swj0419/muse_bench ``baselines/dataset.py``), so every token is
      trained on and scored once;
    - a QA pair keeps its whole completion and loses the start of its prompt (the question's tail and the
      answer stay adjacent); a completion longer than the context itself is chunked like a document.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] if completion else []
    if eos and tokenizer.eos_token_id is not None:
        c = c + [tokenizer.eos_token_id]
    if len(bos) + len(p) + len(c) <= limit:
        return [Encoded(bos + p + c, len(bos) + len(p))]
    room = limit - len(bos)
    if room < 1:
        raise ValueError(f"a context of {limit} tokens leaves no room after the BOS token")
    if len(c) < room:  # keep the answer, cut the question from the left
        keep = p[len(p) - (room - len(c)):]
        return [Encoded(bos + keep + c, len(bos) + len(keep))]
    return [Encoded(bos + c[i:i + room], len(bos)) for i in range(0, len(c), room)]


def encode(tokenizer, prompt: str, completion: str, limit: int, eos: bool = True) -> Encoded:
    """The first sequence of :func:`encode_chunks` (a pair that fits is one sequence)."""
    return encode_chunks(tokenizer, prompt, completion, limit, eos)[0]


def encode_all(tokenizer, pairs: Sequence[Pair], limit: int, eos: bool = True) -> list[Encoded]:
    """Every training sequence of ``pairs``: a long document gives several (:func:`encode_chunks`)."""
    return [e for p, c in pairs for e in encode_chunks(tokenizer, p, c, limit, eos)]


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (CPU) of token-id rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def collate(items: Sequence[Encoded], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (−100 on prompt and padding)."""
    ids, mask = pad_right([e.ids for e in items], pad_id)
    labels = torch.full_like(ids, IGNORE)
    for i, e in enumerate(items):
        labels[i, e.n_prompt:len(e.ids)] = ids[i, e.n_prompt:len(e.ids)]
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


#: rows of the vocabulary-wide fp32 work tensor: at most this many elements are upcast at a time
_CHUNK_ELEMENTS = 1 << 24


class _TokenLogprob(torch.autograd.Function):
    """log p(label) per position from logits in any dtype without an fp32 copy of the whole [B, T, V] tensor:
    the chosen token's logit is gathered before upcasting, the log-sum-exp is computed over chunks of rows in
    fp32, and the backward pass rebuilds softmax chunk by chunk. Only the logits (in their own dtype), the labels
    and one fp32 value per position are kept for the backward pass."""

    @staticmethod
    def forward(ctx, logits, labels):
        flat = logits.reshape(-1, logits.shape[-1])
        lab = labels.reshape(-1, 1)
        rows = max(1, _CHUNK_ELEMENTS // flat.shape[-1])
        lse = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
        for s in range(0, flat.shape[0], rows):
            lse[s:s + rows] = torch.logsumexp(flat[s:s + rows].float(), dim=-1)
        out = flat.gather(1, lab).squeeze(1).float() - lse
        ctx.save_for_backward(logits, labels, lse)
        return out.view(labels.shape)

    @staticmethod
    def backward(ctx, grad_out):
        logits, labels, lse = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        lab, g = labels.reshape(-1, 1), grad_out.reshape(-1, 1).float()
        grad = torch.empty_like(flat)
        rows = max(1, _CHUNK_ELEMENTS // flat.shape[-1])
        for s in range(0, flat.shape[0], rows):
            e = s + rows
            part = -(flat[s:e].float() - lse[s:e, None]).exp() * g[s:e]  # d log p_y / d z = 1[y] − softmax(z)
            part.scatter_add_(1, lab[s:e], g[s:e])
            grad[s:e] = part.to(grad.dtype)
        return grad.view_as(logits), None


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] in fp32 for every position (labels ≥ 0, same leading shape); differentiable,
    and never materialises the whole vocabulary-wide tensor in fp32 (:class:`_TokenLogprob`)."""
    return _TokenLogprob.apply(logits, labels)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of the next-token predictions (shifted) and the mask of scored tokens, both [B, T−1], in fp32
    whatever the logits' dtype (:func:`token_logprobs`)."""
    # the last position predicts nothing: its label is padding, so the full (contiguous) logits need no copy
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)
    nll = -token_logprobs(logits, shifted.clamp_min(0))[:, :-1]
    mask = shifted[:, :-1] != IGNORE
    return nll * mask, mask


def sequence_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of completion-token NLLs, number of completion tokens) per sequence — the sequence log-likelihood
    NPO and SimNPO are defined on."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    nll, mask = token_nll(out.logits, batch["labels"])
    return nll.sum(1), mask.sum(1)


def mean_nll(model, batch) -> torch.Tensor:
    """Token-averaged NLL per sequence, averaged over the batch (HF ``outputs.loss`` per sequence)."""
    total, count = sequence_nll(model, batch)
    return (total / count.clamp_min(1)).mean()


def train_lm(model, tokenizer, pairs: Sequence[Pair], recipe, seed: int, device, description: str = "train",
             epochs: int | None = None):
    """Train a causal LM on (prompt, completion) pairs: shuffled mini-batches, Adam(W), gradient clipping 1.0.
    The order depends only on ``seed`` and ``len(pairs)``, so the oracle's model is a function of its data."""
    device = torch.device(device)
    seed_everything(seed)
    epochs = recipe.epochs if epochs is None else epochs
    model.to(device).train()
    encoded = encode_all(tokenizer, pairs, max_length(model))
    opt = make_optimizer(model.parameters(), recipe.optimizer, recipe.lr, recipe.weight_decay, recipe.momentum)
    gen = torch.Generator().manual_seed(seed)
    n = len(encoded)
    if n == 0 or epochs == 0:
        return model.eval()
    steps = epochs * ((n + recipe.batch_size - 1) // recipe.batch_size)
    sched = lr_schedule(opt, steps, getattr(recipe, "warmup", 0.0), getattr(recipe, "schedule", "constant"))
    lengths = [len(e.ids) for e in encoded]
    with progress_bar(description, steps) as advance:
        for _ in range(epochs):
            for idx in bucketed_batches(lengths, recipe.batch_size, gen):
                batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id, device)
                loss = mean_nll(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                advance()
    return model.eval()


def lr_schedule(opt, steps: int, warmup: float = 0.0, kind: str = "constant"):
    """Linear warm-up over ``warmup`` × steps, then constant or cosine decay to 0."""
    import math

    n_warm = int(round(warmup * steps))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, steps - n_warm)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def bucketed_batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator, pool: int = 32):
    """Shuffled mini-batches of similar lengths (less padding): shuffle, sort within pools of ``pool`` batches,
    cut into batches, shuffle the batches. Depends only on ``gen`` and the lengths."""
    order = torch.randperm(len(lengths), generator=gen).tolist()
    out = []
    for start in range(0, len(order), batch_size * pool):
        chunk = sorted(order[start:start + batch_size * pool], key=lambda i: lengths[i])
        out += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


def _length_sorted(items: Sequence, key) -> list[int]:
    return sorted(range(len(items)), key=lambda i: -key(items[i]))


@dataclass
class Scores:
    """Per sequence: summed and mean completion NLL, token count, token log-probs, teacher-forced argmax hits."""

    nll_sum: np.ndarray
    n_tokens: np.ndarray
    token_logprobs: list[np.ndarray]
    argmax: list[np.ndarray]
    labels: list[np.ndarray]
    #: per scored token, the mean and variance of log p over the vocabulary (Min-K%++; ``score(moments=True)``)
    mu: list[np.ndarray] | None = None
    sigma2: list[np.ndarray] | None = None

    @property
    def nll_mean(self) -> np.ndarray:
        return self.nll_sum / np.maximum(self.n_tokens, 1)


@torch.inference_mode()
def score(model, tokenizer, pairs: Sequence[Pair], device, batch_size: int | None = None, eos: bool = True,
          moments: bool = False) -> Scores:
    """Teacher-forced scores of every pair's completion, in length-sorted batches; a document longer than the
    context is scored chunk by chunk (:func:`encode_chunks`) and its values concatenated. ``moments`` also keeps
    each scored position's vocabulary mean and variance of log p (one row's [T, V] at a time)."""
    model.eval()
    limit = max_length(model)
    chunks = [encode_chunks(tokenizer, p, c, limit, eos) for p, c in pairs]
    encoded = [e for ch in chunks for e in ch]
    owner = [i for i, ch in enumerate(chunks) for _ in ch]  # a long document's chunks are merged back below
    n = len(encoded)
    parts: list = [None] * n
    batch_size = batch_size or eval_batch_size(model)
    order = _length_sorted(encoded, lambda e: len(e.ids))
    starts = list(range(0, n, batch_size))
    for start in (starts[b] for b in dist.my_share(len(starts))):  # under a launcher, each process its batches
        idx = order[start:start + batch_size]
        batch = collate([encoded[i] for i in idx], tokenizer.pad_token_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, mask = token_nll(logits, batch["labels"])
        pred = logits[:, :-1].argmax(-1)
        labels = batch["labels"][:, 1:]
        for row, i in enumerate(idx):
            m = mask[row]
            part = [(-nll[row][m]).double().cpu().numpy(), pred[row][m].cpu().numpy(), labels[row][m].cpu().numpy()]
            if moments:
                lp = torch.log_softmax(logits[row, :-1][m].float(), dim=-1)
                mu = (lp.exp() * lp).sum(-1)
                part += [mu.double().cpu().numpy(), ((lp.exp() * lp.square()).sum(-1) - mu.square()).double().cpu().numpy()]
            parts[i] = tuple(part)
    if dist.launched():
        for i, part in dist.gather([(i, part) for i, part in enumerate(parts) if part is not None]):
            parts[i] = part
    k = len(pairs)
    merged = [[[] for _ in range(5 if moments else 3)] for _ in range(k)]
    for i, part in zip(owner, parts):
        for slot, arr in zip(merged[i], part):
            slot.append(arr)
    lps = [np.concatenate(m[0]) for m in merged]
    am = [np.concatenate(m[1]) for m in merged]
    lab = [np.concatenate(m[2]) for m in merged]
    nll_sum = np.array([-float(lp.sum()) for lp in lps]) if k else np.zeros(0)
    n_tok = np.array([lp.size for lp in lps], dtype=np.int64)
    if moments:
        return Scores(nll_sum, n_tok, lps, am, lab, [np.concatenate(m[3]) for m in merged],
                      [np.concatenate(m[4]) for m in merged])
    return Scores(nll_sum, n_tok, lps, am, lab)


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], device, max_new_tokens: int = 32, batch_size: int | None = None,
             stop: str | None = None, logits_processor=None, num_beams: int = 1) -> list[str]:
    """Greedy (or beam) continuations of ``prompts`` (BOS prepended), decoded without special tokens and cut at
    ``stop``. Left padding + attention mask, KV cache, length-sorted batches; output order = input order."""
    model.eval()
    quiet_transformers()
    limit = max_length(model)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    # a prompt keeps its last limit − 1 tokens; a batch generates at most what its longest prompt leaves room for
    encoded = [(bos + tokenizer(p, add_special_tokens=False)["input_ids"])[-(limit - 1):] for p in prompts]
    out: list[str] = [""] * len(prompts)
    order = _length_sorted(encoded, len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch_size = batch_size or eval_batch_size(model)
    starts = list(range(0, len(encoded), batch_size))
    mine: list[int] = []
    for start in (starts[b] for b in dist.my_share(len(starts))):  # under a launcher, each process its batches
        idx = order[start:start + batch_size]
        mine += idx
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            e = encoded[i]
            ids[row, width - len(e):] = torch.tensor(e)
            mask[row, width - len(e):] = 1
        room = max(1, min(max_new_tokens, limit - width))
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=room,
                             do_sample=False, num_beams=num_beams, use_cache=True, pad_token_id=pad,
                             eos_token_id=tokenizer.eos_token_id, logits_processor=logits_processor)
        for row, i in enumerate(idx):
            text = tokenizer.decode(gen[row, width:], skip_special_tokens=True)
            out[i] = text.split(stop)[0] if stop else text
    if dist.launched():
        for i, text in dist.gather([(i, out[i]) for i in mine]):
            out[i] = text
    return out
