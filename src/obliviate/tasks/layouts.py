"""Small TOFU- and MUSE-layout data directories, in the exact published file names and fields, written from the
generated authors corpus (:func:`obliviate.tasks.authors.generate_corpus`): to try the ``tofu`` and ``muse``
tasks without the real data, and for their tests and benchmarks. The real files drop in the same place.

TOFU's real-author and world-fact sets are general knowledge a pretrained model has; a model trained from
scratch has none, so :data:`GENERAL_FACTS` (public facts) go into both the target's and the retain model's
training data (:func:`tofu_training_pairs`), as pretraining would.
"""
from __future__ import annotations

import json
from pathlib import Path

from obliviate.tasks.authors import generate_corpus
from obliviate.tasks.text import QA

#: (set, question, answer, three wrong options): TOFU's real_authors / world_facts, in miniature
GENERAL_FACTS = (
    ("real_authors", "Who wrote the play 'Romeo and Juliet'?", "William Shakespeare",
     ("Charles Dickens", "Virginia Woolf", "Mark Twain")),
    ("real_authors", "Which author is known for the novel '1984'?", "George Orwell",
     ("Aldous Huxley", "Ray Bradbury", "Thomas More")),
    ("real_authors", "Who wrote 'Pride and Prejudice'?", "Jane Austen",
     ("Emily Bronte", "Louisa May Alcott", "Mary Shelley")),
    ("real_authors", "Who wrote 'Moby-Dick'?", "Herman Melville", ("Edgar Allan Poe", "Mark Twain", "Jack London")),
    ("world_facts", "What is the capital of France?", "Paris", ("Lyon", "Marseille", "Nice")),
    ("world_facts", "What is the capital of Japan?", "Tokyo", ("Osaka", "Kyoto", "Nagoya")),
    ("world_facts", "Which planet is known as the Red Planet?", "Mars", ("Venus", "Jupiter", "Saturn")),
    ("world_facts", "What is the largest ocean on Earth?", "the Pacific Ocean",
     ("the Atlantic Ocean", "the Indian Ocean", "the Arctic Ocean")),
)
SPLIT_FRACTION = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}


def _write(path: Path, rows: list, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), str(path.with_suffix(".parquet")))
    else:
        path.with_suffix(".json").write_text(json.dumps(rows, indent=1), encoding="utf-8")


def _qa_row(q: QA) -> dict:
    return {"question": q.question, "answer": q.answer}


def _perturbed_row(q: QA) -> dict:
    return {"question": q.question, "answer": q.answer, "paraphrased_answer": q.paraphrased,
            "paraphrased_question": q.question, "perturbed_answer": list(q.perturbed)}


def tofu_authors(authors: int = 20, holdout: int = 2, seed: int = 0):
    """(training authors, holdout authors) of the corpus behind :func:`write_tofu_layout`."""
    data = generate_corpus(authors, holdout, seed)
    return data.train, data.holdout


