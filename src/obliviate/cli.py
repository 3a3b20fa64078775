"""``obliviate`` command line: a thin layer over :mod:`obliviate.api` (README, "Command line")."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from obliviate import api, dist
from obliviate.config import split_overrides
from obliviate.errors import ObliviateError
from obliviate.exact.cli_s3t import s3t_app
from obliviate.ledger.cli import ledger_app, serve
from obliviate.metrics.gap import HEADLINE
from obliviate.verdict import bench_verdict, reference, run_verdict, settings_note
from obliviate.atomic import check_cache_dir, check_writable
from obliviate.report import GUARANTEE_TEXT, write_html, write_json

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make trained models forget, and measure it against the retrain oracle.")
app.add_typer(s3t_app, name="s3t", help="S3T tools: the deletion-capability simulator")
app.add_typer(ledger_app, name="ledger", help="The deletion ledger: verify its hash chain, export the audit trail")
app.command("serve")(serve)
out = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 160)))
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

DEMO_METHODS = "retrain,finetune,gradient_ascent,grad_diff,npo,random_label,scrub,salun"

ExecutorOpt = typer.Option("local", "--executor", help="where shard/ensemble jobs run: local (process pool), "
                                                        "serial, or ray")
RayOpt = typer.Option(None, "--ray-address", help="Ray cluster address (with --executor ray); default: start a "
                                                  "local Ray instance")
RelearnOpt = typer.Option(False, "--relearn", help="also measure relearn time (mini-batch steps until the forget "
                                                   "metric is back within 5 % of the original's) and the anamnesis "
                                                   "index (unlearned ÷ oracle steps)")
ScalOpt = typer.Option(None, "--scal", help="MUSE scalability: comma-separated multiples of the forget set, e.g. "
                                            "1,2,3,4 (nested growing forget sets, each vs its own oracle)")
SustOpt = typer.Option(None, "--sust", help="MUSE sustainability: N sequential requests of disjoint folds of the "
                                            "forget set's size, each applied to the previous model")
SetOpt = typer.Option(None, "--set", help="key=value: task option, train.<recipe key>, or method config "
                                          "(method.key=value targets one method in bench); @file.json: the "
                                          "pairs of a JSON object or of an `obliviate tune --out` result")


def _quiet(quiet: bool) -> None:
    if quiet:
        os.environ["OBLIVIATE_QUIET"] = "1"


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _print_run(r: dict[str, Any]) -> None:
    metrics = r["metrics"]
    roles = [k for k in ("original", "unlearned", "oracle") if k in metrics]
    t = Table(title=f"{r['method']} on {r['task']} · forget {r['forget']['spec']} (n={r['forget']['n']}) · seed {r['seed']}")
    t.add_column("metric")
    for role in roles:
        t.add_column(role, justify="right")
    t.add_column("gap", justify="right")
    for k in metrics["unlearned"]:
        t.add_row(k, *(_fmt(metrics[role].get(k)) for role in roles), _fmt(r["gap"].get(k)))
    out.print(t)
    times = ", ".join(f"{k} {v:.2f}s" for k, v in r["time_s"].items() if v is not None)
    out.print(f"guarantee: [bold]{GUARANTEE_TEXT[r['guarantee']]}[/bold]")
    out.print(f"avg_gap: {_fmt(r['avg_gap'])}   time: {times}")
    models = _models_line(r)
    if models:
        out.print(models, markup=False, highlight=False)
    verdict = run_verdict(r)
    if verdict:
        out.print(verdict)
    if "relearn" in r:
        rl = r["relearn"]
        sat = [role for role, v in rl["saturated"].items() if v]
        out.print(f"relearn: {rl['band']} (target {rl['target']:.4f}), adam lr {rl['lr']:g} on the {rl['data']}, "
                  f"at most {rl['max_steps']} steps" + (f"; SATURATED (bound, not a value): {', '.join(sat)}"
                                                        if sat else ""))
    if "lm_run" in r:
        lr = r["lm_run"]
        peak = f", peak {lr['peak_memory_bytes'] / 2 ** 30:.2f} GiB" if "peak_memory_bytes" in lr else ""
        out.print(f"training: {lr['precision']}, {lr['steps']} steps of {lr['batch_size']} sequences in "
                  f"{lr['grad_accum']} micro-batch(es) × {lr['processes']} process(es)"
                  + (", gradient checkpointing" if lr["grad_checkpointing"] else "")
                  + (f", LoRA r={lr['lora_r']}" if lr["lora_r"] else "") + f"; reference: {lr['reference']}{peak}")
        for w in lr.get("warnings", []):
            out.print(w)
    if "exact" in r:
        e = r["exact"]
        out.print(f"deletion ({e['scheme']}): {e['deleted']} id(s) in shard(s) {e['shards_touched']}; "
                  f"blocks deactivated {e['models_deactivated']}, models retrained {e['models_retrained']}, "
                  f"examples reprocessed {e['examples_reprocessed']} ({e['fraction_reprocessed']:.1%})"
                  + (f"; already deleted: {e['already_deleted']}" if e["already_deleted"] else ""))


def _models_line(r: dict[str, Any], sep: str = "\n") -> str | None:
    """Where the original and the oracle came from, one short line each (never wrapped at 80 columns):
    "original: loaded from cache (sha256 0123456789ab…)" / "oracle: trained in 12.3 s"."""
    parts = []
    for role, time_key in (("original", "train"), ("oracle", "oracle")):
        m = (r.get("models") or {}).get(role)
        if not m or "cached" not in m:
            continue
        if m["cached"]:
            parts.append(f"{role}: loaded from cache (sha256 {str(m.get('sha256', ''))[:12]}…)")
        else:
            seconds = (r.get("time_s") or {}).get(time_key)
            parts.append(f"{role}: trained" + (f" in {seconds:.1f} s" if seconds is not None else ""))
    return sep.join(parts) or None


#: short column names and guarantee labels for a narrow terminal (below WIDE columns)
SHORT = {"forget_acc": "forget", "retain_acc": "retain", "test_acc": "test", "forget_mae": "forget",
         "retain_mae": "retain", "test_mae": "test", "verbmem_f": "vmem_f", "knowmem_f": "kmem_f",
         "knowmem_r": "kmem_r", "privleak": "privlk", "forget_quality": "fq", "utility": "util"}
SHORT_GUARANTEE = {"exact": "exact", "certified": "cert", "approximate": "appr", "suppression": "supp"}
WIDE = 120


def _print_bench(doc: dict[str, Any]) -> None:
    """The bench table: full names on a wide terminal; on a narrow one (80 columns) short headers, 3 decimals and
    no seconds column, with a legend line, so no cell wraps."""
    from rich import box

    keys = list(HEADLINE[doc["task_kind"]])
    narrow = out.width < WIDE
    challenge = any("challenge_score" in s for s in doc["summary"])
    extra = (["ch.F", "ch.score"] if narrow else ["challenge F", "challenge score"]) if challenge else []
    fmt = _fmt_narrow if narrow else _fmt
    cols = (["method", "grnt", *(SHORT.get(k, k) for k in keys), "gap", "÷orc", *extra] if narrow else
            ["method", "guarantee", *keys, "avg_gap", "unlearn s", "÷ oracle", *extra])
    t = Table(title=f"{doc['task']} · forget {doc['forget']} · seeds {doc['seeds']}",
              box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD, padding=(0, 0, 0, 1) if narrow else (0, 1),
              pad_edge=not narrow)
    names = [s["method"] + "*" for s in doc["summary"]] + ["do nothing"]
    for col in cols:
        width = max(map(len, names)) if col == "method" else 5 if col == "grnt" else None
        t.add_column(col, justify="left" if col in ("method", "guarantee", "grnt") else "right", no_wrap=narrow,
                     min_width=width if narrow else None)
    ref = doc.get("reference") or reference(doc["runs"], doc["task_kind"])  # means over the bench's seeds
    verdict = doc.get("verdict") or bench_verdict(doc, ref.get("do_nothing_avg_gap"))
    blank = [""] * (1 if narrow else 2)
    for role, gap_value, label in (("original", ref.get("do_nothing_avg_gap"), "do nothing"),
                                   ("oracle", 0.0, "oracle")):
        if role in ref:
            t.add_row(f"[italic]{label}[/italic]", "", *(fmt(ref[role].get(k)) for k in keys), fmt(gap_value),
                      *blank, *([""] * len(extra)))
    flagged = set(verdict.get("did_not_forget", []))
    for s in doc["summary"]:
        mark = ("*" if narrow else " [dim](did not forget)[/dim]") if s["method"] in flagged else ""
        times = [fmt(s.get("time_ratio"))] if narrow else [fmt(s.get("unlearn_s")), fmt(s.get("time_ratio"))]
        t.add_row(s["method"] + mark, SHORT_GUARANTEE.get(s["guarantee"], s["guarantee"]) if narrow else
                  s["guarantee"], *(fmt(s.get(k)) for k in keys), fmt(s.get("avg_gap")), *times,
                  *((fmt(s.get("challenge_forgetting_quality")), fmt(s.get("challenge_score"))) if challenge else ()))
    out.print(t)
    if narrow:
        out.print("[dim]" + ", ".join(f"{v} = {k}" for k, v in SHORT.items() if k in keys)
                  + "; gap = avg_gap to the oracle; ÷orc = unlearn time ÷ oracle retrain time; grnt = guarantee "
                  "(appr = approximate, cert = certified, supp = suppression)"
                  + ("; ch.F = challenge F, ch.score = challenge score" if challenge else "")
                  + ("; * = did not forget at these settings" if flagged else "") + "[/dim]")
    if challenge:
        n = next(s["challenge_n"] for s in doc["summary"] if "challenge_n" in s)
        out.print(f"challenge: NeurIPS 2023 unlearning challenge metric over {n} unlearned and {n} retrained models "
                  "per method; F = forgetting quality, score = F × (RA_U/RA_R) × (TA_U/TA_R)")
    out.print("[bold]verdict[/bold]: " + verdict["text"].replace("\n", "\n  "))
    if "settings" in doc:
        out.print(settings_note(doc["settings"]), markup=False)


@app.command()
def run(task: str = typer.Option(..., "--task", help="task name (see `obliviate tasks`)"),
        method: str = typer.Option(..., "--method", help="method name (see `obliviate methods`)"),
        forget: Optional[str] = typer.Option(None, "--forget", help="forget spec, e.g. random:0.1, class:3, "
                                             "subjects:2, ids@file.txt (default: the task's, random:0.1 for most)"),
        seed: int = typer.Option(0, "--seed", help="seed of training, forget sampling and unlearning"),
        device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
        set_: Optional[List[str]] = SetOpt,
        json_path: Optional[str] = typer.Option(None, "--json", help="write the obliviate.run/1 report here"),
        html_path: Optional[str] = typer.Option(None, "--html", help="write a self-contained HTML report here"),
        no_oracle: bool = typer.Option(False, "--no-oracle", help="skip the retrain oracle (no gap)"),
        save_model: Optional[str] = typer.Option(None, "--save-model", help="write the unlearned model (.safetensors + "
                                                 ".sha256; for a language task an HF model directory, with a GUARD "
                                                 "detector beside the weights when the method guards)"),
        shard_size: str = typer.Option("5GB", "--shard-size", help="with --save-model on a language task: weights "
                                       "over this size are written as safetensors shards with an index (e.g. 2GB)"),
        cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="model cache (default $OBLIVIATE_CACHE or ~/.cache/obliviate)"),
        no_cache: bool = typer.Option(False, "--no-cache", help="neither read nor write the model cache"),
        executor: str = ExecutorOpt, ray_address: Optional[str] = RayOpt,
        relearn: bool = RelearnOpt, scal: Optional[str] = ScalOpt, sust: Optional[int] = SustOpt,
        quiet: bool = typer.Option(False, "--quiet", help="no progress bars or table")) -> None:
    """Train (or load) the original, unlearn, compare with the retrain oracle, print a table."""
    shard_bytes = _shard_bytes(shard_size)
    _quiet(quiet)
    for path, flag in ((json_path, "--json"), (html_path, "--html")):
        check_writable(path, flag)
    _check_save_model(save_model, task)
    _check_cache(cache_dir, no_cache)
    task_opts, recipe, per_method = api.route_overrides(task, [method], split_overrides(set_ or []))
    result = api.unlearn(task, method, forget, seed=seed, device=device, oracle=not no_oracle,
                         task_options=task_opts, train=recipe, cache_dir=cache_dir, use_cache=not no_cache,
                         executor=executor, ray_address=ray_address, relearn=relearn, scal=_parse_scal(scal),
                         sust=sust, **per_method[method])
    report = result.report
    if not dist.is_main():  # under a launcher every process ran the same command; rank 0 writes and prints
        return
    if save_model:
        report["models"]["unlearned"]["path"] = save_model
        if report["task_kind"] == "language":
            from obliviate.guard.saving import remove_saved_guard, saved_guard_info
            from obliviate.models.tiny_lm import save_hf_dir
            from obliviate.tasks import get_task

            tokenizer = get_task(task, **task_opts).tokenizer()
            remove_saved_guard(save_model)  # an earlier save's guard must never wrap these weights
            report["models"]["unlearned"]["sha256"] = save_hf_dir(result.model, tokenizer, save_model,
                                                                  max_shard_size=shard_bytes)
            guard = saved_guard_info(save_model)  # GUARD (or a filter over it) writes its detector beside them
            if guard is not None:
                report["models"]["unlearned"]["guard"] = {**guard, "restore": "obliviate.guard.load_guarded"}
        else:
            from obliviate.models.store import save_state_file

            report["models"]["unlearned"]["sha256"] = save_state_file(result.model, save_model)
    if json_path:
        write_json(report, json_path)
    if html_path:
        write_html(report, html_path)
    if not quiet:
        _print_run(report)


def _shard_bytes(text: str) -> int:
    """``--shard-size`` in bytes (5GB, 500MB, 2GiB or a byte count), checked before anything runs."""
    from obliviate.memory import parse_size

    value = parse_size(text, "--shard-size")
    if value < 1:
        raise ObliviateError(f"--shard-size: expected a positive size such as 5GB, got {text!r}")
    return value


def _check_save_model(path: str | None, task: str) -> None:
    """A language model is saved as an HF directory (may exist, must not be a file); others as one file."""
    if not path:
        return
    from obliviate.tasks import task_class

    if task_class(task).kind == "language":
        if os.path.isfile(path):
            raise ObliviateError(f"--save-model {path}: is a file; a language model is saved as a directory")
        check_writable(os.path.join(path, "model.safetensors"), "--save-model")
    else:
        check_writable(path, "--save-model")


def _check_cache(cache_dir: str | None, no_cache: bool) -> None:
    """The model cache must take files before anything is trained into it: --cache-dir, else $OBLIVIATE_CACHE or
    the default (a cache that cannot be written would fail only after the training)."""
    if no_cache:
        return
    if cache_dir:
        check_cache_dir(cache_dir, "--cache-dir")
        return
    from obliviate.models.store import default_cache_dir

    try:
        check_cache_dir(default_cache_dir(), "$OBLIVIATE_CACHE" if os.environ.get("OBLIVIATE_CACHE") else
                        "model cache")
    except ObliviateError as exc:
        raise ObliviateError(f"{exc}; pass --cache-dir DIR or --no-cache") from None


def _parse_scal(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ObliviateError(f"--scal takes comma-separated positive integers, e.g. 1,2,3,4; got {text!r}") from None
    if not values or min(values) < 1:
        raise ObliviateError(f"--scal takes comma-separated positive integers, e.g. 1,2,3,4; got {text!r}")
    return values


def _bench(task, methods, forget, seeds, device, set_, json_path, html_path, cache_dir, no_cache, quiet,
           executor="local", ray_address=None, challenge=None, relearn=False, scal=None, sust=None):
    if challenge is not None and challenge < 3:
        raise ObliviateError(f"--challenge N needs N >= 3 (N retrained and N unlearned models per method; with N = 2 the official buckets are empty and F is always 0), "
                             f"got {challenge}")
    for path, flag in ((json_path, "--json"), (html_path, "--html")):
        check_writable(path, flag)
    _check_cache(cache_dir, no_cache)
    names = [m.strip() for m in methods.split(",") if m.strip()]
    seen_seeds: set[int] = set()

    def progress(r: dict[str, Any]) -> None:
        if quiet or not dist.is_main():
            return
        if r["seed"] not in seen_seeds:  # the seed's original and oracle serve every method: say once
            seen_seeds.add(r["seed"])
            models = _models_line(r, ", ")
            if models:
                err.print(f"  seed {r['seed']}: {models}", markup=False, highlight=False, soft_wrap=True)
        err.print(f"  {r['method']:<16} seed {r['seed']}  avg_gap {_fmt(r['avg_gap'])}  "
                  f"unlearn {r['time_s']['unlearn']:.2f}s"
                  + (f"  challenge F {r['challenge']['forgetting_quality']:.4f} score "
                     f"{r['challenge']['score']:.4f}" if "challenge" in r else ""))
    doc = api.bench(task, names, forget, seeds=seeds, device=device, overrides=split_overrides(set_ or []),
                    cache_dir=cache_dir, use_cache=not no_cache, on_run=progress, executor=executor,
                    ray_address=ray_address, challenge=challenge or 0, relearn=relearn, scal=_parse_scal(scal),
                    sust=sust)
    if not dist.is_main():  # rank 0 writes and prints
        return doc
    if json_path:
        write_json(doc, json_path)
    if html_path:
        write_html(doc, html_path)
    if not quiet:
        _print_bench(doc)
    return doc


@app.command()
def bench(task: str = typer.Option(..., "--task", help="task name"),
          methods: str = typer.Option(..., "--methods", help="comma-separated method names"),
          forget: Optional[str] = typer.Option(None, "--forget", help="forget spec (default: the task's, "
                                                                     "random:0.1 for most)"),
          seeds: int = typer.Option(1, "--seeds", help="number of seeds (0..N-1)"),
          device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
          set_: Optional[List[str]] = SetOpt,
          json_path: Optional[str] = typer.Option(None, "--json", help="write the obliviate.bench/1 document here"),
          html_path: Optional[str] = typer.Option(None, "--html", help="write a self-contained HTML report here"),
          cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="model cache directory"),
          no_cache: bool = typer.Option(False, "--no-cache", help="neither read nor write the model cache"),
          executor: str = ExecutorOpt, ray_address: Optional[str] = RayOpt,
          challenge: Optional[int] = typer.Option(
              None, "--challenge", help="N >= 3: also score each method with the NeurIPS 2023 unlearning challenge "
                                        "metric over N unlearning runs and N retrained oracles"),
          relearn: bool = RelearnOpt, scal: Optional[str] = ScalOpt, sust: Optional[int] = SustOpt,
          quiet: bool = typer.Option(False, "--quiet", help="no progress or table")) -> None:
    """Several methods side by side on the same forget set; original and oracle computed once per seed."""
    _quiet(quiet)
    _bench(task, methods, forget, seeds, device, set_, json_path, html_path, cache_dir, no_cache, quiet,
           executor, ray_address, challenge, relearn, scal, sust)


def _parse_seeds(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ObliviateError(f"{flag} takes comma-separated integers, e.g. 1,2,3; got {text!r}") from None
    if not values:
        raise ObliviateError(f"{flag} takes comma-separated integers, e.g. 1,2,3; got {text!r}")
    return values


def _print_tune(doc: dict[str, Any]) -> None:
    t = Table(title=f"tune {doc['method']} on {doc['task']} · forget {doc['forget']} · validation seed "
                    f"{doc['validation_seed']} · budget {doc['budget']:g}× retrain")
    for col in ("trial", *doc["space"], "avg_gap", "÷ oracle", "in budget"):
        t.add_column(col, justify="right")
    for r in doc["trials"]:
        t.add_row(str(r["number"]), *(_fmt(r["params"][k]) for k in doc["space"]), _fmt(r["avg_gap"]),
                  _fmt(r["time_ratio"]), "yes" if r["within_budget"] else "no")
    out.print(t)
    best = doc["best"]
    out.print("best: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in best["params"].items())
              + f" (trial {best['number']}, validation avg_gap {best['avg_gap']:.4f})")
    s = Table(title=f"test seeds {doc['test_seeds']}: avg_gap mean ± std")
    for col in ("model", "avg_gap", "÷ oracle"):
        s.add_column(col, justify="left" if col == "model" else "right")
    test = doc["test"]
    s.add_row("original (do nothing)", f"{test['noop']['avg_gap_mean']:.4f} ± {test['noop']['avg_gap_std']:.4f}", "0")
    for name in ("defaults", "tuned"):
        row = test[name]
        s.add_row(f"{doc['method']} {name}", f"{row['avg_gap_mean']:.4f} ± {row['avg_gap_std']:.4f}",
                  _fmt(row["time_ratio_mean"]))
    out.print(s)


@app.command("tune")
def tune_cmd(task: str = typer.Option(..., "--task", help="task name (see `obliviate tasks`)"),
             method: str = typer.Option(..., "--method", help="a method with declared tune ranges"),
             forget: Optional[str] = typer.Option(None, "--forget", help="forget spec (default: the task's)"),
             trials: int = typer.Option(20, "--trials", help="Optuna trials on the validation seed"),
             budget: float = typer.Option(0.1, "--budget", help="most unlearn time / oracle retrain time; a trial "
                                                                 "over it is penalised (+1) and never best"),
             seed: int = typer.Option(0, "--seed", help="validation seed (and the TPE sampler's seed)"),
             test_seeds: str = typer.Option("1,2,3", "--test-seeds", help="seeds the best parameters are reported "
                                                                          "on (mean ± std)"),
             out_path: Optional[str] = typer.Option(None, "--out", help="write the obliviate.tune/1 result here; "
                                                    "reuse it with --set @FILE"),
             device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
             set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value held fixed during the search "
                                                      "(task option, train.<key>, method key) or @file.json"),
             cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="model cache directory"),
             no_cache: bool = typer.Option(False, "--no-cache", help="neither read nor write the model cache"),
             quiet: bool = typer.Option(False, "--quiet", help="no progress or tables")) -> None:
    """Search a method's declared hyperparameter ranges (Optuna TPE) for the smallest avg_gap to the oracle
    within a time budget on a validation seed; report the best on unseen test seeds."""
    from obliviate.tune import tune

    _quiet(quiet)
    check_writable(out_path, "--out")
    _check_cache(cache_dir, no_cache)
    seeds = _parse_seeds(test_seeds, "--test-seeds")
    progress = None if quiet else (lambda r: err.print(
        f"  trial {r['number']:>3}  avg_gap {_fmt(r['avg_gap'])}  ÷ oracle {_fmt(r['time_ratio'])}"
        + ("" if r["within_budget"] else "  over budget")))
    doc = tune(task, method, forget, trials=trials, budget=budget, seed=seed, test_seeds=seeds,
               overrides=split_overrides(set_ or []), device=device, cache_dir=cache_dir, use_cache=not no_cache,
               on_trial=progress)
    if doc["best"] is None:
        ratios = [r["time_ratio"] for r in doc["trials"] if r["time_ratio"] is not None]
        failed = [r for r in doc["trials"] if "error" in r]
        if len(failed) == len(doc["trials"]):
            raise ObliviateError(f"every trial of {method} failed; the first: {failed[0]['error']}")
        raise ObliviateError(f"no trial of {method} fit the budget {budget:g}× retrain time (fastest: "
                             f"{min(ratios):.3g}×); raise --budget or narrow the ranges with --set"
                             if ratios else f"no trial of {method} fit the budget {budget:g}")
    if out_path:
        write_json(doc, out_path)
    if not quiet:
        _print_tune(doc)
        if out_path:
            out.print(f"wrote {out_path}; reuse with --set @{out_path}")


@app.command()
def demo(out_dir: str = typer.Option("reports", "--out", help="directory for demo.json and demo.html"),
         methods: str = typer.Option(DEMO_METHODS, "--methods", help="methods to compare"),
         seeds: int = typer.Option(1, "--seeds", help="number of seeds"),
         quiet: bool = typer.Option(False, "--quiet", help="no progress or table")) -> None:
    """The main job on embedded defaults: digits MLP, forget a random 10 %, every method vs the oracle."""
    _quiet(quiet)
    json_path, html_path = os.path.join(out_dir, "demo.json"), os.path.join(out_dir, "demo.html")
    for path in (json_path, html_path):  # before the banner: a bad --out is the only line printed
        check_writable(path, "--out")
    _check_cache(None, False)
    if not quiet:
        out.print("[bold]obliviate demo[/bold]: digits MLP, forget random 10 % of the training set, "
                  "each method compared with the retrain oracle")
    _bench("digits", methods, "random:0.1", seeds, "cpu", [], json_path, html_path, None, False, quiet)
    if not quiet:
        out.print(f"wrote {json_path} and {html_path}")


def _split_audit(pairs: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``audit.key=value`` pairs are the audit's own settings; the rest go to route_overrides."""
    audit_values = {k[len("audit."):]: v for k, v in pairs.items() if k.startswith("audit.")}
    return audit_values, {k: v for k, v in pairs.items() if not k.startswith("audit.")}


