"""Language metrics: MUSE six-way (VerbMem, KnowMem, PrivLeak, utility), TOFU (truth ratio, forget quality,
probability, ROUGE, 9-part model utility), OpenUnlearning's extraction strength / exact memorisation and its MIA
suite, as artifacts and metrics of :class:`~obliviate.metrics.core.Evaluation`.

Artifacts hold the expensive parts — greedy generations, teacher-forced scores — computed once per model and
split; the metrics are the pure functions of :mod:`obliviate.metrics.muse`, :mod:`obliviate.metrics.tofu` and
:mod:`obliviate.metrics.lm_mia` over them. Metrics measured against the oracle (``privleak``'s reference AUC,
``forget_quality``'s KS test, the reference MIA) score the reference model on the same data (teacher-forced only).

Where the evaluation sets come from: a task's records carry the QA pairs its forget / retain metrics score
(TOFU: the ``*_perturbed`` pairs of each author); :class:`~obliviate.tasks.text.TextData` may override them with
sets not tied to records (MUSE's ``knowmem/*_qa.json`` with their ``*_icl.json``, TOFU's real authors and world
facts), VerbMem's (prompt, ground truth) pairs (MUSE's ``verbmem/forget.json``) and the MIA texts (MUSE's
``privleak/*.json``). Every QA prompt is the task's template (:class:`~obliviate.tasks.text.PromptTemplate`), the
same layout the methods train with.

Conventions (MUSE, TOFU and OpenUnlearning, as in their official code): VerbMem = ROUGE-L F1 (MUSE: no stemmer) of the greedy continuation
(≤ 128 new tokens) against the ground truth cut to 128 model tokens; KnowMem = ROUGE-L F1 of the greedy answer
(≤ 32 tokens, MUSE post-processing) to the few-shot prompt; PrivLeak = (AUC − AUC_oracle)/AUC_oracle × 100 with
MUSE's Min-40 % attack on forget vs holdout (−100 = memorised); TOFU ROUGE = ROUGE-L recall with the Porter
stemmer (TOFU / OpenUnlearning); MIA AUCs in OpenUnlearning's orientation (forget 0, holdout 1, loss-like scores:
≈ 1 memorised, ≈ 0.5 indistinguishable). Values are fractions except PrivLeak (percent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from obliviate.metrics import muse, tofu
from obliviate.metrics.core import ARTIFACTS, Evaluation, metric, per_example_for
from obliviate.tasks.text import TEMPLATES, QA_PROMPT

_LM = ("language",)


def _lm_mia():
    from obliviate.metrics import lm_mia  # the MIA suite (imports torch-side helpers only when evaluated)

    return lm_mia
VERBMEM_NEW_TOKENS = 128
KNOWMEM_NEW_TOKENS = 32
MIN_K = 0.4
NO_ORACLE_AUC = 0.5  # OpenUnlearning's ref_value when no retrained model is available


# -- prompts ------------------------------------------------------------------------------------------------------

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


def _template(task):
    return getattr(task, "template", None) or TEMPLATES["plain"]


def knowmem_prompt(icl: list, question: str, template=None, tokenizer=None) -> str:
    """The few-shot KnowMem prompt: every shot as prompt + answer + a blank line, then the question's prompt
    (MUSE ``metrics/knowmem.py`` with the ``muse`` template, trailing space included). A chat template renders
    the shots as earlier user / assistant turns of one conversation."""
    t = template or TEMPLATES["plain"]
    if t.chat:
        messages = [m for q in icl for m in ({"role": "user", "content": q.question},
                                            {"role": "assistant", "content": q.answer})]
        if not icl:
            return t.render_prompt(question, tokenizer)
        text = tokenizer.apply_chat_template(messages + [{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        bos = tokenizer.bos_token
        return text[len(bos):] if bos and text.startswith(bos) else text
    shots = "".join(f"{t.render_prompt(q.question)}{t.render_answer(q.answer)}\n\n" for q in icl)
    return shots + t.render_prompt(question)


def icl_shots(task, role: str | None = None) -> list:
    """The task's few-shot KnowMem examples: ``icl_shots`` of the set's own pool (MUSE's ``forget_qa_icl`` /
    ``retain_qa_icl``) or of the task's ICL pool."""
    pool = task.data.qa_icl.get(role) if role else None
    return list((pool if pool is not None else task.data.icl)[:int(getattr(task.options, "icl_shots", 0))])


