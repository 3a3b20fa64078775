"""S3T on real text with a pretrained frozen backbone: the ``shakespeare`` task (8 works, 64-word passages),
frozen all-MiniLM-L6-v2 + mean pooling + linear head.

Rows:
- full LoRA: one model, query/value LoRA (r 16, α 16, rsLoRA, dropout 0.1) on all 6 layers + the head, trained
  on every training passage (the task recipe: ``--epochs`` epochs, Adam lr 1e-3, batch 16). Its training time
  is the cost of a full retrain, the denominator of the deletion cost ratio (as ``benchmarks/exact.py``).
- S3T: 1 shard × 3 slices, B = 2 cyclic sequences, the paper's layout (position p trains q/v LoRA in its
  block of 6 // 3 = 2 layers, top-down, earlier blocks frozen; the head at every position), ``--epochs`` per
  position on the cumulative prefix.

Then one deletion request (a seeded random training passage): its cost is the wall time of
``S3TSystem.delete`` (truncating the sequences; training only if no sequence survives) ÷ the full-LoRA training
time, together with the passages and layer-passes it retrained. Exactness: the cached backbone features are
dropped, the served prefix is retrained from scratch on its surviving passages (``verify``) and compared with
the served model parameter for parameter.

    .venv/bin/python benchmarks/s3t_text.py [--per-work 100] [--epochs 2] [--seed 0]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OBLIVIATE_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from obliviate.distributed import Runtime  # noqa: E402
from obliviate.exact import lora  # noqa: E402
from obliviate.exact import s3t as s3t_mod  # noqa: E402
from obliviate.exact.s3t import S3TSystem  # noqa: E402
from obliviate.exact.sequences import select  # noqa: E402
from obliviate.tasks import get_task  # noqa: E402
from obliviate.training import predict, train  # noqa: E402

RANK, ALPHA, DROPOUT = 16, 16.0, 0.1


def accuracy(model, task) -> float:
    return float((predict(model, task.data.x_test, batch_size=64).argmax(1) == task.data.y_test).mean())


def full_lora(task, recipe, seed: int):
    """q/v LoRA on every layer + the head, one model, on all training passages."""
    model = task.make_model(seed)
    wrappers, head = lora.inject(model, RANK, ALPHA, DROPOUT)
    gen = torch.Generator().manual_seed(seed)
    for w in wrappers:
        w.add_adapter(gen)
        w.active = 1
    for p in model.parameters():
        p.requires_grad_(False)
    for p in [w.lora_A[0] for w in wrappers] + [w.lora_B[0] for w in wrappers] + list(head.parameters()):
        p.requires_grad_(True)
    start = time.perf_counter()
    train(model, task.data.x_train, task.data.y_train, recipe, task.kind, seed)
    return model, time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-work", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    wall = time.time()
    task = get_task("shakespeare", per_work=args.per_work)
    recipe = task.recipe({"epochs": args.epochs})
    runtime = Runtime(executor="serial")
    n = task.n_train

    base, base_s = full_lora(task, recipe, args.seed)
    base_acc = accuracy(base, task)
    print(f"full LoRA: acc {base_acc:.4f}, {base_s:.0f} s", flush=True)

    cfg = {"shards": 1, "slices": 3, "rank": RANK, "alpha": ALPHA, "epochs": args.epochs, "lr": recipe.lr,
           "layout": "blocks", "dropout": DROPOUT}
    seqs = select("cyclic", 3, 2, seed=args.seed)
    start = time.perf_counter()
    system = S3TSystem.fit(task, np.arange(n), seqs, cfg, recipe, args.seed, runtime)
    fit_s = time.perf_counter() - start
    s3t_acc = accuracy(system.served_model(), task)
    print(f"S3T: acc {s3t_acc:.4f}, fit {fit_s:.0f} s", flush=True)

    victim = int(np.random.default_rng([args.seed, 14]).integers(n))
    victim_slice = int(system.plan.lineage()[victim][1])
    cost = system.delete(np.array([victim]), runtime)
    after_acc = accuracy(system.served_model(), task)
    s3t_mod._STEM.pop(task, None)  # the check recomputes every backbone feature from the surviving passages
    check = system.verify(runtime)
    served = system.best_prefix(0)
    ratio = cost["time_s"] / base_s
    print(f"deletion: {cost['time_s'] * 1e3:.2f} ms = {ratio:.2e} of a full retrain; verified {check['verified']}",
          flush=True)

    rows = [("full LoRA (q/v, all 6 layers, one model)", base_acc, "—", "1 (retrain on n − 1)", "—"),
            ("S3T (1 shard × 3 slices, B = 2, 2 layers/position)", s3t_acc, f"{after_acc:.4f}",
             f"{ratio:.2e} ({cost['time_s'] * 1e3:.1f} ms; {cost['examples_reprocessed']} passages, "
             f"{cost['models_retrained']} positions retrained)",
             f"{check['verified']} (max |Δ| {check['max_abs_diff']:g})")]
    md = ["# S3T on real text: Shakespeare works, pretrained frozen MiniLM", "",
          f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; task `shakespeare` ({len(task.data.class_names)} works, "
          f"{args.per_work} passages of 64 words per work, {n} train / {len(task.data.y_test)} test, ≤ 128 "
          f"MiniLM tokens); {args.epochs} epochs (full LoRA) and {args.epochs} epochs per S3T position; Adam lr "
          f"{recipe.lr}, batch {recipe.batch_size}; LoRA r {RANK}, α {ALPHA:g} (rsLoRA), dropout {DROPOUT}; seed "
          f"{args.seed}.", "",
          "Deletion cost = wall time of the deletion ÷ wall time of training the full-LoRA model (a full retrain). "
          f"The deleted passage (id {victim}) sat in slice {victim_slice}; sequences {[list(q) for q in seqs]} are "
          f"truncated before it and the served prefix after it is slices {list(served)}. Exact = the served model equals, "
          "tensor for tensor, the prefix retrained from scratch on its surviving passages with freshly "
          "computed backbone features.", "",
          "| model | test acc before | test acc after 1 deletion | 1 deletion ÷ full retrain | exact |",
          "|---|---|---|---|---|"]
    md += [f"| {r[0]} | {r[1]:.4f} | {r[2]} | {r[3]} | {r[4]} |" for r in rows]
    md += ["", f"S3T − full LoRA: {100 * (s3t_acc - base_acc):+.2f} points. Full-LoRA training {base_s:.0f} s; S3T "
           f"fit {fit_s:.0f} s (3 positions × 2 sequences, cumulative data, cached frozen layers below each "
           f"block); from-scratch check {check['time_s']:.0f} s. Total wall time {time.time() - wall:.0f} s."]
    text = "\n".join(md) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "s3t_text.md").write_text(text)
    doc = {"schema": "obliviate.benchmark/1", "name": "s3t_text", "task": task.info(),
           "options": dataclasses.asdict(task.options), "recipe": dataclasses.asdict(recipe), "s3t_cfg": cfg,
           "sequences": [list(q) for q in seqs], "seed": args.seed,
           "victim": {"id": victim, "slice": victim_slice}, "full_lora": {"acc": base_acc, "train_s": base_s},
           "s3t": {"acc_before": s3t_acc, "fit_s": fit_s, "acc_after_1": after_acc, "served_prefix": list(served),
                   "deletion": {k: v for k, v in cost.items() if k != "plan"}, "deletion_cost_ratio": ratio,
                   "verify": check},
           "wall_s": time.time() - wall}
    (out / "s3t_text.json").write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
