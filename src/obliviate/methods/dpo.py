"""DPO unlearning of causal LMs: prefer an alternate answer to each forget answer (OpenUnlearning's ``DPO``
trainer, ``src/trainer/unlearn/dpo.py``: GradDiff with the forget term replaced by ``compute_dpo_loss``).

``idk_dpo`` is OpenUnlearning's IdkDPO (``configs/experiment/unlearn/tofu/idk.yaml``: the DPO trainer on
``TOFU_QA_forget_idk``): the alternate is a refusal ("I don't know."). ``dpo`` takes alternates from a user's
file, or refusals by default — then it is ``idk_dpo`` (OpenUnlearning likewise has one DPO trainer whose
alternates are whatever the forget data set supplies). The loss and loop: :mod:`obliviate.methods._preference`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from obliviate.methods import register
from obliviate.methods._preference import (LANGUAGE, REFUSALS, PreferenceConfig, like, question_answer_pairs,
                                           read_alternates, read_answers, train)
from obliviate.methods.base import Method

IDK = "idk"


@dataclass
class IdkDPOConfig(PreferenceConfig):
    """β = 0.1, γ = α = 1, retain NLL: OpenUnlearning ``configs/trainer/DPO.yaml`` (inheriting ``GradDiff.yaml``).
    Optimiser: :class:`~obliviate.methods._lm.LMOptimConfig` (lr 1e-5, 10 epochs, batch 32 — ``idk.yaml``'s
    ``learning_rate: 1e-5``, ``num_train_epochs: 10``; its ``weight_decay: 0.01`` and ``warmup_epochs: 1.0`` are
    ``tofu/default.yaml``'s too, which obliviate's language methods leave at 0 like NPO's: ``--set
    weight_decay=0.01 warmup_epochs=1`` reproduces the experiment's optimiser).
    Refusals: obliviate's own list (:data:`~obliviate.methods._preference.REFUSALS`), one drawn per forget
    question from the run's generator; OpenUnlearning's ``QAwithIdkDataset`` draws a line of ``data/idk.jsonl``
    anew each time an item is loaded — a fixed draw lets the reference log-probabilities be computed once."""

    idk_file: str = field(default="", metadata={
        "help": "file of refusal answers, one per line (OpenUnlearning's data/idk.jsonl works); '' = obliviate's "
                "built-in list of 30"})


@dataclass
class DPOConfig(IdkDPOConfig):
    """:class:`IdkDPOConfig` plus where the alternates come from; the defaults make ``dpo`` ``idk_dpo``."""

    alternates: str = field(default=IDK, metadata={
        "help": "idk (refusals: idk_dpo) or a JSONL file of {\"prompt\" or \"question\", \"alternate\": text or "
                "list}, e.g. an AltPO alternates file"})


def refusal_rows(ctx, cfg, pairs) -> list[tuple[str, str, str]]:
    """(prompt, forget answer, refusal) per pair, the refusal drawn uniformly with ``ctx.generator``."""
    answers = read_answers(cfg.idk_file) if cfg.idk_file else list(REFUSALS)
    draws = torch.randint(len(answers), (len(pairs),), generator=ctx.generator(101)).tolist()
    return [(p, c, like(c, answers[k])) for (p, c), k in zip(pairs, draws)]


@register
class IdkDPO(Method):
    name = "idk_dpo"
    guarantee = "approximate"
    needs = frozenset({"retain"})  # the reference is the starting model (ctx.model before the first update)
    kinds = LANGUAGE
    config_class = IdkDPOConfig
    summary = "DPO preferring a refusal (\"I don't know.\") to each forget answer (+ retain NLL)"
    reference = ("Maini et al. 2024 (TOFU), arXiv 2401.06121; open-unlearning src/trainer/unlearn/dpo.py, "
                 "configs/experiment/unlearn/tofu/idk.yaml")

    def unlearn(self, ctx):
        pairs, notes = question_answer_pairs(ctx, self.config, self.name)
        return train(ctx, self.config, refusal_rows(ctx, self.config, pairs), notes)


@register
class DPO(Method):
    name = "dpo"
    guarantee = "approximate"
    needs = frozenset({"retain"})
    kinds = LANGUAGE
    config_class = DPOConfig
    summary = "DPO preferring an alternate answer (a file's, or a refusal) to each forget answer (+ retain NLL)"
    reference = "Rafailov et al. 2023, arXiv 2305.18290; open-unlearning src/trainer/unlearn/dpo.py"

    def unlearn(self, ctx):
        cfg = self.config
        pairs, notes = question_answer_pairs(ctx, cfg, self.name)
        if cfg.alternates == IDK:
            rows = refusal_rows(ctx, cfg, pairs)
        else:  # one row per alternate, as OpenUnlearning's QAwithAlternateDataset over a file of several per question
            found = read_alternates(cfg.alternates, pairs)
            rows = [(p, c, like(c, a)) for (p, c), alts in zip(pairs, found) for a in alts]
        return train(ctx, cfg, rows, notes)
