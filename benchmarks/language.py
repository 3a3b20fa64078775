"""Language-model unlearning benchmark (issue 5): every language method on the built-in ``authors`` task (100
fictitious authors, tiny GPT-2 trained from scratch; 10 % of the authors forgotten) against the real retrain
oracle, MUSE-style; then MUSE scalability (forget sets ×1..4) and sustainability (4 sequential folds) curves
for NPO_GDR and GA_GDR. Prints markdown tables and writes benchmarks/results/language.{json,md,html}.

    .venv/bin/python benchmarks/language.py [--seeds 3] [--scal 1,2,3,4] [--sust 4] [--skip-curves]

Method settings: the authors task's ``method_defaults`` (obliviate's tuning for the tiny GPT-2 on seed 0,
recorded in each run's ``config``); the paper defaults (lr 1e-5, 10 epochs) do not move a model trained at
lr 2e-3 from scratch. Every number is measured here, on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OBLIVIATE_QUIET", "1")

import torch  # noqa: E402

from obliviate import api  # noqa: E402
from obliviate.report import write_html  # noqa: E402

METHODS = ["gradient_ascent", "grad_diff", "ga_klr", "npo", "npo_gdr", "npo_klr", "simnpo", "rmu", "task_vector"]
COLS = ["verbmem_f", "knowmem_f", "knowmem_r", "privleak", "forget_quality", "utility", "extraction_strength"]
CURVES = ["npo_gdr", "grad_diff"]  # MUSE's NPO_GDR and GA_GDR (grad_diff's retain loss is NLL by default)
fmt = lambda v: "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731


def _stat(values):
    vals = [v for v in values if v is not None]
    return (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)


def main_table(seeds: int, cache: str):
    doc = api.bench("authors", METHODS, "random:0.1", seeds=seeds, cache_dir=cache, executor="serial",
                    on_run=lambda r: print(f"  {r['method']:<16} seed {r['seed']} avg_gap {fmt(r['avg_gap'])} "
                                           f"unlearn {r['time_s']['unlearn']:.1f}s", flush=True))
    runs = doc["runs"]
    first = [r for r in runs if r["method"] == METHODS[0]]
    rows = []
    for role in ("original", "oracle"):
        row = {"method": role, "guarantee": "exact" if role == "oracle" else "–"}
        for k in COLS:
            row[k], row[f"{k}_std"] = _stat([r["metrics"][role].get(k) for r in first])
        row["time_ratio"] = None
        rows.append(row)
    for name in METHODS:
        rs = [r for r in runs if r["method"] == name]
        row = {"method": name, "guarantee": rs[0]["guarantee"], "config": rs[0]["config"]}
        for k in COLS:
            row[k], row[f"{k}_std"] = _stat([r["metrics"]["unlearned"].get(k) for r in rs])
        row["avg_gap"], row["avg_gap_std"] = _stat([r["avg_gap"] for r in rs])
        row["time_ratio"], _ = _stat([r["time_s"]["unlearn"] / r["time_s"]["oracle"] for r in rs])
        rows.append(row)
    train_s = _stat([r["time_s"]["train"] for r in first if r["time_s"].get("train")])[0]
    oracle_s = _stat([r["time_s"]["oracle"] for r in first if r["time_s"].get("oracle")])[0]
    lines = [f"### authors `random:0.1` (10 of 100 authors), {seeds} seed(s): mean ± std", "",
             f"original trained in {fmt(train_s)} s, oracle in {fmt(oracle_s)} s (2 CPU cores, 1 thread when "
             "measured with others idle); time_ratio = unlearn ÷ oracle training time", "",
             "| method | " + " | ".join(COLS) + " | avg_gap | time_ratio |", "|" + "---|" * (len(COLS) + 3)]
    for r in rows:
        cells = [f"{fmt(r[k])} ± {fmt(r[f'{k}_std'])}" if r.get(f"{k}_std") else fmt(r[k]) for k in COLS]
        gap = f"{fmt(r['avg_gap'])} ± {fmt(r['avg_gap_std'])}" if "avg_gap" in r else "–"
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {gap} | {fmt(r['time_ratio'])} |")
    return rows, doc, "\n".join(lines) + "\n"


def curves(scal: list[int], sust: int, cache: str):
    doc = api.bench("authors", CURVES, "random:0.1", seeds=1, cache_dir=cache, executor="serial", scal=scal,
                    sust=sust)
    keys = ["knowmem_f", "verbmem_f", "knowmem_r", "privleak", "forget_quality"]
    lines = []
    for r in doc["runs"]:
        lines += [f"### scalability — {r['method']} (forget set × k; unlearned (oracle))", "",
                  "| k | n forget | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
        for p in r["scalability"]["points"]:
            u, o = p["metrics"]["unlearned"], p["metrics"]["oracle"]
            lines.append(f"| {p['factor']} | {p['n_forget']} | "
                         + " | ".join(f"{fmt(u.get(k))} ({fmt(o.get(k))})" for k in keys) + " |")
        lines += ["", f"### sustainability — {r['method']} ({sust} sequential folds of 10 authors; metrics on the "
                      "fold just forgotten, unlearned (oracle); cumulative knowmem_f on all folds so far)", "",
                  "| step | " + " | ".join(keys) + " | knowmem_f, all folds |", "|" + "---|" * (len(keys) + 2)]
        for s in r["sustainability"]["steps"]:
            u, o = s["metrics"]["unlearned"], s["metrics"]["oracle"]
            cum = s.get("cumulative", {}).get("unlearned", {}).get("knowmem_f", u.get("knowmem_f"))
            lines.append(f"| {s['step']} | " + " | ".join(f"{fmt(u.get(k))} ({fmt(o.get(k))})" for k in keys)
                         + f" | {fmt(cum)} |")
        lines.append("")
    return doc, "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--scal", default="1,2,3,4")
    ap.add_argument("--sust", type=int, default=4)
    ap.add_argument("--skip-curves", action="store_true")
    ap.add_argument("--cache", default=os.environ.get("OBLIVIATE_CACHE", str(Path.home() / ".cache/obliviate")))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, doc, md = main_table(args.seeds, args.cache)
    print(md)
    result = {"schema": "obliviate.benchmark-language/1", "machine": platform.platform(),
              "threads": torch.get_num_threads(), "seeds": args.seeds, "rows": rows}
    if not args.skip_curves:
        cdoc, cmd = curves([int(k) for k in args.scal.split(",")], args.sust, args.cache)
        print(cmd)
        md += "\n" + cmd
        result["curves"] = cdoc
        write_html(cdoc, out / "language_curves.html")
    result["wall_s"] = time.perf_counter() - start
    write_html(doc, out / "language.html")
    (out / "language.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "language.md").write_text(md)
    print(f"wrote {out}/language.{{md,json,html}} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
