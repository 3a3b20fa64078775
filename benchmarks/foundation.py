"""Foundation benchmark: every method on digits, random 10 % and one whole class, over 3 seeds.

Prints a markdown table per scenario (avg_gap to the retrain oracle, unlearn time ÷ oracle retrain
time) and writes ``benchmarks/results/foundation.json`` and ``foundation.md``. Originals and oracles are
trained fresh in a temporary cache so their times are measured in this run. Run on an idle machine:

    .venv/bin/python benchmarks/foundation.py [--seeds 3] [--out benchmarks/results]

Rows "default" use each method's documented defaults; rows "tuned" use the stated overrides, chosen
on this task (so they are optimistic). "original (no-op)" is the gap of doing nothing: the floor every
method should beat on the forget metrics.
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

from obliviate import api  # noqa: E402
from obliviate.methods import list_methods  # noqa: E402
from obliviate.metrics import HEADLINE, avg_gap, gaps  # noqa: E402

SCENARIOS = [("digits", "random:0.1"), ("digits", "class:3")]
TUNED = {  # method -> overrides; chosen on digits random:0.1 (seeds 0-2)
    "npo": {"epochs": 3},
    "scrub": {"epochs": 2, "msteps": 1},
    "salun": {"epochs": 1},
    "random_label": {"epochs": 1},
    "finetune": {"epochs": 1},
    "gradient_ascent": {"lr": 1e-2},
}


def _row(label, config, summary, runs):
    ratios = [r["time_s"]["unlearn"] / r["time_s"]["oracle"] for r in runs]
    return {"method": label, "guarantee": summary["guarantee"], "config": config,
            **{k: summary[k] for k in HEADLINE["classification"]},
            "avg_gap": summary["avg_gap"], "avg_gap_std": summary["avg_gap_std"],
            "unlearn_s": summary["unlearn_s"], "oracle_s": float(np.mean([r["time_s"]["oracle"] for r in runs])),
            "time_ratio": float(np.mean(ratios))}


def run_scenario(task, spec, seeds, cache):
    methods = [m.name for m in list_methods() if "classification" in m.kinds]
    rows = []
    doc = api.bench(task, methods, spec, seeds=seeds, cache_dir=cache)
    runs = doc["runs"]
    # doing nothing: the original model's own gap to the oracle, per seed
    noop = [avg_gap(gaps(r["metrics"]["original"], r["metrics"]["oracle"]), "classification")
            for r in runs if r["method"] == methods[0]]
    first = [r for r in runs if r["method"] == methods[0]]
    rows.append({"method": "original (no-op)", "guarantee": "–", "config": "",
                 **{k: float(np.mean([r["metrics"]["original"][k] for r in first])) for k in HEADLINE["classification"]},
                 "avg_gap": float(np.mean(noop)), "avg_gap_std": float(np.std(noop)), "unlearn_s": 0.0,
                 "oracle_s": float(np.mean([r["time_s"]["oracle"] for r in first])), "time_ratio": 0.0})
    oracle_row = {"method": "oracle (retrain)", "guarantee": "exact", "config": "",
                  **{k: float(np.mean([r["metrics"]["oracle"][k] for r in first])) for k in HEADLINE["classification"]},
                  "avg_gap": 0.0, "avg_gap_std": 0.0, "unlearn_s": None, "oracle_s": None, "time_ratio": None}
    rows.append(oracle_row)
    for s in doc["summary"]:
        rows.append(_row(s["method"], "default", s, [r for r in runs if r["method"] == s["method"]]))
    for name, over in TUNED.items():
        if name not in methods:
            continue
        tuned = api.bench(task, [name], spec, seeds=seeds, cache_dir=cache,
                          overrides={f"{name}.{k}": v for k, v in over.items()})
        cfg = ",".join(f"{k}={v}" for k, v in over.items())
        rows.append(_row(f"{name} (tuned)", cfg, tuned["summary"][0], tuned["runs"]))
        runs = runs + tuned["runs"]
    return rows, runs


def markdown(task, spec, seeds, rows) -> str:
    cols = ["method", "guarantee", "config", "forget_acc", "retain_acc", "test_acc", "mia", "avg_gap",
            "unlearn_s", "time_ratio"]
    fmt = lambda v: "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [f"### {task} `{spec}` — {seeds} seeds (mean; avg_gap ± std)", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [fmt(r.get(c)) for c in cols]
        vals[cols.index("avg_gap")] = f"{fmt(r['avg_gap'])} ± {fmt(r.get('avg_gap_std'))}"
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def quality_bar(results) -> list[str]:
    out = []
    rnd = results["digits random:0.1"]["rows"]
    ok = [r for r in rnd if r["guarantee"] == "approximate" and r["avg_gap"] <= 0.02 and r["time_ratio"] <= 0.10]
    out.append(f"random:0.1 — approximate methods with avg_gap ≤ 0.02 and time ≤ 10 % of oracle: "
               f"{', '.join(r['method'] for r in ok) or 'NONE'} → {'PASS' if ok else 'FAIL'}")
    noop = next(r for r in rnd if r["method"] == "original (no-op)")["avg_gap"]
    better = [r for r in ok if r["avg_gap"] < noop]
    out.append(f"random:0.1 — stricter: of those, the ones that also beat doing nothing (no-op avg_gap {noop:.4f}): "
               f"{', '.join(r['method'] for r in better) or 'NONE'}")
    cls = results["digits class:3"]["rows"]
    oracle_ra = next(r for r in cls if r["method"] == "oracle (retrain)")["retain_acc"]
    ok = [r for r in cls if r["guarantee"] == "approximate" and r["forget_acc"] <= 0.05
          and abs(r["retain_acc"] - oracle_ra) <= 0.02]
    out.append(f"class:3 — approximate methods with forget_acc ≤ 0.05 and |retain_acc − oracle| ≤ 0.02: "
               f"{', '.join(r['method'] for r in ok) or 'NONE'} → {'PASS' if ok else 'FAIL'}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    results, md = {}, ["# obliviate foundation benchmark", "",
                       f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}. "
                       "time_ratio = unlearn time ÷ oracle retrain time (same run).", ""]
    start = time.time()
    with tempfile.TemporaryDirectory() as cache:
        for task, spec in SCENARIOS:
            rows, runs = run_scenario(task, spec, args.seeds, cache)
            results[f"{task} {spec}"] = {"task": task, "forget": spec, "seeds": args.seeds, "rows": rows, "runs": runs}
            table = markdown(task, spec, args.seeds, rows)
            print(table, flush=True)
            md.append(table)
    bar = quality_bar(results)
    md += ["## Quality bar", ""] + [f"- {line}" for line in bar] + ["", f"Total wall time {time.time() - start:.0f} s."]
    print("\n".join(bar))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "foundation.json").write_text(json.dumps({"schema": "obliviate.benchmark/1", "name": "foundation",
                                                     "results": results, "quality_bar": bar}, indent=1, default=str))
    (out / "foundation.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'foundation.json'} and {out / 'foundation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
