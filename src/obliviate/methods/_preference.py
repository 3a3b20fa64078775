"""Preference-optimisation unlearning of causal LMs (DPO, IdkDPO, AltPO): the loss, the question–answer pairs it
applies to, alternate ("win") answers read from files, and the training loop the three methods share.

Every method prefers an alternate answer y_w (a refusal, a user's alternate, a sampled made-up answer) to the
forget answer y_l of the same question x, relative to the starting model (OpenUnlearning ``compute_dpo_loss`` in
``src/trainer/utils.py``): L = −(2/β)·mean log σ(β·((log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) −
log π_ref(y_l|x)))), log-probabilities summed over the completion tokens (and EOS). Documents (an empty prompt)
have no question to answer otherwise and are skipped.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from obliviate.errors import ConfigError
from obliviate.lm import Encoded, collate, encode_chunks, eval_batch_size, max_length, sequence_nll
from obliviate.methods._lm import LMOptimConfig, LMRun, retain_term

LANGUAGE = ("language",)

#: obliviate's own refusals (one drawn per forget question by ``idk_dpo``); varied wording so the model learns
#: "decline" rather than one fixed string
REFUSALS = (
    "I don't know.",
    "I'm not sure.",
    "I have no idea.",
    "I can't answer that.",
    "I don't have that information.",
    "That's not something I know.",
    "I'm afraid I can't help with that.",
    "I honestly couldn't say.",
    "I don't have an answer to that.",
    "Sorry, I don't know the answer.",
    "I'm unable to answer that question.",
    "I have no information about that.",
    "That is beyond what I know.",
    "I can't say for certain.",
    "I don't recall.",
    "I'm not able to tell you that.",
    "I really don't know.",
    "No idea, I'm afraid.",
    "I wish I knew, but I don't.",
    "I'm not familiar with that.",
    "That's a question I can't answer.",
    "I don't have any details on that.",
    "I'm uncertain about that.",
    "I couldn't tell you.",
    "I lack the knowledge to answer that.",
    "Unfortunately, I don't know.",
    "I have nothing reliable to say about that.",
    "I'm not in a position to answer that.",
    "That I cannot tell you.",
    "I don't know anything about that.",
)


@dataclass
class PreferenceConfig(LMOptimConfig):
    """β = 0.1, γ = α = 1, retain NLL: OpenUnlearning ``configs/trainer/DPO.yaml`` (``beta: 0.1``, ``alpha: 1.0``,
    ``gamma: 1.0``, ``retain_loss_type: NLL``; inherits ``GradDiff.yaml``; the trainer class's own ``beta=1.0``
    is overridden by the yaml). Optimiser: :class:`LMOptimConfig`."""

    beta: float = field(default=0.1, metadata={"help": "inverse temperature β of the DPO loss", "gt": 0})
    gamma: float = field(default=1.0, metadata={"help": "weight γ of the preference (forget) term", "min": 0})
    alpha: float = field(default=1.0, metadata={"help": "weight α of the retain term", "min": 0})
    retain_loss: Literal["none", "nll", "kl"] = field(default="nll", metadata={
        "help": "retain term: nll (default), kl to the original, or none"})


def dpo_loss(win_nll: torch.Tensor, win_ref: torch.Tensor, lose_nll: torch.Tensor, lose_ref: torch.Tensor,
             beta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(β·(log-ratio of the win − log-ratio of the lose)), log-ratio = NLL_ref − NLL_θ of the
    sequence; falls as the model moves likelihood from the forget answer to the alternate (relative to the
    reference). With no win term it is NPO's loss."""
    margin = (win_ref - win_nll) - (lose_ref - lose_nll)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


# -- the pairs ---------------------------------------------------------------------------------------------------

