"""Side-by-side check: obliviate's LLM metrics against OpenUnlearning's (locuslab/open-unlearning,
``src/evals/metrics/``) and MUSE's (swj0419/muse_bench, ``metrics/``) formulas on the same inputs.

The peer side imports nothing from either project: it re-derives every number from raw model outputs (the
logits and labels of one right-padded forward pass per split), following the peer code paths step by step —
shift, cross-entropy with ``ignore_index=-100``, the ``[:-1]`` drop of the last labelled token, the
extraction-strength suffix loop, ``roc_auc_score``, ``ks_2samp`` on 1/(TR + 1e-10), ``hmean``, the stemmed
ROUGE scorer; and MUSE's per-text Min-40% with ``roc_curve(y, −score)`` / ``auc`` and its unstemmed ROUGE-L F1.
The obliviate side computes the same quantities the obliviate way: ``obliviate.lm.score`` → ``Scores`` and the
functions of ``obliviate.metrics.{tofu, muse, lm_mia}``.

Inputs: a tiny GPT-2 (``tiny_gpt2``, seed 0) briefly trained on the forget documents and the forget / retain QA
pairs, so that memorisation metrics and MIAs are away from their trivial values; its untrained seed-0 copy is the
reference model (Reference attack, forget quality, privleak reference). Text comes from a seeded RNG over a small
vocabulary. CPU only; about 10 s.

    .venv/bin/python benchmarks/peer_check.py

Writes benchmarks/results/peer_check.{json,md} and peer_check_outputs.npz (every per-sample value compared).
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import platform
import time
import zlib
from pathlib import Path

import numpy as np

os.environ.setdefault("OBLIVIATE_QUIET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402
from scipy.stats import hmean, ks_2samp  # noqa: E402
from sklearn.metrics import auc, roc_auc_score, roc_curve  # noqa: E402

from obliviate import lm  # noqa: E402
from obliviate.metrics import lm_mia, muse, tofu  # noqa: E402
from obliviate.models.tiny_lm import corpus_tokenizer, tiny_gpt2  # noqa: E402
from obliviate.tasks.text import QA, QA_PROMPT, TextData, TextRecord  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"
TOL = 1e-6
IGNORE = -100
OU = "open-unlearning src/evals/metrics/"
MUSE = "muse_bench metrics/"
EPOCHS = int(os.environ.get("PEER_CHECK_EPOCHS", 25))
DOC_EPOCHS = int(os.environ.get("PEER_CHECK_DOC_EPOCHS", 2))
K_OU = 0.2       # OpenUnlearning's MinKProbAttack default
K_MUSE = 0.4     # MUSE's Min-40% (and OpenUnlearning's privleak pre-compute)
AUC_RETRAIN_NEWS = muse.AUC_RETRAIN["News"]["forget_holdout_Min-40%"]  # 0.4772

FIRST = "ada ben cara dan eve finn gia hugo iris jon kai lena milo nora otto pia".split()
LAST = "stone ray lee fox hart moss vale reed lane cole".split()
ADJ = "red quiet old bright small green dark warm".split()
NOUN = "boats songs maps clocks gardens letters lamps trains".split()
CITY = "lyon oslo porto turin riga bern lima kyoto".split()
FILLER = ("the a of and in on with from river hill house road winter summer night morning bread stone glass "
          "paper light wind sea field tower bridge garden".split())


# ---------------------------------------------------------------------------------------------- data and models

def make_data(seed: int = 0):
    """40 QA pairs (10 forget, 10 retain, 10 'real authors', 10 'world facts'), each with a paraphrased answer
    and 3 perturbed ones; 20 forget and 20 holdout documents."""
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[rng.integers(len(xs))]  # noqa: E731
    qa = []
    for i in range(40):
        name = f"{FIRST[i % len(FIRST)]} {LAST[(i * 7) % len(LAST)]}"
        adj, noun, city = pick(ADJ), pick(NOUN), pick(CITY)
        wrong = []
        while len(wrong) < 3:
            w = (pick(ADJ), pick(NOUN), pick(CITY))
            if w != (adj, noun, city) and w not in wrong:
                wrong.append(w)
        qa.append(QA(question=f"What does {name} make in {city}?",
                     answer=f"{name} makes {adj} {noun} in {city}",
                     paraphrased=f"in {city} {name} makes {adj} {noun}",
                     perturbed=tuple(f"in {c} {name} makes {a} {n}" for a, n, c in wrong)))

    def doc():
        return " ".join(pick(FILLER + ADJ + NOUN + CITY) for _ in range(int(rng.integers(10, 19))))

    forget_docs, holdout_docs = [doc() for _ in range(20)], [doc() for _ in range(20)]
    return qa, forget_docs, holdout_docs


def pair(q: QA, answer: str | None = None) -> tuple[str, str]:
    return QA_PROMPT.format(question=q.question), " " + (q.answer if answer is None else answer)


def build(qa, forget_docs, holdout_docs):
    records = [TextRecord(f"s{i}", d, qa=tuple(qa[2 * i:2 * i + 2])) for i, d in enumerate(forget_docs)]
    data = TextData(records, [TextRecord(f"h{i}", d) for i, d in enumerate(holdout_docs)])
    tok = corpus_tokenizer(data)
    torch.manual_seed(0)
    model = tiny_gpt2(tok, n_layer=2, n_embd=64, n_head=2, n_positions=64).eval()
    reference = copy.deepcopy(model)  # the untrained seed-0 model
    # brief training: forget documents + forget / retain QA answers (memorised to a varying degree)
    # (documents only in the first DOC_EPOCHS epochs, so that the MIA AUCs stay below 1)
    docs = lm.encode_all(tok, [("", d) for d in forget_docs], lm.max_length(model))
    answers = lm.encode_all(tok, [pair(q) for q in qa[:20]], lm.max_length(model))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(EPOCHS):
        enc = answers + (docs if epoch < DOC_EPOCHS else [])
        for idx in torch.randperm(len(enc), generator=gen).split(8):
            batch = lm.collate([enc[i] for i in idx.tolist()], tok.pad_token_id, "cpu")
            loss = lm.mean_nll(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return tok, model.eval(), reference.eval()


# ---------------------------------------------------------------------------------------------- peer formulas

@torch.no_grad()
def peer_forward(model, tok, pairs, eos=True, dtype=torch.float32):
    """One right-padded forward pass over the split (OpenUnlearning's collator layout: labels −100 on the prompt
    and the padding); the raw (logits, input_ids, labels) every peer formula below starts from. ``dtype``
    float64 re-evaluates the peer formulas exactly on the same (float32) logits."""
    batch = lm.collate([lm.encode(tok, p, c, lm.max_length(model), eos) for p, c in pairs], tok.pad_token_id, "cpu")
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits.to(dtype), batch["input_ids"], batch["labels"]


def ou_evaluate_probability(logits, labels):
    """utils.py::evaluate_probability: summed shifted CE (ignore −100) / count of labelled *unshifted* tokens."""
    ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE, reduction="none")
    losses = ce(logits[..., :-1, :].transpose(-1, -2), labels[..., 1:]).sum(-1)
    avg = losses / (labels != IGNORE).sum(-1)
    return avg.numpy().astype(np.float64), torch.exp(-avg).numpy().astype(np.float64)


def _kept(labels_row):
    """The labelled positions minus the last one (``nonzero()[:-1]``, "ignore eos prediction")."""
    return (labels_row != IGNORE).nonzero(as_tuple=True)[0][:-1]


def ou_tokenwise_logprobs(logits, input_ids, labels):
    """utils.py::tokenwise_logprobs: log p of input_ids[t+1] at t, sliced [start−1 : end] over the kept positions."""
    lp = F.log_softmax(logits, dim=-1)[:, :-1, :]
    target = torch.gather(lp, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    out = []
    for i in range(logits.shape[0]):
        idx = _kept(labels[i])
        out.append(target[i, idx[0] - 1: idx[-1]] if idx.numel() else torch.tensor([]))
    return out


def ou_tokenwise_vocab_logprobs(logits, labels):
    """utils.py::tokenwise_vocab_logprobs: full [N, V] log-softmax rows at the kept positions, and their labels."""
    lp = F.log_softmax(logits, dim=-1)[:, :-1, :]
    rows, labs = [], []
    for i in range(logits.shape[0]):
        idx = _kept(labels[i])
        rows.append(lp[i, idx[0] - 1: idx[-1]] if idx.numel() else torch.zeros(0, lp.shape[-1]))
        labs.append(labels[i][idx])
    return rows, labs


def ou_exact_memorization(rows, labs):
    """memorization.py::exact_memorization (None → NaN; OU skips it in the mean)."""
    return np.array([float(((r.argmax(-1) == y).sum() / len(y)).item()) if len(y) else np.nan
                     for r, y in zip(rows, labs)])


def ou_extraction_strength(rows, labs):
    """memorization.py::extraction_strength: first k with preds[k:] == labels[k:]; 1 − k/n; empty → 0."""
    out = []
    for r, y in zip(rows, labs):
        n, preds, k = len(y), r.argmax(-1), 0
        for k in range(n):
            if torch.equal(preds[k:], y[k:]):
                break
        out.append(1 - k / n if n else 0.0)
    return np.array(out)


def ou_min_k(lp, k):
    """mia/min_k.py::MinKProbAttack.compute_score."""
    lp = lp.numpy()
    if lp.size == 0:
        return 0.0
    return float(-np.mean(np.sort(lp)[:max(1, int(len(lp) * k))]))


def ou_vocab_mu_sigma(vlp):
    """mia/min_k_plus_plus.py: μ = Σ e^lp lp, σ² = Σ e^lp lp² − μ² per kept position (model dtype)."""
    mu = (torch.exp(vlp) * vlp).sum(-1)
    return mu, (torch.exp(vlp) * torch.square(vlp)).sum(-1) - torch.square(mu)


def ou_min_k_pp(vlp, tlp, k):
    """mia/min_k_plus_plus.py::MinKPlusPlusAttack.compute_score."""
    if len(tlp) == 0:
        return 0.0
    mu, sigma = ou_vocab_mu_sigma(vlp)
    sigma = torch.clamp(sigma, min=1e-6)
    f = (lambda t: t) if tlp.dtype == torch.float64 else (lambda t: t.float())  # OU: .float() (float32 model)
    z = (f(tlp).numpy() - f(mu).numpy()) / torch.sqrt(sigma).numpy()
    return float(-np.mean(sorted(z)[:max(1, int(len(z) * k))]))


def ou_target_texts(tok, labels):
    """utils.py::extract_target_texts_from_processed_data."""
    return [tok.decode(row[row != IGNORE].tolist(), skip_special_tokens=True) for row in labels]


def ou_gradnorm(model, tok, pairs, p, dtype=torch.float32):
    """mia/gradnorm.py::GradNormAttack with batch size 1: train mode, grad-enabled tokenwise log-probs,
    loss = −mean, zero_grad, backward, mean over parameters with a grad of ‖grad‖_p."""
    model.train()
    out = []
    for q in pairs:
        batch = lm.collate([lm.encode(tok, *q, lm.max_length(model))], tok.pad_token_id, "cpu")
        with torch.set_grad_enabled(True):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = -torch.mean(ou_tokenwise_logprobs(logits, batch["input_ids"], batch["labels"])[0])
        model.zero_grad()
        loss.backward()
        norms = [prm.grad.detach().norm(p=p) for prm in model.parameters() if prm.grad is not None]
        out.append(float(torch.stack(norms).mean().cpu().to(dtype).numpy()))  # OU: .to(torch.float32)
    model.zero_grad()
    model.eval()
    return np.array(out)


def ou_mia_auc(forget, holdout):
    """mia/utils.py::mia_auc: roc_auc_score, forget 0 / holdout 1, un-negated scores."""
    scores = np.array(list(forget) + list(holdout))
    return float(roc_auc_score(np.array([0] * len(forget) + [1] * len(holdout)), scores))


def ou_truth_ratio(correct_avg_loss, wrong_avg_losses):
    """memorization.py::truth_ratio: wrong/(correct + 1e-10), wrong from the mean of the perturbed avg losses."""
    return np.exp(-np.mean(wrong_avg_losses, axis=1)) / (np.exp(-correct_avg_loss) + 1e-10)


def ou_closer_to_1(tr):
    return float(np.mean(np.minimum(tr, 1 / (tr + 1e-10))))


def ou_true_better(tr):
    return float(np.mean(np.maximum(0, 1 - tr)))


def ou_prob_w_options(correct_prob, wrong_probs):
    """memorization.py::probability_w_options."""
    return correct_prob / (correct_prob + np.sum(wrong_probs, axis=1) + 1e-10)


def ou_forget_quality(tr, ref_tr):
    """utils.py::get_forget_quality."""
    return float(ks_2samp(1 / (tr + 1e-10), 1 / (ref_tr + 1e-10)).pvalue)


def ou_privleak(auc_ou_model, auc_ou_ref=None):
    """privacy.py::privleak: score = 1 − AUC, ref = 1 − AUC_ref (retain logs) or ref_value 0.5."""
    score, ref = 1 - auc_ou_model, (0.5 if auc_ou_ref is None else 1 - auc_ou_ref)
    return (score - ref) / (ref + 1e-10) * 100


_OU_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
_MUSE_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)


def _muse_min_k(logits_row, ids_row, k):
    lp = F.log_softmax(logits_row[:-1], -1).gather(-1, ids_row[1:, None])[:, 0].numpy()
    return float(-np.mean(np.sort(lp)[:int(len(lp) * k)]))


@torch.no_grad()
def muse_min_k(model, tok, text, k=K_MUSE):
    """privleak.py: ids = BOS + text (no EOS, no truncation), one text per forward,
    lp_i = log_softmax(logits)[i, ids[i+1]], −mean of the int(len·k) smallest."""
    ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]])
    return _muse_min_k(model(ids).logits[0], ids[0], k)


def muse_min_k_batched(model, tok, texts, k=K_MUSE, dtype=torch.float64):
    """The same formula on the rows of one right-padded forward (the logits obliviate's ``score`` sees)."""
    logits, ids, labels = peer_forward(model, tok, [("", t) for t in texts], eos=False, dtype=dtype)
    n = (labels != IGNORE).sum(1) + 1  # BOS + text tokens
    return [_muse_min_k(logits[i, :n[i]], ids[i, :n[i]], k) for i in range(len(texts))]


def muse_auc(forget, holdout):
    """eval.py / privleak.py: forget 0, holdout 1, roc_curve(y, −score), auc."""
    y = np.array([0] * len(forget) + [1] * len(holdout))
    fpr, tpr, _ = roc_curve(y, -np.array(list(forget) + list(holdout)))
    return float(auc(fpr, tpr))


# ---------------------------------------------------------------------------------------------- the comparison

def ours_all(model, reference, tok, sets, docs, forget_docs, holdout_docs, gens):
    """Every compared quantity the obliviate way: lm.score → Scores → obliviate.metrics.{tofu, muse, lm_mia}."""
    o, tr = {}, {}
    has_moments = "moments" in inspect.signature(lm.score).parameters
    for name, qs in sets.items():
        for tag, mdl in (("", model), ("ref_", reference)):
            if tag and name != "forget":
                continue
            s_ans = lm.score(mdl, tok, [pair(q) for q in qs], "cpu")
            s_para = lm.score(mdl, tok, [pair(q, q.paraphrased) for q in qs], "cpu")
            wrong = lm.score(mdl, tok, [pair(q, w) for q in qs for w in q.perturbed], "cpu").nll_mean
            wrong = wrong.reshape(len(qs), 3)
            tr[tag + name] = tofu.truth_ratio(s_para.nll_mean, wrong)
            if tag:
                continue
            o[f"{name} probability"] = tofu.probability(s_ans.nll_mean)
            o[f"{name} truth ratio (per sample)"] = tr[name]
            o[f"{name} ROUGE-L recall (stemmed)"] = [muse.rouge_l_recall(g, q.answer, stemmer=True)
                                                     for g, q in zip(gens[name], qs)]
            if name == "forget":
                o["forget extraction strength"] = [tofu.extraction_strength_ou(p, y)
                                                   for p, y in zip(s_ans.argmax, s_ans.labels)]
                o["forget exact memorization"] = [tofu.exact_memorization_ou(p, y)
                                                  for p, y in zip(s_ans.argmax, s_ans.labels)]
                o["forget truth ratio closer_to_1"] = tofu.truth_ratio_closer_to_1(tr[name])
                o["forget ROUGE-L F1 (MUSE, no stemmer)"] = [muse.rouge_l_f1(g, q.answer)
                                                             for g, q in zip(gens[name], qs)]
                continue
            if name != "retain":
                o[f"{name} probability_w_options"] = tofu.probability_w_options(s_ans.nll_mean, wrong)
            o[f"{name} truth ratio true_better"] = tofu.truth_ratio_true_better(tr[name])
    o["forget quality"] = tofu.forget_quality(tr["forget"], tr["ref_forget"])
    parts = {}
    for name in ("retain", "real_authors", "world_facts"):
        prob = o[f"{name} probability" if name == "retain" else f"{name} probability_w_options"]
        parts[f"{name}_prob"] = float(np.mean(prob))
        parts[f"{name}_rouge"] = float(np.mean(o[f"{name} ROUGE-L recall (stemmed)"]))
        parts[f"{name}_truth_ratio"] = o[f"{name} truth ratio true_better"]
    o["model utility"] = tofu.tofu_model_utility(parts)

    per = {a: {} for a in ATTACK_ROWS}
    for split, pairs in docs.items():
        s = lm.score(model, tok, pairs, "cpu", moments=True) if has_moments else lm.score(model, tok, pairs, "cpu")
        s_ref = lm.score(reference, tok, pairs, "cpu")
        texts = [tok.decode(y.tolist(), skip_special_tokens=True) for y in s.labels]
        if has_moments:
            mus, s2s = s.mu, s.sigma2
        else:
            mus, s2s = _moments_by_forward(model, tok, pairs)
        per["loss"][split] = [lm_mia.loss_score(v) for v in s.nll_mean]
        per["zlib"][split] = [lm_mia.zlib_score(v, t) for v, t in zip(s.nll_mean, texts)]
        per["min_k"][split] = [lm_mia.min_k_score(lp[:-1], K_OU) for lp in s.token_logprobs]
        per["min_k@0.4"][split] = [lm_mia.min_k_score(lp[:-1], K_MUSE) for lp in s.token_logprobs]
        per["min_k++"][split] = [lm_mia.min_k_plus_plus_score(lp[:-1], m[:-1], v[:-1], K_OU)
                                 for lp, m, v in zip(s.token_logprobs, mus, s2s)]
        per["reference"][split] = [lm_mia.reference_score(a, b) for a, b in zip(s.nll_mean, s_ref.nll_mean)]
        for a, p in (("gradnorm", 2), ("gradnorm_p1", 1), ("gradnorm_pinf", float("inf"))):
            per[a][split] = lm_mia.gradnorm_scores(model, tok, pairs, "cpu", p=p)
    for a in ATTACK_ROWS:
        o[f"mia {a} scores"] = np.concatenate([per[a]["forget"], per[a]["holdout"]])
        o[f"mia {a} AUC"] = lm_mia.auc_ou(per[a]["forget"], per[a]["holdout"])
    # vocab_moments on the peer's forward (same float32 logits): the function itself, against OU's formula
    mu, s2 = [], []
    for split in docs:
        logits, _, labels = peer_forward(model, tok, docs[split])
        for i in range(logits.shape[0]):
            m_, v_ = lm_mia.vocab_moments(logits[i, :-1][labels[i, 1:] != IGNORE])
            mu.append(m_[:-1].double().numpy()), s2.append(v_[:-1].double().numpy())
    o["vocab_moments mu"], o["vocab_moments sigma2"] = np.concatenate(mu), np.concatenate(s2)
    ref_auc = lm_mia.auc_ou(*[[lm_mia.min_k_score(lp[:-1], K_MUSE)
                               for lp in lm.score(reference, tok, docs[sp], "cpu").token_logprobs]
                              for sp in ("forget", "holdout")])
    o["privleak (OU, ref_value 0.5)"] = muse.privleak_ou(o["mia min_k@0.4 AUC"])
    o["privleak (OU, reference model)"] = muse.privleak_ou(o["mia min_k@0.4 AUC"], ref_auc)

    m = {sp: [muse.min_k_percent(lp, K_MUSE) for lp in lm.score(model, tok, [("", d) for d in ds], "cpu",
                                                                  eos=False).token_logprobs]
         for sp, ds in (("forget", forget_docs), ("holdout", holdout_docs))}
    o["MUSE Min-40% scores"] = np.concatenate([m["forget"], m["holdout"]])
    o["MUSE forget_holdout_Min-40% AUC"] = muse.mia_auc(m["forget"], m["holdout"])
    o["MUSE PrivLeak vs 0.4772"] = muse.privleak(o["MUSE forget_holdout_Min-40% AUC"], AUC_RETRAIN_NEWS)
    o["AUC_OU = 1 - AUC_MUSE (Min-40%)"] = o["mia min_k@0.4 AUC"]
    return o, has_moments


def _moments_by_forward(model, tok, pairs):
    """Fallback when ``lm.score`` has no ``moments``: lm_mia.vocab_moments on per-sample forwards."""
    mus, s2s = [], []
    for p_ in pairs:
        b = lm.collate([lm.encode(tok, *p_, lm.max_length(model))], tok.pad_token_id, "cpu")
        with torch.no_grad():
            lg = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        m_, v_ = lm_mia.vocab_moments(lg[0, :-1][b["labels"][0, 1:] != IGNORE])
        mus.append(m_.double().numpy()), s2s.append(v_.double().numpy())
    return mus, s2s


def peer_all(model, reference, tok, sets, docs, forget_docs, holdout_docs, gens, dtype):
    """Every compared quantity by the peer formulas, from raw logits / labels; ``dtype`` float32 = as the peers
    run on a float32 model, float64 = the same formulas evaluated exactly on the same logits."""
    o, tr = {}, {}
    for name, qs in sets.items():
        for tag, mdl in (("", model), ("ref_", reference)):
            if tag and name != "forget":
                continue
            fwd = lambda pairs: peer_forward(mdl, tok, pairs, dtype=dtype)  # noqa: E731
            ans = fwd([pair(q) for q in qs])
            la, pa = ou_evaluate_probability(ans[0], ans[2])
            lp_, _ = ou_evaluate_probability(*fwd([pair(q, q.paraphrased) for q in qs])[::2])
            lw, pw = ou_evaluate_probability(*fwd([pair(q, w) for q in qs for w in q.perturbed])[::2])
            lw, pw = lw.reshape(len(qs), 3), pw.reshape(len(qs), 3)
            tr[tag + name] = ou_truth_ratio(lp_, lw)
            if tag:
                continue
            o[f"{name} probability"] = pa
            o[f"{name} truth ratio (per sample)"] = tr[name]
            o[f"{name} ROUGE-L recall (stemmed)"] = [_OU_ROUGE.score(q.answer, g)["rougeL"].recall
                                                     for g, q in zip(gens[name], qs)]
            if name == "forget":
                rows_, labs = ou_tokenwise_vocab_logprobs(ans[0], ans[2])
                o["forget extraction strength"] = ou_extraction_strength(rows_, labs)
                o["forget exact memorization"] = ou_exact_memorization(rows_, labs)
                o["forget truth ratio closer_to_1"] = ou_closer_to_1(tr[name])
                o["forget ROUGE-L F1 (MUSE, no stemmer)"] = [
                    _MUSE_ROUGE.score(target=q.answer, prediction=g)["rougeL"].fmeasure for g, q in zip(gens[name], qs)]
                continue
            if name != "retain":
                o[f"{name} probability_w_options"] = ou_prob_w_options(pa, pw)
            o[f"{name} truth ratio true_better"] = ou_true_better(tr[name])
    o["forget quality"] = ou_forget_quality(tr["forget"], tr["ref_forget"])
    o["model utility"] = float(hmean([
        np.mean(o["retain probability"]), np.mean(o["retain ROUGE-L recall (stemmed)"]),
        o["retain truth ratio true_better"],
        np.mean(o["real_authors probability_w_options"]), np.mean(o["real_authors ROUGE-L recall (stemmed)"]),
        o["real_authors truth ratio true_better"],
        np.mean(o["world_facts probability_w_options"]), np.mean(o["world_facts ROUGE-L recall (stemmed)"]),
        o["world_facts truth ratio true_better"]]))

    per = {a: {} for a in ATTACK_ROWS}
    mu, s2 = [], []
    for split, pairs in docs.items():
        logits, ids, labels = peer_forward(model, tok, pairs, dtype=dtype)
        avg, _ = ou_evaluate_probability(logits, labels)
        avg_ref, _ = ou_evaluate_probability(*peer_forward(reference, tok, pairs, dtype=dtype)[::2])
        tlp = ou_tokenwise_logprobs(logits, ids, labels)
        vlp, _ = ou_tokenwise_vocab_logprobs(logits, labels)
        per["loss"][split] = avg
        per["zlib"][split] = [a / len(zlib.compress(t.encode("utf-8")))
                              for a, t in zip(avg, ou_target_texts(tok, labels))]
        per["min_k"][split] = [ou_min_k(t, K_OU) for t in tlp]
        per["min_k@0.4"][split] = [ou_min_k(t, K_MUSE) for t in tlp]
        per["min_k++"][split] = [ou_min_k_pp(v, t, K_OU) for v, t in zip(vlp, tlp)]
        per["reference"][split] = avg - avg_ref
        for a, p in (("gradnorm", 2), ("gradnorm_p1", 1), ("gradnorm_pinf", float("inf"))):
            per[a][split] = ou_gradnorm(model, tok, pairs, p, dtype)
        for v in vlp:
            m_, v_ = ou_vocab_mu_sigma(v)
            mu.append(m_.double().numpy()), s2.append(v_.double().numpy())
    for a in ATTACK_ROWS:
        o[f"mia {a} scores"] = np.concatenate([per[a]["forget"], per[a]["holdout"]])
        o[f"mia {a} AUC"] = ou_mia_auc(per[a]["forget"], per[a]["holdout"])
    o["vocab_moments mu"], o["vocab_moments sigma2"] = np.concatenate(mu), np.concatenate(s2)
    ref_auc = ou_mia_auc(*[[ou_min_k(t, K_MUSE) for t in ou_tokenwise_logprobs(
        *peer_forward(reference, tok, docs[sp], dtype=dtype))] for sp in ("forget", "holdout")])
    o["privleak (OU, ref_value 0.5)"] = ou_privleak(o["mia min_k@0.4 AUC"])
    o["privleak (OU, reference model)"] = ou_privleak(o["mia min_k@0.4 AUC"], ref_auc)

    if dtype == torch.float32:  # MUSE as it runs: one text per forward
        m = {sp: [muse_min_k(model, tok, d) for d in ds] for sp, ds in (("forget", forget_docs),
                                                                         ("holdout", holdout_docs))}
    else:  # the formula, exactly, on the batched logits obliviate's score sees
        m = {sp: muse_min_k_batched(model, tok, ds) for sp, ds in (("forget", forget_docs), ("holdout", holdout_docs))}
    o["MUSE Min-40% scores"] = np.concatenate([m["forget"], m["holdout"]])
    o["MUSE forget_holdout_Min-40% AUC"] = muse_auc(m["forget"], m["holdout"])
    o["MUSE PrivLeak vs 0.4772"] = (o["MUSE forget_holdout_Min-40% AUC"] - AUC_RETRAIN_NEWS) / AUC_RETRAIN_NEWS * 100
    o["AUC_OU = 1 - AUC_MUSE (Min-40%)"] = 1 - muse_auc(per["min_k@0.4"]["forget"], per["min_k@0.4"]["holdout"])
    return o


ATTACK_ROWS = ("loss", "zlib", "min_k", "min_k@0.4", "min_k++", "reference", "gradnorm", "gradnorm_p1",
               "gradnorm_pinf")
_ATTACK_SRC = {"loss": "mia/loss.py::LOSSAttack", "zlib": "mia/zlib.py::ZLIBAttack",
               "min_k": f"mia/min_k.py::MinKProbAttack (k={K_OU})",
               "min_k@0.4": f"mia/min_k.py::MinKProbAttack (k={K_MUSE})",
               "min_k++": f"mia/min_k_plus_plus.py::MinKPlusPlusAttack (k={K_OU})",
               "reference": "mia/reference.py::ReferenceAttack (reference = the untrained seed-0 model)",
               "gradnorm": "mia/gradnorm.py::GradNormAttack (p=2)",
               "gradnorm_p1": "mia/gradnorm.py::GradNormAttack (p=1)",
               "gradnorm_pinf": "mia/gradnorm.py::GradNormAttack (p=inf)"}


def sources() -> dict[str, str]:
    src = {}
    for name in ("forget", "retain", "real_authors", "world_facts"):
        src[f"{name} probability"] = OU + "memorization.py::probability (utils.py::evaluate_probability)"
        src[f"{name} truth ratio (per sample)"] = OU + "memorization.py::truth_ratio"
        src[f"{name} ROUGE-L recall (stemmed)"] = OU + "utils.py::eval_text_similarity (eval_rouge_recall_batch)"
        src[f"{name} probability_w_options"] = OU + "memorization.py::probability_w_options"
        src[f"{name} truth ratio true_better"] = OU + "memorization.py::truth_ratio (true_better)"
    src.update({
        "forget extraction strength": OU + "memorization.py::extraction_strength",
        "forget exact memorization": OU + "memorization.py::exact_memorization",
        "forget truth ratio closer_to_1": OU + "memorization.py::truth_ratio (closer_to_1_better)",
        "forget ROUGE-L F1 (MUSE, no stemmer)": MUSE + "knowmem.py / verbmem.py (rouge_scorer rougeL fmeasure, "
                                                       "use_stemmer=False)",
        "forget quality": OU + "utils.py::get_forget_quality (memorization ks_test; reference = untrained model)",
        "model utility": OU + "utility.py::hm_aggregate (scipy.stats.hmean of the 9 parts)",
        "vocab_moments mu": OU + "mia/min_k_plus_plus.py::MinKPlusPlusAttack.compute_score (mu)",
        "vocab_moments sigma2": OU + "mia/min_k_plus_plus.py::MinKPlusPlusAttack.compute_score (sigma, before the "
                                     "1e-6 clamp)",
        "privleak (OU, ref_value 0.5)": OU + "privacy.py::privleak (Min-K k=0.4 AUC, ref_value 0.5)",
        "privleak (OU, reference model)": OU + "privacy.py::privleak (Min-K k=0.4 AUC, reference-model AUC)",
        "MUSE Min-40% scores": MUSE + "privleak.py (Min-40%: int(len·0.4) lowest token log-probs, BOS, no EOS)",
        "MUSE forget_holdout_Min-40% AUC": "muse_bench eval.py (roc_curve(y, −score), auc)",
        "MUSE PrivLeak vs 0.4772": "muse_bench eval.py + constants.py (AUC_RETRAIN News 0.4772)",
        "AUC_OU = 1 - AUC_MUSE (Min-40%)": "orientation identity: lm_mia.auc_ou vs 1 − (roc_curve(y, −score), auc)",
    })
    for a in ATTACK_ROWS:
        src[f"mia {a} scores"] = OU + _ATTACK_SRC[a]
        src[f"mia {a} AUC"] = OU + f"mia/utils.py::mia_auc (roc_auc_score) over {a}"
    return src


ROWS: list[dict] = []
RAW: dict[str, np.ndarray] = {}


def _diff(x, y) -> float:
    both_nan = np.isnan(x) & np.isnan(y)
    return float(np.max(np.abs(np.where(both_nan, 0.0, x - y)))) if x.size else 0.0


def main():
    t0 = time.time()
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    qa, forget_docs, holdout_docs = make_data()
    tok, model, reference = build(qa, forget_docs, holdout_docs)
    sets = {"forget": qa[:10], "retain": qa[10:20], "real_authors": qa[20:30], "world_facts": qa[30:40]}
    docs = {"forget": [("", d) for d in forget_docs], "holdout": [("", d) for d in holdout_docs]}
    # greedy answers (obliviate's generate), shared: ROUGE is compared as a function of the same strings
    gens = {n: lm.generate(model, tok, [pair(q)[0] for q in qs], "cpu", max_new_tokens=12) for n, qs in sets.items()}
    args = (model, reference, tok, sets, docs, forget_docs, holdout_docs, gens)
    ours, has_moments = ours_all(*args)
    p32, p64 = peer_all(*args, dtype=torch.float32), peer_all(*args, dtype=torch.float64)
    # how much a float32 forward moves with the batch shape (MUSE scores one text at a time, obliviate batches)
    l_batch = peer_forward(model, tok, docs["forget"])[0]
    shape_noise = max(float((peer_forward(model, tok, [d])[0][0] - l_batch[i, :len(lm.encode(tok, *d, 64).ids)])
                            .abs().max()) for i, d in enumerate(docs["forget"]))
    src = sources()
    for name, o in ours.items():
        o_ = np.atleast_1d(np.asarray(o, float))
        a32, a64 = np.atleast_1d(np.asarray(p32[name], float)), np.atleast_1d(np.asarray(p64[name], float))
        agg = lambda v: float(np.nanmean(v)) if v.size > 1 else float(v[0])  # noqa: E731
        d32, d64 = _diff(o_, a32), _diff(o_, a64)
        scale = float(np.nanmax(np.abs(a64))) if a64.size else 0.0
        ROWS.append({"metric": name, "obliviate": agg(o_), "peer_float32": agg(a32), "max_abs_diff_float32": d32,
                     "peer_float64": agg(a64), "max_abs_diff_float64": d64, "peer_float32_vs_float64": _diff(a32, a64),
                     "max_abs_value": scale, "float32_ulp_at_max": float(np.spacing(np.float32(scale))),
                     "n": int(o_.size), "ok_float32": d32 <= TOL, "ok_float64": d64 <= TOL, "peer_source": src[name]})
        key = name.replace(" ", "_")
        RAW[f"{key}__obliviate"], RAW[f"{key}__peer32"], RAW[f"{key}__peer64"] = o_, a32, a64
    report(time.time() - t0, has_moments, shape_noise)


def report(elapsed, has_moments, shape_noise):
    OUT.mkdir(parents=True, exist_ok=True)
    head = ("| metric | obliviate | peer (float32) | max \\|diff\\| | peer (float64, same logits) | max \\|diff\\| "
            "| n | peer file::function |\n|---|---|---|---|---|---|---|---|")
    mark = lambda d: f"{d:.1e}" if d <= TOL else f"**{d:.1e}**"  # noqa: E731
    lines = [f"| {r['metric']} | {r['obliviate']:.6g} | {r['peer_float32']:.6g} | {mark(r['max_abs_diff_float32'])} | "
             f"{r['peer_float64']:.6g} | {mark(r['max_abs_diff_float64'])} | {r['n']} | {r['peer_source']} |"
             for r in ROWS]
    table = "\n".join([head, *lines])
    print(table)
    w32 = max(r["max_abs_diff_float32"] for r in ROWS)
    w64 = max(r["max_abs_diff_float64"] for r in ROWS)
    over32 = [r["metric"] for r in ROWS if not r["ok_float32"]]
    over64 = [r["metric"] for r in ROWS if not r["ok_float64"]]
    summary = (f"{len(ROWS)} rows; worst max |diff| vs the float32 peer run {w32:.1e} "
               f"({'all' if not over32 else len(ROWS) - len(over32)} within {TOL:g}"
               f"{'' if not over32 else '; over: ' + ', '.join(over32)}); vs the float64 evaluation of the peer "
               f"formulas {w64:.1e} ({'all' if not over64 else len(ROWS) - len(over64)} within {TOL:g}"
               f"{'' if not over64 else '; over: ' + ', '.join(over64)}). A float32 forward of the same text "
               f"alone vs in a padded batch differs by up to {shape_noise:.1e} in the logits. {elapsed:.1f} s")
    print("\n" + summary)
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "scores_moments": has_moments, "epochs": EPOCHS, "doc_epochs": DOC_EPOCHS}
    (OUT / "peer_check.json").write_text(json.dumps({"tolerance": TOL, "summary": summary, "rows": ROWS,
                                                     "forward_shape_noise": shape_noise, "elapsed_s": round(elapsed, 2),
                                                     "environment": env}, indent=2))
    md = ["# obliviate vs OpenUnlearning / MUSE formulas (benchmarks/peer_check.py)", "",
          "Each row: obliviate's value (obliviate.lm.score → Scores → obliviate.metrics.{tofu, muse, lm_mia}) "
          "against the peer formula re-derived from the raw logits / labels of one right-padded forward pass per "
          "split, nothing imported from the peer projects. *peer (float32)*: the formulas run as the peers run them "
          "on a float32 model (float32 sums; MUSE one text per forward). *peer (float64, same logits)*: the same "
          "formulas evaluated in float64 on the same float32 logits (MUSE rows: on the batched logits obliviate "
          "sees): the exact value of the peer formula, so its column isolates formula differences from float32 "
          "rounding. Value columns: the mean over samples (nanmean) or the single number; max |diff| over every "
          "per-sample value; bold = over 1e-6.", "",
          f"Model: tiny GPT-2 (seed 0) trained {EPOCHS} epochs on 20 forget / retain QA pairs and {DOC_EPOCHS} on "
          "the 20 forget documents; reference = its untrained seed-0 copy. Peer sources: locuslab/open-unlearning "
          "`src/evals/metrics/…` and swj0419/muse_bench (`metrics/…`, `eval.py`).", "", table, "", summary, ""]
    over = [r for r in ROWS if not (r["ok_float32"] and r["ok_float64"])]
    if over:
        md += ["Rows over 1e-6, with the rounding budget that explains them (all values are float32 computations):", ""]
        md += [f"- {r['metric']}: obliviate vs peer float32 {r['max_abs_diff_float32']:.1e}, vs the exact (float64) "
               f"peer formula {r['max_abs_diff_float64']:.1e}; the peer's own float32 run is "
               f"{r['peer_float32_vs_float64']:.1e} from its exact value; largest |value| {r['max_abs_value']:.3g} "
               f"(float32 spacing there {r['float32_ulp_at_max']:.1e})." for r in over]
        md.append("")
    (OUT / "peer_check.md").write_text("\n".join(md))
    np.savez_compressed(OUT / "peer_check_outputs.npz", **RAW)


if __name__ == "__main__":
    main()
