"""TOFU and MUSE from their own file layouts, on four model families (issue 12).

For each tiny architecture (Llama, Qwen2, GPT-NeoX, Phi; randomly initialised, then trained here from scratch)
× {TOFU forget10, MUSE news}: a TOFU- / MUSE-layout directory in the published file and field names
(:mod:`obliviate.tasks.layouts`, from the generated authors corpus), a *target* trained on everything and a
*retain model* (the oracle) trained without the forget authors, both saved as HF directories; then every
language method through ``obliviate`` exactly as a user runs it (``--task tofu --set data=DIR model=DIR
oracle=DIR``), with forget quality, TOFU model utility, KnowMem f/r, VerbMem, PrivLeak, extraction strength,
the six MIA AUCs and the run time.

    .venv/bin/python benchmarks/llm_formats.py [--families llama,qwen2,gpt_neox,phi] [--methods npo,rmu,...]

Method settings: the authors task's ``method_defaults`` (obliviate's tuning for tiny models trained at lr 2e-3;
the papers' lr 1e-5 does not move a model trained from scratch), recorded in each run's ``config``. A tiny model
cannot answer questions about a text it only read, so the MUSE-layout targets also train on the QA pairs (as
the authors task does) and KnowMem is asked zero-shot (``icl_shots=0``: shots a tiny model never saw in
training only lower its KnowMem, README); TOFU's targets train on QA pairs only, as TOFU does (40 authors of
7 questions, forget10 = 4 authors). Prints a markdown table and writes
benchmarks/results/llm_formats.{json,md}. Every number is measured here, on CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OBLIVIATE_QUIET", "1")

import torch  # noqa: E402

from obliviate import api  # noqa: E402

FAMILIES = ["llama", "qwen2", "gpt_neox", "phi"]
METHODS = ["gradient_ascent", "grad_diff", "ga_gdr", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo", "rmu",
           "task_vector", "guard"]
COLS = ["forget_quality", "model_utility", "knowmem_f", "knowmem_r", "verbmem_f", "privleak", "extraction_strength",
        "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k++", "mia_reference", "mia_gradnorm"]
SHORT = {"forget_quality": "FQ", "model_utility": "MU", "knowmem_f": "KM_f", "knowmem_r": "KM_r",
         "verbmem_f": "VM_f", "privleak": "PrivLeak", "extraction_strength": "ES", "mia_loss": "loss",
         "mia_zlib": "zlib", "mia_min_k": "MinK", "mia_min_k++": "MinK++", "mia_reference": "ref",
         "mia_gradnorm": "gnorm"}
SIZES = {"n_layer": 2, "hidden": 64, "heads": 4, "context": 256}
RECIPE = {"epochs": 60, "lr": 3e-3, "batch_size": 8, "optimizer": "adam"}


def fmt(v, key=""):
    if v is None:
        return "–"
    if key == "forget_quality":
        return f"{v:.2e}" if v < 0.01 else f"{v:.3f}"
    return f"{v:.1f}" if key == "privleak" else f"{v:.3f}"


def _tokenizer(tofu_dir: Path, muse_dir: Path):
    """One word-level tokenizer over both layouts' texts (target and retain model share it)."""
    from obliviate.models.tiny_lm import corpus_tokenizer
    from obliviate.tasks.files import find_table, read_rows
    from obliviate.tasks.text import QA, TextData, TextRecord

    records = []
    for f in sorted(tofu_dir.iterdir()):
        rows, _ = read_rows(find_table(tofu_dir, f.stem))
        records += [TextRecord("t", "", (QA(r["question"], r["answer"], r.get("paraphrased_answer"),
                                            tuple(r.get("perturbed_answer", ()))),)) for r in rows]
    for f in sorted((muse_dir / "raw").iterdir()):
        records.append(TextRecord("m", f.read_text()))
    for f in sorted((muse_dir / "knowmem").iterdir()):
        records += [TextRecord("k", "", (QA(r["question"], r["answer"]),)) for r in json.loads(f.read_text())]
    return corpus_tokenizer(TextData(records, []))


def _train(family: str, tok, pairs, out: Path, seed: int = 0) -> float:
    from obliviate.lm import train_lm
    from obliviate.models.tiny_hf import tiny_causal_lm
    from obliviate.models.tiny_lm import save_hf_dir
    from obliviate.tasks.text import LMRecipe

    start = time.perf_counter()
    model = tiny_causal_lm(family, tok, seed=seed, **SIZES)
    train_lm(model, tok, pairs, LMRecipe(**RECIPE), seed, torch.device("cpu"), description=f"train {out.name}")
    save_hf_dir(model, tok, out)
    return time.perf_counter() - start