def _print_audit(doc: dict[str, Any]) -> None:
    """The audit as a table; a skipped audit (``{"skipped": why}``) is one line saying why."""
    ic, rl, qz, pr, se = (doc[k] for k in ("incontext", "relearn", "quantized", "probe", "side_effects"))
    ran = {k: "skipped" not in doc[k] for k in ("incontext", "relearn", "quantized", "probe", "side_effects")}
    roles = [r for r in ("original", "oracle", "unlearned") if r in doc["metrics"]]
    if ran["incontext"] and "unlearned+filter" in ic["models"]:
        roles.append("unlearned+filter")
    t = Table(title=f"audit: {doc['method']} ({doc['guarantee']}) on {doc['task']} · forget {doc['forget']['spec']} "
                    f"(n={doc['forget']['n']}) · seed {doc['seed']}")
    t.add_column("check")
    for role in roles:
        t.add_column(role, justify="right")

    def row(label: str, values: dict[str, Any]) -> None:
        t.add_row(label, *(_fmt(values.get(r)) for r in roles))

    if ran["incontext"]:
        row("KnowMem_f, no context", {r: m["base"] for r, m in ic["models"].items()})
        row("KnowMem_f, document pasted", {r: m["context"] for r, m in ic["models"].items()})
        row("in-context recovery", {r: m["recovery"] for r, m in ic["models"].items()})
    if ran["relearn"]:
        steps = {r: (f"≥{v['steps']}" if v["saturated"] else v["steps"]) for r, v in rl["models"].items()}
        row(f"relearn steps to {rl['band']:g}×original", steps)
    if ran["quantized"]:
        for name, v in qz["variants"].items():
            label = name if name != "fp16" else v.get("dtype", name)
            row(f"KnowMem_f {label}", {"original": qz["original"]["knowmem_f"], "unlearned": v["knowmem_f"]})
    if ran["probe"]:
        row(f"probe accuracy ({pr['attribute']})", {r: v["accuracy"] for r, v in pr["models"].items()})
    if ran["side_effects"]:
        row("retain KnowMem related / unrelated", {r: f"{_fmt(v['related'])} / {_fmt(v['unrelated'])}"
                                                   for r, v in se["knowmem"].items()})
    out.print(t)
    e = Table(title="evidence")
    for col in ("check", "value", "threshold", "suppression-like"):
        e.add_column(col, justify="left" if col == "check" else "right")
    for item in doc["evidence"]:
        e.add_row(item["check"], _fmt(item["value"]), _fmt(item["threshold"]), "yes" if item["suppression"] else "no")
    out.print(e)
    notes = [f"{name}: skipped — {doc[name]['skipped']}" for name, ok in ran.items() if not ok]
    if ran["relearn"]:
        notes.append(f"relearn: anamnesis {_fmt(rl['anamnesis'])}" + (" (a bound: one run saturated)"
                                                                    if rl["anamnesis_bound"] else "")
                     + (f"; {rl['note']}" if rl.get("note") else ""))
    if ran["probe"]:
        notes.append(f"probe: chance {_fmt(pr.get('chance'))}, {pr['n_train']} train / {pr['n_test']} test subjects"
                     + (f"; {pr['note']}" if pr.get("note") else ""))
    if ran["side_effects"]:
        notes.append(f"side effects: {len(se['related_ids'])} related / {len(se['unrelated_ids'])} unrelated retain "
                     f"subjects; change related − unrelated (unlearned) "
                     f"{_fmt(se['change'].get('unlearned', {}).get('difference'))}")
    if ran["incontext"]:
        notes += ic.get("warnings", []) + ([ic["note"]] if ic.get("note") else [])
    for n in notes:
        out.print(n, markup=False, highlight=False)
    basis = doc.get("verdict_basis") or {}
    rests = ", ".join((["guarantee"] if basis.get("guarantee") else []) + list(basis.get("rests_on") or [])) or "–"
    out.print(f"verdict: [bold]{doc['verdict']}[/bold] (rests on: {rests})   time: {doc['time_s']['total']:.1f}s")