def knowmem_prompts(task, questions: list[str], role: str | None = None) -> list[str]:
    """The exact prompts KnowMem generates from for ``questions`` on ``task`` (its few-shot examples and prompt
    template): what a generation-time guard must recognise."""
    icl, t = icl_shots(task, role), _template(task)
    tok = task.tokenizer() if t.chat else None
    return [knowmem_prompt(icl, q, t, tok) for q in questions]


def eval_qa(task, ids) -> list:
    """The evaluation QA pairs of the records ``ids`` (in id order): what KnowMem / TOFU metrics score."""
    recs = task.data.train
    return [q for i in ids for q in recs[int(i)].qa]


def _pair(task, question: str, answer: str) -> tuple[str, str]:
    if hasattr(task, "qa_pair"):
        return task.qa_pair(question, answer)
    return QA_PROMPT.format(question=question), " " + answer


# -- evaluation sets ----------------------------------------------------------------------------------------------

@dataclass
class QASet:
    """The QA pairs one metric scores and the role of their few-shot pool (``forget`` / ``retain`` / None)."""

    qa: list
    role: str | None = None


def qa_set(ev: Evaluation, role: str) -> QASet:
    """``forget`` / ``retain``: the task's set of that name, else the QA of the forget / retain records;
    any other role: the task's set of that name (possibly empty)."""
    sets = ev.task.data.qa_sets
    if role in sets:
        return QASet(list(sets[role]), role)
    if role in ("forget", "retain"):
        return QASet(eval_qa(ev.task, ev.forget_ids if role == "forget" else ev.retain_ids), role)
    return QASet([], role)


def _tok(ev: Evaluation):
    return ev.task.tokenizer()


# -- generation artifacts ----------------------------------------------------------------------------------------

def knowmem_answers(model, task, qa: list, device, prompts: list[str] | None = None,
                    role: str | None = None) -> dict[str, Any]:
    """Greedy answers (≤ 32 tokens, MUSE clean-up) to ``qa`` and their ROUGE-L F1 / recall; the prompts are the
    task's few-shot KnowMem prompts unless given (the in-context audit prefixes them with a document)."""
    from obliviate.lm import generate

    if prompts is None:
        prompts = knowmem_prompts(task, [q.question for q in qa], role)
    outs = generate(model, task.tokenizer(), prompts, device, max_new_tokens=KNOWMEM_NEW_TOKENS)
    outs = [muse.clean_knowmem_answer(o) for o in outs]
    return {"f1": np.array([muse.rouge_l_f1(o, q.answer) for o, q in zip(outs, qa)]),
            "recall": np.array([muse.rouge_l_recall(o, q.answer) for o, q in zip(outs, qa)]),
            "outputs": outs}


def _verbmem(ev: Evaluation) -> dict[str, Any]:
    from obliviate.lm import generate

    tok = _tok(ev)
    given = ev.task.data.verbmem
    if given:  # MUSE's verbmem/forget.json: the ground truth cut to 128 tokens of tok(gt) as MUSE does
        prompts = [p for p, _ in given]
        truths = [tok.decode(tok(gt, add_special_tokens=True)["input_ids"][:VERBMEM_NEW_TOKENS],
                             skip_special_tokens=True) for _, gt in given]
    else:
        docs = [ev.task.data.train[int(i)] for i in ev.forget_ids if ev.task.data.train[int(i)].text]
        if not docs:
            return {"scores": np.zeros(0), "outputs": []}
        pairs = [verbmem_pair(tok, d.text) for d in docs]
        prompts = [p for p, _ in pairs]
        truths = [tok.decode(tok(gt, add_special_tokens=False)["input_ids"][:VERBMEM_NEW_TOKENS]) for _, gt in pairs]
    outs = generate(ev.model, tok, prompts, ev.device, max_new_tokens=VERBMEM_NEW_TOKENS)
    return {"scores": np.array([muse.rouge_l_f1(o, t) for o, t in zip(outs, truths)]), "outputs": outs}


def _knowmem(role: str):
    def build(ev: Evaluation) -> dict[str, Any] | None:
        s = qa_set(ev, role)
        return knowmem_answers(ev.model, ev.task, s.qa, ev.device, role=s.role) if s.qa else None
    return build


def _rouge_new_tokens(task) -> int | None:
    """TOFU's ROUGE generations are on for tasks that declare their length (``rouge_new_tokens``)."""
    n = getattr(task.options, "rouge_new_tokens", None)
    return int(n) if n else None


