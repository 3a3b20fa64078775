"""Who's Harry Potter (WHP; Eldan & Russinovich 2023, arXiv 2310.02238; a MUSE baseline), distilled into one model.

The generic prediction at each position combines the baseline model θ_o with a *reinforced* model θ_r (θ_o
fine-tuned further on the forget text, which pushes up exactly the tokens the forget text makes likely):

    v_generic = v_base − α·ReLU(v_reinforced − v_base)          (logits over the vocabulary)

How MUSE runs it: swj0419/muse_bench ``baselines/baselines/whos_harry_potter.py`` (``WHPModelForCausalLM``) is
an *inference-time* wrapper holding both models and returning v_generic as its logits for every evaluation; the
reinforced model is the task-vector fine-tune (``unlearn.py --algo tv`` writes it next to the output as ``*_ft``:
``finetune.py``, 10 epochs, lr 1e-5, cosine) and α comes from the model name (``utils.load_model``:
``alpha=<x>``, default 1). No weights change and the result is two models, which obliviate's contract (a
method returns a plain model of the input's class) does not allow.

What obliviate does instead is the paper's own last step: fine-tune the baseline on the forget text with the
*generic labels* — at each completion position the token with the largest v_generic — as targets, so one model
of the input's class carries the combination's behaviour. Differences from MUSE's WHP, all deliberate:

- distilled, not inference-time: the unlearned model approximates argmax v_generic (the paper's labels), it
  does not output v_generic itself; metrics that read the whole distribution (MUSE PrivLeak) see the fine-tuned
  model, not the combination;
- the generic-label fine-tune's optimiser is :class:`obliviate.methods._lm.LMOptimConfig`'s (lr 1e-5, 10
  epochs, constant, batch 32): obliviate's choice, not a value from MUSE (which has no such step) or the paper;
- the paper's second ingredient, anchored terms (a GPT-4-built dictionary translating idiosyncratic expressions
  into generic ones before the baseline's pass), is left out, as in MUSE: v_base is the baseline on the
  original text.

The reinforced fine-tune is MUSE's (:func:`obliviate.methods.task_vector.fine_tune` with ``reinforce_*``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from obliviate.lm import IGNORE, collate, encode_all, eval_batch_size, max_length, mean_nll
from obliviate.methods import register
from obliviate.methods._lm import LMOptimConfig, LMRun
from obliviate.methods.base import Method
from obliviate.methods.task_vector import fine_tune


@dataclass
class WHPConfig(LMOptimConfig):
    """α = 1: MUSE ``utils.load_model`` (``WHPModelForCausalLM(..., alpha=1.)`` unless the model name says
    ``alpha=``). Reinforced model: MUSE's fine-tune (``scripts/unlearn_news.sh`` ``FT_EPOCHS=10``, ``FT_LR=1e-5``;
    ``baselines/finetune.py`` ``lr_scheduler_type='cosine'``, no warm-up), batch 32. The generic-label
    fine-tune uses the remaining fields (:class:`LMOptimConfig`: lr 1e-5, 10 epochs, constant) — obliviate's
    choice (see the module doc)."""

    alpha: float = field(default=1.0, metadata={
        "help": "α of v_generic = v_base − α·ReLU(v_reinforced − v_base)", "min": 0})
    reinforce_lr: float = field(default=1e-5, metadata={"help": "learning rate of the reinforced fine-tune",
                                                         "gt": 0})
    reinforce_epochs: int = field(default=10, metadata={"help": "epochs of the reinforced fine-tune", "min": 1})
    reinforce_lr_schedule: Literal["constant", "linear", "cosine"] = field(default="cosine", metadata={
        "help": "learning-rate schedule of the reinforced fine-tune (MUSE: cosine, no warm-up)"})


def generic_logits(v_base: torch.Tensor, v_reinforced: torch.Tensor, alpha: float) -> torch.Tensor:
    """v_base − α·ReLU(v_reinforced − v_base): the tokens the reinforcement pushed up are pushed down."""
    return v_base - alpha * F.relu(v_reinforced - v_base)


@torch.no_grad()
def generic_labels(base, reinforced, items, pad: int, alpha: float, device, batch_size: int) -> list[torch.Tensor]:
    """Per sequence of ``items``: labels aligned with its ids (−100 on the prompt), each completion token replaced
    by the argmax of v_generic at the position that predicts it."""
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        batch = collate(chunk, pad, device)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        top = generic_logits(base(**inputs).logits.float(), reinforced(**inputs).logits.float(), alpha).argmax(-1)
        for row, e in zip(top.cpu(), chunk):
            labels = torch.full((len(e.ids),), IGNORE, dtype=torch.long)
            labels[e.n_prompt:] = row[e.n_prompt - 1:len(e.ids) - 1]  # position t − 1 predicts token t
            out.append(labels)
    return out


def _pad_labels(rows: list[torch.Tensor], width: int, device) -> torch.Tensor:
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        labels[i, :len(r)] = r
    return labels.to(device)


@register
class WHP(Method):
    name = "whp"
    guarantee = "approximate"
    needs = frozenset({"original"})
    kinds = ("language",)
    config_class = WHPConfig
    summary = "Who's Harry Potter: fine-tune on the generic labels of base − α·ReLU(reinforced − base)"
    reference = "Eldan & Russinovich 2023, arXiv 2310.02238; MUSE baselines/baselines/whos_harry_potter.py"

    def unlearn(self, ctx):
        cfg = self.config
        base = ctx.original  # θ_o, read only
        # 1. the reinforced model θ_r: ctx.model fine-tuned on the forget sequences (MUSE's *_ft model)
        reinforce = dataclasses.replace(cfg, lr=cfg.reinforce_lr, epochs=cfg.reinforce_epochs,
                                        lr_schedule=cfg.reinforce_lr_schedule, warmup_steps=0, warmup_epochs=0.0)
        reinforced = fine_tune(ctx, reinforce)
        # 2. generic labels of every forget sequence (the sequences LMRun trains on: same tokenizer and limit)
        items = encode_all(ctx.tokenizer, ctx.forget_pairs, cfg.max_length or max_length(reinforced))
        was = base.training
        base.eval()
        labels = generic_labels(base, reinforced.eval(), items, ctx.tokenizer.pad_token_id, cfg.alpha, ctx.device,
                                cfg.eval_batch_size or eval_batch_size(reinforced))
        base.train(was)
        # 3. back to θ_o, then fine-tune it on the generic labels
        reinforced.load_state_dict(base.state_dict())
        run = LMRun(dataclasses.replace(ctx, model=reinforced), cfg, retain=False)
        assert [e.ids for e in run.forget] == [e.ids for e in items]

        def loss(forget, _):
            rows = [labels[i] for i in forget["index"].tolist()]
            return mean_nll(run.model, {**forget, "labels": _pad_labels(rows, forget["input_ids"].shape[1],
                                                                         forget["input_ids"].device)})

        for batch in run.batches(ctx.generator(2)):
            run.step(loss, batch)
        return run.finish()
