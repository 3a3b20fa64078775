"""OpenUnlearning's six LLM membership-inference attacks (locuslab/open-unlearning
``src/evals/metrics/mia/``) as plain per-sample score functions, plus its AUC.

Every score is *loss-like*: higher = less member-like (the model finds the text harder). Inputs are what
:func:`obliviate.lm.score` returns; the token-level attacks (Min-K, Min-K++, GradNorm) use OpenUnlearning's
positions, the labelled tokens minus the last one (``tokenwise_logprobs``'s ``[:-1]``, meant to drop the EOS):
:func:`min_k_score` and :func:`min_k_plus_plus_score` take those positions as given (pass
``Scores.token_logprobs[i][:-1]``), :func:`gradnorm_scores` drops the last labelled token itself.

AUC orientation — the same forget-vs-holdout comparison is reported two ways:

- OpenUnlearning (:func:`auc_ou`): ``roc_auc_score(y, score)`` with forget = 0, holdout = 1 and the un-negated
  score. AUC_OU = P(holdout scores higher than forget) → 1 when the forget set is memorised, 0.5 when the two
  are indistinguishable, < 0.5 when forget texts look *less* familiar than holdout ones (over-unlearning).
- MUSE (:func:`obliviate.metrics.muse.mia_auc`): ``roc_curve(y, −score)``; AUC_MUSE = 1 − AUC_OU (ties included),
  → 0 when memorised. MUSE's PrivLeak and OpenUnlearning's ``privleak`` both work in MUSE's orientation
  (:func:`obliviate.metrics.muse.privleak`, :func:`obliviate.metrics.muse.privleak_ou`).
"""
from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np

from obliviate.metrics.muse import _scores_1d  # the AUC inputs are checked as MUSE's are

__all__ = ["ATTACKS", "loss_score", "zlib_score", "min_k_score", "min_k_plus_plus_score", "reference_score",
           "vocab_moments", "gradnorm_scores", "auc_ou"]

#: attack name → what its per-sample score is (all loss-like: higher = less member-like).
ATTACKS: dict[str, str] = {
    "loss": "mean answer-token NLL (OpenUnlearning LOSSAttack); higher = less member-like",
    "zlib": "mean NLL / zlib-compressed byte length of the labelled text (ZLIBAttack); higher = less member-like",
    "min_k": "mean NLL of the k-fraction least likely tokens, EOS dropped (MinKProbAttack); higher = less member-like",
    "min_k++": "−mean of the k-fraction lowest vocabulary-standardised token log-probs, EOS dropped "
               "(MinKPlusPlusAttack); higher = less member-like",
    "reference": "mean NLL minus a reference model's mean NLL (ReferenceAttack); higher = less member-like",
    "gradnorm": "mean over parameters of the p-norm of the loss gradient, EOS dropped (GradNormAttack); "
                "higher = less member-like",
}