def _tofu_rouge(role: str):
    """TOFU ``*_Q_A_ROUGE``: greedy answers to the bare (template) prompt, ROUGE-L recall with stemming."""
    def build(ev: Evaluation) -> dict[str, Any] | None:
        from obliviate.lm import generate

        n = _rouge_new_tokens(ev.task)
        qa = qa_set(ev, role).qa
        if n is None or not qa:
            return None
        prompts = [ev.task.qa_prompt(q.question) for q in qa]
        outs = [o.strip() for o in generate(ev.model, _tok(ev), prompts, ev.device, max_new_tokens=n)]
        return {"recall": np.array([muse.rouge_l_recall(o, q.answer, stemmer=True) for o, q in zip(outs, qa)]),
                "outputs": outs}
    return build


# -- teacher-forced artifacts ------------------------------------------------------------------------------------

def answer_scores(model, task, qa: list, device) -> dict[str, Any] | None:
    """Teacher-forced scores of the true answers, and — when every pair has them — of the paraphrased and the
    perturbed ones: the truth ratio and the options-normalised probability (TOFU)."""
    from obliviate.lm import score

    if not qa:
        return None
    tok = task.tokenizer()
    answers = score(model, tok, [_pair(task, q.question, q.answer) for q in qa], device)
    out: dict[str, Any] = {"answers": answers, "truth_ratio": None, "prob_options": None}
    if all(q.paraphrased is not None and len(q.perturbed) > 0 for q in qa):
        m = min(len(q.perturbed) for q in qa)
        para = score(model, tok, [_pair(task, q.question, q.paraphrased) for q in qa], device)
        pert = score(model, tok, [_pair(task, q.question, w) for q in qa for w in q.perturbed[:m]], device)
        wrong = pert.nll_mean.reshape(len(qa), m)
        out["truth_ratio"] = tofu.truth_ratio(para.nll_mean, wrong)
        out["prob_options"] = tofu.probability_w_options(answers.nll_mean, wrong)
    return out


def _answer_scores(role: str, reference: bool = False):
    def build(ev: Evaluation):
        model = ev.reference if reference else ev.model
        if model is None:
            return None
        return answer_scores(model, ev.task, qa_set(ev, role).qa, ev.device)
    return build


def _reference_truth_ratio(ev: Evaluation) -> np.ndarray | None:
    """The retain model's forget truth ratios: from ``retain_logs`` when the task has them, else scored on the
    reference model."""
    logged = getattr(ev.task, "retain_log_tr", None)
    if logged is not None:
        return logged
    s = ev.artifact("lm_reference_scores_forget")
    return None if s is None else s["truth_ratio"]


def _mink(model, ev: Evaluation, texts: list[str]) -> np.ndarray:
    from obliviate.lm import score

    texts = [t for t in texts if t]
    if not texts:
        return np.zeros(0)
    s = score(model, _tok(ev), [("", t) for t in texts], ev.device, eos=False)
    return np.array([muse.min_k_percent(lp, MIN_K) for lp in s.token_logprobs])


def _privleak_texts(ev: Evaluation) -> tuple[list[str], list[str]]:
    d = ev.task.data
    if d.privleak:
        return d.privleak["forget"], d.privleak["holdout"]
    return [d.train[int(i)].text for i in ev.forget_ids], [r.text for r in d.holdout]


def _privleak_auc(model, ev: Evaluation) -> float | None:
    forget_texts, holdout_texts = _privleak_texts(ev)
    holdout, forget = _mink(model, ev, holdout_texts), _mink(model, ev, forget_texts)
    if holdout.size == 0 or forget.size == 0:
        return None
    return muse.mia_auc(forget, holdout)


def _privleak_reference(ev: Evaluation) -> float | None:
    if ev.reference is not None:
        return _privleak_auc(ev.reference, ev)
    return float(getattr(ev.task, "reference_auc", NO_ORACLE_AUC))


# -- the MIA suite (OpenUnlearning's attacks, forget vs holdout) --------------------------------------------------