@app.command("audit")
def audit_cmd(task: str = typer.Option(..., "--task", help="a language task (see `obliviate tasks`)"),
              method: str = typer.Option(..., "--method", help="method name (see `obliviate methods`)"),
              forget: Optional[str] = typer.Option(None, "--forget", help="forget spec, e.g. subjects:2 (default: "
                                                   "the task's)"),
              seed: int = typer.Option(0, "--seed", help="seed of training, forget sampling, unlearning and audits"),
              device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto"),
              set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value: task option, train.<recipe "
                                                       "key>, method config, or audit.<key> (relearn_lr, "
                                                       "max_steps, band, probe_attribute, ...)"),
              json_path: Optional[str] = typer.Option(None, "--json", help="write the obliviate.audit/1 document "
                                                      "here"),
              html_path: Optional[str] = typer.Option(None, "--html", help="write a self-contained HTML report here"),
              cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="model cache directory"),
              no_cache: bool = typer.Option(False, "--no-cache", help="neither read nor write the model cache"),
              quiet: bool = typer.Option(False, "--quiet", help="no progress bars or table")) -> None:
    """Removal-vs-suppression audits of a language method (in-context, relearn, quantization, probe, side effects)."""
    from obliviate.audit import audit as run_audit
    from obliviate.audit import require_language
    from obliviate.tasks import task_class

    _quiet(quiet)
    for path, flag in ((json_path, "--json"), (html_path, "--html")):
        check_writable(path, flag)
    _check_cache(cache_dir, no_cache)
    require_language(task, getattr(task_class(task), "kind", None))  # before any data is loaded
    audit_values, rest = _split_audit(split_overrides(set_ or []))
    task_opts, recipe, per_method = api.route_overrides(task, [method], rest)
    doc = run_audit(task, method, forget, seed=seed, device=device, task_options=task_opts, train=recipe,
                    cache_dir=cache_dir, use_cache=not no_cache, audit_config=audit_values, **per_method[method])
    if json_path:
        write_json(doc, json_path)
    if html_path:
        write_html(doc, html_path)
    if not quiet:
        _print_audit(doc)


