"""The HTML reports (issue 15): one colour per method on every chart and page, SVGs that scale to the page, seeds
in the bench headings, error bars when there are several seeds, a table of contents whose links all resolve, and
[0, 1] metrics drawn apart from divergences."""
from __future__ import annotations

import re

from obliviate.report import method_color, render_bench_html, render_run_html

KEYS = {"forget_acc": 0.9, "retain_acc": 0.9, "test_acc": 0.9, "mia": 0.5, "js_to_oracle": 0.04,
        "activation_distance": 2.5}


def _run(method, seed, shift):
    m = {role: {k: v + d for k, v in KEYS.items()} for role, d in (("original", 0.05 + 0.01 * seed), ("oracle", 0.0),
                                                                   ("unlearned", shift))}
    return {"method": method, "seed": seed, "guarantee": "approximate", "task": "digits", "task_kind": "classification",
            "metrics": m, "gap": {}, "avg_gap": abs(shift) / 4, "forget": {"spec": "random:0.1", "n": 1, "sha256": "0" * 64},
            "retain": {"n": 9}, "device": "cpu", "time_s": {"unlearn": 1.0, "oracle": 10.0}}


def _bench(seeds):
    runs = [_run(m, s, d + 0.01 * s) for s in seeds for m, d in (("npo", 0.01), ("finetune", 0.04))]
    summary = [{"method": m, "guarantee": "approximate", "n_seeds": len(seeds), "avg_gap": g, "avg_gap_std": 0.002,
                "time_ratio": t, **{k: v + 0.01 for k, v in KEYS.items()},
                **{f"{k}_std": 0.01 for k in KEYS}} for m, g, t in (("npo", 0.004, 0.1), ("finetune", 0.01, 0.2))]
    return {"schema": "obliviate.bench/1", "task": "digits", "task_kind": "classification", "forget": "random:0.1",
            "seeds": list(seeds), "runs": runs, "summary": summary}


def _svgs(page):
    return re.findall(r"<svg.*?</svg>", page, re.S)


def _fill(svg, method):
    """The fill colour of every drawn element tagged as ``method``'s series."""
    starts = [m.end() for m in re.finditer(rf'id="[^"]*series-{method}-[^"]*"', svg)]
    return {re.search(r"(?:fill|stroke): (#[0-9a-f]{6})", svg[i:]).group(1) for i in starts}


def test_one_colour_per_method_across_charts_and_pages():
    bench = render_bench_html(_bench([0, 1]))
    run = render_run_html(_run("npo", 0, 0.01))
    for page in (bench, run):
        charts = [svg for svg in _svgs(page) if "series-npo-" in svg]
        assert len(charts) >= 2
        for svg in charts:
            assert _fill(svg, "npo") == {method_color("npo")}, svg[:200]
    assert _fill(_svgs(bench)[0], "finetune") == {method_color("finetune")}
    assert method_color("npo") != method_color("finetune") != method_color("oracle")
    assert method_color("original") == method_color("do nothing")  # the neutral reference


def test_svgs_scale_to_the_page():
    for svg in _svgs(render_bench_html(_bench([0]))):
        head = svg[:svg.index(">")]
        assert 'viewBox="' in head and 'width="100%"' in head and "max-width:" in head
        assert not re.search(r'\sheight="[\d.]+pt"', head)


def test_bench_headings_list_the_seeds_and_error_bars_follow_n_seeds():
    page = render_bench_html(_bench([3, 7]))
    assert "2 seeds: 3, 7" in re.search(r"<h1.*?</h1>", page, re.S).group(0)
    assert "errorbar-npo" in page and "errorbar-original" in page  # methods and the reference, std over seeds
    single = _bench([3])
    for s in single["summary"]:
        s["n_seeds"] = 1
    assert "errorbar-" not in render_bench_html(single)


def test_toc_links_resolve():
    for page in (render_bench_html(_bench([0, 1])), render_run_html(_run("npo", 0, 0.01))):
        assert "<nav class='toc'>" in page
        hrefs = re.findall(r'(?<![:\w])href="#([^"]+)"', page)
        ids = re.findall(r'\bid="([^"]+)"', page) + re.findall(r"\bid='([^']+)'", page)
        assert hrefs and set(hrefs) <= set(ids)
        assert len(ids) == len(set(ids))  # no id twice on one page (two inline SVGs included)
        assert not re.search(r"<h[23][^>]*id=[^>]*id=", page)  # a heading keeps the one id it has