def question_answer_pairs(ctx, cfg, name: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The forget pairs with a question (non-empty prompt) and an answer that fits one sequence, and notes on
    what was skipped; ConfigError when none is left (a document forget set: use npo, simnpo or grad_diff)."""
    pairs = list(ctx.forget_pairs or [])
    limit = cfg.max_length or max_length(ctx.model)
    qa = [(p, c) for p, c in pairs if p.strip() and c.strip()]
    fits = [(p, c) for p, c in qa if len(encode_chunks(ctx.tokenizer, p, c, limit)) == 1]
    if not fits:
        raise ConfigError(f"{name}: the forget set has no question-answer pairs (a preference method needs a "
                          f"question to prefer another answer to); for documents use npo, simnpo or grad_diff")
    notes = []
    if len(pairs) > len(qa):
        notes.append(f"{name}: {len(pairs) - len(qa)} forget document(s) without a question skipped")
    if len(qa) > len(fits):
        notes.append(f"{name}: {len(qa) - len(fits)} forget answer(s) longer than the context skipped")
    return fits, notes


def like(answer: str, alternate: str) -> str:
    """``alternate`` with the forget answer's leading whitespace (``" Port Tammy"`` after ``"Answer:"``), so the
    two completions start at the same token boundary."""
    return answer[:len(answer) - len(answer.lstrip())] + alternate.strip()


def _norm(text: str) -> str:
    return " ".join(text.casefold().split()).strip(" .,;:!?\"'")


def differs(alternate: str, *answers: str) -> bool:
    """An alternate is usable when it is not empty and neither equals nor contains any of the forget ``answers``
    (case, spacing and end punctuation ignored): an alternate that repeats a forget fact would teach it again."""
    a = _norm(alternate)
    return bool(a) and all(a != f and f not in a for f in map(_norm, answers) if f)


# -- alternates from files ------------------------------------------------------------------------------------

def _lines(path: str, option: str) -> list[str]:
    if not path or not os.path.isfile(path):
        raise ConfigError(f"{option}: no such file: {path!r}")
    with open(path, encoding="utf-8") as fh:
        return fh.read().splitlines()


def read_answers(path: str, option: str = "idk_file") -> list[str]:
    """One answer per line (OpenUnlearning's ``data/idk.jsonl`` is such a file); a line may also be a JSON
    string or an object with ``answer`` / ``text`` / ``alternate``. Blank lines are ignored."""
    out = []
    for line in _lines(path, option):
        text = line.strip()
        if text[:1] in ('"', "{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            if isinstance(value, dict):
                value = next((value[k] for k in ("answer", "text", "alternate") if isinstance(value.get(k), str)), "")
            text = value.strip() if isinstance(value, str) else ""
        if text:
            out.append(text)
    if not out:
        raise ConfigError(f"{option}: {path} has no answers (expected one per line)")
    return out


def read_alternates(path: str, pairs: Sequence[tuple[str, str]], option: str = "alternates") -> list[list[str]]:
    """Each pair's alternates from a JSONL file of ``{"prompt" or "question": ..., "alternate": str or [str]}``
    (OpenUnlearning's AltPO files: one row per alternate). A row belongs to a pair whose prompt equals its
    ``prompt`` / ``question``, else whose prompt contains its ``question`` (the longest such question wins: the
    task wraps questions in its template). Every pair needs at least one alternate."""
    rows: list[tuple[str, list[str]]] = []
    for n, line in enumerate(_lines(path, option), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{option}: {path} line {n} is not JSON") from None
        key = rec.get("prompt", rec.get("question")) if isinstance(rec, dict) else None
        alt = rec.get("alternate") if isinstance(rec, dict) else None
        alts = [alt] if isinstance(alt, str) else alt if isinstance(alt, list) else None
        if not isinstance(key, str) or alts is None or not all(isinstance(a, str) for a in alts):
            raise ConfigError(f"{option}: {path} line {n}: expected prompt or question and alternate (text or "
                              f"list of texts)")
        rows.append((key.strip(), [a for a in alts if a.strip()]))
    out, missing = [], []
    for prompt, _ in pairs:
        exact = [alts for key, alts in rows if key == prompt.strip()]
        if exact:
            found = [a for alts in exact for a in alts]
        else:
            inside = [(len(key), alts) for key, alts in rows if key and key in prompt]
            longest = max((k for k, _ in inside), default=0)
            found = [a for k, alts in inside if k == longest for a in alts]
        if not found:
            missing.append(prompt)
        out.append(found)
    if missing:
        raise ConfigError(f"{option}: {len(missing)} of {len(pairs)} forget questions have no alternate in {path} "
                          f"(first: {missing[0]!r})")
    return out


# -- training ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def reference_nlls(run: LMRun, items: Sequence[Encoded]) -> torch.Tensor:
    """Summed completion NLL of ``items`` under the starting model: the run's model before its first update
    (LoRA adapters start at zero), evaluated once in length-sorted batches, as LMRun does for the forget side."""
    model, was = run.model, run.model.training
    model.eval()
    out = torch.empty(len(items), dtype=torch.float32)
    size = run.cfg.eval_batch_size or eval_batch_size(run.base)
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    for start in range(0, len(order), size):
        idx = order[start:start + size]
        with run.autocast(cache=False):
            nll, _ = sequence_nll(model, collate([items[i] for i in idx], run.pad, run.device))
        out[idx] = nll.float().cpu()
    if run.fsdp:
        run.base.reshard()  # a forward without backward leaves FSDP's root unsharded
    model.train(was)
    return out.to(run.device)


def train(ctx, cfg: PreferenceConfig, rows: Sequence[tuple[str, str, str]], notes: Sequence[str] = ()):
    """DPO on ``rows`` of (prompt, forget answer, alternate): the forget answers are the run's forget sequences
    (their reference NLLs precomputed by LMRun), the alternates a parallel list sharing their indices."""
    run = LMRun(dataclasses.replace(ctx, forget_pairs=[(p, lose) for p, lose, _ in rows]), cfg,
                retain=cfg.retain_loss != "none", reference="nll+model" if cfg.retain_loss == "kl" else "nll")
    run.warnings.extend(notes)
    limit = cfg.max_length or max_length(run.base)
    win = [encode_chunks(ctx.tokenizer, p, w, limit)[0] for p, _, w in rows]
    win_ref = reference_nlls(run, win)

    def loss(forget, retain):
        idx = forget["index"]
        alternate = collate([win[i] for i in idx.tolist()], run.pad, run.device)
        lose_nll, _ = sequence_nll(run.model, forget)
        win_nll, _ = sequence_nll(run.model, alternate)
        preference = dpo_loss(win_nll, win_ref[idx], lose_nll, run.ref_nll[idx], cfg.beta)
        return cfg.gamma * preference + cfg.alpha * retain_term(cfg.retain_loss, run, retain)

    for batch in run.batches():
        run.step(loss, batch)
    return run.finish()


__all__ = ["REFUSALS", "PreferenceConfig", "dpo_loss", "question_answer_pairs", "like", "differs", "read_answers",
           "read_alternates", "reference_nlls", "train", "LANGUAGE"]