@app.command("plan")
def plan_cmd(task: str = typer.Option(..., "--task", help="a language task with a given model (hf, tofu, muse)"),
             method: str = typer.Option(..., "--method", help="method name (see `obliviate methods`)"),
             set_: Optional[List[str]] = SetOpt,
             device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto (cuda also plans for a GPU "
                                                                "this machine lacks; size it with "
                                                                "OBLIVIATE_DEVICE_MEMORY)"),
             processes: Optional[int] = typer.Option(None, "--processes", min=1, help="plan for N launcher processes "
                                                     "(accelerate launch --num_processes N; with sharding=fsdp the "
                                                     "training state is split over them)"),
             json_path: Optional[str] = typer.Option(None, "--json", help="write the obliviate.plan/1 estimate "
                                                     "here")) -> None:
    """Estimate a language method's peak memory on the device before running it: reads the model's config and
    the texts, never the weights. `obliviate run` refuses a run whose estimate exceeds the visible memory."""
    from obliviate import memory
    from obliviate.tasks import get_task, task_class
    from obliviate.tasks.hf import GivenModelTask

    check_writable(json_path, "--json")
    if not issubclass(task_class(task), GivenModelTask):
        raise ObliviateError(f"obliviate plan needs a language task with a given model directory (hf, tofu, "
                             f"muse); {task} has none")
    task_opts, _, per_method = api.route_overrides(task, [method], split_overrides(set_ or []))
    task_obj = get_task(task, **task_opts)
    doc = memory.plan(task_obj, api.build_method(method, per_method[method], task_obj), device, processes)
    if json_path:
        write_json(doc, json_path)
    _print_plan(doc)


