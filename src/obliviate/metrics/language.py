"""Language metrics: MUSE six-way (VerbMem, KnowMem, PrivLeak, utility) and TOFU (truth ratio, forget quality,
model utility, extraction strength), as artifacts and metrics of :class:`~obliviate.metrics.core.Evaluation`.

Artifacts hold the expensive parts — greedy generations, teacher-forced scores — computed once per model and
split; the metrics are the pure functions of :mod:`obliviate.metrics.muse` and :mod:`obliviate.metrics.tofu`
over them. Metrics measured against the oracle (``privleak``'s reference AUC, ``forget_quality``'s KS test)
score the reference model on the same data (teacher-forced only, no generation).

Conventions (evaluation.md §9, §10): VerbMem = ROUGE-L F1 of the greedy continuation (≤ 128 new tokens) of a
forget document's prefix against the rest of the document cut to 128 model tokens; KnowMem = ROUGE-L F1 of
the greedy answer (≤ 32 tokens, MUSE post-processing) to few-shot "Question: … Answer:" prompts; PrivLeak =
(AUC − AUC_oracle)/AUC_oracle × 100 with the Min-40 % attack on forget vs holdout documents (MUSE signs: −100
= the forget set looks memorised); values are fractions in [0, 1] (× 100 gives MUSE's percentages) except
PrivLeak (percent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from obliviate.metrics import muse, tofu
from obliviate.metrics.core import ARTIFACTS, Evaluation, metric
from obliviate.tasks.text import QA_PROMPT

_LM = ("language",)
VERBMEM_NEW_TOKENS = 128
KNOWMEM_NEW_TOKENS = 32
MIN_K = 0.4
NO_ORACLE_AUC = 0.5  # OpenUnlearning's ref_value when no retrained model is available


def verbmem_pair(tokenizer, text: str, max_prompt_tokens: int = 32) -> tuple[str, str]:
    """(prompt, ground truth) of a document: its first sentence when that is at most half of it (the authors
    biographies: the name and birth facts), else its first quarter of tokens (≤ ``max_prompt_tokens``)."""
    cut = text.find(". ")
    if 0 < cut < len(text) // 2:
        return text[:cut + 1], text[cut + 1:]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = max(1, min(max_prompt_tokens, len(ids) // 4))
    prompt = tokenizer.decode(ids[:n])
    return prompt, text[len(prompt):] if text.startswith(prompt) else tokenizer.decode(ids[n:])


def knowmem_prompt(icl: list, question: str) -> str:
    shots = "".join(f"{QA_PROMPT.format(question=q.question)} {q.answer}\n\n" for q in icl)
    return shots + QA_PROMPT.format(question=question)


@dataclass
class QASet:
    """The QA pairs of a set of records, flattened (with the id of the record each belongs to)."""

    qa: list
    record_ids: np.ndarray


def _qa_of(ev: Evaluation, ids: np.ndarray) -> QASet:
    recs = ev.task.data.train
    pairs = [(int(i), q) for i in ids for q in recs[int(i)].qa]
    return QASet([q for _, q in pairs], np.array([i for i, _ in pairs], dtype=np.int64))


def _tok(ev: Evaluation):
    return ev.task.tokenizer()


def icl_shots(task) -> list:
    """The task's few-shot KnowMem examples (``icl_shots`` of its ICL pool)."""
    return list(task.data.icl[:int(getattr(task.options, "icl_shots", 0))])


def knowmem_answers(model, task, qa: list, device, prompts: list[str] | None = None) -> dict[str, Any]:
    """Greedy answers (≤ 32 tokens, MUSE clean-up) to ``qa`` and their ROUGE-L F1 / recall; the prompts are the
    task's few-shot KnowMem prompts unless given (the in-context audit prefixes them with a document)."""
    from obliviate.lm import generate

    if prompts is None:
        icl = icl_shots(task)
        prompts = [knowmem_prompt(icl, q.question) for q in qa]
    outs = generate(model, task.tokenizer(), prompts, device, max_new_tokens=KNOWMEM_NEW_TOKENS)
    outs = [muse.clean_knowmem_answer(o) for o in outs]
    return {"f1": np.array([muse.rouge_l_f1(o, q.answer) for o, q in zip(outs, qa)]),
            "recall": np.array([muse.rouge_l_recall(o, q.answer) for o, q in zip(outs, qa)]),
            "outputs": outs}


