"""Approximate-unlearning benchmark (issue 4): every method on digits (random 10 % and one class), the
NeurIPS 2023 challenge score for the three best, and the Deep Regression Unlearning cohort scenario on
friedman. Prints markdown tables and writes benchmarks/results/approximate.{json,md}.

    .venv/bin/python benchmarks/approximate.py [--seeds 3] [--challenge 16] [--cohort 8]

Every number is measured here, on this machine; nothing is tuned to make a paper's trend appear.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OBLIVIATE_QUIET", "1")

import torch  # noqa: E402

from obliviate import api  # noqa: E402
from obliviate.methods import list_methods  # noqa: E402
from obliviate.metrics import HEADLINE, avg_gap, gaps  # noqa: E402

fmt = lambda v: "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731


def _mean(runs, role, key):
    vals = [r["metrics"][role].get(key) for r in runs]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def classification_table(task, spec, seeds, cache, executor):
    methods = [m.name for m in list_methods() if "classification" in m.kinds]
    doc = api.bench(task, methods, spec, seeds=seeds, cache_dir=cache, executor=executor)
    runs, rows = doc["runs"], []
    first = [r for r in runs if r["method"] == methods[0]]
    noop = [avg_gap(gaps(r["metrics"]["original"], r["metrics"]["oracle"]), "classification") for r in first]
    rows.append({"method": "original (no-op)", "guarantee": "–",
                 **{k: _mean(first, "original", k) for k in HEADLINE["classification"]},
                 "avg_gap": float(np.mean(noop)), "avg_gap_std": float(np.std(noop)), "time_ratio": 0.0})
    rows.append({"method": "oracle", "guarantee": "exact", **{k: _mean(first, "oracle", k) for k in HEADLINE["classification"]},
                 "avg_gap": 0.0, "avg_gap_std": 0.0, "time_ratio": None})
    for s in doc["summary"]:
        rows.append({"method": s["method"], "guarantee": s["guarantee"],
                     **{k: s[k] for k in HEADLINE["classification"]}, "avg_gap": s["avg_gap"],
                     "avg_gap_std": s["avg_gap_std"], "time_ratio": s["time_ratio"],
                     "js_to_oracle": s.get("js_to_oracle"), "zrf": s.get("zrf")})
    cols = ["method", "guarantee", *HEADLINE["classification"], "js_to_oracle", "avg_gap", "time_ratio"]
    lines = [f"### digits `{spec}` — {seeds} seeds (mean; avg_gap ± std; time_ratio = unlearn ÷ oracle retrain)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [fmt(r.get(c)) for c in cols]
        vals[cols.index("avg_gap")] = f"{fmt(r['avg_gap'])} ± {fmt(r['avg_gap_std'])}"
        lines.append("| " + " | ".join(vals) + " |")
    return rows, runs, "\n".join(lines) + "\n"


def challenge_table(task, spec, best, n, cache, executor):
    doc = api.bench(task, best, spec, seeds=1, cache_dir=cache, executor=executor, challenge=n)
    lines = [f"### NeurIPS 2023 challenge score, digits `{spec}`, N = {n} retrains and {n} unlearning runs", "",
             "| method | forgetting quality F | RA_U/RA_R | TA_U/TA_R | score |", "|---|---|---|---|---|"]
    out = []
    for name in best:
        c = next(r["challenge"] for r in doc["runs"] if r["method"] == name)
        u = c.get("utility", {})
        ra = u["ra_u"] / u["ra_r"] if u.get("ra_r") else None
        ta = u["ta_u"] / u["ta_r"] if u.get("ta_r") else None
        lines.append(f"| {name} | {fmt(c['forgetting_quality'])} | {fmt(ra)} | {fmt(ta)} | {fmt(c['score'])} |")
        out.append({"method": name, **c})
    return out, "\n".join(lines) + "\n"


def regression_table(cohort, seeds, cache, executor):
    spec = f"target<={cohort}"
    methods = [m for m in ("finetune", "gaussian_finetune", "blindspot") if m in {x.name for x in list_methods()}]
    doc = api.bench("friedman", methods, spec, seeds=seeds, cache_dir=cache, executor=executor, relearn=True)
    runs = doc["runs"]
    first = [r for r in runs if r["method"] == methods[0]]
    keys = ["forget_mae", "retain_mae", "mia", "anamnesis", "wasserstein_to_oracle"]
    rows = [{"method": "original", **{k: _mean(first, "original", k) for k in keys}},
            {"method": "oracle", **{k: _mean(first, "oracle", k) for k in keys}}]
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        rows.append({"method": m, **{k: _mean(rs, "unlearned", k) for k in keys}})
    lines = [f"### friedman cohort `{spec}` — {seeds} seeds (mean)", "",
             "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(fmt(r.get(k)) for k in keys) + " |")
    orig, oracle = rows[0], rows[1]
    verdict = []
    if "blindspot" in methods:
        b = next(r for r in rows if r["method"] == "blindspot")
        closer = all(abs(b["forget_mae"] - oracle["forget_mae"]) < abs(r["forget_mae"] - oracle["forget_mae"])
                     for r in rows if r["method"] in ("finetune", "gaussian_finetune"))
        within = abs(b["retain_mae"] - orig["retain_mae"]) <= 0.10 * orig["retain_mae"]
        verdict.append(f"Paper trend (Blindspot's forget MAE closer to the oracle's than fine-tune and Gaussian): "
                       f"{'holds' if closer else 'does NOT hold'} here; Blindspot retain MAE within 10 % of the "
                       f"original's: {'yes' if within else 'NO'} ({b['retain_mae']:.4f} vs {orig['retain_mae']:.4f}).")
    return rows, runs, "\n".join(lines) + "\n" + ("\n" + "\n".join(verdict) + "\n" if verdict else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--challenge", type=int, default=16)
    ap.add_argument("--cohort", type=float, default=8.0, help="friedman forget cohort: target <= this value")
    ap.add_argument("--executor", default="local", choices=["serial", "local", "ray"])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    start = time.time()
    md = ["# Approximate unlearning benchmark", "",
          f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, torch "
          f"{torch.__version__}; executor {args.executor}; method defaults everywhere.", ""]
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        for spec in ("random:0.1", "class:3"):
            rows, runs, table = classification_table("digits", spec, args.seeds, cache, args.executor)
            results[f"digits {spec}"] = {"rows": rows, "runs": runs}
            md.append(table)
            print(table, flush=True)
        ranked = sorted((r for r in results["digits random:0.1"]["rows"] if r["guarantee"] in ("approximate", "certified")),
                        key=lambda r: r["avg_gap"])
        best = [r["method"] for r in ranked[:3]]
        if args.challenge:
            chal, table = challenge_table("digits", "random:0.1", best, args.challenge, cache, args.executor)
            results["challenge"] = chal
            md.append(table)
            print(table, flush=True)
        rows, runs, table = regression_table(args.cohort, args.seeds, cache, args.executor)
        results["friedman"] = {"rows": rows, "runs": runs}
        md.append(table)
        print(table, flush=True)
    ratios = {r["method"]: r["time_ratio"] for r in results["digits random:0.1"]["rows"]
              if r["method"] in ("iau", "influence")}
    md += ["### Speed of the influence-based methods (digits random:0.1, unlearn ÷ oracle retrain time)", "",
           "| method | time ratio |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in ratios.items()]
    md += ["", f"Total wall time {time.time() - start:.0f} s."]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "approximate.md").write_text("\n".join(md) + "\n")
    (out / "approximate.json").write_text(json.dumps({"schema": "obliviate.benchmark/1", "name": "approximate",
                                                      "results": results}, indent=1, default=str))
    print("\n".join(md[-6:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
