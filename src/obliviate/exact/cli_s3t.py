"""``obliviate s3t ...``: S3T tools on the command line (wired into the main app as ``app.add_typer(s3t_app,
name="s3t")``). ``simulate`` is the deletion-capability simulation of the S3T paper (README, "Exact unlearning:
SISA and S3T"), schema ``obliviate.s3t-simulate/1``.
"""
from __future__ import annotations

import html
import json
import sys
import time
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from obliviate.atomic import atomic_write, check_writable
from obliviate.errors import ObliviateError
from obliviate.exact.sequences import SELECTIONS
from obliviate.exact.simulate import parse_budget, simulate_range
from obliviate.report import html_page, svg_of, write_json

s3t_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      help="S3T (sequence-aware sharded sliced training) tools: the deletion-capability simulator.")
out = Console(width=None if sys.stdout.isatty() else 160)


def parse_prior(text: Optional[str], slices: int) -> Optional[list[float]]:
    """``"0.5,0.3,0.2"`` -> [0.5, 0.3, 0.2]; the count, signs and sum are checked (sequences.check_probs)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ObliviateError(f"--prior {text!r}: expected {slices} comma-separated non-negative numbers "
                             f"(one deletion probability per slice)") from None
    if len(values) != slices:
        raise ObliviateError(f"--prior {text!r}: expected {slices} values (one per slice, --slices {slices}), "
                             f"got {len(values)}")
    return values


def _ratio(doc: dict[str, Any], mean: float) -> Optional[float]:
    base = doc["sisa"]["mean_deletions"]
    return mean / base if base else None


def print_table(doc: dict[str, Any], seconds: float) -> None:
    """The results as a rich table: budget, mean ± std, range, exact mean (uniform requests), ratio to SISA."""
    exact = doc["requests"] == "uniform"
    t = Table(title=f"S3T deletion capability · {doc['selection']} · {doc['shards']} shards × {doc['slices']} slices"
                    f" · {doc['trials']} trials · seed {doc['seed']} · {doc['requests']} requests")
    for col in ["budget", "mean deletions", "std", "min", "max", *(["exact mean"] if exact else []), "× SISA"]:
        t.add_column(col, justify="right")
    for r in doc["results"]:
        ratio = _ratio(doc, r["mean_deletions"])
        t.add_row(str(r["budget"]), f"{r['mean_deletions']:.2f}", f"{r['std']:.2f}", str(r["min"]), str(r["max"]),
                  *([f"{r['exact_mean']:.2f}"] if exact else []), "–" if ratio is None else f"{ratio:.2f}")
    out.print(t)
    out.print(f"SISA (B=1, identity order, same requests): {doc['sisa']['mean_deletions']:.2f} ± "
              f"{doc['sisa']['std']:.2f} deletions · {seconds:.2f}s")


def _svg_budget_plot(doc: dict[str, Any]) -> str:
    """Mean deletions absorbed (± std, error bars) against the budget, with the SISA level and exact means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [r["budget"] for r in doc["results"]]
    means = [r["mean_deletions"] for r in doc["results"]]
    stds = [r["std"] for r in doc["results"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.errorbar(budgets, means, yerr=stds, fmt="o-", capsize=4, label=f"{doc['selection']} (simulated, ± std)")
    if doc["requests"] == "uniform":
        ax.plot(budgets, [r["exact_mean"] for r in doc["results"]], "x", color="black", label="exact mean")
    ax.axhline(doc["sisa"]["mean_deletions"], linestyle="--", color="grey", linewidth=1, label="SISA (B=1)")
    ax.set_xlabel("budget B (sequences per shard)", fontsize=9)
    ax.set_ylabel("deletion requests absorbed", fontsize=9)
    ax.set_xticks(budgets if len(budgets) <= 20 else ax.get_xticks())
    ax.set_title(f"{doc['shards']} shards × {doc['slices']} slices, {doc['trials']} trials", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return svg_of(fig)


def render_html(doc: dict[str, Any]) -> str:
    """A self-contained page: what was simulated, the table, the plot, and the JSON document."""
    title = f"obliviate — S3T deletion capability ({doc['selection']}, {doc['shards']}×{doc['slices']})"
    exact = doc["requests"] == "uniform"
    head = "".join(f"<th>{h}</th>" for h in ["budget", "mean deletions", "std", "min", "max",
                                              *(["exact mean"] if exact else []), "× SISA"])
    rows = []
    for r in doc["results"]:
        ratio = _ratio(doc, r["mean_deletions"])
        cells = [str(r["budget"]), f"{r['mean_deletions']:.2f}", f"{r['std']:.2f}", str(r["min"]), str(r["max"]),
                 *([f"{r['exact_mean']:.2f}"] if exact else []), "–" if ratio is None else f"{ratio:.2f}"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    requests = ("uniformly at random over all shard × slice pairs, with replacement" if exact
                else "following the given deletion prior")
    body = (f"<h1>{html.escape(title)}</h1>"
            f"<p>Each trial sends deletion requests {requests}; a request truncates every sequence of its shard "
            f"just before the deleted slice, and a trial ends when no shard has a sequence left (the request that "
            f"empties the last shard is counted). {doc['trials']} trials, seed {doc['seed']}; every budget sees the "
            f"same request streams. SISA is B = 1 with the identity order: "
            f"{doc['sisa']['mean_deletions']:.2f} ± {doc['sisa']['std']:.2f} requests.</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>{_svg_budget_plot(doc)}"
            f"<p class='note'>A sequence is lost only when its first slice is deleted, so under uniform requests "
            f"the count is a coupon collector over the distinct (shard, first slice) pairs; the exact mean is "
            f"m·L·H<sub>n</sub> for n such pairs.</p>"
            f"<p class='note'>The price of this capability is the <i>exact gap</i>: a sharded model's accuracy "
            f"against a single model trained on the same data (each shard sees only its part); deletions stay exact "
            f"— zero gap to the retrained model — but the served model starts from the sharded one "
            f"(<code>benchmarks/exact.py</code>, column Δ vs plain).</p>"
            f"<details><summary>JSON ({html.escape(doc['schema'])})</summary><pre>"
            f"{html.escape(json.dumps(doc, indent=2))}</pre></details>")
    return html_page(title, body)


@s3t_app.command()
def simulate(shards: int = typer.Option(..., "--shards", help="number of shards m"),
             slices: int = typer.Option(..., "--slices", help="slices per shard L"),
             budget: str = typer.Option(..., "--budget", help="sequences per shard B: one number or a range like 1-6"),
             selection: str = typer.Option("cyclic", "--selection", help=" | ".join(SELECTIONS)),
             trials: int = typer.Option(1000, "--trials", help="number of simulated request streams"),
             seed: int = typer.Option(0, "--seed", help="seed of the request streams (and of random selection)"),
             prior: Optional[str] = typer.Option(None, "--prior", help="p1,...,pL: per-slice deletion probabilities; "
                                                 "requests follow them and --selection prior uses them"),
             json_path: Optional[str] = typer.Option(None, "--json", help="write the obliviate.s3t-simulate/1 "
                                                     "document here"),
             html_path: Optional[str] = typer.Option(None, "--html", help="write a self-contained HTML page with "
                                                     "the plot here"),
             quiet: bool = typer.Option(False, "--quiet", help="no table")) -> None:
    """Mean number of random deletion requests absorbed before every shard must retrain (S3T paper's simulation)."""
    for path, flag in ((json_path, "--json"), (html_path, "--html")):
        check_writable(path, flag)
    budgets = parse_budget(budget)
    probs = parse_prior(prior, slices) if slices >= 1 else None
    start = time.perf_counter()
    doc = simulate_range(shards, slices, budgets, selection=selection, trials=trials, seed=seed, probs=probs)
    seconds = time.perf_counter() - start
    if json_path:
        write_json(doc, json_path)
    if html_path:
        atomic_write(html_path, render_html(doc))
    if not quiet:
        print_table(doc, seconds)
