"""Generation-time suppression of forgotten content: GUARD (Deng et al. 2025, arXiv 2505.13312) and the
in-context filter (Shumailov et al. 2024, UnUnlearning, arXiv 2407.00106).

* :class:`Guard` — prompt detector (MLP on mean penultimate hidden states) + retrieval of the nearest forget
  record + decoding restriction on its key phrases (:class:`GuardLogitsProcessor`); :meth:`Guard.wrap` gives a
  :class:`GuardedModel` that the evaluation uses as if it were the model.
* :class:`InContextFilter` — flags prompts that paste forgotten content back in (n-gram overlap, SBERT
  similarity) and refuses, redacts or guards them; :meth:`InContextFilter.wrap` gives a :class:`FilteredModel`.

Both are **suppression**: the weights are never changed, so teacher-forced scores (PrivLeak, truth ratio) stay
the wrapped model's. Registered as the methods ``guard`` and ``filter``; ``<method>+filter`` puts the filter in
front of any language method's unlearned model. A guarded model's ``save_pretrained`` writes the guard beside the
weights (safetensors + JSON); :func:`load_guarded` wraps a model loaded from such a directory again.
"""
from obliviate.guard.config import FilterConfig, GuardConfig, PhraseConfig
from obliviate.guard.core import Guard, GuardedModel
from obliviate.guard.embedder import Embedder, load_embedder
from obliviate.guard.filter import FilteredModel, InContextFilter
from obliviate.guard.phrases import PhraseBank, key_phrases, record_prompts, surface_variants, token_sequences
from obliviate.guard.saving import load_guarded, save_guard


def __getattr__(name: str):
    # the processor subclasses transformers' LogitsProcessor: imported on first use, so that discovering the
    # methods (which imports this package) does not import transformers
    if name == "GuardLogitsProcessor":
        from obliviate.guard.processor import GuardLogitsProcessor

        return GuardLogitsProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Guard", "GuardedModel", "GuardConfig", "PhraseConfig", "FilterConfig", "InContextFilter", "FilteredModel",
           "GuardLogitsProcessor", "PhraseBank", "Embedder", "load_embedder", "key_phrases", "record_prompts",
           "surface_variants", "token_sequences", "load_guarded", "save_guard"]
