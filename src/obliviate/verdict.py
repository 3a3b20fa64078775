"""The verdict a newcomer reads first: which method came closest to the retrain oracle, measured against doing
nothing (the original's own gap to the oracle), and which methods did not forget at the settings they ran with.

Example::

    >>> doc = {"task_kind": "classification", "runs": [], "summary": [
    ...     {"method": "npo", "guarantee": "approximate", "avg_gap": 0.01, "time_ratio": 0.05},
    ...     {"method": "finetune", "guarantee": "approximate", "avg_gap": 0.05, "time_ratio": 0.2}]}
    >>> v = bench_verdict(doc, do_nothing=0.04)
    >>> v["best"], v["did_not_forget"], round(v["times_closer"], 1)
    ('npo', ['finetune'], 4.0)
"""
from __future__ import annotations

from typing import Any

import numpy as np

from obliviate.metrics.gap import avg_gap, gaps

#: a do-nothing gap below this means the forget set barely changed the model: methods cannot be told apart there
#: (digits ``random:0.1``: 0.0145); a heuristic for the note, never a pass/fail threshold
INDISTINGUISHABLE = 0.02


def reference(runs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The original's and the oracle's metrics, and doing nothing's avg_gap, as means (and stds) over the distinct
    seeds of ``runs`` — the same seeds the method rows average over."""
    per_seed: dict[Any, dict[str, Any]] = {}
    for r in runs:
        m = r.get("metrics", {})
        if r.get("seed") not in per_seed and "original" in m:
            per_seed[r.get("seed")] = m
    out: dict[str, Any] = {"seeds": list(per_seed)}
    for role in ("original", "oracle"):
        rows = [m[role] for m in per_seed.values() if role in m]
        if rows:
            keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            out[role] = {k: float(np.mean([r[k] for r in rows if r.get(k) is not None])) for k in keys}
            out[f"{role}_std"] = {k: float(np.std([r[k] for r in rows if r.get(k) is not None])) for k in keys}
    noop = [avg_gap(gaps(m["original"], m["oracle"]), kind) for m in per_seed.values()
            if "original" in m and "oracle" in m]
    noop = [g for g in noop if g is not None and np.isfinite(g)]
    out["do_nothing_avg_gap"] = float(np.mean(noop)) if noop else None
    out["do_nothing_avg_gap_std"] = float(np.std(noop)) if noop else None
    return out


def bench_verdict(doc: dict[str, Any], do_nothing: float | None = None) -> dict[str, Any]:
    """The best method by avg_gap (``retrain`` excluded: it is the oracle's recipe), how many times closer to the
    oracle than doing nothing it is, and every method whose avg_gap is no better than doing nothing."""
    if do_nothing is None:
        do_nothing = reference(doc.get("runs", []), doc["task_kind"]).get("do_nothing_avg_gap")
    rated = [s for s in doc.get("summary", []) if s.get("avg_gap") is not None and s["method"] != "retrain"]
    out: dict[str, Any] = {"do_nothing_avg_gap": do_nothing, "best": None, "did_not_forget": []}
    if do_nothing is not None:
        out["did_not_forget"] = [s["method"] for s in rated if s["avg_gap"] >= do_nothing]
    lines = []
    if not rated:
        out["text"] = "no method has an avg_gap (no oracle): nothing to compare"
        return out
    best = min(rated, key=lambda s: s["avg_gap"])
    out.update(best=best["method"], best_avg_gap=best["avg_gap"], best_guarantee=best["guarantee"],
               best_time_ratio=best.get("time_ratio"))
    if do_nothing is None:
        lines.append(f"best: {best['method']} (avg_gap {best['avg_gap']:.4f}); no do-nothing reference")
    elif best["avg_gap"] >= do_nothing:
        lines.append(f"no method beat doing nothing (avg_gap {do_nothing:.4f}) at these settings")
    else:
        closer = do_nothing / best["avg_gap"] if best["avg_gap"] > 0 else float("inf")
        out["times_closer"] = closer
        cost = (f", at {best['time_ratio']:.2f}× the retrain time" if best.get("time_ratio") is not None else "")
        lines.append(f"best: {best['method']} ({best['guarantee']}): avg_gap {best['avg_gap']:.4f}, "
                     + (f"{closer:.1f}× closer to the oracle than doing nothing ({do_nothing:.4f})"
                        if np.isfinite(closer) else f"equal to the oracle (doing nothing: {do_nothing:.4f})") + cost)
    if out["did_not_forget"]:
        lines.append("did not forget at these settings (avg_gap ≥ doing nothing): " + ", ".join(out["did_not_forget"]))
    if do_nothing is not None and do_nothing < INDISTINGUISHABLE:
        lines.append(f"note: the original is already within {do_nothing:.4f} of the oracle, so this forget set barely "
                     "changes the model and methods are hard to tell apart (a task with a train/test gap, e.g. "
                     "mnist1d, separates them)")
    out["text"] = "\n".join(lines)
    return out


def run_verdict(report: dict[str, Any]) -> str | None:
    """One line for a single run: did the method get closer to the oracle than the original was?"""
    m, kind, gap = report.get("metrics", {}), report.get("task_kind"), report.get("avg_gap")
    if gap is None or "original" not in m or "oracle" not in m or kind is None:
        return None
    noop = avg_gap(gaps(m["original"], m["oracle"]), kind)
    if noop is None or not np.isfinite(noop):
        return None
    if gap >= noop:
        return (f"verdict: {report.get('method', 'the method')} did not forget at these settings "
                f"(avg_gap {gap:.4f} ≥ doing nothing {noop:.4f})")
    return f"verdict: avg_gap {gap:.4f} vs doing nothing {noop:.4f} ({noop / gap:.1f}× closer to the oracle)" \
        if gap > 0 else f"verdict: equal to the oracle (doing nothing: {noop:.4f})"


def settings_note(settings: dict[str, Any] | None) -> str:
    """One line saying which settings the methods ran with: the published defaults unless the task suggests
    others (``Task.method_defaults``) or the user set some (``--set``); never tuned unless the user tuned them.

    >>> settings_note({"set": {}, "task_suggested": {}})[:48]
    'settings: every method at its published defaults'
    >>> settings_note({"set": {"lr": 0.01}, "task_suggested": {"npo": {"lr": 1e-05}}}).split("; ")[1:]
    ['this task suggests npo lr=1e-05', 'with --set lr=0.01']
    """
    if settings is None:
        return ""
    text = ("settings: every method at its published defaults (its paper's or official code's values, "
            "listed by `obliviate methods NAME`), not tuned here (`obliviate tune` searches for better ones)")
    suggested = settings.get("task_suggested") or {}
    if suggested:
        text += "; this task suggests " + ", ".join(
            f"{m} " + " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
            for m, values in suggested.items())
    given = settings.get("set") or {}
    if given:
        text += "; with --set " + " ".join(f"{k}={v}" for k, v in given.items())
    return text
