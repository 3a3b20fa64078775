"""What the pipeline hands a language method, built directly for the method tests on the tiny authors task."""
from __future__ import annotations

import copy

import numpy as np
import torch

from obliviate.methods import UnlearnContext

FORGET = (0, 1)  # the authors forgotten in the method tests


def sequence_pairs(task, ids) -> list[tuple[str, str]]:
    """The (prompt, completion) training sequences of records ``ids``."""
    return [s for i in ids for s in task.data.train[int(i)].sequences()]


def language_context(tiny_lm, cls, seed: int = 0, forget_pairs=None) -> UnlearnContext:
    """A trainable copy of the original and only what ``cls`` declares it needs."""
    task, recipe, original = tiny_lm
    forget_ids = np.array(FORGET)
    retain_ids = np.setdiff1d(np.arange(task.n_train), forget_ids)
    model = copy.deepcopy(original)
    for p in model.parameters():
        p.requires_grad_(True)
    return UnlearnContext(
        task=task, model=model, original=original if "original" in cls.needs else None, x_forget=None,
        y_forget=None, x_retain=None, y_retain=None, forget_ids=forget_ids, retain_ids=retain_ids, recipe=recipe,
        seed=seed, device=torch.device("cpu"), tokenizer=task.tokenizer(),
        forget_pairs=forget_pairs if forget_pairs is not None else sequence_pairs(task, forget_ids),
        retain_pairs=sequence_pairs(task, retain_ids) if "retain" in cls.needs else None)
