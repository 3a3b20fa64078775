"""Reports: the JSON documents (``obliviate.run/1``, built by :func:`obliviate.pipeline.run_report`;
``obliviate.bench/1``) and one self-contained HTML page (plots inlined as SVG) comparing original, unlearned and oracle per metric."""
from __future__ import annotations

import hashlib
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from obliviate.atomic import atomic_write
from obliviate.metrics.gap import HEADLINE
from obliviate.verdict import bench_verdict, reference, run_verdict, settings_note

GUARANTEE_TEXT = {
    "exact": "exact — the served model is distributed as one trained without the forget set (same recipe, seeds)",
    "certified": "certified — a proven (ε, δ) bound under stated assumptions",
    "approximate": "approximate — empirical evidence only (gaps, attacks); no guarantee",
    "suppression": "suppression — weights still encode the data; outputs are blocked at inference",
}


def check_output_path(path: str | None, flag: str) -> None:
    """Fail before any work if ``path`` cannot be written (a directory, a parent that is a file, no write)."""
    from obliviate.atomic import check_writable  # the real create-and-remove probe (root passes os.access)

    check_writable(path, flag)


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(doc: dict[str, Any], path: str | Path) -> None:
    atomic_write(path, json.dumps(json_safe(doc), indent=2) + "\n")


