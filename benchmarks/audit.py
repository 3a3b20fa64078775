"""Generation-time unlearning and removal-vs-suppression audits (issue 6) on the built-in ``authors`` task (the
models of benchmarks/language.py, seed 0), 10 % of the authors forgotten:

1. GUARD against the oracle: knowmem_f / verbmem_f / knowmem_r, detector precision and recall, and generation
   throughput guarded ÷ unguarded on retain and on forget prompts;
2. the in-context (UnUnlearning) table: original, oracle, NPO_GDR, GUARD, NPO_GDR+filter;
3. one audit table for every language method and GUARD: relearn, quantization, probe, side effects, verdict.

    .venv/bin/python benchmarks/audit.py [--methods ...] [--cache DIR]

Prints markdown tables and writes benchmarks/results/audit.{json,md}. Every number is measured here.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OBLIVIATE_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from obliviate import api  # noqa: E402
from obliviate.audit import audit  # noqa: E402
from obliviate.lm import generate  # noqa: E402
from obliviate.requests import resolve  # noqa: E402

TASK: dict = {}
METHODS = ["gradient_ascent", "grad_diff", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo", "rmu", "task_vector",
           "guard"]
fmt = lambda v: "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731


def throughput(model, tok, prompts, repeats: int = 2) -> float:
    """Generated tokens per second (greedy, ≤ 32 new tokens, batch 32), best of ``repeats``."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        outs = generate(model, tok, prompts, "cpu", max_new_tokens=32)
        elapsed = time.perf_counter() - start
        n = sum(len(tok(o, add_special_tokens=False)["input_ids"]) + 1 for o in outs)
        best = max(best, n / elapsed)
    return best


def guard_block(cache: str) -> tuple[dict, str]:
    result = api.unlearn("authors", "guard", "random:0.1", task_options=TASK, cache_dir=cache, executor="serial")
    rep = result.report
    task = api.get_task("authors", **TASK)
    tok = task.tokenizer()
    request = resolve("random:0.1", task, 0)
    retain = np.setdiff1d(np.arange(task.n_train), request.ids)
    q = lambda ids: [f"Question: {x.question}\nAnswer:" for i in ids for x in task.data.train[int(i)].qa]  # noqa: E731
    base = result.original
    rates = {"retain": (throughput(result.model, tok, q(retain[:30])), throughput(base, tok, q(retain[:30]))),
             "forget": (throughput(result.model, tok, q(request.ids)), throughput(base, tok, q(request.ids)))}
    m = rep["metrics"]
    lines = ["### GUARD on authors `random:0.1`, seed 0", "",
             "| model | knowmem_f | verbmem_f | knowmem_r | privleak | forget_quality |", "|---|---|---|---|---|---|"]
    for role in ("original", "oracle", "unlearned"):
        v = m[role]
        lines.append(f"| {'guard' if role == 'unlearned' else role} | {fmt(v['knowmem_f'])} | {fmt(v['verbmem_f'])} | "
                     f"{fmt(v['knowmem_r'])} | {fmt(v['privleak'])} | {fmt(v.get('forget_quality'))} |")
    det = rep.get("guard", {})
    lines += ["", f"detector: {json.dumps(det.get('detector', det), default=str)}", "",
              "| prompts | guarded tok/s | unguarded tok/s | ratio |", "|---|---|---|---|"]
    for k, (g, b) in rates.items():
        lines.append(f"| {k} | {g:.0f} | {b:.0f} | {g / b:.3f} |")
    block = {"metrics": m, "guard": det, "throughput": {k: {"guarded": g, "unguarded": b, "ratio": g / b}
                                                       for k, (g, b) in rates.items()}}
    return block, "\n".join(lines) + "\n"


def acc(probe: dict, role: str):
    return probe.get("models", {}).get(role, {}).get("accuracy")


def audits(methods: list[str], cache: str, out: Path) -> tuple[list[dict], str]:
    docs = []
    for name in methods:
        start = time.perf_counter()
        doc = audit("authors", name, "random:0.1", task_options=TASK, cache_dir=cache)
        docs.append(doc)
        (out / "audit_runs.json").write_text(json.dumps(docs, indent=1, default=str))  # kept if a later step fails
        print(f"  audit {name:<16} {doc['verdict']:<18} {time.perf_counter() - start:.0f} s", flush=True)
    lines = ["### Audit table (authors `random:0.1`, seed 0)", "",
             "| method | guarantee | knowmem_f | relearn steps (oracle) | anamnesis | int8 knowmem_f | fp16 knowmem_f | "
             "quant. recovery | probe acc (oracle) | side effects Δ related / unrelated | verdict |",
             "|" + "---|" * 11]
    for d in docs:
        rl, qz, pr, se = d["relearn"], d["quantized"], d["probe"], d["side_effects"]
        runs = rl.get("models", {})
        steps = lambda role: (f"{runs[role]['steps']}{'+' if runs[role]['saturated'] else ''}"  # noqa: E731
                              if role in runs else "–")
        ch = se.get("change", {}).get("unlearned", {})
        lines.append(
            f"| {d['method']} | {d['guarantee']} | {fmt(d['metrics']['unlearned']['knowmem_f'])} | "
            f"{steps('unlearned')} ({steps('oracle')}) | {fmt(rl.get('anamnesis'))} | "
            f"{fmt(qz['variants']['int8']['knowmem_f'])} | {fmt(qz['variants']['fp16']['knowmem_f'])} | "
            f"{fmt(qz.get('max_recovery'))} | {fmt(acc(pr, 'unlearned'))} ({fmt(acc(pr, 'oracle'))}) | "
            f"{fmt(ch.get('related'))} / {fmt(ch.get('unrelated'))} | **{d['verdict']}** |")
    inc = {d["method"]: d["incontext"]["models"] for d in docs if d["method"] in ("npo_gdr", "guard")}
    lines += ["", "### In-context recovery (biography pasted before each forget question; KnowMem ROUGE-L F1)", "",
              "| model | without context | with context | recovery |", "|---|---|---|---|"]
    rows = []
    if "npo_gdr" in inc:
        rows += [("original", inc["npo_gdr"]["original"]), ("oracle", inc["npo_gdr"]["oracle"]),
                 ("npo_gdr", inc["npo_gdr"]["unlearned"])]
        if "unlearned+filter" in inc["npo_gdr"]:
            rows.append(("npo_gdr+filter", inc["npo_gdr"]["unlearned+filter"]))
    if "guard" in inc:
        rows.append(("guard", inc["guard"]["unlearned"]))
    for label, r in rows:
        lines.append(f"| {label} | {fmt(r.get('base'))} | {fmt(r.get('context'))} | {fmt(r.get('recovery'))} |")
    return docs, "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--cache", default=os.environ.get("OBLIVIATE_CACHE", str(Path.home() / ".cache/obliviate")))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    gblock, gmd = guard_block(args.cache)
    (out / "audit_guard.json").write_text(json.dumps(gblock, indent=1, default=str))
    print(gmd, flush=True)
    docs, amd = audits([m for m in args.methods.split(",") if m], args.cache, out)
    print(amd)
    md = gmd + "\n" + amd
    (out / "audit.md").write_text(md)
    (out / "audit.json").write_text(json.dumps({"schema": "obliviate.benchmark-audit/1", "guard": gblock,
                                                "audits": docs, "threads": torch.get_num_threads(),
                                                "wall_s": time.perf_counter() - start}, indent=1, default=str))
    (out / "audit_runs.json").unlink(missing_ok=True)  # the partial copy; audit.json has everything
    print(f"wrote {out}/audit.{{md,json}} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