def mia_samples(ev: Evaluation) -> tuple[list, list, bool] | None:
    """(forget pairs, holdout pairs, eos) the MIAs compare: MUSE's privleak texts; TOFU's forget QA pairs (the
    trained ones) against its holdout QA pairs; else forget documents against holdout documents. None without
    both sides."""
    task, d = ev.task, ev.task.data
    if d.privleak:
        forget, holdout, eos = [("", t) for t in d.privleak["forget"]], [("", t) for t in d.privleak["holdout"]], False
    elif getattr(task, "mia_samples", None) == "qa":
        if "holdout" not in d.qa_sets:
            return None
        trained = [q for i in ev.forget_ids for q in (d.train[int(i)].train_qa or d.train[int(i)].qa)]
        forget = [_pair(task, q.question, q.answer) for q in trained]
        holdout = [_pair(task, q.question, q.answer) for q in d.qa_sets["holdout"]]
        eos = True
    else:
        forget = [("", d.train[int(i)].text) for i in ev.forget_ids if d.train[int(i)].text]
        holdout = [("", r.text) for r in d.holdout if r.text]
        eos = False
    return (forget, holdout, eos) if forget and holdout else None


def _drop_last(a: np.ndarray) -> np.ndarray:
    """OpenUnlearning's token-level attacks skip the last labelled position (``[:-1]``, the EOS of a QA pair)."""
    return a[:-1]


def _mia_stats(model, ev: Evaluation, pairs: list, eos: bool) -> dict[str, np.ndarray]:
    from obliviate.lm import score

    tok = _tok(ev)
    s = score(model, tok, pairs, ev.device, eos=eos, moments=True)
    texts = [tok.decode(lab.tolist(), skip_special_tokens=True) for lab in s.labels]
    return {
        "loss": np.array([_lm_mia().loss_score(v) for v in s.nll_mean]),
        "nll_mean": s.nll_mean,
        "zlib": np.array([_lm_mia().zlib_score(v, t) for v, t in zip(s.nll_mean, texts)]),
        "min_k": np.array([_lm_mia().min_k_score(_drop_last(lp), MIN_K) for lp in s.token_logprobs]),
        "min_k++": np.array([_lm_mia().min_k_plus_plus_score(_drop_last(lp), _drop_last(mu), _drop_last(s2), MIN_K)
                             for lp, mu, s2 in zip(s.token_logprobs, s.mu, s.sigma2)]),
    }


def _mia(ev: Evaluation, reference: bool = False) -> dict[str, Any] | None:
    samples = mia_samples(ev)
    model = ev.reference if reference else ev.model
    if samples is None or model is None:
        return None
    forget, holdout, eos = samples
    out = {"forget": _mia_stats(model, ev, forget, eos), "holdout": _mia_stats(model, ev, holdout, eos)}
    if not reference:  # the oracle's statistics serve the Reference attack and PrivLeak; GradNorm is the model's
        tok = _tok(ev)
        out["gradnorm"] = (_lm_mia().gradnorm_scores(model, tok, forget, ev.device, eos=eos),
                           _lm_mia().gradnorm_scores(model, tok, holdout, ev.device, eos=eos))
    return out


def _mia_reference_attack(ev: Evaluation) -> tuple[np.ndarray, np.ndarray] | None:
    """The Reference attack's scores: the model's avg loss minus the reference (oracle) model's, per sample."""
    m, r = ev.artifact("lm_mia"), ev.artifact("lm_mia_oracle")
    if m is None or r is None:
        return None
    return (np.array([_lm_mia().reference_score(a, b) for a, b in zip(m["forget"]["nll_mean"], r["forget"]["nll_mean"])]),
            np.array([_lm_mia().reference_score(a, b) for a, b in zip(m["holdout"]["nll_mean"], r["holdout"]["nll_mean"])]))


ARTIFACTS.update({
    "lm_verbmem": _verbmem,
    "lm_knowmem_forget": _knowmem("forget"),
    "lm_knowmem_retain": _knowmem("retain"),
    "lm_scores_forget": _answer_scores("forget"),
    "lm_scores_retain": _answer_scores("retain"),
    "lm_scores_real_authors": _answer_scores("real_authors"),
    "lm_scores_world_facts": _answer_scores("world_facts"),
    "lm_reference_scores_forget": _answer_scores("forget", reference=True),
    "lm_reference_truth_ratio": _reference_truth_ratio,
    "lm_rouge_forget": _tofu_rouge("forget"),
    "lm_rouge_retain": _tofu_rouge("retain"),
    "lm_rouge_real_authors": _tofu_rouge("real_authors"),
    "lm_rouge_world_facts": _tofu_rouge("world_facts"),
    "lm_auc": lambda ev: _privleak_auc(ev.model, ev),
    "lm_privleak_reference": _privleak_reference,
    "lm_forget_mink": lambda ev: _mink(ev.model, ev, _privleak_texts(ev)[0]),
    "lm_mia": lambda ev: _mia(ev) if getattr(ev.task, "mia_suite", False) else None,
    "lm_mia_oracle": lambda ev: (_mia(ev, reference=True) if getattr(ev.task, "mia_suite", False)
                                 and ev.reference is not None else None),
    "lm_mia_reference": _mia_reference_attack,
})


