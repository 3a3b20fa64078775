"""Exact unlearning benchmark: full retrain vs SISA vs S3T on digits, plus the S3T deletion simulator.

For each seed: train the plain model, SISA (5 shards × 4 slices) and S3T (5 shards × 4 slices, B = 4 cyclic
sequences); report test accuracy before any deletion; then serve 50 sequential single-example deletion
requests (uniformly random training ids, seeded) and report the cost of each deletion as a ratio to a
full retrain of the plain model, test accuracy after 1, 10 and 50 deletions, and how many deletions S3T
absorbed before it first had to retrain a shard. Writes benchmarks/results/exact.{json,md,html}.

    .venv/bin/python benchmarks/exact.py [--seeds 3] [--deletions 50] [--trials 2000]
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

import torch  # noqa: E402

from obliviate.distributed import Runtime  # noqa: E402
from obliviate.exact.simulate import simulate_range  # noqa: E402
from obliviate.methods import get_method  # noqa: E402
from obliviate.report import bar_chart, html_page  # noqa: E402
from obliviate.tasks import get_task  # noqa: E402
from obliviate.training import predict, train  # noqa: E402

CHECKPOINTS = (1, 10, 50)


def accuracy(model, task) -> float:
    return float((predict(model, task.data.x_test).argmax(1) == task.data.y_test).mean())


def plain_retrain(task, recipe, ids, seed):
    start = time.perf_counter()
    model = train(task.make_model(seed), task.data.x_train[ids], task.data.y_train[ids], recipe, task.kind, seed)
    return model, time.perf_counter() - start


def run_seed(task, seed: int, n_deletions: int, runtime: Runtime) -> dict:
    recipe = task.recipe()
    all_ids = np.arange(task.n_train)
    plain, plain_time = plain_retrain(task, recipe, all_ids, seed)
    requests = np.random.default_rng([seed, 77]).choice(task.n_train, size=n_deletions, replace=False)
    out = {"seed": seed, "plain": {"acc_before": accuracy(plain, task), "train_s": plain_time}}

    # full retrain after k deletions (the oracle of each step; its time is the cost of one deletion)
    retrain_acc = {}
    for k in CHECKPOINTS:
        if k <= n_deletions:
            model, _ = plain_retrain(task, recipe, np.setdiff1d(all_ids, requests[:k]), seed)
            retrain_acc[k] = accuracy(model, task)
    out["retrain"] = {"acc_before": out["plain"]["acc_before"], "acc_after": retrain_acc, "deletion_cost_ratio": 1.0}

    systems = {name: (lambda m=get_method(name)(): m.fit(task, all_ids, recipe, seed, runtime))
               for name in ("sisa", "s3t")}  # each with its documented defaults
    for name, fit in systems.items():
        start = time.perf_counter()
        system = fit()
        fit_time = time.perf_counter() - start
        row = {"fit_s": fit_time, "acc_before": accuracy(system.served_model(), task), "acc_after": {},
               "deletion_s": [], "retrains": [], "absorbed_before_retrain": None}
        for k, victim in enumerate(requests, start=1):
            cost = system.delete(np.array([victim]), runtime)
            row["deletion_s"].append(cost["time_s"])
            row["retrains"].append(len(cost["retrained_shards"]))
            if cost["retrained_shards"] and row["absorbed_before_retrain"] is None:
                row["absorbed_before_retrain"] = k - 1
            if k in CHECKPOINTS:
                row["acc_after"][k] = accuracy(system.served_model(), task)
        if row["absorbed_before_retrain"] is None:
            row["absorbed_before_retrain"] = f">{n_deletions}"
        row["first_deletion_ratio"] = row["deletion_s"][0] / plain_time
        row["mean_deletion_ratio"] = float(np.mean(row["deletion_s"])) / plain_time
        row["shard_retrains"] = int(sum(row["retrains"]))
        out[name] = row
    return out


def table(seeds: list[dict]) -> str:
    lines = ["| scheme | test acc before | Δ vs plain (points) | 1st deletion ÷ full retrain | mean deletion ÷ full retrain | "
             "acc after 1 | after 10 | after 50 | deletions absorbed before a retrain | shard retrains in 50 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    plain = np.mean([s["plain"]["acc_before"] for s in seeds])
    for name in ("retrain", "sisa", "s3t"):
        rows = [s[name] for s in seeds]
        acc = np.mean([r["acc_before"] for r in rows])
        after = [np.mean([r["acc_after"].get(k, np.nan) for r in rows]) for k in CHECKPOINTS]
        first = np.mean([r.get("first_deletion_ratio", 1.0) for r in rows])
        mean = np.mean([r.get("mean_deletion_ratio", 1.0) for r in rows])
        absorbed = ", ".join(str(r.get("absorbed_before_retrain", 0)) for r in rows)
        retrains = ", ".join(str(r.get("shard_retrains", "every deletion")) for r in rows)
        lines.append(f"| {name} | {acc:.4f} | {100 * (acc - plain):+.2f} | {first:.4f} | {mean:.4f} | "
                     + " | ".join(f"{a:.4f}" for a in after) + f" | {absorbed} | {retrains} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--deletions", type=int, default=50)
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--executor", default="serial", choices=["serial", "local", "ray"])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(1)  # tiny nets: one thread is fastest and keeps timings comparable
    task = get_task("digits")
    runtime = Runtime(executor=args.executor)
    start = time.time()
    seeds = [run_seed(task, s, args.deletions, runtime) for s in range(args.seeds)]
    md = ["# Exact unlearning on digits: full retrain vs SISA vs S3T", "",
          f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, torch "
          f"{torch.__version__}, 1 thread; executor {args.executor}; {args.seeds} seeds; {args.deletions} sequential "
          "single-example deletions (uniformly random ids). Full retrain = the plain MLP retrained on the retain set "
          "(its time is the denominator of every cost ratio). SISA: 5 shards × 4 slices, vote. S3T: 5 shards × 4 "
          "slices, B = 4 cyclic sequences, LoRA r 16 (the method defaults).", "", table(seeds)]
    sim = {sel: simulate_range(5, 6, list(range(1, 7)), selection=sel, trials=args.trials, seed=0)
           for sel in ("cyclic", "bms")}
    md += ["## Deletion-capability simulator (m = 5, L = 6)", "",
           f"Mean ± std of uniformly random requests absorbed before every shard is empty, {args.trials} trials.", "",
           "| B | " + " | ".join(sim) + " |", "|---|" + "---|" * len(sim)]
    for i, b in enumerate(range(1, 7)):
        md.append(f"| {b} | " + " | ".join(f"{sim[s]['results'][i]['mean_deletions']:.2f} ± "
                                          f"{sim[s]['results'][i]['std']:.2f}" for s in sim) + " |")
    md += ["", f"Total wall time {time.time() - start:.0f} s."]
    text = "\n".join(md) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "exact.md").write_text(text)
    (out / "exact.json").write_text(json.dumps({"schema": "obliviate.benchmark/1", "name": "exact", "seeds": seeds,
                                                "simulator": sim}, indent=1, default=str))
    chart = bar_chart([str(b) for b in range(1, 7)],
                      {s: [r["mean_deletions"] for r in sim[s]["results"]] for s in sim},
                      "S3T deletion capability, m=5, L=6: mean requests before total failure vs budget B")
    import html as _html
    (out / "exact.html").write_text(html_page("obliviate exact-unlearning benchmark",
                                          "<h1>Exact unlearning benchmark</h1><pre>" + _html.escape(text) + "</pre>" + chart))
    print(f"wrote {out}/exact.json, exact.md, exact.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