def _print_plan(doc: dict[str, Any]) -> None:
    """Components and total in GiB (MiB for a model under 1 GiB), the verdict, and suggestions that fit."""
    from obliviate.memory import GIB, format_bytes

    unit, size = ("GiB", GIB) if doc["total"] >= GIB else ("MiB", 2 ** 20)
    t = Table(title=f"memory plan: {doc['method']} on {doc['task']} · {doc['device']}")
    t.add_column("component")
    t.add_column(unit, justify="right")
    core = ("weights", "reference", "gradients", "optimizer states", "activations", "logits")
    for name, value in doc["components"].items():
        if value or (doc["trainable"] and name in core):
            t.add_row(name, f"{value / size:.2f}")
    t.add_row(f"[bold]total[/bold] (peak: {doc['peak_phase']})", f"[bold]{doc['total'] / size:.2f}[/bold]")
    visible = doc["visible"]
    t.add_row("visible memory", "unknown" if visible is None else f"{visible / size:.2f}")
    out.print(t)
    out.print(f"parameters: {doc['parameters']:,}, trainable: {doc['trainable']:,}")
    if visible is None:
        out.print(f"visible memory of {doc['device']} unknown here: set OBLIVIATE_DEVICE_MEMORY (e.g. 80GiB)")
    else:
        out.print("[bold green]fits[/bold green]" if doc["fits"] else "[bold red]does not fit[/bold red]")
    for where, value in doc["other_devices"].items():
        out.print(f"also on {where}: {format_bytes(value)}")
    for note in doc["notes"]:
        out.print(f"  {note}", markup=False, highlight=False)
    if doc["suggestions"]:
        s = Table(title="to fit, try --set")
        for col in ("setting", unit, "fits"):
            s.add_column(col, justify="left" if col == "setting" else "right")
        for item in doc["suggestions"]:
            s.add_row(item["setting"], f"{item['total'] / size:.2f}", "yes" if item["fits"] else "no")
        out.print(s)


