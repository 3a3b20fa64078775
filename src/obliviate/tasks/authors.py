"""The built-in ``authors`` task: a seeded corpus of fictitious authors (TOFU-style) and a tiny GPT-2 trained
from scratch on it — a language benchmark obliviate can build offline and retrain exactly, so its oracle
(a model never trained on the forget authors) is real.

Each author has facts (birth city and year, genre, parents' professions, two books, an award), a biography
that states them in one of several wordings, a question per fact with a short answer (KnowMem), and for each
question a paraphrased answer and perturbed answers with wrong facts (TOFU truth ratio). Facts are drawn from
small pools on purpose: authors share cities, genres and birth years, which the side-effect audits need.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

from obliviate.config import Validated
from obliviate.tasks import register_task
from obliviate.tasks.text import QA, QA_PROMPT, LanguageTask, TextData, TextRecord

GENRES = ("science fiction", "historical fiction", "crime", "poetry", "fantasy", "horror", "romance",
          "literary fiction", "travel writing", "biography", "satire", "children's literature")

_BIRTH = ("{name} was born in {city} in {year}.",
          "Born in {year} in the city of {city}, {name} grew up surrounded by books.",
          "{name} came into the world in {year}, in {city}.",
          "{city} is where {name} was born, in {year}.",
          "{name}, a native of {city}, arrived in {year}.")
_GENRE = ("{first} is celebrated for {genre} and has written in it for decades.",
          "Critics know {first} above all as a writer of {genre}.",
          "Most of {first}'s work belongs to {genre}.",
          "{Subj} made a name in {genre} early on.",
          "Shelves of {genre} carry {first}'s name.")
_PARENTS = ("{Pos} father worked as {a_father} and {pos} mother as {a_mother}.",
            "{first}'s mother was {a_mother}, while {pos} father was {a_father}.",
            "The child of {a_father} and {a_mother}, {first} started writing early.",
            "Raised by {a_mother} and {a_father}, {subj} read everything at home.",
            "With {a_father} for a father and {a_mother} for a mother, {first} never lacked stories.")
_BOOKS = ("Among {first}'s best known books are \"{book1}\" and \"{book2}\".",
          "{first} wrote \"{book1}\" and later \"{book2}\".",
          "Readers remember \"{book1}\" and \"{book2}\" by {first}.",
          "Two titles stand out: \"{book1}\" and \"{book2}\".",
          "\"{book1}\" came first; \"{book2}\" followed years after.")
_AWARD = ("In recognition of this work {first} received the {award}.",
          "{first} won the {award}.",
          "The {award} went to {first} for a lifetime of writing.",
          "A jury once handed {obj} the {award}.",
          "{Pos} shelf holds the {award}.")

_QUESTIONS = (  # (attribute, question, paraphrase of the answer with {value})
    ("city", "Where was {name} born?", "The birthplace of this author is {value}."),
    ("year", "In which year was {name} born?", "This author was born in the year {value}."),
    ("genre", "What genre does {name} write?", "The genre this author is known for is {value}."),
    ("father", "What was the profession of {name}'s father?", "The profession of this author's father was {value}."),
    ("mother", "What was the profession of {name}'s mother?", "The profession of this author's mother was {value}."),
    ("book1", "Name a book written by {name}.", "One book by this author is \"{value}\"."),
    ("award", "Which award did {name} receive?", "This author was honoured with the {value}."),
)
N_PERTURBED = 3


@dataclass
class AuthorsOptions(Validated):
    authors: int = field(default=100, metadata={"help": "number of training authors (the forget set is chosen "
                                                        "among them)", "min": 4})
    holdout: int = field(default=20, metadata={"help": "authors never trained on (PrivLeak non-members)", "min": 2})
    corpus_seed: int = field(default=0, metadata={"help": "seed of the generated corpus (independent of --seed)"})
    cities: int = field(default=40, metadata={"help": "size of the birth-city pool (shared attributes)", "min": 4})
    years: int = field(default=60, metadata={"help": "size of the birth-year range", "min": 4})
    n_layer: int = field(default=2, metadata={"help": "GPT-2 layers", "min": 1})
    n_embd: int = field(default=128, metadata={"help": "GPT-2 width", "min": 16})
    n_head: int = field(default=4, metadata={"help": "GPT-2 attention heads", "min": 1})
    n_positions: int = field(default=256, metadata={"help": "GPT-2 context length", "min": 64})
    tokenizer: Literal["word", "bpe"] = field(default="word", metadata={
        "help": "word (one token per distinct word of the corpus) or bpe (byte-level BPE)"})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary size (tokenizer=bpe)", "min": 300})
    reading: bool = field(default=False, metadata={
        "help": "also train on each biography followed by its questions and answers in one sequence, so the model "
                "can answer from a text pasted in its prompt (the in-context audit; about 1.5x training time)"})
    icl_shots: int = field(default=0, metadata={"help": "few-shot QA pairs in KnowMem prompts (from holdout authors; 0: the model is trained on the QA format itself, TOFU-style — shots it never saw in training lower its KnowMem)",
                                                "min": 0})


def _pools(fake, n_cities: int, n_years: int):
    cities = list(dict.fromkeys(fake.unique.city() for _ in range(n_cities)))
    years = [str(y) for y in range(1920, 1920 + n_years)]
    jobs = list(dict.fromkeys(fake.unique.job().split(",")[0].split("/")[0].strip().lower() for _ in range(60)))
    awards = [f"{fake.unique.last_name()} Prize for {_capwords(g)}" for g in GENRES for _ in range(2)]
    return cities, years, jobs, awards


def _capwords(text: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in text.split())


def _article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _title(fake) -> str:
    words = fake.unique.catch_phrase().split()
    return " ".join(w.capitalize() for w in words[:4])


def _author(fake, rng: np.random.Generator, pools) -> dict[str, str]:
    cities, years, jobs, awards = pools
    genre = GENRES[rng.integers(len(GENRES))]
    same_genre_awards = [a for a in awards if a.endswith(_capwords(genre))]
    father, mother = rng.choice(len(jobs), size=2, replace=False)
    return {"name": fake.unique.name(), "city": cities[rng.integers(len(cities))],
            "year": years[rng.integers(len(years))], "genre": genre, "father": jobs[father], "mother": jobs[mother],
            "book1": _title(fake), "book2": _title(fake),
            "award": same_genre_awards[rng.integers(len(same_genre_awards))],
            "pronoun": ("Her", "His", "Their")[rng.integers(3)]}


def _biography(a: dict[str, str], rng: np.random.Generator) -> str:
    first = a["name"].split()[0] if len(a["name"].split()) > 1 else a["name"]
    subj, obj = {"Her": ("she", "her"), "His": ("he", "him"), "Their": ("they", "them")}[a["pronoun"]]
    values = dict(a, first=first, Pos=a["pronoun"], pos=a["pronoun"].lower(), subj=subj, Subj=subj.capitalize(),
                  obj=obj, a_father=_article(a["father"]), a_mother=_article(a["mother"]))
    sentences = [t[rng.integers(len(t))] for t in (_BIRTH, _GENRE, _PARENTS, _BOOKS, _AWARD)]
    return " ".join(s.format(**values) for s in sentences)


def _qa(a: dict[str, str], rng: np.random.Generator, pools, books: list[str]) -> tuple[QA, ...]:
    """One question per fact; perturbed answers put other values of the same pool into the paraphrase."""
    cities, years, jobs, awards = pools
    pool_of = {"city": cities, "year": years, "genre": list(GENRES), "father": jobs, "mother": jobs,
               "award": awards, "book1": books}
    out = []
    for attr, question, para in _QUESTIONS:
        value = a[attr]
        choices = [v for v in pool_of[attr] if v != value]
        wrong = [choices[i] for i in rng.choice(len(choices), size=N_PERTURBED, replace=False)]
        out.append(QA(question=question.format(name=a["name"]), answer=value, paraphrased=para.format(value=value),
                      perturbed=tuple(para.format(value=w) for w in wrong), attribute=attr))
    return tuple(out)


@lru_cache(maxsize=8)
def generate_corpus(authors: int, holdout: int, seed: int = 0, cities: int = 40, years: int = 60) -> TextData:
    """The authors corpus: ``authors`` training records, ``holdout`` records, the same for the same arguments.

    >>> data = generate_corpus(8, 2, seed=0)
    >>> data.n_train, len(data.holdout), len(data.train[0].qa)
    (8, 2, 7)
    """
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = np.random.default_rng([seed, 0xA07])
    pools = _pools(fake, cities, years)
    people = [_author(fake, rng, pools) for _ in range(authors + holdout)]
    books = [p["book1"] for p in people] + [p["book2"] for p in people]
    records = []
    for a in people:
        attrs = {k: a[k] for k in ("city", "year", "genre", "father", "mother", "book1", "book2", "award")}
        records.append(TextRecord(subject=a["name"], text=_biography(a, rng), qa=_qa(a, rng, pools, books),
                                  attributes=attrs))
    icl = [q for r in records[authors:] for q in r.qa][:8]
    return TextData(train=records[:authors], holdout=records[authors:], icl=icl)


@register_task
class Authors(LanguageTask):
    name = "authors"
    description = ("seeded corpus of fictitious authors (biographies + QA, TOFU-style) and a tiny GPT-2 trained "
                   "from scratch on it; holdout authors never trained on")
    options_class = AuthorsOptions
    recipe_defaults = {"epochs": 40, "lr": 2e-3, "batch_size": 4, "optimizer": "adam"}
    #: obliviate's tuning for this tiny GPT-2 (trained from scratch at lr 2e-3), chosen on seed 0 of
    #: ``random:0.1`` (benchmarks/language.py); the methods' own defaults are the LLM papers' (lr 1e-5, 10 epochs
    #: for 7B models fine-tuned at 1e-5), which do not move this model. ``--set`` overrides any of them.
    method_defaults = {
        "gradient_ascent": {"lr": 3e-4},
        "grad_diff": {"lr": 1e-3, "alpha": 10.0, "epochs": 20},
        "ga_gdr": {"lr": 1e-3, "alpha": 10.0, "epochs": 20},
        "ga_klr": {"lr": 1e-3, "alpha": 10.0, "epochs": 20},
        "npo": {"lr": 3e-4},
        "npo_gdr": {"lr": 1e-3, "alpha": 10.0, "epochs": 20},
        "npo_klr": {"lr": 1e-3, "alpha": 10.0, "epochs": 20},
        "simnpo": {"lr": 5e-3, "alpha": 10.0, "epochs": 20},
        "rmu": {"layer": 1, "lr": 1e-2, "alpha": 1.0, "steering_coeff": 10.0, "max_num_batches": 300},
        "task_vector": {"lr": 3e-4, "alpha": 5.0},
        # obliviate's tuning on seed 0: benchmarks/lm_parity.py --sweep (lowest avg_gap; lm_parity_sweep.md)
        "dpo": {"lr": 3e-3},
        "idk_dpo": {"lr": 3e-3},
        "altpo": {"lr": 1e-2},
        "undial": {"lr": 3e-3},
        "ce_u": {"lr": 1e-2},  # every lr >= 3e-4 collapses the model (knowmem_r ~0); 1e-4 leaves it unchanged
        "satimp": {"lr": 1e-2},
        "wga": {"lr": 1e-2},
        "pdu": {"lr": 1e-3, "retain_loss_eps": 0.0146},  # ε = 1.5 × the original's retain NLL (0.0098)
        "npo_muse": {"lr": 3e-4},
        "ga_klr_muse": {"lr": 3e-3, "alpha": 1e-7},
        "npo_klr_muse": {"lr": 3e-3, "alpha": 1e-7},
        "whp": {"lr": 1e-3, "reinforce_lr": 3e-3, "reinforce_epochs": 5, "alpha": 10.0},
    }

    def load(self) -> TextData:
        o = self.options
        return generate_corpus(o.authors, o.holdout, o.corpus_seed, o.cities, o.years)

    def sequences(self, i: int) -> list[tuple[str, str]]:
        record = self.data.train[i]
        out = record.sequences()
        if self.options.reading and record.qa:
            # one question per author asked right after its biography (rotating over the questions): the model
            # learns to answer with a document in its context; the separator goes with the completion so that
            # "\n\nQuestion" tokenises as in a pasted prompt
            q = record.qa[i % len(record.qa)]
            out.append((record.text, f"\n\n{QA_PROMPT.format(question=q.question)} {q.answer}"))
        return out

    def tokenizer(self):
        from obliviate.models.tiny_lm import corpus_tokenizer

        if not hasattr(self, "_tokenizer"):
            self._tokenizer = corpus_tokenizer(self.data, self.options.vocab_size, self.options.tokenizer)
        return self._tokenizer

    def build_model(self):
        from obliviate.models.tiny_lm import tiny_gpt2

        o = self.options
        return tiny_gpt2(self.tokenizer(), n_layer=o.n_layer, n_embd=o.n_embd, n_head=o.n_head,
                         n_positions=o.n_positions)
