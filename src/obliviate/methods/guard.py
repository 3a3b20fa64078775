"""GUARD: generation-time unlearning by adaptive restriction and detection (Deng et al. 2025, arXiv 2505.13312) — a
suppression method. The weights are untouched; the returned model detects prompts that target the forget records and
forbids their key phrases while decoding. Teacher-forced metrics (PrivLeak, truth ratio, forget probability)
therefore stay the original's: that is what suppression means, and every report says so."""
from __future__ import annotations

from obliviate.guard import Guard, GuardConfig
from obliviate.methods import register
from obliviate.methods.base import Method, UnlearnOutput


def forget_retain_records(ctx):
    recs = ctx.task.data.train
    return [recs[int(i)] for i in ctx.forget_ids], [recs[int(i)] for i in ctx.retain_ids]


@register
class GuardMethod(Method):
    name = "guard"
    guarantee = "suppression"
    needs = frozenset({"retain"})
    kinds = ("language",)
    config_class = GuardConfig
    summary = "detect prompts about the forget set and forbid its key phrases while decoding (weights untouched)"
    reference = ('Deng et al. 2025, GUARD (arXiv 2505.13312); design: README "Generation-time unlearning, '
                 'in-context filtering and audits"')

    def unlearn(self, ctx):
        model = ctx.model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        # trained on the prompt layouts the task's evaluation sends (few-shot KnowMem prompts, template), with the
        # retain and holdout records (never trained on) as negatives
        guard = Guard.for_task(model, ctx.tokenizer or ctx.task.tokenizer(), ctx.task, ctx.forget_ids,
                               ctx.retain_ids, config=self.config, seed=ctx.seed)
        # the block is live: generation counts fill in during evaluation
        return UnlearnOutput(guard.wrap(), {"guard": guard.stats})