def _mean(x) -> float | None:
    return float(np.mean(x)) if x is not None and len(x) else None


# -- MUSE ----------------------------------------------------------------------------------------------------------

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
        "MUSE PrivLeak (%): (AUC − AUC_oracle)/AUC_oracle × 100 (without an oracle: MUSE's published retrain AUC "
        "on muse, else 0.5); 0 ideal, −100 memorised, > 0 over-unlearned", unit="percent")
def _privleak(auc, ref):
    return muse.privleak(auc, ref)


# -- TOFU ----------------------------------------------------------------------------------------------------------

@metric("forget_truth_ratio", _LM, ("lm_scores_forget",),
        "TOFU truth ratio on forget QA, mean(min(TR, 1/TR)); the oracle's is the target")
def _forget_tr(s):
    return None if s is None or s["truth_ratio"] is None else tofu.truth_ratio_closer_to_1(s["truth_ratio"])


@metric("forget_quality", _LM, ("lm_scores_forget", "lm_reference_truth_ratio"),
        "TOFU forget quality: KS-test p-value of forget truth ratios vs the retain model's (oracle or retain_logs; "
        "1 = indistinguishable)", target="max")
def _forget_quality(s, ref):
    if s is None or s["truth_ratio"] is None:
        return None
    return tofu.forget_quality(s["truth_ratio"], ref)


@metric("forget_prob", _LM, ("lm_scores_forget",), "TOFU probability of the true forget answers (mean)")
def _forget_prob(s):
    return None if s is None else _mean(tofu.probability(s["answers"].nll_mean))


@metric("forget_rouge", _LM, ("lm_rouge_forget",),
        "TOFU ROUGE on forget QA: ROUGE-L recall (stemmed) of greedy answers to the bare prompt")
def _forget_rouge(r):
    return _mean(r["recall"])


@metric("extraction_strength", _LM, ("lm_scores_forget",),
        "OpenUnlearning extraction strength on forget answers (EOS excluded; 1/|y| when no suffix is reproduced)")
def _es(s):
    if s is None:
        return None
    a = s["answers"]
    return _mean([tofu.extraction_strength_ou(p, y) for p, y in zip(a.argmax, a.labels) if len(y)])


@metric("extraction_strength_paper", _LM, ("lm_scores_forget",),
        "extraction strength as defined (0 when no suffix is reproduced; EOS included)")
def _es_paper(s):
    if s is None:
        return None
    a = s["answers"]
    return _mean([tofu.extraction_strength(p, y) for p, y in zip(a.argmax, a.labels) if len(y)])


@metric("exact_memorization", _LM, ("lm_scores_forget",),
        "OpenUnlearning exact memorisation on forget answers: teacher-forced argmax = label, EOS excluded")
def _em(s):
    if s is None:
        return None
    a = s["answers"]
    vals = [tofu.exact_memorization_ou(p, y) for p, y in zip(a.argmax, a.labels) if len(y) > 1]
    return _mean(vals)


@metric("utility", _LM, ("lm_scores_retain", "lm_knowmem_retain"),
        "TOFU-style utility on retain QA only: harmonic mean of answer probability, KnowMem ROUGE-L recall and "
        "truth ratio (true_better); see model_utility for TOFU's 9-part score", target="original")
def _utility(s, k):
    if s is None or k is None:
        return None
    parts = [_mean(tofu.probability(s["answers"].nll_mean)), _mean(k["recall"])]
    if s["truth_ratio"] is not None:
        parts.append(tofu.truth_ratio_true_better(s["truth_ratio"]))
    return tofu.model_utility(parts)