def test_accuracies_and_divergences_are_drawn_apart():
    acc, div = _svgs(render_run_html(_run("npo", 0, 0.01)))  # the run page draws every metric
    assert "series-npo-3" in acc and "series-npo-4" not in acc  # the 4 [0, 1] metrics on one shared axis
    assert "series-npo-js_to_oracle" in div and "series-npo-activation_distance" in div  # one axis each
    assert "series-npo-forget_acc" not in div
    page = render_bench_html(_bench([0, 1]))  # the bench page: headline metrics, all in [0, 1] here
    assert "id='accuracies'" in page and "id='divergences'" not in page


def test_s3t_page_explains_the_exact_gap():
    from obliviate.exact.cli_s3t import render_html
    from obliviate.exact.simulate import simulate_range

    page = render_html(simulate_range(2, 2, [1, 2], trials=20, seed=0))
    assert "exact gap" in page and "single model" in page
    assert all('width="100%"' in s[:s.index(">")] for s in _svgs(page))


def _crowded_bench(n_methods: int) -> dict:
    names = [f"m{i}_{'long_name_' * (i % 3)}{i}" + ("+filter" if i % 5 == 0 else "") for i in range(n_methods)]
    doc = _bench([0, 1])
    doc["runs"] = [_run(m, s, 0.01 * i + 0.01 * s) for s in (0, 1) for i, m in enumerate(names[:2])]  # per-run
    # charts are the run page's, drawn below; the bench charts are drawn from the summary's n_methods rows
    doc["summary"] = [{"method": m, "guarantee": "approximate", "n_seeds": 2, "avg_gap": 0.01 * i - 0.02,
                       "avg_gap_std": 0.002, "time_ratio": 0.1 * i, **{k: v + 0.01 for k, v in KEYS.items()},
                       **{f"{k}_std": 0.01 for k in KEYS}} for i, m in enumerate(names)]
    return doc


def _curves_run() -> dict:
    r = _run("npo_klr_muse+filter", 0, 0.01)
    point = {"metrics": {role: {"knowmem_f": 0.3, "verbmem_f": 0.2, "privleak": -40.0, "knowmem_r": 0.9}
                         for role in ("unlearned", "oracle")}, "gap": {}, "avg_gap": 0.1, "time_s": {}}
    r["scalability"] = {"base_n": 4, "order_seed": 0, "points": [dict(point, factor=k, n_forget=4 * k)
                                                                  for k in (1, 2, 3, 4)]}
    r["sustainability"] = {"fold_size": 4, "folds": 3, "order_seed": 0,
                           "steps": [dict(point, step=j, n_fold=4, n_forgotten=4 * j) for j in (1, 2, 3)]}
    return r


def test_no_two_texts_overlap_on_any_chart(monkeypatch):
    """Every chart of a crowded bench (45 methods, long names, a negative value), a run page and the MUSE curves,
    measured on the drawn figure: no tick label, title, axis label or legend entry overlaps another."""
    from chart_geometry import overlapping_texts

    from obliviate import report

    checked, bad = [], []
    svg_of = report.svg_of

    def measured(fig):
        report.declutter(fig)
        title = fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title()
        checked.append(title)
        bad.extend((title[:60], a[:30], b[:30]) for a, b in overlapping_texts(fig))
        return svg_of(fig)

    monkeypatch.setattr(report, "svg_of", measured)
    for n in (2, 12, 45):
        assert "m1_long_name_1" in render_bench_html(_crowded_bench(n))
    render_run_html(_run("m0_long_name_long_name_0+filter", 0, 0.01))
    render_run_html(_curves_run())
    assert len(checked) >= 12
    assert not bad, bad


def test_the_overlap_check_sees_overlaps():
    """The measure the test above relies on: flat long tick labels collide, the same labels at 30° do not,
    and declutter turns 45 crowded labels so they clear each other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from chart_geometry import overlapping_texts

    from obliviate.report import declutter

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(10), range(10))
    ax.set_xticks(range(10), [f"long_label_{i}" for i in range(10)])
    assert len(overlapping_texts(fig)) >= 9  # each label runs into its neighbour
    ax.set_xticks(range(10), [f"long_label_{i}" for i in range(10)], rotation=30, ha="right")
    assert overlapping_texts(fig) == []
    fig2, ax2 = plt.subplots(figsize=(5, 3))
    ax2.bar(range(45), range(45))
    ax2.set_xticks(range(45), [f"method_{i}" for i in range(45)], rotation=30, ha="right")
    assert len(overlapping_texts(fig2)) >= 40
    declutter(fig2)
    assert overlapping_texts(fig2) == []
    plt.close("all")


def test_report_docstring_examples_run():
    import doctest

    from obliviate import report

    result = doctest.testmod(report)
    assert result.attempted >= 2 and result.failed == 0