@app.command("methods")
def methods_cmd(name: Optional[str] = typer.Argument(None, help="one method: its config, defaults and source"),
                as_json: bool = typer.Option(False, "--json", help="machine-readable listing")) -> None:
    """List every registered method (name, guarantee, needs, task kinds), or show one method's config."""
    from obliviate.methods import get_method, list_methods

    if name is not None:
        get_method(name)  # an unknown name: one line listing the available ones
        infos = [m.info() for m in list_methods() if m.name == name]
        if as_json:
            print(json.dumps(infos if len(infos) > 1 else infos[0], indent=2, default=str))
            return
        for i in infos:
            out.print(f"[bold]{i['name']}[/bold] ({i['guarantee']}; {', '.join(i['kinds'])} tasks; needs "
                      f"{', '.join(i['needs']) or 'nothing'}): {i['summary']}")
            out.print(f"source: {i['reference']}")
            t = Table(show_header=True)
            for col in ("key", "default", "help"):
                t.add_column(col, overflow="fold")
            for f in i["config"]:
                t.add_row(f["name"], _fmt_default(f["default"]), f["help"])
            out.print(t)
        return
    infos = [m.info() for m in list_methods()]
    if as_json:
        print(json.dumps(infos, indent=2, default=str))
        return
    t = Table(title="unlearning methods")
    for col in ("name", "guarantee", "needs", "kinds", "summary"):
        t.add_column(col, no_wrap=col in ("name", "guarantee"),
                     min_width=max(len(i[col]) for i in infos) if col in ("name", "guarantee") else None)
    for i in infos:
        t.add_row(i["name"], i["guarantee"], ",".join(i["needs"]) or "–", ",".join(i["kinds"]), i["summary"])
    out.print(t)


