"""The in-context filter (Shumailov et al. 2024, UnUnlearning, arXiv 2407.00106) as a method (``filter``: the
original behind the filter) and as a layer on any language method (``<method>+filter``, built by
:func:`obliviate.api.build_method`).

Composite names: ``"<base>+filter"`` — the base method unlearns, then its model is put behind the filter. The
composite's guarantee is the base method's (the filter changes no weight; it only adds suppression at generation
time, reported in the output's ``filter`` block). Config values go to the base method when it has the key, else to the
filter (``action``, ``tau_ngram``, ...); ``filter.<key>`` always targets the filter.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from obliviate.config import build_config
from obliviate.guard import FilterConfig, InContextFilter
from obliviate.methods import register
from obliviate.methods.base import Method, UnlearnOutput
from obliviate.methods.guard import forget_retain_records

SUFFIX = "+filter"


def _wrap(ctx, model, config: FilterConfig) -> UnlearnOutput:
    forget, retain = forget_retain_records(ctx)
    flt = InContextFilter(ctx.tokenizer or ctx.task.tokenizer(), forget, config, retain_records=retain,
                          device=ctx.device)
    # the block is live: flagged counts fill in during evaluation (config inside)
    return UnlearnOutput(flt.wrap(model), {"filter": flt.stats})


@register
class FilterMethod(Method):
    name = "filter"
    guarantee = "suppression"
    kinds = ("language",)
    config_class = FilterConfig
    summary = "refuse, redact or guard prompts that paste forgotten content back in (weights untouched)"
    reference = ('Shumailov et al. 2024, UnUnlearning (arXiv 2407.00106); design: README "Generation-time '
                 'unlearning, in-context filtering and audits"')

    def unlearn(self, ctx):
        model = ctx.model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return _wrap(ctx, model, self.config)


def split_composite(name: str) -> tuple[str, bool]:
    """``"npo+filter"`` → ``("npo", True)``; any other name → ``(name, False)``."""
    if name.endswith(SUFFIX) and len(name) > len(SUFFIX):
        return name[:-len(SUFFIX)], True
    return name, False


def split_values(values: dict[str, Any], base_fields: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base values, filter values): ``filter.<key>`` and keys the base lacks but the filter has go to the filter;
    everything else to the base (whose config rejects unknown keys)."""
    fields = {f.name for f in dataclasses.fields(FilterConfig)}
    base, flt = {}, {}
    for k, v in values.items():
        if k.startswith("filter."):
            flt[k[len("filter."):]] = v
        elif k in base_fields or k not in fields:
            base[k] = v
        else:
            flt[k] = v
    return base, flt


def config_fields(name: str, kind: str | None) -> set[str]:
    """Config keys a (possibly composite) method name accepts — for routing ``--set`` keys."""
    from obliviate.methods import get_method

    base, composite = split_composite(name)
    keys = {f.name for f in dataclasses.fields(get_method(base, kind).config_class)}
    if composite:
        keys |= {f.name for f in dataclasses.fields(FilterConfig)}
    return keys


class FilteredMethod(Method):
    """``<base>+filter``: the base method, then the filter in front of its model. Not registered (built by
    :func:`compose`); ``config`` is the base's config, ``filter_config`` the filter's."""

    guarantee = "approximate"  # replaced per instance by the base's
    kinds = ("language",)

    def __init__(self, base: Method, filter_config: FilterConfig | None = None):
        super().__init__(base.config)
        self.base = base
        self.filter_config = filter_config if filter_config is not None else FilterConfig()
        self.name = base.name + SUFFIX
        self.guarantee = base.guarantee
        self.needs = base.needs
        self.kinds = tuple(k for k in base.kinds if k == "language")
        self.trains_original = base.trains_original
        self.summary = f"{base.name}, then the in-context filter ({self.filter_config.action})"
        self.reference = base.reference

    def unlearn(self, ctx):
        base = UnlearnOutput.of(self.base.unlearn(ctx), method=self.base.name)
        out = _wrap(ctx, base.model, self.filter_config)
        return UnlearnOutput(out.model, {**base.blocks, **out.blocks})

    def fit(self, *args, **kwargs):
        return self.base.fit(*args, **kwargs)

    def restore(self, *args, **kwargs):
        return self.base.restore(*args, **kwargs)


def compose(base: Method, filter_values: dict[str, Any] | None = None) -> FilteredMethod:
    return FilteredMethod(base, build_config(FilterConfig, filter_values or {}, prefix="filter."))