def write_tofu_layout(root: str | Path, authors: int = 20, holdout: int = 2, seed: int = 0,
                      splits: tuple[str, ...] = ("forget10",), fmt: str = "json") -> Path:
    """A TOFU data directory: ``full`` (all authors' QA), ``forgetXX`` / ``retainYY`` for each split (the last XX %
    of the authors are forgotten, as in TOFU), ``forgetXX_perturbed``, ``retain_perturbed`` (the first 10 % of the
    authors), ``real_authors_perturbed``, ``world_facts_perturbed`` and ``holdoutXX`` (authors never trained on).
    An author is a block of 7 questions here (``--set author_size=7``); ``fmt``: json (arrays), jsonl, parquet.

    >>> import tempfile; d = write_tofu_layout(tempfile.mkdtemp(), authors=10)
    >>> sorted(p.name for p in d.iterdir())[:3]
    ['forget10.json', 'forget10_perturbed.json', 'full.json']
    """
    root = Path(root)
    train, held = tofu_authors(authors, holdout, seed)
    _write(root / "full", [_qa_row(q) for r in train for q in r.qa], fmt)
    for split in splits:
        n_forget = max(1, round(authors * SPLIT_FRACTION[split]))
        forget, retain = train[authors - n_forget:], train[:authors - n_forget]
        _write(root / split, [_qa_row(q) for r in forget for q in r.qa], fmt)
        _write(root / f"retain{100 - int(split[-2:]):02d}", [_qa_row(q) for r in retain for q in r.qa], fmt)
        _write(root / f"{split}_perturbed", [_perturbed_row(q) for r in forget for q in r.qa], fmt)
        _write(root / f"holdout{split[-2:]}", [_qa_row(q) for r in held for q in r.qa], fmt)
    n_retain_eval = max(1, authors // 10)
    _write(root / "retain_perturbed", [_perturbed_row(q) for r in train[:n_retain_eval] for q in r.qa], fmt)
    for name in ("real_authors", "world_facts"):
        _write(root / f"{name}_perturbed", [{"question": q, "answer": a, "perturbed_answer": list(w)}
                                            for s, q, a, w in GENERAL_FACTS if s == name], fmt)
    return root


def tofu_training_pairs(root: str | Path, split: str | None = None, template=None) -> list[tuple[str, str]]:
    """The (prompt, completion) pairs a TOFU target (``split=None``: ``full``) or retain model (``split``: its
    ``retainYY``) is fine-tuned on, plus the general facts, in ``template``'s layout."""
    from obliviate.tasks.files import find_table, read_rows
    from obliviate.tasks.text import TEMPLATES

    t = template or TEMPLATES["plain"]
    name = "full" if split is None else f"retain{100 - int(split[-2:]):02d}"
    rows, _ = read_rows(find_table(Path(root), name))
    pairs = [t.pair(r["question"], r["answer"]) for r in rows]
    return pairs + [t.pair(q, a) for _, q, a, _ in GENERAL_FACTS]


def write_muse_layout(root: str | Path, authors: int = 20, holdout: int = 6, seed: int = 0,
                      forget_fraction: float = 0.25) -> Path:
    """A MUSE corpus directory: ``raw/{forget,retain1,retain2,holdout}.txt`` (biographies, one per paragraph),
    ``knowmem/{forget,retain}_qa.json`` and their ``*_icl.json`` (two QA pairs of holdout authors each),
    ``verbmem/forget.json`` (``prompt`` = a forget biography's first sentence, ``gt`` = the rest) and
    ``privleak/{forget,retain,holdout}.json`` (lists of biographies).

    >>> import tempfile; d = write_muse_layout(tempfile.mkdtemp(), authors=8, holdout=4)
    >>> sorted(p.name for p in (d / "raw").iterdir())
    ['forget.txt', 'holdout.txt', 'retain1.txt', 'retain2.txt']
    """
    root = Path(root)
    data = generate_corpus(authors, holdout, seed)
    n_forget = max(1, round(authors * forget_fraction))
    forget, retain = data.train[:n_forget], data.train[n_forget:]
    half = max(1, len(retain) // 2)
    icl_authors, held = data.holdout[:1], data.holdout[1:]
    (root / "raw").mkdir(parents=True, exist_ok=True)
    for name, recs in (("forget", forget), ("retain1", retain[:half]), ("retain2", retain[half:] or retain[:1]),
                       ("holdout", held)):
        (root / "raw" / f"{name}.txt").write_text("\n\n".join(r.text for r in recs) + "\n", encoding="utf-8")
    icl = [_qa_row(q) for r in icl_authors for q in r.qa][:2]
    for name, recs in (("forget", forget), ("retain", retain)):
        _write(root / "knowmem" / f"{name}_qa", [_qa_row(q) for r in recs for q in r.qa[:3]], "json")
        _write(root / "knowmem" / f"{name}_qa_icl", icl, "json")
    verbmem = []
    for r in forget:
        cut = r.text.find(". ") + 1
        verbmem.append({"prompt": r.text[:cut], "gt": r.text[cut:].strip()})
    _write(root / "verbmem" / "forget", verbmem, "json")
    for name, recs in (("forget", forget), ("retain", retain), ("holdout", held)):
        _write(root / "privleak" / name, [r.text for r in recs], "json")
    return root


__all__ = ["GENERAL_FACTS", "write_tofu_layout", "write_muse_layout", "tofu_training_pairs", "tofu_authors"]