def tofu_utility_parts(retain, real_authors, world_facts, rouge_retain, rouge_ra, rouge_wf) -> dict[str, float] | None:
    """TOFU's 9 utility numbers (``aggregate_eval_stat.py`` / OpenUnlearning ``hm_aggregate``): retain probability
    raw, real authors / world facts probability normalised over the options, ROUGE-L recall, truth ratio
    (true_better) of each set."""
    sets = {"retain": (retain, rouge_retain), "real_authors": (real_authors, rouge_ra),
            "world_facts": (world_facts, rouge_wf)}
    parts: dict[str, float] = {}
    for name, (s, r) in sets.items():
        if s is None or r is None or s["truth_ratio"] is None:
            return None
        parts[f"{name}_prob"] = (_mean(tofu.probability(s["answers"].nll_mean)) if name == "retain"
                                 else _mean(s["prob_options"]))
        parts[f"{name}_rouge"] = _mean(r["recall"])
        parts[f"{name}_truth_ratio"] = tofu.truth_ratio_true_better(s["truth_ratio"])
    return parts


@metric("model_utility", _LM, ("lm_scores_retain", "lm_scores_real_authors", "lm_scores_world_facts",
                               "lm_rouge_retain", "lm_rouge_real_authors", "lm_rouge_world_facts"),
        "TOFU model utility: harmonic mean of {probability, ROUGE-L recall, truth ratio} × {retain, real authors, "
        "world facts}", target="original")
def _model_utility(*artifacts):
    parts = tofu_utility_parts(*artifacts)
    return None if parts is None else tofu.tofu_model_utility(parts)


# -- MIAs (OpenUnlearning's suite; AUC with forget = 0, holdout = 1, loss-like scores) ---------------------------

def _auc_metric(attack: str):
    def fn(m):
        return _lm_mia().auc_ou(m["forget"][attack], m["holdout"][attack])
    return fn


for _name, _help in (("loss", "average answer / text loss"), ("zlib", "loss / zlib-compressed length"),
                     ("min_k", "−mean of the 40 % lowest token log-probs"),
                     ("min_k++", "Min-K%++: token log-probs standardised by the vocabulary's mean and variance")):
    metric(f"mia_{_name}", _LM, ("lm_mia",),
           f"MIA AUC ({_help}), forget 0 vs holdout 1: ≈ 1 memorised, ≈ 0.5 indistinguishable")(_auc_metric(_name))


@metric("mia_gradnorm", _LM, ("lm_mia",),
        "MIA AUC (gradient norm of the loss), forget 0 vs holdout 1: ≈ 1 memorised, ≈ 0.5 indistinguishable")
def _mia_gradnorm(m):
    f, h = m["gradnorm"]
    return _lm_mia().auc_ou(f, h)


@metric("mia_reference", _LM, ("lm_mia_reference",),
        "MIA AUC (loss minus the oracle's loss), forget 0 vs holdout 1; needs a reference model")
def _mia_reference(scores):
    return _lm_mia().auc_ou(*scores)


def _privleak_ou_reference(ev: Evaluation) -> float | None:
    """The oracle's Min-40 % AUC (OpenUnlearning orientation), or 0.5 — OpenUnlearning's ref_value — without one."""
    if not getattr(ev.task, "mia_suite", False):
        return None
    ref = ev.artifact("lm_mia_oracle")
    return 0.5 if ref is None else _lm_mia().auc_ou(ref["forget"]["min_k"], ref["holdout"]["min_k"])


ARTIFACTS["lm_privleak_ou_reference"] = _privleak_ou_reference


@metric("privleak_ou", _LM, ("lm_mia", "lm_privleak_ou_reference"),
        "PrivLeak as OpenUnlearning computes it (Min-40 % AUC without the EOS, 1e-10 in the denominator, "
        "reference 0.5 without an oracle); same sign convention as privleak", unit="percent")
def _privleak_ou(m, ref_auc_ou):
    return muse.privleak_ou(_lm_mia().auc_ou(m["forget"]["min_k"], m["holdout"]["min_k"]), ref_auc_ou)


# -- per-example values -------------------------------------------------------------------------------------------

@per_example_for("language")
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
    r = ev.artifact("lm_rouge_forget")
    if r is not None:
        out["forget_rouge"] = np.round(r["recall"], 6).tolist()
    out["forget_min40"] = np.round(ev.artifact("lm_forget_mink"), 6).tolist()
    m = ev.artifact("lm_mia")
    if m is not None:
        out["mia_forget_loss"] = np.round(m["forget"]["loss"], 6).tolist()
    return out