def _muse_pairs(muse_dir: Path, with_forget: bool):
    from obliviate.tasks.text import TEMPLATES

    t = TEMPLATES["muse"]
    names = (["forget"] if with_forget else []) + ["retain1", "retain2"]
    docs = [p for n in names for p in (muse_dir / "raw" / f"{n}.txt").read_text().split("\n\n") if p.strip()]
    qa = [(r["question"], r["answer"]) for n in (["forget"] if with_forget else []) + ["retain"]
          for r in json.loads((muse_dir / "knowmem" / f"{n}_qa.json").read_text())]
    return [("", d.strip()) for d in docs] + [t.pair(q, a) for q, a in qa]


def _overrides(methods):
    from obliviate.tasks.authors import Authors

    return {f"{m}.{k}": v for m in methods for k, v in Authors.method_defaults.get(m, {}).items()}


def run(families, methods, work: Path):
    from obliviate.tasks.layouts import tofu_training_pairs, write_muse_layout, write_tofu_layout

    tofu_dir = write_tofu_layout(work / "tofu", authors=40, holdout=4)
    muse_dir = write_muse_layout(work / "muse", authors=20, holdout=6)
    tok = _tokenizer(tofu_dir, muse_dir)
    rows, train_times = [], {}
    for family in families:
        models = work / family
        train_times[family] = {
            "tofu_target": _train(family, tok, tofu_training_pairs(tofu_dir), models / "tofu_target"),
            "tofu_retain": _train(family, tok, tofu_training_pairs(tofu_dir, "forget10"), models / "tofu_retain"),
            "muse_target": _train(family, tok, _muse_pairs(muse_dir, True), models / "muse_target"),
            "muse_retain": _train(family, tok, _muse_pairs(muse_dir, False), models / "muse_retain"),
        }
        print(f"{family}: trained in " + ", ".join(f"{k} {v:.0f}s" for k, v in train_times[family].items()),
              flush=True)
        for bench, opts in (("tofu forget10", {"data": str(tofu_dir), "split": "forget10", "author_size": 7,
                                               "model": str(models / "tofu_target"),
                                               "oracle": str(models / "tofu_retain")}),
                            ("muse news", {"data": str(muse_dir), "corpus": "news", "icl_shots": 0,
                                           "model": str(models / "muse_target"),
                                           "oracle": str(models / "muse_retain")})):
            task_name = bench.split()[0]
            over = {**opts, **_overrides(methods)}
            doc = api.bench(task_name, methods, None, seeds=1, overrides=over, use_cache=False,
                            on_run=lambda r: print(f"  {family:<9} {task_name:<5} {r['method']:<16} "
                                                   f"unlearn {r['time_s']['unlearn']:.1f}s", flush=True))
            first = doc["runs"][0]
            for role in ("original", "oracle"):
                rows.append({"family": family, "benchmark": bench, "method": role,
                             **{k: first["metrics"][role].get(k) for k in COLS}, "time_s": None})
            for r in doc["runs"]:
                rows.append({"family": family, "benchmark": bench, "method": r["method"],
                             "guarantee": r["guarantee"], **{k: r["metrics"]["unlearned"].get(k) for k in COLS},
                             "time_s": r["time_s"]["unlearn"], "config": r["config"]})
    return rows, train_times


def markdown(rows, train_times) -> str:
    head = ["family", "benchmark", "method"] + [SHORT[c] for c in COLS] + ["time s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = "–" if r["time_s"] is None else f"{r['time_s']:.1f}"
        lines.append("| " + " | ".join([r["family"], r["benchmark"], r["method"]] + [fmt(r[c], c) for c in COLS]
                                       + [t]) + " |")
    tt = "; ".join(f"{f}: " + ", ".join(f"{k} {v:.0f} s" for k, v in d.items()) for f, d in train_times.items())
    return "\n".join(lines) + f"\n\nTraining times (CPU): {tt}\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    families, methods = args.families.split(","), args.methods.split(",")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows, train_times = run(families, methods, Path(tmp))
    md = markdown(rows, train_times)
    header = (f"# TOFU / MUSE layouts × model families\n\nMachine: {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPU threads, torch {torch.__version__}; total {time.perf_counter() - start:.0f} s. "
              "Columns: FQ forget quality (KS p-value vs the retain model), MU TOFU model utility, KM KnowMem "
              "ROUGE-L F1, VM VerbMem, PrivLeak (MUSE %, vs the retain model), ES extraction strength "
              "(OpenUnlearning), MIA AUCs forget vs holdout (OpenUnlearning orientation: 1 = memorised, 0.5 = "
              "indistinguishable; TOFU: forget QA vs holdout QA, MUSE: privleak texts). MU is TOFU's (MUSE has no "
              "real-author / world-fact sets); VerbMem and PrivLeak are MUSE's (TOFU has no documents).\n\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "llm_formats.md").write_text(header + md)
    (out / "llm_formats.json").write_text(json.dumps({"families": families, "methods": methods, "sizes": SIZES,
                                                      "recipe": RECIPE, "train_time_s": train_times, "rows": rows},
                                                     indent=1, default=str))
    print(header + md)


if __name__ == "__main__":
    main()
