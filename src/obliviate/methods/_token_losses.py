"""Token-level forget losses of OpenUnlearning's UNDIAL, CE-U, SatImp, WGA and PDU (locuslab/open-unlearning
``src/trainer/utils.py``, ``src/trainer/unlearn/{ceu,pdu}.py``), and the step-level token mean they share.

Each ``*_token_losses`` returns one loss value per scored token of the batch (row-major, fp32); the method sums
them and divides by the scored-token count of the whole optimiser step (:class:`TokenMean`). That is
OpenUnlearning's reduction — one flat mean over every scored token of the batch, not a mean per sequence — kept
exact when :class:`~obliviate.methods._lm.LMRun` splits a step into micro-batches or processes.

Labels follow :func:`obliviate.lm.collate` (−100 on prompt and padding); logits at position t predict token t+1.
Only the scored rows of the vocabulary-wide logits are upcast to fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from obliviate.lm import IGNORE, Encoded, token_nll

Batch = dict[str, torch.Tensor]


# -- which tokens are scored ----------------------------------------------------------------------------------------

def answer_mask(labels: torch.Tensor, skip_first: int = 0) -> torch.Tensor:
    """[B, T−1]: position t predicts an answer token (label at t+1 ≥ 0) that is not among its row's first
    ``skip_first`` answer tokens (CE-U's trick; OU ``ceu.py::compute_batch_ceu``: cumsum of the unshifted mask)."""
    valid = labels != IGNORE
    if skip_first:
        valid = valid & (valid.cumsum(-1) > skip_first)
    return valid[:, 1:]


def scored_tokens(items: list[Encoded], idx, skip_first: int = 0, shifted: bool = True) -> int:
    """The number of tokens :func:`answer_mask` (``shifted``) or ``labels != −100`` (PDU) selects in the collated
    batch of ``items[idx]``, from the sequences' lengths alone: answer tokens sit at positions n_prompt … len−1."""
    if not shifted:
        return sum(len(items[i].ids) - items[i].n_prompt for i in idx)
    return sum(max(0, len(items[i].ids) - max(items[i].n_prompt + skip_first, 1)) for i in idx)


class TokenMean:
    """One optimiser step's flat token mean: ``mean(token_sum, piece)`` is the piece's share of
    Σ(all the step's token losses) / (the step's token count), divided by the piece's weight in
    :meth:`LMRun.step` (its share of the step's sequences), so the summed micro-batch losses are exactly the
    full batch's mean, as one OpenUnlearning ``compute_loss`` call on the whole batch gives."""

    def __init__(self, n_tokens: int, n_sequences: int):
        self.n_tokens, self.n_sequences = max(n_tokens, 1), n_sequences

    def __call__(self, token_sum: torch.Tensor, piece: Batch) -> torch.Tensor:
        return token_sum / self.n_tokens * (self.n_sequences / piece["input_ids"].shape[0])


def token_steps(run, skip_first: int = 0, shifted: bool = True):
    """``run.batches()`` with each step's :class:`TokenMean`."""
    for f_idx, r_idx in run.batches():
        yield (f_idx, r_idx), TokenMean(scored_tokens(run.forget, f_idx, skip_first, shifted), len(f_idx))


def logits(model, batch: Batch) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# -- the losses -----------------------------------------------------------------------------------------------------

def wga_token_losses(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """−sg(p_t)^β · NLL_t per answer token (OU ``utils.py::compute_wga_loss``: ``weight_ce =
    exp(−lm_loss).detach() ** beta``; ``−(weight_ce * lm_loss)[labels != −100].mean()``)."""
    nll, mask = token_nll(logits, labels)
    weight = torch.exp(-nll.detach()) ** beta
    return -(weight * nll)[mask]


def satimp_token_losses(logits: torch.Tensor, labels: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    """−sg(p_t)^β1 · (1 − sg(p_t))^β2 · NLL_t per answer token (OU ``utils.py::compute_satimp_loss``)."""
    nll, mask = token_nll(logits, labels)
    p = torch.exp(-nll.detach())
    return -(p ** beta1 * (1 - p) ** beta2 * nll)[mask]


def ceu_token_losses(logits: torch.Tensor, labels: torch.Tensor, skip_first: int = 1) -> torch.Tensor:
    """CE(p_θ, q) per scored token with q = softmax(sg(z) with the true token's logit at −∞): the target is the
    model's own distribution renormalised without the answer (OU ``ceu.py::cross_entropy_unlearning_loss``:
    ``valid_logits.detach().clone()``, ``scatter_(…, -inf)``, ``F.cross_entropy(valid_logits, probs)``), so the
    gradient on the logits is p − q: push p(y) to 0, keep the rest of the distribution's shape. The first
    ``skip_first`` answer tokens of each row are not scored (``compute_batch_ceu``)."""
    mask = answer_mask(labels, skip_first)
    z = logits[:, :-1][mask].float()
    y = labels[:, 1:][mask]
    target = F.softmax(z.detach().scatter(1, y[:, None], float("-inf")), -1)
    return -(target * F.log_softmax(z, -1)).sum(-1)


def undial_token_losses(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                        beta: float) -> torch.Tensor:
    """CE(p_θ, softmax(z_teacher − β·onehot(y))) per answer token; ``teacher`` holds the frozen teacher's logits
    of the answer positions only (``logits[:, :-1][answer_mask(labels)]``). OU ``utils.py::compute_undial_loss``
    scatters the one-hot from the raw shifted labels (a −100 label lowers vocabulary id V−100) and averages over
    every position, prompt and padding included; here only answer tokens are scored (the reduction of the other
    token losses in this module)."""
    mask = answer_mask(labels)
    z = logits[:, :-1][mask].float()
    y = labels[:, 1:][mask]
    adjusted = teacher.float().scatter_add(1, y[:, None], torch.full_like(y[:, None], -beta, dtype=torch.float32))
    return -(F.softmax(adjusted, -1) * F.log_softmax(z, -1)).sum(-1)


def pdu_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(max_v z_v − mean_v z_v)² per position whose own token is an answer token — PDU's logit-margin flattening
    loss, 0 exactly when the next-token distribution is uniform (OU ``pdu.py::PDU.compute_loss``: ``mask =
    labels != −100`` on the *unshifted* labels, reproduced as is: the prediction of the first answer token is
    not scored, the one after EOS is)."""
    z = logits[labels != IGNORE].float()
    return (z.max(-1).values - z.mean(-1)) ** 2


def dual_update(preference: float, retain_loss: float, eps: float, step_size: float) -> float:
    """Projected dual ascent on the retain constraint L_r ≤ ε: α ← max(0, α + η·(L_r − ε))
    (OU ``pdu.py::PDU.final_loss_value``)."""
    return max(0.0, preference + step_size * (retain_loss - eps))


__all__ = ["answer_mask", "scored_tokens", "TokenMean", "token_steps", "logits", "wga_token_losses",
           "satimp_token_losses", "ceu_token_losses", "undial_token_losses", "pdu_token_losses", "dual_update"]