def _verbmem(ev: Evaluation) -> dict[str, Any]:
    from obliviate.lm import generate

    tok = _tok(ev)
    docs = [ev.task.data.train[int(i)] for i in ev.forget_ids if ev.task.data.train[int(i)].text]
    if not docs:
        return {"scores": np.zeros(0), "outputs": []}
    pairs = [verbmem_pair(tok, d.text) for d in docs]
    outs = generate(ev.model, tok, [p for p, _ in pairs], ev.device, max_new_tokens=VERBMEM_NEW_TOKENS)
    truths = [tok.decode(tok(gt, add_special_tokens=False)["input_ids"][:VERBMEM_NEW_TOKENS]) for _, gt in pairs]
    return {"scores": np.array([muse.rouge_l_f1(o, t) for o, t in zip(outs, truths)]), "outputs": outs}


def _knowmem(ids_attr: str):
    def build(ev: Evaluation) -> dict[str, Any] | None:
        qs = _qa_of(ev, getattr(ev, ids_attr))
        return knowmem_answers(ev.model, ev.task, qs.qa, ev.device) if qs.qa else None
    return build


def _answer_scores(model, ev: Evaluation, ids: np.ndarray):
    """Teacher-forced scores of the true answers, of the paraphrased and of the perturbed ones (TOFU)."""
    from obliviate.lm import score

    qs = _qa_of(ev, ids)
    if not qs.qa:
        return None
    tok = _tok(ev)
    prompts = [QA_PROMPT.format(question=q.question) for q in qs.qa]
    answers = score(model, tok, [(p, " " + q.answer) for p, q in zip(prompts, qs.qa)], ev.device)
    out = {"answers": answers, "truth_ratio": None}
    with_tr = [q.paraphrased is not None and len(q.perturbed) > 0 for q in qs.qa]
    if all(with_tr):
        m = min(len(q.perturbed) for q in qs.qa)
        para = score(model, tok, [(p, " " + q.paraphrased) for p, q in zip(prompts, qs.qa)], ev.device)
        pert = score(model, tok, [(p, " " + w) for p, q in zip(prompts, qs.qa) for w in q.perturbed[:m]], ev.device)
        out["truth_ratio"] = tofu.truth_ratio(para.nll_mean, pert.nll_mean.reshape(len(qs.qa), m))
    return out


def _mink(model, ev: Evaluation, records) -> np.ndarray:
    from obliviate.lm import score

    texts = [r.text for r in records if r.text]
    if not texts:
        return np.zeros(0)
    s = score(model, _tok(ev), [("", t) for t in texts], ev.device, eos=False)
    return np.array([muse.min_k_percent(lp, MIN_K) for lp in s.token_logprobs])


def _privleak_auc(model, ev: Evaluation) -> float | None:
    data = ev.task.data
    holdout = _mink(model, ev, data.holdout)
    forget = _mink(model, ev, [data.train[int(i)] for i in ev.forget_ids])
    if holdout.size == 0 or forget.size == 0:
        return None
    return muse.mia_auc(forget, holdout)


def _reference(name: str, fn):
    def build(ev: Evaluation):
        return None if ev.reference is None else fn(ev.reference, ev)
    ARTIFACTS[name] = build


ARTIFACTS.update({
    "lm_verbmem": _verbmem,
    "lm_knowmem_forget": _knowmem("forget_ids"),
    "lm_knowmem_retain": _knowmem("retain_ids"),
    "lm_scores_forget": lambda ev: _answer_scores(ev.model, ev, ev.forget_ids),
    "lm_scores_retain": lambda ev: _answer_scores(ev.model, ev, ev.retain_ids),
    "lm_auc": lambda ev: _privleak_auc(ev.model, ev),
    "lm_forget_mink": lambda ev: _mink(ev.model, ev, [ev.task.data.train[int(i)] for i in ev.forget_ids]),
})
ARTIFACTS["lm_privleak_reference"] = (
    lambda ev: NO_ORACLE_AUC if ev.reference is None else _privleak_auc(ev.reference, ev))
