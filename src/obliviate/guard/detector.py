"""GUARD's prompt detector (GUARD, Deng et al. 2025, arXiv 2505.13312): z = mean of the frozen LM's penultimate-layer hidden states under
the attention mask, p(f | z) = softmax(MLP(z)); an MLP d→hidden→2 (ReLU, dropout) trained class-balanced with
AdamW on forget-target prompts (label 1) vs retain and general prompts (label 0). Features are standardised with
the training set's mean and standard deviation (kept as buffers)."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from obliviate.lm import pad_right
from obliviate.seeding import numpy_rng


def encode_prompts(tokenizer, prompts: Sequence[str], limit: int) -> list[list[int]]:
    """Token ids of ``prompts`` as :func:`obliviate.lm.generate` feeds them: BOS + prompt, last ``limit``."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [(bos + tokenizer(p, add_special_tokens=False)["input_ids"])[-limit:] for p in prompts]


@torch.no_grad()
def id_features(model, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """[n, d] float32 (CPU): masked mean of the penultimate hidden layer over each row of token ids
    (right-padded in batches, so the states of real tokens do not depend on the padding)."""
    device = next(model.parameters()).device
    rows = [list(r) or [pad_id] for r in rows]
    out = []
    was_training = model.training
    model.eval()
    backbone = getattr(model, "base_model", model)
    for start in range(0, len(rows), batch_size):
        ids, mask = pad_right(rows[start:start + batch_size], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        # the backbone alone (``base_model``): the LM head's logits over the vocabulary are not needed here
        hidden = backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * m).sum(1) / m.sum(1).clamp_min(1)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


def prompt_features(model, tokenizer, prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """:func:`id_features` of ``prompts`` encoded as :func:`obliviate.lm.generate` encodes them."""
    from obliviate.lm import max_length

    return id_features(model, encode_prompts(tokenizer, prompts, max_length(model)), pad_id(tokenizer), batch_size)


class Detector(nn.Module):
    def __init__(self, dim: int, hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 2))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net((z.to(self.mean.device, self.mean.dtype) - self.mean) / self.std)

    @torch.no_grad()
    def prob(self, z: torch.Tensor) -> torch.Tensor:
        """p(forget target | z), [n] on CPU."""
        was = self.training
        self.eval()
        p = F.softmax(self(z).float(), dim=-1)[:, 1].cpu()
        self.train(was)
        return p


def train_detector(x: torch.Tensor, y: torch.Tensor, config, seed: int) -> Detector:
    """A class-balanced, seeded AdamW fit of a fresh :class:`Detector` on features ``x`` and labels ``y``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        det = Detector(x.shape[1], config.detector_hidden, config.detector_dropout)
    det.mean.copy_(x.mean(0))
    det.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
    counts = torch.bincount(y, minlength=2).float()
    weight = counts.sum() / (2 * counts.clamp_min(1))
    opt = torch.optim.AdamW(det.parameters(), lr=config.detector_lr, weight_decay=config.detector_weight_decay)
    gen = torch.Generator().manual_seed(seed + 1)
    det.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)  # dropout masks
        for _ in range(config.detector_epochs):
            order = torch.randperm(len(y), generator=gen)
            for start in range(0, len(y), config.detector_batch_size):
                idx = order[start:start + config.detector_batch_size]
                loss = F.cross_entropy(det(x[idx]), y[idx], weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return det.eval()


def grouped_split(labels: np.ndarray, groups: Sequence, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: per class, whole groups go to the test side (about ``fraction`` of the groups, at
    least one, never all)."""
    rng = numpy_rng(seed, 0x6A2D)
    test = []
    for c in (0, 1):
        gs = list(dict.fromkeys(g for g, l in zip(groups, labels) if l == c))
        if fraction <= 0 or len(gs) < 2:
            continue
        k = min(len(gs) - 1, max(1, int(round(fraction * len(gs)))))
        chosen = {gs[i] for i in rng.choice(len(gs), size=k, replace=False)}
        test += [i for i, (g, l) in enumerate(zip(groups, labels)) if l == c and g in chosen]
    test_arr = np.array(sorted(test), dtype=np.int64)
    train_arr = np.setdiff1d(np.arange(len(labels)), test_arr)
    return train_arr, test_arr


def precision_recall(pred: np.ndarray, labels: np.ndarray) -> dict[str, float | int | None]:
    tp = int(((pred == 1) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn,
            "tn": int(((pred == 0) & (labels == 0)).sum())}


def fit_detector(features: torch.Tensor, labels: np.ndarray, groups: Sequence, config, seed: int):
    """Measure on a held-out split, then (``refit``) train the detector used on every prompt.
    Returns (detector, metrics)."""
    start = time.perf_counter()
    y = torch.as_tensor(labels, dtype=torch.long)
    train_idx, test_idx = grouped_split(labels, groups, config.test_fraction, seed)
    det = train_detector(features[train_idx], y[train_idx], config, seed)
    metrics: dict = {"threshold": config.threshold, "n_prompts": int(len(labels)),
                     "n_positive": int(labels.sum()), "n_negative": int((labels == 0).sum()),
                     "n_train": int(len(train_idx)), "n_test": int(len(test_idx))}
    if len(test_idx):
        pred = (det.prob(features[test_idx]).numpy() > config.threshold).astype(int)
        metrics["held_out"] = precision_recall(pred, labels[test_idx])
    else:
        metrics["held_out"] = None
    if config.refit and len(test_idx):
        det = train_detector(features, y, config, seed)
    pred = (det.prob(features).numpy() > config.threshold).astype(int)
    metrics["fit"] = precision_recall(pred, labels)
    held = metrics["held_out"] or {}
    metrics["precision"], metrics["recall"] = held.get("precision"), held.get("recall")
    metrics["train_s"] = time.perf_counter() - start
    return det, metrics
