"""AltPO (Mekala et al. 2024, arXiv 2409.13474): DPO whose "win" answers are plausible alternate answers the model
itself makes up for each forget question, so the forget answer is replaced by something fluent rather than pushed
toward gibberish or a refusal.

The authors' code (molereddy/Alternate-Preference-Optimization ``generate.py``, ``dataloader.py`` loss ``subdpo``;
OpenUnlearning ``community/methods/AltPO``) samples alternates once, before training, by prompting the fine-tuned
model with the question, its true answer and an instruction to change every fact, then trains OpenUnlearning's
DPO trainer on one (question, answer, alternate) row per sample. Its loss has no further terms: DPO(alternate ≻
forget answer) + α·retain NLL. obliviate samples with its own instruction, seeded from the run's generator, and
keeps only alternates that repeat no forget answer (the authors keep every sample).

``alternates=swap`` is obliviate's fallback for models too small to follow an instruction (their samples repeat
the memorised answer): each forget question takes the answers of the retain questions most like it (the same
question template about another subject, e.g. another author's birthplace).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from obliviate.errors import ConfigError
from obliviate.lm import eval_batch_size, max_length
from obliviate.methods import register
from obliviate.methods._preference import LANGUAGE, PreferenceConfig, differs, like, question_answer_pairs, train
from obliviate.methods.base import Method

#: obliviate's wording of the authors' request (their Llama-2 / Llama-3.2 prompts in ``prompts.py``)
INSTRUCTION = ("Now make up a different answer to the same question: keep every detail the question gives, but "
               "replace each fact in the answer above with a plausible invented one.")
STOPS = ("\n\n", "Question:", "Q:")  # the authors stop at "Question:" / "Q:"; a blank line ends an answer too
ROUNDS = 3  # sampling rounds for the questions still without a usable alternate


@dataclass
class AltPOConfig(PreferenceConfig):
    """β = 0.1, γ = α = 1, retain NLL: OpenUnlearning's DPO trainer (``configs/trainer/DPO.yaml``) as AltPO's
    ``run.sh`` uses it; the README's grid is β ∈ {0.05, 0.1, 0.5}, lr ∈ {1e-5, 2e-5, 5e-5}, α ∈ {1, 2, 5}, and
    obliviate takes its defaults at β 0.1, α 1 and the lowest lr (1e-5, :class:`LMOptimConfig`). 2 epochs and
    batch 32: ``run.sh`` (``num_train_epochs=2``, 8 × 4 accumulation) over 5 alternates per question
    (``generate.yaml`` ``repeats: 5``, ``do_sample: True``, ``temperature: 1.0``, ``max_new_tokens: 200``), i.e.
    ten preference steps per forget question; the sampler's other settings are the model's generation config."""

    epochs: int = field(default=2, metadata={"help": "passes over the (question, alternate) rows", "min": 1})
    alternates: Literal["model", "swap"] = field(default="model", metadata={
        "help": "model (sampled from the model itself, the paper's) or swap (answers of the most similar retain "
                "questions: for models too small to follow the instruction)"})
    num_alternates: int = field(default=5, metadata={"help": "alternates per forget question (one row each)",
                                                     "min": 1})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the alternates", "gt": 0})
    max_new_tokens: int = field(default=200, metadata={"help": "longest sampled alternate in tokens", "min": 1})
    chat_template: bool = field(default=True, metadata={
        "help": "ask through the tokenizer's chat template when it has one (instruction-tuned models)"})


# -- alternates sampled from the model ---------------------------------------------------------------------------

def alternate_prompt(tokenizer, prompt: str, answer: str, chat: bool) -> list[int]:
    """Token ids asking for an alternate answer. Without a chat template the question is asked again after the
    instruction, so the model answers in the task's own format."""
    request = f"{prompt} {answer.strip()}\n\n{INSTRUCTION}"
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text + "Alternate answer:", add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(f"{request}\n\n{prompt}", add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def sample(model, tokenizer, prompts: Sequence[list[int]], n: int, temperature: float, max_new_tokens: int,
           seed: int, device, batch_size: int | None = None) -> list[list[str]]:
    """``n`` sampled continuations of each prompt (left padding, KV cache), cut at :data:`STOPS`. The global RNG
    is seeded with ``seed`` inside a forked state, so the samples depend on the seed only (same device, same
    batches) and the caller's RNG is left as it was."""
    from obliviate.lm import quiet_transformers

    quiet_transformers()
    device = torch.device(device)
    was = model.training
    model.eval()
    limit = max_length(model)
    new = max(1, min(max_new_tokens, limit // 2))
    rows = [(i, list(prompts[i])[-(limit - new):]) for i in range(len(prompts)) for _ in range(n)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    size = batch_size or eval_batch_size(model)
    out: list[list[str]] = [[] for _ in prompts]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            width = max(len(ids) for _, ids in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, (_, row) in enumerate(chunk):
                ids[r, width - len(row):] = torch.tensor(row)
                mask[r, width - len(row):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                 temperature=temperature, max_new_tokens=new, use_cache=True,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            for r, (i, _) in enumerate(chunk):
                text = tokenizer.decode(gen[r, width:], skip_special_tokens=True)
                for stop in STOPS:
                    text = text.split(stop)[0]
                out[i].append(text.strip())
    model.train(was)
    return out


def model_alternates(ctx, cfg: AltPOConfig, pairs: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Up to ``num_alternates`` distinct usable alternates per pair, sampled from ``ctx.model`` before training;
    questions left without one are sampled again (:data:`ROUNDS` rounds in all)."""
    tok = ctx.tokenizer
    prompts = [alternate_prompt(tok, p, c, cfg.chat_template) for p, c in pairs]
    answers = [c for _, c in pairs]  # an alternate may repeat no forget answer, its own or another question's
    kept: list[list[str]] = [[] for _ in pairs]
    todo = list(range(len(pairs)))
    gen = ctx.generator(202)
    for _ in range(ROUNDS):
        seed = int(torch.randint(2 ** 62, (1,), generator=gen))
        samples = sample(ctx.model, tok, [prompts[i] for i in todo], cfg.num_alternates, cfg.temperature,
                         cfg.max_new_tokens, seed, ctx.device, cfg.eval_batch_size or None)
        for i, texts in zip(todo, samples):
            for text in texts:
                if differs(text, *answers) and text not in kept[i] and len(kept[i]) < cfg.num_alternates:
                    kept[i].append(text)
        todo = [i for i in todo if not kept[i]]
        if not todo:
            break
    return kept


# -- alternates swapped in from the retain questions ---------------------------------------------------------------

def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def swapped_alternates(ctx, cfg: AltPOConfig, pairs: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Per pair, the answers of the ``num_alternates`` retain questions with the most words in common with its
    question (Jaccard; ties in random order from the run's generator), skipping answers that repeat a forget
    answer (two authors of the same genre)."""
    retain = [(p, c) for p, c in ctx.retain_pairs or [] if p.strip() and c.strip()]
    if not retain:
        raise ConfigError("altpo: alternates=swap needs question-answer pairs in the retain set")
    words = [_words(p) for p, _ in retain]
    answers = [c for _, c in pairs]
    gen = ctx.generator(303)
    out = []
    for prompt, _ in pairs:
        mine = _words(prompt)
        order = torch.randperm(len(retain), generator=gen).tolist()
        order.sort(key=lambda j: -len(mine & words[j]) / max(1, len(mine | words[j])))
        found: list[str] = []
        for j in order:
            alt = retain[j][1].strip()
            if differs(alt, *answers) and alt not in found:
                found.append(alt)
                if len(found) == cfg.num_alternates:
                    break
        out.append(found)
    return out


def alternates(ctx, cfg: AltPOConfig, pairs: Sequence[tuple[str, str]]) -> list[list[str]]:
    """Each pair's alternates by ``cfg.alternates`` (texts without the forget answer's leading whitespace)."""
    return model_alternates(ctx, cfg, pairs) if cfg.alternates == "model" else swapped_alternates(ctx, cfg, pairs)


@register
class AltPO(Method):
    name = "altpo"
    guarantee = "approximate"
    needs = frozenset({"retain"})
    kinds = LANGUAGE
    config_class = AltPOConfig
    summary = "DPO preferring the model's own made-up alternate answers to the forget answers (+ retain NLL)"
    reference = ("Mekala et al. 2024, arXiv 2409.13474; molereddy/Alternate-Preference-Optimization; "
                 "open-unlearning community/methods/AltPO")

    def unlearn(self, ctx):
        cfg = self.config
        pairs, notes = question_answer_pairs(ctx, cfg, self.name)
        found = alternates(ctx, cfg, pairs)
        rows = [(p, c, like(c, a)) for (p, c), alts in zip(pairs, found) for a in alts]
        if not rows:
            raise ConfigError(f"altpo: no usable alternate answer for any of the {len(pairs)} forget questions "
                              f"(the model's samples repeat the forget answers); try alternates=swap")
        if len(rows) < len(pairs) * cfg.num_alternates:
            short = sum(len(a) < cfg.num_alternates for a in found)
            notes = [*notes, f"altpo: {short} forget question(s) got fewer than {cfg.num_alternates} usable "
                             f"alternates ({sum(not a for a in found)} with none, skipped)"]
        return train(ctx, cfg, rows, notes)