_reference("lm_reference_scores_forget", lambda model, ev: _answer_scores(model, ev, ev.forget_ids))


def _mean(x) -> float | None:
    return float(np.mean(x)) if x is not None and len(x) else None


@metric("verbmem_f", _LM, ("lm_verbmem",), "MUSE VerbMem: ROUGE-L F1 of greedy continuations of forget documents")
def _verbmem_f(v):
    return _mean(v["scores"])


@metric("knowmem_f", _LM, ("lm_knowmem_forget",), "MUSE KnowMem on forget QA: ROUGE-L F1 of few-shot greedy answers")
def _knowmem_f(k):
    return _mean(k["f1"])


@metric("knowmem_r", _LM, ("lm_knowmem_retain",), "MUSE KnowMem on retain QA (UtilityPreserve)", target="original")
def _knowmem_r(k):
    return _mean(k["f1"])


@metric("privleak_auc", _LM, ("lm_auc",), "Min-40 % attack AUC, forget (0) vs holdout (1); ≈ 0 when memorised")
def _auc(auc):
    return auc


@metric("privleak", _LM, ("lm_auc", "lm_privleak_reference"),
        "MUSE PrivLeak (%): (AUC − AUC_oracle)/AUC_oracle × 100 (vs 0.5 without an oracle); 0 ideal, "
        "−100 memorised, > 0 over-unlearned")
def _privleak(auc, ref):
    return muse.privleak(auc, ref)


@metric("forget_truth_ratio", _LM, ("lm_scores_forget",),
        "TOFU truth ratio on forget QA, mean(min(TR, 1/TR)); the oracle's is the target")
def _forget_tr(s):
    return None if s is None or s["truth_ratio"] is None else tofu.truth_ratio_closer_to_1(s["truth_ratio"])


@metric("forget_quality", _LM, ("lm_scores_forget", "lm_reference_scores_forget"),
        "TOFU forget quality: KS-test p-value of forget truth ratios vs the oracle's (1 = indistinguishable)",
        target="max")
def _forget_quality(s, ref):
    if s is None or ref is None or s["truth_ratio"] is None or ref["truth_ratio"] is None:
        return None
    return tofu.forget_quality(s["truth_ratio"], ref["truth_ratio"])


@metric("forget_prob", _LM, ("lm_scores_forget",), "TOFU probability of the true forget answers (mean)")
def _forget_prob(s):
    return None if s is None else _mean(tofu.probability(s["answers"].nll_mean))


@metric("extraction_strength", _LM, ("lm_scores_forget",),
        "OpenUnlearning extraction strength on forget answers (0 = nothing extractable, 1 = all)")
def _es(s):
    if s is None:
        return None
    a = s["answers"]
    return _mean([tofu.extraction_strength(p, y) for p, y in zip(a.argmax, a.labels) if len(y)])


@metric("utility", _LM, ("lm_scores_retain", "lm_knowmem_retain"),
        "TOFU-style model utility on retain QA: harmonic mean of answer probability, ROUGE-L recall and "
        "truth ratio (true_better)", target="original")
def _utility(s, k):
    if s is None or k is None:
        return None
    parts = [_mean(tofu.probability(s["answers"].nll_mean)), _mean(k["recall"])]
    if s["truth_ratio"] is not None:
        parts.append(tofu.truth_ratio_true_better(s["truth_ratio"]))
    return tofu.model_utility(parts)


def per_example(ev: Evaluation) -> dict[str, list]:
    """Per forget record / QA values kept beside the aggregates."""
    out: dict[str, list] = {}
    v = ev.artifact("lm_verbmem")
    out["verbmem_f"] = np.round(v["scores"], 6).tolist()
    k = ev.artifact("lm_knowmem_forget")
    if k is not None:
        out["knowmem_f"] = np.round(k["f1"], 6).tolist()
        out["knowmem_f_answers"] = k["outputs"]
    s = ev.artifact("lm_scores_forget")
    if s is not None and s["truth_ratio"] is not None:
        out["forget_truth_ratio"] = np.round(s["truth_ratio"], 6).tolist()
    out["forget_min40"] = np.round(ev.artifact("lm_forget_mink"), 6).tolist()
    return out
