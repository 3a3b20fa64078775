"""Gap benchmark (issue 14): on MNIST-1D, where an MLP memorises its training set, every classifier method
with its defaults and tuned (``obliviate.tune``: Optuna TPE over the method's declared ranges, on validation seed
0, under a time budget), reported on unseen test seeds as avg_gap ± std and time ratio, next to doing nothing
(the original itself). Also the train/test accuracies that make the task worth it, with digits for contrast.
Prints markdown tables and writes benchmarks/results/gap.{json,md}.

    .venv/bin/python benchmarks/gap.py [--trials 20] [--budget 0.1] [--test-seeds 1,2,3] [--quick]

``--quick``: four fast methods, one test seed, eight trials (a smoke run; its files say so). Every number is
measured here, on this machine (single-threaded torch, so time ratios are comparable).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OBLIVIATE_QUIET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from obliviate import api  # noqa: E402
from obliviate.errors import ObliviateError  # noqa: E402
from obliviate.methods import list_methods  # noqa: E402
from obliviate.tune import declared_space, tune  # noqa: E402

TASK, SPEC = "mnist1d", "random:0.1"
QUICK_METHODS = ["finetune", "gradient_ascent", "random_label", "bad_teacher"]
fmt = lambda v: "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))  # noqa: E731
pm = lambda m, s: "–" if m is None else f"{m:.4f} ± {s:.4f}"  # noqa: E731


def classifier_methods() -> list[str]:
    """Every registered method that applies to classification (regression-only ones are skipped)."""
    return list(dict.fromkeys(m.name for m in list_methods() if "classification" in m.kinds))


def task_table(seeds: list[int], cache: str | None) -> tuple[list[dict], list[str]]:
    """Original and oracle accuracies on mnist1d and digits: the memorisation that makes forgetting visible."""
    rows = []
    for task in ("mnist1d", "digits"):
        doc = api.bench(task, ["gradient_ascent"], SPEC, seeds=seeds, cache_dir=cache)
        m = [r["metrics"] for r in doc["runs"]]
        mean = lambda role, key: float(np.mean([x[role][key] for x in m]))  # noqa: E731
        rows.append({"task": task, "original_train_acc": mean("original", "retain_acc"),
                     "original_test_acc": mean("original", "test_acc"),
                     "original_forget_acc": mean("original", "forget_acc"),
                     "oracle_forget_acc": mean("oracle", "forget_acc"), "oracle_test_acc": mean("oracle", "test_acc"),
                     "forget_acc_gap": mean("original", "forget_acc") - mean("oracle", "forget_acc")})
    cols = list(rows[0])
    lines = [f"### original vs oracle, `{SPEC}`, seeds {seeds} (mean; train acc = the original's retain accuracy)",
             "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return rows, lines


def defaults_only(method: str, test_seeds: list[int], cache: str | None) -> dict:
    doc = api.bench(TASK, [method], SPEC, seeds=test_seeds, cache_dir=cache)
    s = doc["summary"][0]
    return {"avg_gap_mean": s["avg_gap"], "avg_gap_std": s["avg_gap_std"], "time_ratio_mean": s["time_ratio"],
            "per_seed": [r["avg_gap"] for r in doc["runs"]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=None, help="Optuna trials per method (default 20; quick 8)")
    ap.add_argument("--budget", type=float, default=0.1, help="most unlearn time / retrain time of a trial")
    ap.add_argument("--test-seeds", default=None, help="comma-separated test seeds (default 1,2,3; quick 1)")
    ap.add_argument("--methods", default=None, help="comma-separated subset (default: every classifier method)")
    ap.add_argument("--quick", action="store_true", help="few methods, one test seed, few trials")
    ap.add_argument("--cache-dir", default=None, help="model cache (default: the user's obliviate cache)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    trials = args.trials or (8 if args.quick else 20)
    test_seeds = [int(s) for s in (args.test_seeds or ("1" if args.quick else "1,2,3")).split(",")]
    methods = (args.methods.split(",") if args.methods else QUICK_METHODS if args.quick else classifier_methods())
    val_seed = 0
    started = time.time()
    print(f"gap benchmark: {TASK}, forget {SPEC}, validation seed {val_seed}, test seeds {test_seeds}, "
          f"{trials} trials per method, budget {args.budget:g}× retrain" + (" [QUICK]" if args.quick else ""),
          file=sys.stderr)

    task_rows, md_task = task_table(test_seeds, args.cache_dir)
    rows, tuned_docs = [], {}
    noop = None
    for name in methods:
        t0 = time.time()
        cls = next(m for m in list_methods() if m.name == name and "classification" in m.kinds)
        row = {"method": name, "guarantee": cls.guarantee, "defaults": None, "tuned": None, "best_params": None,
               "note": None}
        try:
            if declared_space(cls.config_class):
                doc = tune(TASK, name, SPEC, trials=trials, budget=args.budget, seed=val_seed, test_seeds=test_seeds,
                           cache_dir=args.cache_dir)
                tuned_docs[name] = doc
                if doc["best"] is None:
                    row["note"] = f"no trial within budget {args.budget:g}"
                    row["defaults"] = defaults_only(name, test_seeds, args.cache_dir)
                else:
                    row["defaults"], row["tuned"] = doc["test"]["defaults"], doc["test"]["tuned"]
                    row["best_params"] = doc["best"]["params"]
                    noop = noop or doc["test"]["noop"]
            else:
                row["defaults"] = defaults_only(name, test_seeds, args.cache_dir)
                row["note"] = "no declared ranges: defaults only"
        except ObliviateError as exc:
            row["note"] = f"error: {exc}"
        row["seconds"] = time.time() - t0
        rows.append(row)
        d, t = row["defaults"] or {}, row["tuned"] or {}
        print(f"  {name:<16} defaults {pm(d.get('avg_gap_mean'), d.get('avg_gap_std', 0))}  tuned "
              f"{pm(t.get('avg_gap_mean'), t.get('avg_gap_std', 0))}  ({row['seconds']:.0f}s)"
              + (f"  {row['note']}" if row["note"] else ""), file=sys.stderr)
    if noop is None:  # no method was tuned: do nothing's gap from a plain run
        d = api.bench(TASK, ["gradient_ascent"], SPEC, seeds=test_seeds, cache_dir=args.cache_dir)
        from obliviate.metrics import avg_gap, gaps

        vals = [avg_gap(gaps(r["metrics"]["original"], r["metrics"]["oracle"]), "classification") for r in d["runs"]]
        noop = {"avg_gap_mean": float(np.mean(vals)), "avg_gap_std": float(np.std(vals)), "per_seed": vals}

    def best_gap(r):
        """The method's selected configuration: tuned (chosen on the validation seed, the defaults among the
        candidates) when it was tuned, else its defaults — never the better of the two on the test seeds."""
        chosen = r["tuned"] or r["defaults"]
        return chosen["avg_gap_mean"] if chosen and chosen.get("avg_gap_mean") is not None else float("inf")

    approximate = [r for r in rows if r["guarantee"] not in ("exact",)]
    best = min(approximate or rows, key=best_gap)
    factor = noop["avg_gap_mean"] / best_gap(best) if best_gap(best) > 0 else float("inf")

    cols = ["method", "guarantee", "defaults avg_gap", "defaults ÷ oracle", "tuned avg_gap", "tuned ÷ oracle",
            "best params (validation seed)", "note"]
    md = [f"# Gap benchmark — {TASK} `{SPEC}`" + (" (QUICK smoke run: not the reported benchmark)" if args.quick
                                                   else ""), "",
          f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s). Validation seed {val_seed} (tuning only), test "
          f"seeds {test_seeds} (reported: mean ± std). Tuning: Optuna TPE (seed {val_seed}) over each method's "
          f"declared ranges, {trials} trials, trial 0 = the defaults; objective avg_gap to the oracle, a trial over "
          f"{args.budget:g}× the oracle's retrain time scores avg_gap + 1 and is never chosen. ÷ oracle = unlearn time "
          f"÷ oracle retrain time.", "", *md_task, "",
          f"### methods, test seeds {test_seeds}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
          f"| *original (do nothing)* | – | {pm(noop['avg_gap_mean'], noop['avg_gap_std'])} | 0 | – | – | – | |"]
    for r in rows:
        d, t = r["defaults"] or {}, r["tuned"] or {}
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in (r["best_params"] or {}).items()) or "–"
        md.append(f"| {r['method']} | {r['guarantee']} | {pm(d.get('avg_gap_mean'), d.get('avg_gap_std', 0))} | "
                  f"{fmt(d.get('time_ratio_mean'))} | {pm(t.get('avg_gap_mean'), t.get('avg_gap_std', 0))} | "
                  f"{fmt(t.get('time_ratio_mean'))} | {params} | {r['note'] or ''} |")
    verdict = (f"Best approximate method: **{best['method']}** at avg_gap {best_gap(best):.4f} vs doing nothing "
               f"{noop['avg_gap_mean']:.4f}: {factor:.2f}× smaller ({'meets' if factor >= 3 else 'misses'} the 3× bar).")
    md += ["", verdict, "", f"Total time {time.time() - started:.0f}s."]
    text = "\n".join(md) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "gap.md").write_text(text)
    (out / "gap.json").write_text(json.dumps({
        "schema": "obliviate.benchmark/1", "name": "gap", "quick": args.quick, "task": TASK, "forget": SPEC,
        "validation_seed": val_seed, "test_seeds": test_seeds, "trials": trials, "budget": args.budget,
        "task_table": task_rows, "noop": noop, "methods": rows, "best": best["method"], "noop_over_best": factor,
        "tune": {k: {"trials": v["trials"], "space": v["space"], "best": v["best"]} for k, v in tuned_docs.items()},
        "seconds": time.time() - started}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