@app.command("metrics")
def metrics_cmd(kind: Optional[str] = typer.Option(None, "--kind", help="classification, regression or language"),
                as_json: bool = typer.Option(False, "--json", help="machine-readable listing")) -> None:
    """List the metrics a report holds per task kind: headline ones (averaged into avg_gap) first, with what a
    good value is close to and the unit."""
    from obliviate.metrics import list_metrics

    rows = list_metrics(kind)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for k in dict.fromkeys(r["kind"] for r in rows):
        t = Table(title=f"{k} metrics (* = headline: in avg_gap)")
        for col in ("name", "close to", "unit", "meaning"):
            t.add_column(col, no_wrap=col == "name", overflow="fold")
        for r in (r for r in rows if r["kind"] == k):
            t.add_row(r["name"] + (" *" if r["headline"] else ""), r["target"], r["unit"], r["help"])
        out.print(t)


def _fmt_narrow(v: Any) -> str:
    """3 decimals, or 1 for values of 10 and more (PrivLeak's percentages)."""
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"
    return "–" if v is None else str(v)


def _fmt_default(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "–"
    return "–" if value is None or value == "" else str(value)


@app.command("tasks")
def tasks_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable listing")) -> None:
    """List the built-in tasks and their options."""
    from obliviate.config import describe
    from obliviate.tasks import list_tasks

    infos = [{"name": c.name, "kind": "classification|regression" if c.name == "csv" else c.kind,
              "description": c.description, "options": describe(c.options_class),
              "train_defaults": c.recipe_defaults} for c in list_tasks()]
    if as_json:
        print(json.dumps(infos, indent=2, default=str))
        return
    t = Table(title="tasks")
    for col in ("name", "kind", "description", "options"):
        t.add_column(col)
    for i in infos:
        t.add_row(i["name"], i["kind"], i["description"], ", ".join(o["name"] for o in i["options"]))
    out.print(t)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit status 2, never a traceback."""
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="obliviate")
    except ObliviateError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # click's own exceptions (typer vendors click, so match them by shape)
        name = type(exc).__name__
        if name == "Abort":
            err.print("aborted")
            return 130
        if name == "Exit":
            return int(getattr(exc, "exit_code", 0) or 0)
        if name == "NoArgsIsHelpError":
            print(exc.format_message())
            return 0
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # usage errors
            err.print(f"error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
            return int(exc.exit_code or 2)
        raise
    dist.finish()  # under a launcher: wait for rank 0's writes, then leave the process group together
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())


def entry() -> None:
    sys.exit(main())