def _finite(x, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {type(x).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _k(k: float) -> float:
    if not isinstance(k, (int, float)) or not 0.0 < k <= 1.0:
        raise ValueError(f"k must be a fraction in (0, 1] (OpenUnlearning's default is 0.2, MUSE's Min-40% is "
                         f"0.4), got {k!r}")
    return float(k)


def _vec(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per scored token of one sample), got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def _num_k(n: int, k: float) -> int:
    """OpenUnlearning's count ``max(1, int(len · k))``: truncate, but never 0 tokens (MUSE's NaN trap)."""
    return max(1, int(n * k))


def loss_score(nll_mean: float) -> float:
    """LOSS attack: the sample's mean answer-token NLL (OpenUnlearning ``evaluate_probability``'s ``avg_loss``).

    ``Scores.nll_mean`` divides by the scored (shifted) tokens, OpenUnlearning by the labelled tokens of the
    unshifted labels; the two counts agree whenever the first token (the BOS) is unlabelled, which
    :func:`obliviate.lm.encode_chunks` guarantees for tokenizers with a BOS.

    >>> loss_score(1.25)
    1.25
    """
    return _finite(nll_mean, "nll_mean")


def zlib_score(nll_mean: float, text: str) -> float:
    """ZLib attack (Carlini et al. 2021): mean NLL / ``len(zlib.compress(text.encode("utf-8")))``, ``text`` the
    decoded labelled tokens (``tokenizer.decode(labels, skip_special_tokens=True)``). Normalising by the text's
    compressibility discounts texts that are easy for any model (repetitive ones).

    ``zlib.compress(b"")`` is 8 bytes (header + empty block + checksum), so the divisor is never 0; NLL 4 → 0.5:

    >>> zlib_score(4.0, "")
    0.5
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be str (the decoded labelled tokens), got {type(text).__name__}")
    return _finite(nll_mean, "nll_mean") / len(zlib.compress(text.encode("utf-8")))


def min_k_score(token_logprobs, k: float = 0.4) -> float:
    """Min-K% Prob (Shi et al., arXiv 2310.16789) as OpenUnlearning computes it (``mia/min_k.py``):
    −mean of the ``max(1, int(len·k))`` smallest token log-probs.

    ``token_logprobs``: the positions OpenUnlearning scores, i.e. the labelled tokens without the last one —
    pass ``Scores.token_logprobs[i][:-1]``. Empty → 0.0 (OpenUnlearning's value). ``k`` = 0.2 is
    OpenUnlearning's default, 0.4 MUSE's PrivLeak setting. Differs from
    :func:`obliviate.metrics.muse.min_k_percent` only in the empty case (NaN there) and in the positions passed.

    [−1, −2, −3, −4, −5], k = 0.4 → int(2.0) = 2 tokens → −mean(−5, −4) = 4.5; k = 0.1 → int(0.5) = 0 → 1 token:

    >>> min_k_score([-1.0, -2.0, -3.0, -4.0, -5.0], k=0.4)
    4.5
    >>> min_k_score([-1.0, -2.0, -3.0, -4.0, -5.0], k=0.1)
    5.0
    >>> min_k_score([])
    0.0
    """
    k = _k(k)
    lp = _vec(token_logprobs, "token_logprobs")
    if lp.size == 0:
        return 0.0
    return float(-np.mean(np.sort(lp)[:_num_k(lp.size, k)]))


def min_k_plus_plus_score(token_logprobs, mu, sigma2, k: float = 0.4) -> float:
    """Min-K%++ (Zhang et al., arXiv 2404.02936) as OpenUnlearning computes it (``mia/min_k_plus_plus.py``):
    z_t = (log p(x_t) − μ_t) / √max(σ²_t, 1e-6), score = −mean of the ``max(1, int(len·k))`` smallest z_t.

    μ_t, σ²_t are the mean and variance of log p over the vocabulary at position t (:func:`vocab_moments`,
    or ``Scores.mu`` / ``Scores.sigma2`` from ``score(moments=True)``). Standardising by the position's own
    distribution separates "this token is unlikely" from "every token is unlikely here". All three arrays hold
    OpenUnlearning's positions (labelled tokens minus the last; pass ``[:-1]`` of the ``Scores`` arrays) and must
    have equal lengths. Empty → 0.0. The 1e-6 floor is OpenUnlearning's (a near-deterministic position).

    lp [−1, −3], μ [−2, −2], σ² [4, 1] → z = [0.5, −1]; k = 0.5 → 1 token → score 1.0;
    σ² = 0 is floored to 1e-6 → z = (−1 − 0)/1e-3 = −1000:

    >>> min_k_plus_plus_score([-1.0, -3.0], [-2.0, -2.0], [4.0, 1.0], k=0.5)
    1.0
    >>> round(min_k_plus_plus_score([-1.0], [0.0], [0.0]), 6)
    1000.0
    """
    k = _k(k)
    lp, m, s2 = _vec(token_logprobs, "token_logprobs"), _vec(mu, "mu"), _vec(sigma2, "sigma2")
    if not lp.shape == m.shape == s2.shape:
        raise ValueError(f"token_logprobs, mu and sigma2 must have one value per position each, got lengths "
                         f"{lp.size}, {m.size}, {s2.size}")
    if lp.size == 0:
        return 0.0
    z = (lp - m) / np.sqrt(np.maximum(s2, 1e-6))
    return float(-np.mean(np.sort(z)[:_num_k(z.size, k)]))


def reference_score(nll_mean: float, reference_nll_mean: float) -> float:
    """Reference attack (OpenUnlearning ``mia/reference.py``): the model's mean NLL minus a reference model's on
    the same sample; calibrates away how hard the text is in itself.

    >>> reference_score(1.5, 2.0)
    -0.5
    """
    return _finite(nll_mean, "nll_mean") - _finite(reference_nll_mean, "reference_nll_mean")


def vocab_moments(logits):
    """Per position, μ = Σ_v p_v log p_v and σ² = Σ_v p_v (log p_v)² − μ² of the next-token distribution
    p = softmax(logits), from raw logits of shape [..., V] (any dtype; computed in float32, as OpenUnlearning's
    ``MinKPlusPlusAttack`` does for a float32 model). Returns two float32 tensors of shape [...].

    Memory: a single float32 work buffer of the logits' shape and no other [..., V] temporary, so a long
    document is scored whole (no chunking). The buffer holds p, then −p ln p (``torch.special.entr``) for μ;
    then p is rebuilt from the logits and turned into y = √p·e^{−μ/2}, for which
    √p (ln p − μ) = −2 e^{μ/2} entr(y), so σ² = 4 e^{μ} Σ entr(y)² — the *centred* second moment. OpenUnlearning's
    Σ p (log p)² − μ² loses about |μ|²·1e-7 to cancellation in float32; the centred form does not (σ² ≥ 0, and
    exactly 0 for a uniform distribution). :func:`min_k_plus_plus_score` applies OpenUnlearning's 1e-6 floor.

    Uniform over 4 tokens: log p = −ln 4 everywhere → μ = −ln 4 ≈ −1.3863, σ² = 0:

    >>> import torch
    >>> mu, s2 = vocab_moments(torch.zeros(1, 4))
    >>> round(float(mu[0]), 4), float(s2[0])
    (-1.3863, 0.0)
    """
    import torch

    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits must be a torch.Tensor of shape [..., V], got {type(logits).__name__}")
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty vocabulary axis [..., V], got shape {tuple(logits.shape)}")
    with torch.no_grad():
        buf = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)

        def softmax_into_buf():
            buf.copy_(logits)  # casts to float32 in place: no float copy of bf16 logits
            buf.sub_(buf.amax(-1, keepdim=True)).exp_()
            buf.div_(buf.sum(-1, keepdim=True))

        softmax_into_buf()
        torch.special.entr(buf, out=buf)  # −p ln p
        mu = -buf.sum(-1)
        softmax_into_buf()
        buf.sqrt_().mul_(torch.exp(-0.5 * mu).unsqueeze(-1))  # y = √p e^{−μ/2}
        torch.special.entr(buf, out=buf)  # −y ln y = −½ e^{−μ/2} √p (ln p − μ)
        sigma2 = buf.square_().sum(-1).mul_(torch.exp(mu)).mul_(4.0)  # Σ p (ln p − μ)²
        del buf
    return mu, sigma2


def gradnorm_scores(model, tokenizer, pairs: Sequence[tuple[str, str]], device, p: float = 2.0, *,
                    eos: bool = True) -> np.ndarray:
    """GradNorm attack (arXiv 2402.17012; OpenUnlearning ``mia/gradnorm.py``): per (prompt, completion) pair,
    loss = −mean of the completion tokens' log-probs without the last labelled token (OpenUnlearning's ``[:-1]``),
    backward from zeroed gradients, score = mean over the parameters that received a gradient of ‖grad‖_p.
    A large gradient = the model would still move a lot on this text = less member-like.

    Encoding is obliviate's (:func:`obliviate.lm.encode_all`: BOS + prompt + completion (+ EOS with ``eos``),
    capped at :func:`obliviate.lm.max_length`), one sample at a time (:func:`obliviate.lm.collate`); a document
    longer than the context is split into chunks whose gradients accumulate into the gradient of its whole mean
    loss (OpenUnlearning truncates instead). A sample with no position left after the drop → NaN.

    Differences from OpenUnlearning, on purpose: the forward runs in eval mode (OpenUnlearning switches to train
    mode; for dropout-free models — obliviate's tiny GPT-2 — the numbers are the same) and log-probs are taken in
    at least float32 (OpenUnlearning uses the model's dtype; the same for float32 models). Every parameter is made
    to require grad for the computation; afterwards each parameter's ``requires_grad`` and ``.grad`` (usually
    None) and the model's train/eval mode are restored as found (an evaluation model stays in eval mode) —
    OpenUnlearning instead leaves zeroed gradients behind. ``p`` ∈ {1, 2, inf}. Cost: one forward and backward
    per sample (per chunk).
    """
    import torch

    from obliviate import lm

    if p not in (1, 2, float("inf")):
        raise ValueError(f"p must be 1, 2 or inf (OpenUnlearning's GradNorm norms), got {p!r}")
    pairs = list(pairs)
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise ValueError(f"pairs must be (prompt, completion) tuples of str, got {pair!r}")
    limit = lm.max_length(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    params = list(model.parameters())
    found = [(q.requires_grad, q.grad) for q in params]
    was_training = model.training
    out = np.full(len(pairs), np.nan)
    try:
        model.eval()
        for q in params:
            q.grad = None
            q.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            for i, pair in enumerate(pairs):
                chunks = lm.encode_all(tokenizer, [pair], limit, eos=eos)
                n = sum(len(c.ids) - c.n_prompt for c in chunks) - 1  # the last labelled token is dropped
                if n <= 0:
                    continue
                for q in params:  # OpenUnlearning's model.zero_grad() (set_to_none)
                    q.grad = None
                for j, chunk in enumerate(chunks):
                    batch = lm.collate([chunk], pad, device)
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    lp = logits[0, :-1]
                    lp = torch.log_softmax(lp.to(torch.promote_types(lp.dtype, torch.float32)), dim=-1)
                    lp = lp.gather(-1, batch["input_ids"][0, 1:, None])[:, 0]
                    keep = batch["labels"][0, 1:] != lm.IGNORE
                    if j == len(chunks) - 1:
                        keep[keep.nonzero()[-1]] = False
                    (-lp[keep].sum() / n).backward()
                norms = [q.grad.detach().norm(p=p) for q in params if q.grad is not None]
                out[i] = float(torch.stack(norms).mean())
    finally:
        for q, (flag, grad) in zip(params, found):
            q.requires_grad_(flag)
            q.grad = grad
        model.train(was_training)
    return out


def auc_ou(forget_scores, holdout_scores) -> float:
    """OpenUnlearning's ``mia_auc``: ``sklearn.metrics.roc_auc_score`` with forget samples labelled 0, holdout 1,
    on the un-negated loss-like scores. 1 = every forget sample looks more familiar than every holdout one
    (memorised), 0.5 = indistinguishable. Equals 1 − :func:`obliviate.metrics.muse.mia_auc` on the same scores.

    Pairs (forget, holdout) with holdout > forget, ties ½: forget [1, 2, 3], holdout [2, 4] → (1,2) (1,4) (2,4)
    (3,4) count 1, (2,2) counts ½, (3,2) 0 → 4.5/6:

    >>> auc_ou([1.0, 2.0, 3.0], [2.0, 4.0])
    0.75
    """
    from sklearn.metrics import roc_auc_score

    f, h = _scores_1d(forget_scores, "forget_scores"), _scores_1d(holdout_scores, "holdout_scores")
    y = np.concatenate([np.zeros(f.size), np.ones(h.size)])
    return float(roc_auc_score(y, np.concatenate([f, h])))