# -- HTML ---------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem} th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.6rem;font-size:.8rem;color:#fff}
.exact{background:#2e7d32}.certified{background:#1565c0}.approximate{background:#ef6c00}.suppression{background:#6a1b9a}
.note{color:#555;font-size:.85rem} .best{font-weight:bold;background:#eef7ee} pre{background:#f7f7f7;padding:.6rem;overflow:auto}
.toc{background:#fafafa;border:1px solid #eee;padding:.4rem .8rem;margin:.8rem 0;font-size:.9rem}
.toc ul{margin:.2rem 0;padding-left:1.2rem;columns:2} .toc-h3{margin-left:1rem;font-size:.85rem}
svg.chart{display:block;margin:.6rem 0} .verdict{border-left:4px solid #2e7d32;background:#f4faf4;padding:.5rem .8rem;margin:.8rem 0} .reference td{color:#444;background:#fafafa}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return html.escape(str(v))


def _badge(guarantee: str) -> str:
    return f'<span class="badge {guarantee}" title="{html.escape(GUARANTEE_TEXT.get(guarantee, ""))}">{guarantee}</span>'


# -- charts: one colour per method on every page, SVGs that scale to the page ------------------------------------

#: the methods obliviate ships, each with its own colour (so two methods on one page never share one); a name not
#: listed gets a colour from its hash, so it is still the same on every chart and page
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
            "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#1b9e77", "#d95f02", "#7570b3", "#e7298a",
            "#66a61e", "#e6ab02", "#a6761d", "#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#a65628", "#f781bf",
            "#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194", "#6b6ecf", "#b5cf6b", "#e7ba52", "#d6616b",
            "#ce6dbd", "#9c9ede", "#e7969c", "#00a3a3", "#b8860b")
_KNOWN = ("finetune", "gradient_ascent", "npo", "scrub", "salun", "random_label", "l1_sparse", "bad_teacher",
          "fisher", "influence", "certified", "sisa", "s3t", "retrain", "ga_gdr", "ga_klr", "npo_gdr", "npo_klr",
          "simnpo", "rmu", "dpo", "idk_dpo", "task_vector", "whp", "grad_diff", "wga", "satimp", "undial", "altpo",
          "ce_u", "pdu", "laf", "laf_r", "iau", "blindspot", "gaussian_finetune", "ga_klr_muse", "npo_klr_muse",
          "npo_muse", "guard", "filter")
METHOD_COLOR = dict(zip(_KNOWN, _PALETTE))
#: the references are neutral: greys, never a method's colour
NEUTRAL_COLOR = {"original": "#9e9e9e", "do nothing": "#9e9e9e", "oracle": "#424242", "target": "#000000"}


def method_color(name: str) -> str:
    """The colour of a method (or of original / oracle / do nothing) on every chart of every page."""
    if name in NEUTRAL_COLOR:
        return NEUTRAL_COLOR[name]
    if name in METHOD_COLOR:
        return METHOD_COLOR[name]
    return _PALETTE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(_PALETTE)]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-") or "x"


def svg_of(fig) -> str:
    """A matplotlib figure as an inline ``<svg>`` that scales with the page: its ``viewBox`` kept, ``width="100%"``
    and its natural size as ``max-width``; element ids prefixed by a hash of the drawing, so two charts on one page
    never share an id (clip paths, markers) while the same document still renders the same page."""
    import matplotlib.pyplot as plt

    declutter(fig)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.05, metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    p = "c" + hashlib.sha1(svg.encode()).hexdigest()[:8] + "-"
    svg = re.sub(r'\bid="', f'id="{p}', svg)
    svg = re.sub(r"url\(#", f"url(#{p}", svg)
    svg = re.sub(r'href="#', f'href="#{p}', svg)
    head_end = svg.index(">")
    head = svg[:head_end]
    w = re.search(r'\swidth="([\d.]+)pt"', head)
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    style = f"max-width:{w.group(1)}pt;height:auto" if w else "height:auto"
    return head + f' width="100%" style="{style}" class="chart"' + svg[head_end:]


def declutter(fig) -> None:
    """Make room so that no two texts of ``fig`` overlap, measured on the drawn figure (not guessed from character
    counts; ``tests/test_report_html.py`` checks every chart's text rectangles):

    - x tick labels too close for their angle turn to 30°, then 90°; at 90° still too close, the figure widens;
    - a title wider than its axes is wrapped to the axes' width;
    - x tick labels (a rotated one reaches left under the y axis) move down until they clear the y tick labels.
    """
    import textwrap

    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ax in [a for a in fig.axes if a.get_visible()]:
        for _ in range(4):
            if not _spread_xticks(fig, ax, renderer):
                break
            fig.draw_without_rendering()
        width = ax.get_window_extent(renderer).width
        title, text = ax.title, ax.title.get_text()
        chars = len(text)
        while chars > 12 and title.get_window_extent(renderer).width > width:
            chars = int(chars * 0.85)
            title.set_text(textwrap.fill(text, chars, break_on_hyphens=False))
        for _ in range(4):
            ys = [t.get_window_extent(renderer) for t in drawn_tick_labels(ax.yaxis)]
            xs = [t.get_window_extent(renderer) for t in drawn_tick_labels(ax.xaxis)]
            depth = max((min(x.y1, y.y1) - max(x.y0, y.y0) for x in xs for y in ys if x.overlaps(y)), default=0.0)
            if depth <= 0:
                break
            pad = ax.xaxis.get_major_ticks()[0].get_pad()
            ax.tick_params(axis="x", pad=pad + depth * 72.0 / fig.dpi + 1.0)
            fig.draw_without_rendering()


def _spread_xticks(fig, ax, renderer) -> bool:
    """One step towards x tick labels that clear each other; ``True`` when something changed."""
    labels = drawn_tick_labels(ax.xaxis)
    if len(labels) < 2:
        return False
    import numpy as np

    px = np.sort(ax.transData.transform([(x, 0) for x in ax.xaxis.get_majorticklocs()
                                         if min(ax.get_xlim()) <= x <= max(ax.get_xlim())])[:, 0])
    gap = float(np.diff(px).min()) if px.size > 1 else float("inf")
    line = 1.2 * labels[0].get_fontsize() * fig.dpi / 72.0  # the height a label needs across its direction
    angle = labels[0].get_rotation() % 180
    if angle == 0:
        if max(t.get_window_extent(renderer).width for t in labels) + 2 <= gap:
            return False
        return _turn(ax, labels, 30, "right", "anchor")
    if angle < 90:
        if gap * np.sin(np.radians(angle)) >= line:
            return False
        return _turn(ax, labels, 90, "center", "default")
    if gap >= line:
        return False
    fig.set_figwidth(fig.get_figwidth() * min(4.0, 1.05 * line / gap))
    return True


def _turn(ax, labels, angle: float, ha: str, mode: str) -> bool:
    ax.tick_params(axis="x", labelrotation=angle)
    for t in labels:
        t.set_horizontalalignment(ha)
        t.set_rotation_mode(mode)
    return True


def drawn_tick_labels(axis) -> list:
    """The tick labels ``axis`` draws: those of ticks inside its view interval, visible and not empty (matplotlib
    keeps label objects for the ticks outside it too, at stale positions)."""
    lo, hi = sorted(axis.get_view_interval())
    eps = (hi - lo) * 1e-9
    return [t.label1 for t, loc in zip(axis.get_major_ticks(), axis.get_majorticklocs())
            if lo - eps <= loc <= hi + eps and t.label1.get_visible() and t.label1.get_text()]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _xticks(ax, xs, labels: list[str]) -> None:
    """Long or many labels are rotated (right-aligned under their tick) so they never overlap."""
    crowded = len(labels) > 4 or max((len(s) for s in labels), default=0) > 10
    ax.set_xticks(xs, labels, rotation=30 if crowded else 0, ha="right" if crowded else "center", fontsize=8,
                  rotation_mode="anchor" if crowded else "default")


#: legend entries per column: a legend taller than this wraps into columns rather than stretching the chart
LEGEND_ROWS = 16


def _legend_columns(n: int) -> int:
    return max(1, math.ceil(n / LEGEND_ROWS))


def _legend_outside(ax, **kw) -> None:
    handles = ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  ncol=_legend_columns(len(handles)), **kw)


def bar_chart(groups: list[str], series: dict[str, list[float]], title: str,
              errors: dict[str, list[float | None]] | None = None, hline: tuple[str, float] | None = None,
              ylabel: str = "") -> str:
    """A grouped bar chart as an inline ``<svg>``: one series per method (its colour), ± std error bars where
    ``errors`` has them, an optional reference line (e.g. doing nothing), the legend outside the plot.

    >>> svg = bar_chart(["forget_acc", "test_acc"], {"original": [1.0, 0.97], "npo": [0.1, 0.95]}, "accuracies",
    ...                 hline=("do nothing", 0.5))
    >>> svg.startswith("<svg") and 'id="c' in svg and "series-npo-0" in svg
    True
    """
    plt = _plt()
    import numpy as np

    fig, ax = plt.subplots(figsize=(min(11.0, max(4.5, 0.9 * len(groups) * max(1, len(series)) ** 0.5 + 2)), 3.2))
    width = 0.8 / max(1, len(series))
    xs = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        pos = xs + (i - (len(series) - 1) / 2) * width
        vals = [v if _ok(v) else 0.0 for v in values]
        bars = ax.bar(pos, vals, width, label=label, color=method_color(label))
        for j, b in enumerate(bars):
            b.set_gid(f"series-{_slug(label)}-{j}")
        err = (errors or {}).get(label)
        if err and any(_ok(e) and e > 0 for e in err):
            eb = ax.errorbar(pos, vals, yerr=[e if _ok(e) else 0.0 for e in err], fmt="none", ecolor="#222",
                             elinewidth=1, capsize=3)
            eb.lines[2][0].set_gid(f"errorbar-{_slug(label)}")
    if hline is not None and _ok(hline[1]):
        ax.axhline(hline[1], color=method_color(hline[0]), linestyle="--", linewidth=1.2, label=hline[0],
                   gid=f"series-{_slug(hline[0])}-line")
    _xticks(ax, xs, groups)
    ax.set_title(title, fontsize=10)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    _legend_outside(ax)
    ax.spines[["top", "right"]].set_visible(False)
    return svg_of(fig)


def _svg_method_bars(methods: list[str], values: list[float | None], errors: list[float | None], title: str,
                     hline: tuple[str, float | None] | None = None, ylabel: str = "") -> str:
    """One bar per method in its colour (± std where given), an optional reference line (doing nothing)."""
    plt = _plt()

    fig, ax = plt.subplots(figsize=(min(11.0, max(4.5, 0.55 * len(methods) + 3.0)), 3.2))
    for j, (m, v, e) in enumerate(zip(methods, values, errors)):
        b = ax.bar([j], [v if _ok(v) else 0.0], 0.7, color=method_color(m))
        b[0].set_gid(f"series-{_slug(m)}-0")
        if _ok(e) and e > 0 and _ok(v):
            eb = ax.errorbar([j], [v], yerr=[e], fmt="none", ecolor="#222", elinewidth=1, capsize=3)
            eb.lines[2][0].set_gid(f"errorbar-{_slug(m)}")
    if hline is not None and _ok(hline[1]):
        ax.axhline(hline[1], color=method_color(hline[0]), linestyle="--", linewidth=1.2, label=hline[0],
                   gid=f"series-{_slug(hline[0])}-line")
    _xticks(ax, list(range(len(methods))), methods)
    ax.set_title(title, fontsize=10)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    _legend_outside(ax)
    ax.spines[["top", "right"]].set_visible(False)
    return svg_of(fig)


def _svg_panels(keys: list[str], series: dict[str, list[float]], title: str,
                errors: dict[str, list[float | None]] | None = None) -> str:
    """Metrics on different scales (divergences, PrivLeak, step counts): one small panel, with its own y axis,
    per metric; the same series colours as every other chart."""
    plt = _plt()

    n = len(keys)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    names = list(series)
    fig, axes = plt.subplots(rows, cols, figsize=(min(11.0, 2.4 * cols + 1.8), 2.6 * rows), squeeze=False)
    for idx, key in enumerate(keys):
        ax = axes[idx // cols][idx % cols]
        for j, name in enumerate(names):
            v = series[name][idx]
            b = ax.bar([j], [v if _ok(v) else 0.0], 0.8, color=method_color(name), label=name)
            b[0].set_gid(f"series-{_slug(name)}-{key}")
            e = (errors or {}).get(name, [None] * n)[idx]
            if _ok(e) and e > 0 and _ok(v):
                eb = ax.errorbar([j], [v], yerr=[e], fmt="none", ecolor="#222", elinewidth=1, capsize=3)
                eb.lines[2][0].set_gid(f"errorbar-{_slug(name)}-{key}")
        ax.set_title(key, fontsize=9)
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    for idx in range(n, rows * cols):
        axes[idx // cols][idx % cols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 0.95),
               ncol=_legend_columns(len(labels)))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return svg_of(fig)


def _svg_scatter(points: list[tuple[str, float | None, float | None]], xlabel: str, ylabel: str, title: str) -> str:
    """One point per method in its colour; the names are in the legend (outside), so labels never overlap."""
    plt = _plt()

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, x, y in points:
        if not (_ok(x) and _ok(y)):
            continue
        ax.scatter([x], [y], s=36, color=method_color(label), label=label,
                   gid=f"series-{_slug(label)}-point")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    _legend_outside(ax)
    ax.spines[["top", "right"]].set_visible(False)
    return svg_of(fig)


def _svg_curves(xs: list, series: dict[str, dict[str, list]], xlabel: str, title: str,
                hlines: dict[str, float] | None = None) -> str:
    """Curves per metric, one panel each (``series[metric][role]``): the unlearned model in its method's colour
    (the role is the method name), the oracle and the original in their neutral greys (the oracle dashed)."""
    plt = _plt()

    keys = list(series)
    cols = min(len(keys), 4) or 1
    rows = max(1, (len(keys) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(min(11.0, 2.6 * cols + 2.0), 2.6 * rows), squeeze=False)
    seen: dict[str, Any] = {}
    for idx, key in enumerate(keys):
        ax = axes[idx // cols][idx % cols]
        for role, ys in series[key].items():
            pts = [(x, y) for x, y in zip(xs, ys) if _ok(y)]
            if not pts:
                continue
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=role,
                            color=method_color(role), linestyle="--" if role == "oracle" else "-",
                            gid=f"series-{_slug(role)}-{_slug(key)}")
            seen.setdefault(role, line)
        for label, y in (hlines or {}).items():
            if _ok(y):
                seen.setdefault(label, ax.axhline(y, color=NEUTRAL_COLOR["target"], linestyle=":", linewidth=1,
                                                  label=label))
        ax.set_title(key, fontsize=9)
        if len(xs) <= 12:
            ax.set_xticks(xs)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    for idx in range(len(keys), rows * cols):
        axes[idx // cols][idx % cols].set_visible(False)
    fig.legend(list(seen.values()), list(seen), fontsize=8, frameon=False, loc="upper left",
               bbox_to_anchor=(1.0, 0.95), ncol=_legend_columns(len(seen)))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return svg_of(fig)


#: metrics whose values live in [0, 1] (accuracies, rates, MIA, KnowMem/VerbMem, utility); everything else
#: (divergences, distances, errors, PrivLeak %, step counts) is drawn on its own axis
UNIT_METRICS = {"forget_acc", "retain_acc", "test_acc", "mia", "test_acc_forgotten", "test_acc_remaining", "zrf",
                "verbmem_f", "knowmem_f", "knowmem_r", "forget_quality", "utility", "truth_ratio", "forget_prob",
                "mia_efficacy"}


def split_scales(keys: list[str], *value_rows: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(keys drawn on the shared [0, 1] axis, keys drawn each on its own axis): a key goes on the shared axis only
    if it is a known [0, 1] metric and every value shown for it is in [0, 1]."""
    unit, other = [], []
    for k in keys:
        vals = [row.get(k) for row in value_rows if _ok(row.get(k))]
        if not vals:
            continue
        (unit if k in UNIT_METRICS and all(0.0 <= v <= 1.0 for v in vals) else other).append(k)
    return unit, other


# -- pages: a table of contents from the headings -------------------------------------------------------------------

_HEADING = re.compile(r"<(h[23])([^>]*)>(.*?)</\1>", re.S)
TOC_MARK = "<!--toc-->"


def _with_toc(body: str) -> str:
    """Give every h2/h3 a unique id and put a table of contents (links to them) at ``TOC_MARK``, or after the
    page's h1."""
    used: dict[str, int] = {}
    entries = []

    def name(m: re.Match) -> str:
        tag, attrs, inner = m.groups()
        found = re.search(r"""\bid=["']([^"']+)["']""", attrs)
        text = html.unescape(re.sub(r"<[^>]+>", "", inner)).strip()
        if found:
            anchor = found.group(1)
        else:
            base = "s-" + _slug(text)
            used[base] = used.get(base, 0) + 1
            anchor = base if used[base] == 1 else f"{base}-{used[base]}"
            attrs = f'{attrs} id="{anchor}"'
        entries.append((tag, anchor, text))
        return f"<{tag}{attrs}>{inner}</{tag}>"

    body = _HEADING.sub(name, body)
    if not entries:
        return body.replace(TOC_MARK, "")
    items = "".join(f"<li class='toc-{tag}'><a href=\"#{anchor}\">{html.escape(text)}</a></li>"
                    for tag, anchor, text in entries)
    toc = f"<nav class='toc'><b>Contents</b><ul>{items}</ul></nav>"
    if TOC_MARK in body:
        return body.replace(TOC_MARK, toc, 1)
    at = body.find("</h1>")
    return body[:at + 5] + toc + body[at + 5:] if at >= 0 else toc + body


def html_page(title: str, body: str, toc: bool = True) -> str:
    """One self-contained HTML page (the report's CSS inline) around ``body``, with a table of contents of its
    h2/h3 headings at the top."""
    if toc:
        body = _with_toc(body)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")




def _run_body(r: dict[str, Any]) -> str:
    metrics = r["metrics"]
    if not metrics.get("unlearned"):  # a deletion service no-op: every id was already gone, no model changed
        note = r.get("service", {}).get("note", "no model was changed")
        return (f"<h2>{html.escape(r['method'])} {_badge(r['guarantee'])} <small>seed {r.get('seed')}</small></h2>"
                f"<p>{html.escape(note)}</p>"
                + _service_html(r))
    roles = [k for k in ("original", "unlearned", "oracle") if k in metrics]
    keys = list(metrics["unlearned"])
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{_fmt(metrics[role].get(k))}</td>" for role in roles)
        + f"<td>{_fmt(r.get('gap', {}).get(k))}</td></tr>" for k in keys)
    head = "".join(f"<th>{role}</th>" for role in roles)
    # the unlearned bars in the method's colour, original and oracle in their neutral greys; [0, 1] metrics share
    # one axis, divergences / PrivLeak / step counts get one axis each
    names = {"original": "original", "unlearned": r["method"], "oracle": "oracle"}
    unit, other = split_scales(keys, *(metrics[role] for role in roles))
    where = f"{r['method']} on {r['task']}, seed {r.get('seed')} — forget {r['forget']['spec']}"
    chart = ""
    if unit:
        chart += bar_chart(unit, {names[role]: [metrics[role].get(k) for k in unit] for role in roles},
                           f"{where}: accuracies and rates", ylabel="[0, 1]")
    if other:
        chart += _svg_panels(other, {names[role]: [metrics[role].get(k) for k in other] for role in roles},
                             f"{where}: divergences and other scales (one axis each)")
    t = r.get("time_s", {})
    times = "".join(f"<tr><td>{k}</td><td>{_fmt(v)}</td></tr>" for k, v in t.items())
    exact = ""
    if "exact" in r:
        e = r["exact"]
        rows_e = [("scheme", e.get("scheme")), ("ids deleted", e.get("deleted")),
                  ("already deleted (no-op)", len(e.get("already_deleted", []))),
                  ("shards touched", e.get("shards_touched")), ("blocks deactivated", e.get("models_deactivated")),
                  ("models retrained", e.get("models_retrained")), ("shards retrained", e.get("retrained_shards")),
                  ("examples reprocessed", f"{e.get('examples_reprocessed')} ({100 * e.get('fraction_reprocessed', 0):.1f} %)"),
                  ("plan", f"{e['plan']['shards']} shards × {e['plan']['slices']} slices, lineage sha256 "
                           f"{e['plan']['lineage_sha256'][:16]}…")]
        if "budget_left" in e:
            rows_e.append(("budget left (sequences alive / served prefix)",
                           ", ".join(f"s{b['shard']}: {b['sequences_alive']}/{b['served_prefix']}" for b in e["budget_left"])))
        if "verification" in e:
            v = e["verification"]
            rows_e.append(("verified against a from-scratch retrain",
                           f"{'identical' if v['verified'] else 'DIFFERENT'} (max |Δθ| {v['max_abs_diff']:.3g}, "
                           f"{v['shards_checked']} shards)"))
        exact = ("<h3>Deletion cost (exact unlearning)</h3><p class='note'>The gap to the oracle is zero by "
                 "construction here (the served model is the sharded model retrained without the forget set); the "
                 "price of exactness is the <i>exact gap</i>: the sharded model's accuracy against a single model "
                 "trained on the same data (benchmarks/exact.py, column Δ vs plain).</p>"
                 "<table><tr><th colspan='2'>deletion cost (exact unlearning)</th></tr>"
                 + "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows_e)
                 + "</table>")
    extras = _service_html(r) + _relearn_html(r) + _challenge_html(r) + _suppression_html(r) + _scal_sust_html(r)
    return (f"<h2>{html.escape(r['method'])} {_badge(r['guarantee'])} <small>seed {r.get('seed')}</small></h2>"
            f"<p class='note'>{html.escape(GUARANTEE_TEXT.get(r['guarantee'], ''))}</p>"
            f"<p>forget <code>{html.escape(r['forget']['spec'])}</code>: {r['forget']['n']} examples "
            f"(sha256 {r['forget']['sha256'][:16]}…), retain {r['retain']['n']}; seed {r['seed']}, device {r['device']}; "
            f"avg_gap <b>{_fmt(r.get('avg_gap'))}</b></p>"
            + (f"<p class='verdict'>{html.escape(v)}</p>" if (v := run_verdict(r)) else "")
            + f"<h3>Metrics: {html.escape(r['method'])}, seed {r.get('seed')}</h3>"
            f"<table><tr><th>metric</th>{head}<th>gap to oracle</th></tr>{rows}</table>{chart}"
            f"{exact}{extras}<table><tr><th>time</th><th>seconds</th></tr>{times}</table>"
            f"<details><summary>config, recipe and versions</summary><pre>"
            f"{html.escape(json.dumps({'config': r.get('config'), 'train': r.get('train'), 'task_options': r.get('task_options'), 'models': r.get('models'), 'versions': r.get('versions')}, indent=2, default=str))}"
            f"</pre></details>")


def _suppression_html(r: dict[str, Any]) -> str:
    """GUARD's detector quality and the suppression layers' generation counts."""
    out = ""
    g = r.get("guard")
    if g:
        d = g.get("detector", {})
        gen = g.get("generation", {})
        out += ("<table><tr><th colspan='2'>GUARD prompt detector (held-out split)</th></tr>"
                f"<tr><td>precision / recall</td><td>{_fmt(d.get('precision'))} / {_fmt(d.get('recall'))}</td></tr>"
                f"<tr><td>prompts (forget-target / other)</td><td>{d.get('n_positive')} / {d.get('n_negative')}</td></tr>"
                f"<tr><td>generation rows detected</td><td>{gen.get('detected')} of {gen.get('rows')}</td></tr></table>")
    f = r.get("filter")
    if f:
        out += ("<table><tr><th colspan='2'>in-context filter</th></tr>"
                f"<tr><td>action</td><td>{html.escape(str(f.get('action')))}</td></tr>"
                f"<tr><td>rows flagged</td><td>{f.get('flagged')} of {f.get('rows')}</td></tr></table>")
    if out:
        out += ("<p class='note'>suppression: the weights are untouched, so teacher-forced metrics (PrivLeak, truth "
                "ratio, forget probability) stay the original's; only generation is restricted.</p>")
    return out


CURVE_KEYS = ("verbmem_f", "knowmem_f", "knowmem_r", "utility")


def _curve_table(points: list[dict], xkey: str, xlabel: str) -> str:
    keys = [k for k in (*CURVE_KEYS, "privleak", "forget_quality") if k in points[0]["metrics"]["unlearned"]]
    head = "".join(f"<th>{k}</th>" for k in keys)
    rows = "".join(f"<tr><td>{p[xkey]}</td>" + "".join(
        f"<td>{_fmt(p['metrics']['unlearned'].get(k))} <span class='note'>({_fmt(p['metrics'].get('oracle', {}).get(k))})</span></td>"
        for k in keys) + "</tr>" for p in points)
    return f"<table><tr><th>{xlabel}</th>{head}</tr>{rows}</table><p class='note'>unlearned (oracle)</p>"


def _scal_sust_html(r: dict[str, Any]) -> str:
    """MUSE scalability (growing forget sets) and sustainability (sequential requests) curves."""
    out = ""
    for block, xkey, xlabel, title in (("scalability", "factor", "forget-set size (× the request)", "Scalability"),
                                       ("sustainability", "step", "sequential request", "Sustainability")):
        b = r.get(block)
        if not b:
            continue
        pts = b["points"] if block == "scalability" else b["steps"]
        xs = [p[xkey] for p in pts]
        keys = [k for k in CURVE_KEYS if k in pts[0]["metrics"]["unlearned"]]
        series = {k: {r["method"]: [p["metrics"]["unlearned"].get(k) for p in pts],
                      "oracle": [p["metrics"].get("oracle", {}).get(k) for p in pts]} for k in keys}
        out += (f"<h3>{title} ({r['method']})</h3>" + _svg_curves(xs, series, xlabel, f"{title}: {r['method']}")
                + _curve_table(pts, xkey, xlabel))
    return out


def _relearn_html(r: dict[str, Any]) -> str:
    """Relearn time / anamnesis: how it was measured and which runs hit the step bound."""
    rl = r.get("relearn")
    if not rl:
        return ""
    sat = [role for role, v in rl.get("saturated", {}).items() if v]
    return (f"<p class='note'>relearn_steps: Adam (lr {_fmt(rl.get('lr'))}, batch {rl.get('batch_size')}) on the "
            f"{html.escape(str(rl.get('data')))} until {html.escape(str(rl.get('band')))} (alpha {_fmt(rl.get('alpha'))}, "
            f"target {_fmt(rl.get('target'))}), at most {rl.get('max_steps')} steps; anamnesis = relearn_steps ÷ the "
            f"oracle's (≈ 1 ideal, ≪ 1: the forgotten data comes back at once)."
            + (f" <b>Saturated (a bound, not a value): {html.escape(', '.join(sat))}.</b>" if sat else "") + "</p>")


def _challenge_html(r: dict[str, Any]) -> str:
    """The NeurIPS 2023 challenge block of one run."""
    c = r.get("challenge")
    if not c:
        return ""
    u, e = c.get("utility", {}), c.get("epsilons", {})
    rows = [("models (unlearned / retrained)", f"{c['n']} / {c['n']}"),
            ("forgetting quality F", _fmt(c.get("forgetting_quality"))), ("final score", _fmt(c.get("score"))),
            ("RA unlearned / retrained", f"{_fmt(u.get('ra_u'))} / {_fmt(u.get('ra_r'))}"),
            ("TA unlearned / retrained", f"{_fmt(u.get('ta_u'))} / {_fmt(u.get('ta_r'))}"),
            ("ε median [q10, q90]", f"{_fmt(e.get('median'))} [{_fmt(e.get('q10'))}, {_fmt(e.get('q90'))}]"),
            ("ε capped at 50 / beyond the last bucket / undetermined",
             f"{e.get('capped')} / {e.get('beyond_buckets')} / {e.get('undetermined')} of {e.get('n')}"),
            ("buckets (ε bound ceil(ln(N−1)))", f"{e.get('buckets')} ({_fmt(e.get('max_epsilon'))})")]
    return ("<table><tr><th colspan='2'>NeurIPS 2023 unlearning challenge metric</th></tr>"
            + "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in rows) + "</table>")


def _service_html(r: dict[str, Any]) -> str:
    """The deletion service's verification of one new model version: its checks and what it served."""
    s = r.get("service")
    if not s:
        return ""
    verdict = "PASSED — now serving" if s.get("passed") else "FAILED — not served"
    rows = "".join(f"<tr><td>{html.escape(c['check'])}</td><td>{_fmt(c['value'])}</td><td>{_fmt(c['threshold'])}</td>"
                   f"<td>{'pass' if c['passed'] else '<b>FAIL</b>'}</td></tr>" for c in s.get("checks", []))
    reqs = ", ".join(html.escape(x) for x in s.get("requests", [])) or "none (scheduled retrain)"
    return (f"<h2>deletion service verification: {verdict}</h2>"
            f"<p>deployment <code>{html.escape(str(s.get('deployment')))}</code>, batch "
            f"<code>{html.escape(str(s.get('batch_id')))}</code>; version <code>{html.escape(str(s.get('version_before')))}"
            f"</code> → <code>{html.escape(str(s.get('version_after')))}</code>; {_fmt(s.get('n_deleted_total'))} "
            f"training examples deleted in all</p><p class='note'>requests: {reqs}</p>"
            f"<table><tr><th>check</th><th>value</th><th>threshold</th><th>result</th></tr>{rows}</table>")


def render_run_html(report: dict[str, Any]) -> str:
    title = f"obliviate — {report['method']} on {report['task']}"
    return html_page(title, f"<h1>{html.escape(title)}</h1>" + _run_body(report))


def render_bench_html(doc: dict[str, Any]) -> str:
    title = f"obliviate bench — {doc['task']}, forget {doc['forget']}"
    summary = doc.get("summary", [])
    kind = doc.get("task_kind", "classification")
    keys = list(HEADLINE.get(kind, ()))
    ref = doc.get("reference") or reference(doc.get("runs", []), kind)  # means over the seeds the rows average
    verdict = doc.get("verdict") or bench_verdict(doc, ref.get("do_nothing_avg_gap"))
    flagged = set(verdict.get("did_not_forget", []))
    best = min((s["avg_gap"] for s in summary if s.get("avg_gap") is not None and s["method"] != "retrain"),
               default=None)
    challenge = any("challenge_score" in s for s in summary)
    blank_ch = "<td></td><td></td>" if challenge else ""
    rows = []
    noop = ref.get("do_nothing_avg_gap")
    n_ref = len(ref.get("seeds", []))
    for role, gap_value in (("original", noop), ("oracle", 0.0 if "oracle" in ref else None)):
        if role in ref:
            label = "do nothing: the original" if role == "original" else "oracle (retrained without the forget set)"
            rows.append(f"<tr class='reference'><td><i>{label}</i></td><td></td>"
                        + "".join(f"<td>{_fmt(ref[role].get(k))}" + (f" ± {_fmt(ref[f'{role}_std'].get(k))}"
                                                                      if n_ref > 1 else "") + "</td>" for k in keys)
                        + f"<td>{_fmt(gap_value)}</td><td></td><td></td>{blank_ch}</tr>")
    for s in summary:
        cls = " class='best'" if best is not None and s.get("avg_gap") == best else ""
        mark = " <small>(did not forget at these settings)</small>" if s["method"] in flagged else ""
        rows.append(f"<tr{cls}><td>{html.escape(s['method'])}{mark}</td><td>{_badge(s['guarantee'])}</td>"
                    + "".join(f"<td>{_fmt(s.get(k))}" + (f" ± {_fmt(s.get(k + '_std'))}" if s.get("n_seeds", 1) > 1 else "")
                              + "</td>" for k in keys)
                    + f"<td>{_fmt(s.get('avg_gap'))}</td><td>{_fmt(s.get('unlearn_s'))}</td>"
                    f"<td>{_fmt(s.get('time_ratio'))}</td>"
                    + (f"<td>{_fmt(s.get('challenge_forgetting_quality'))}</td><td>{_fmt(s.get('challenge_score'))}</td>"
                       if challenge else "") + "</tr>")
    head = "".join(f"<th>{k}</th>" for k in keys)
    methods = [s["method"] for s in summary]
    seeds = doc.get("seeds") or ref.get("seeds") or []
    seed_text = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {', '.join(str(x) for x in seeds)}"
    many = lambda s: s.get("n_seeds", 1) > 1  # noqa: E731 (error bars only where a std over seeds exists)
    chart_gap = _svg_method_bars(methods, [s.get("avg_gap") for s in summary],
                                 [s.get("avg_gap_std") if many(s) else None for s in summary],
                                 f"average gap to the retrain oracle (lower is better), mean ± std over {seed_text}",
                                 hline=("do nothing", noop), ylabel="avg_gap") if methods else ""
    series, errors = {}, {}
    if "original" in ref:
        series["original"] = [ref["original"].get(k) for k in keys]
        errors["original"] = [ref.get("original_std", {}).get(k) if n_ref > 1 else None for k in keys]
    for s in summary:
        series[s["method"]] = [s.get(k) for k in keys]
        errors[s["method"]] = [s.get(f"{k}_std") if many(s) else None for k in keys]
    if "oracle" in ref:
        series["oracle"] = [ref["oracle"].get(k) for k in keys]
        errors["oracle"] = [ref.get("oracle_std", {}).get(k) if n_ref > 1 else None for k in keys]
    unit, other = split_scales(keys, *({k: v for k, v in zip(keys, vals)} for vals in series.values()))
    pick = lambda ks, d: {n: [v[keys.index(k)] for k in ks] for n, v in d.items()}  # noqa: E731
    chart_unit = (bar_chart(unit, pick(unit, series), f"accuracies and rates (mean ± std over {seed_text})",
                            errors=pick(unit, errors), ylabel="[0, 1]") if unit else "")
    chart_other = (_svg_panels(other, pick(other, series), f"divergences and other scales, one axis each "
                               f"(mean ± std over {seed_text})", errors=pick(other, errors)) if other else "")
    chart_tradeoff = _svg_scatter([(s["method"], s.get("time_ratio"), s.get("avg_gap")) for s in summary],
                                  "unlearn time ÷ oracle retrain time", "avg_gap to the oracle",
                                  "cost vs. closeness to the oracle (bottom-left is best)")
    lines = verdict.get("text", "").splitlines() + ([settings_note(doc["settings"])] if "settings" in doc else [])
    body = (f"<h1>{html.escape(title)} <small>({seed_text})</small></h1>"
            + "<div class='verdict'><b>Verdict.</b> " + "<br>".join(html.escape(line) for line in lines) + "</div>"
            + TOC_MARK + f"<h2 id='summary'>Summary over {seed_text}</h2>"
            f"<p>{len(doc.get('seeds', []))} seed(s): {doc.get('seeds')}; task kind {kind}. Oracle = the same recipe and "
            f"seed trained on the retain set only. Rows are means ± std over seeds; the original and the oracle are "
            f"averaged over the same seeds; the original's avg_gap is the gap "
            f"of doing nothing; time ratio = unlearn time ÷ the oracle's retrain time as recorded when it was trained "
            f"(cached oracles keep their original timing).</p>"
            + ("<p>Challenge columns: the NeurIPS 2023 unlearning challenge metric over N unlearning runs and N "
               "retrained oracles per method — forgetting quality F (per-example ε binned, averaged) and the final "
               "score F × (RA_U/RA_R) × (TA_U/TA_R).</p>" if challenge else "")
            + f"<table><tr><th>method</th><th>guarantee</th>{head}<th>avg_gap</th><th>unlearn s</th><th>time ratio</th>"
            + ("<th>challenge F</th><th>challenge score</th>" if challenge else "") + "</tr>"
            f"{''.join(rows)}</table>"
            f"<h2 id='gap'>Gap to the oracle ({seed_text})</h2>{chart_gap}"
            f"<h2 id='tradeoff'>Cost vs. closeness ({seed_text})</h2>{chart_tradeoff}"
            + (f"<h2 id='accuracies'>Accuracies and rates ({seed_text})</h2>{chart_unit}" if chart_unit else "")
            + (f"<h2 id='divergences'>Divergences and other scales ({seed_text})</h2>{chart_other}"
               if chart_other else "")
            + "<h2 id='runs'>Runs</h2>" + "".join(_run_body(r) for r in doc.get("runs", [])))
    return html_page(title, body)


# -- removal-vs-suppression audit (obliviate.audit/1) ----------------------------------------------------------------

VERDICT_COLOR = {"removal-like": "#2e7d32", "suppression-like": "#6a1b9a"}


def _verdict_badge(verdict: str) -> str:
    color = VERDICT_COLOR.get(verdict, "#555")
    return f'<span class="badge" style="background:{color};font-size:1rem">{html.escape(verdict)}</span>'


def _table(head: list[str], rows: list[list[Any]]) -> str:
    """A table whose cells are formatted values (strings are escaped by ``_fmt``)."""
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _audit_relearn_svg(rl: dict[str, Any], method: str = "unlearned") -> str:
    runs = rl.get("models", {})
    steps = sorted({p["step"] for r in runs.values() for p in r["curve"]})
    if not steps:
        return ""
    curves = {}
    for role, r in runs.items():
        at = {p["step"]: p["knowmem_f"] for p in r["curve"]}
        curves[method if role == "unlearned" else role] = [at.get(x) for x in steps]
    return _svg_curves(steps, {"KnowMem_f": curves}, "relearning steps",
                       f"relearning attack (Adam lr {rl.get('lr'):g}, batch {rl.get('batch_size')})",
                       hlines={"target (band × original)": rl.get("target")})


def _skipped_html(block: dict[str, Any]) -> str:
    return f"<p class='note'><b>skipped</b>: {html.escape(str(block['skipped']))}</p>"


def _audit_incontext_html(ic: dict[str, Any]) -> str:
    head = ("<h2>In-context recovery</h2><p class='note'>KnowMem_f on the forget questions without context and with "
            "the forgotten record's document pasted before the question; recovery = (ctx − base) / (original base − "
            "base). Exact unlearning may recover too.</p>")
    if "skipped" in ic:
        return head + _skipped_html(ic)
    rows = [[role, m.get("base"), m.get("context"), m.get("recovery")] for role, m in ic.get("models", {}).items()]
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in ic.get("warnings", []) +
                    ([ic["note"]] if ic.get("note") else []))
    return head + _table(["model", "no context", "document pasted", "recovery"], rows) + notes


def _audit_relearn_html(rl: dict[str, Any], method: str = "unlearned") -> str:
    if "skipped" in rl:
        return "<h2>Relearning attack</h2>" + _skipped_html(rl)
    rows = [[role, r["start"], r["steps"], "yes" if r["saturated"] else "no", r.get("final")]
            for role, r in rl.get("models", {}).items()]
    return (f"<h2>Relearning attack</h2><p class='note'>Fine-tuning on {html.escape(str(rl.get('data')))} "
            f"(fraction {_fmt(rl.get('fraction'))}); steps until KnowMem_f ≥ {_fmt(rl.get('band'))} × the original's "
            f"({_fmt(rl.get('target'))}), measured every {rl.get('eval_every')} steps, at most {rl.get('max_steps')}. "
            f"Anamnesis (unlearned ÷ oracle steps): <b>{_fmt(rl.get('anamnesis'))}</b>"
            + (" (a bound: one run saturated)" if rl.get("anamnesis_bound") else "")
            + (f"; {html.escape(rl['note'])}" if rl.get("note") else "") + ".</p>"
            + _table(["model", "KnowMem_f at start", "steps", "saturated", "KnowMem_f at stop"], rows)
            + _audit_relearn_svg(rl, method))


def _audit_quantized_html(qz: dict[str, Any]) -> str:
    head = ("<h2>Quantization</h2><p class='note'>Forget metrics after int8 dynamic quantization and half precision "
            "(CPU); recovery = (quantized − unlearned) / (original − unlearned).</p>")
    if "skipped" in qz:
        return head + _skipped_html(qz)
    rows = [["original (full precision)", qz.get("original", {}).get("knowmem_f"),
             qz.get("original", {}).get("verbmem_f"), None, None],
            ["unlearned (full precision)", qz.get("unlearned", {}).get("knowmem_f"),
             qz.get("unlearned", {}).get("verbmem_f"), None, None]]
    rows += [[f"unlearned {name}" + (f" ({v['dtype']})" if v.get("dtype") else ""), v.get("knowmem_f"),
              v.get("verbmem_f"), v["recovery"].get("knowmem_f"), v["recovery"].get("verbmem_f")]
             for name, v in qz.get("variants", {}).items()]
    return head + _table(["model", "knowmem_f", "verbmem_f", "recovery knowmem_f", "recovery verbmem_f"], rows)


def _audit_probe_html(pr: dict[str, Any]) -> str:
    if "skipped" in pr:
        return "<h2>Linear probe</h2>" + _skipped_html(pr)
    rows = [[role, m.get("accuracy"), ", ".join(_fmt(a) for a in m.get("per_layer", []))]
            for role, m in pr.get("models", {}).items()]
    return (f"<h2>Linear probe</h2><p class='note'>Logistic regression on mean-pooled hidden states of the question "
            f"about <code>{html.escape(str(pr.get('attribute')))}</code>, trained on {pr.get('n_train')} retain "
            f"subjects, tested on {pr.get('n_test')} forget subjects ({pr.get('n_test_unseen_value')} left out: value "
            f"unseen in training); chance (majority value) {_fmt(pr.get('chance'))}; unlearned − oracle "
            f"{_fmt(pr.get('excess_over_oracle'))}." + (f" {html.escape(pr['note'])}" if pr.get("note") else "")
            + "</p>" + _table(["model", "accuracy (last layer)", "per layer (0 = embeddings)"], rows))


def _audit_side_effects_html(se: dict[str, Any]) -> str:
    if "skipped" in se:
        return "<h2>Side effects</h2>" + _skipped_html(se)
    change = se.get("change", {})
    rows = [[role, v.get("related"), v.get("unrelated"), change.get(role, {}).get("related"),
             change.get(role, {}).get("unrelated"), change.get(role, {}).get("difference")]
            for role, v in se.get("knowmem", {}).items()]
    return (f"<h2>Side effects</h2><p class='note'>KnowMem on retain subjects sharing "
            f"{html.escape(', '.join(se.get('attributes', [])))} with a forgotten subject ({len(se.get('related_ids', []))}) "
            f"vs the others ({len(se.get('unrelated_ids', []))}); change = model − original.</p>"
            + _table(["model", "related", "unrelated", "Δ related", "Δ unrelated", "Δ related − Δ unrelated"], rows))


def _audit_basis_html(doc: dict[str, Any]) -> str:
    basis = doc.get("verdict_basis")
    if not basis:
        return ""
    rests = ", ".join(basis.get("rests_on") or []) or "no audit (the method's guarantee alone)"
    skipped = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
                      for k, v in (basis.get("skipped") or {}).items())
    return (f"<p class='note'>The verdict rests on: <b>{html.escape(rests)}</b>"
            + (" and the method's guarantee" if basis.get("guarantee") and basis.get("rests_on") else "")
            + ". Reported, not judged: " + html.escape(", ".join(basis.get("not_judged") or [])) + ".</p>"
            + (f"<p class='note'>Skipped audits:</p><ul>{skipped}</ul>" if skipped else ""))


def _audit_body(doc: dict[str, Any]) -> str:
    ic, rl, qz, pr, se = (doc.get(k, {}) for k in ("incontext", "relearn", "quantized", "probe", "side_effects"))
    evidence = _table(["check", "value", "threshold", "suppression-like", "note"],
                      [[e["check"], e["value"], e["threshold"], "yes" if e["suppression"] else "no", e.get("note")]
                       for e in doc.get("evidence", [])])
    times = _table(["phase", "seconds"], [[k, v] for k, v in doc.get("time_s", {}).items()])
    return (f"<p>{_verdict_badge(doc['verdict'])} method <b>{html.escape(doc['method'])}</b> {_badge(doc['guarantee'])} "
            f"on <code>{html.escape(doc['task'])}</code>, forget <code>{html.escape(doc['forget']['spec'])}</code> "
            f"({doc['forget']['n']} records, sha256 {doc['forget']['sha256'][:16]}…), seed {doc['seed']}, device "
            f"{html.escape(str(doc.get('device')))}</p>"
            "<p class='note'>Pass criterion for a removal claim: every probe within the noise of "
            "the retrained model. Any tripped check makes the verdict suppression-like.</p>"
            f"<h2>Evidence</h2>{evidence}" + _audit_basis_html(doc)
            + _audit_incontext_html(ic) + _audit_relearn_html(rl, doc["method"]) + _audit_quantized_html(qz)
            + _audit_probe_html(pr) + _audit_side_effects_html(se)
            + f"<h2>Time</h2>{times}<details><summary>config, recipe and versions</summary><pre>"
            + html.escape(json.dumps({k: doc.get(k) for k in ("config", "audit_config", "train", "task_options",
                                                               "thresholds", "models", "versions", "notes")},
                                     indent=2, default=str)) + "</pre></details>")


def render_audit_html(doc: dict[str, Any]) -> str:
    title = f"obliviate audit — {doc['method']} on {doc['task']}"
    return html_page(title, f"<h1>{html.escape(title)}</h1>" + _audit_body(doc))


def write_html(doc: dict[str, Any], path: str | Path) -> None:
    schema = doc.get("schema", "")
    if schema.startswith("obliviate.bench"):
        text = render_bench_html(doc)
    elif schema.startswith("obliviate.audit"):
        text = render_audit_html(doc)
    else:
        text = render_run_html(doc)
    atomic_write(path, text)
