"""docs/ against the code: every key a real document holds is documented, every documented core key is there, the
generated metrics page is current, and nothing in the repository points at a document that is not in it."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import FAST_DIGITS, REPO
from doc_keys import check_documented, documented_keys

DOCS = REPO / "docs"


def test_the_parser_reads_a_format_table(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# t\n\n## `obliviate.x/1`\n\ntext\n\n| key | type | meaning |\n|---|---|---|\n"
                    "| `schema` | string | `\"obliviate.x/1\"` |\n| `a` | object | optional: with --a |\n\n"
                    "## Other\n\n| `b` | string | not a format |\n")
    assert documented_keys(page) == {"obliviate.x/1": {"schema": '`"obliviate.x/1"`', "a": "optional: with --a"}}


@pytest.fixture(scope="module")
def bench_doc(tmp_path_factory):
    """A real bench with relearn times: two methods (one exact), one seed, the class-wise forget set."""
    from obliviate.cli import main

    path = tmp_path_factory.mktemp("docs") / "bench.json"
    rc = main(["bench", "--task", "digits", "--methods", "finetune,sisa", "--forget", "class:3", "--seeds", "1",
               "--relearn", "--set", f"train.epochs={FAST_DIGITS['epochs']}", "--set", "finetune.epochs=1",
               "--json", str(path), "--quiet"])
    assert rc == 0
    return json.loads(path.read_text())


def test_bench_and_run_documents_match_the_docs(bench_doc):
    check_documented(bench_doc, "obliviate.bench/1")
    for run in bench_doc["runs"]:
        check_documented(run, "obliviate.run/1")
    assert "exact" in bench_doc["runs"][1] and "relearn" in bench_doc["runs"][0]


def test_every_metric_key_of_a_report_is_listed(bench_doc):
    from obliviate.metrics import list_metrics

    listed = {m["name"] for m in list_metrics("classification")}
    page = (DOCS / "metrics.md").read_text()
    for run in bench_doc["runs"]:
        for role, values in run["metrics"].items():
            assert set(values) - listed <= {"relearn_steps", "anamnesis"}, (role, set(values) - listed)
    assert "`relearn_steps`" in page and "`anamnesis`" in page


def test_regression_run_matches_the_docs(cli, tmp_path):
    path = tmp_path / "r.json"
    rc, _, err = cli("run", "--task", "friedman", "--method", "finetune", "--forget", "target>=20",
                     "--set", "train.epochs=5", "--set", "epochs=1", "--json", path)
    assert rc == 0, err
    doc = json.loads(path.read_text())
    check_documented(doc, "obliviate.run/1")
    assert "`forget_abs_err`" in documented_keys()["obliviate.run/1"]["per_example"]
    assert set(doc["per_example"]["unlearned"]) == {"forget_abs_err"}


def test_s3t_simulate_matches_the_docs(cli, tmp_path):
    path = tmp_path / "sim.json"
    rc, _, err = cli("s3t", "simulate", "--shards", "3", "--slices", "2", "--budget", "1-2", "--trials", "20",
                     "--json", path)
    assert rc == 0, err
    check_documented(json.loads(path.read_text()), "obliviate.s3t-simulate/1")


def test_every_format_the_code_writes_is_documented():
    written = set()
    for path in (REPO / "src" / "obliviate").rglob("*.py"):
        written |= set(re.findall(r'"(obliviate\.[a-z0-9-]+/\d+)"', path.read_text()))
    assert written, "no format constants found"
    assert sorted(written - set(documented_keys())) == []


def _load_write_docs():
    spec = importlib.util.spec_from_file_location("write_docs", REPO / "scripts" / "write_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_metrics_page_is_current(capsys):
    assert _load_write_docs().main(["--check"]) == 0, capsys.readouterr().err


def test_a_stale_metrics_page_is_caught(tmp_path, monkeypatch, capsys):
    write_docs = _load_write_docs()
    monkeypatch.setattr(write_docs, "DOCS", tmp_path)
    (tmp_path / "metrics.md").write_text(write_docs.metrics_page().replace("`forget_acc` | yes", "`forget_acc` | "))
    assert write_docs.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert write_docs.main([]) == 0 and write_docs.main(["--check"]) == 0


def test_metrics_page_lists_every_registered_metric_with_its_unit():
    from obliviate.metrics import list_metrics

    page = (DOCS / "metrics.md").read_text()
    for m in list_metrics():
        assert f"| `{m['name']}` | {'yes' if m['headline'] else ''} | {m['target']} | {m['unit']} |" in page, m["name"]


# -- references ------------------------------------------------------------------------------------------------------

#: the design notes the project was planned from live outside the repository: nothing in it may cite them
OUTSIDE = tuple(name + ".md" for name in ("methods", "evaluation", "anchors", "DESIGN")) + ("seed-papers" + ".txt",)
TEXT = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".sh"}


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [REPO / n for n in names if Path(n).suffix in TEXT or n in ("Makefile",)]


def test_nothing_cites_a_document_outside_the_repository():
    files = _tracked_text_files()
    assert len(files) > 50
    cited = [f"{p.relative_to(REPO)}:{i}" for p in files if p.exists()
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if any(doc in line for doc in OUTSIDE)]
    assert cited == []


def test_relative_links_in_readme_and_docs_resolve():
    pages = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []
    assert (DOCS / "report-formats.md").exists() and (DOCS / "metrics.md").exists()


# -- obliviate metrics -----------------------------------------------------------------------------------------------

def test_metrics_command_lists_the_registry(cli):
    from obliviate.metrics import list_metrics

    rc, out, _ = cli("metrics", "--json")
    assert rc == 0 and json.loads(out) == list_metrics()
    rc, out, _ = cli("metrics", "--kind", "regression", "--json")
    rows = json.loads(out)
    assert rc == 0 and {r["kind"] for r in rows} == {"regression"}
    assert [r["name"] for r in rows if r["headline"]] == ["forget_mae", "retain_mae", "test_mae", "mia"]
    assert {r["name"]: r["unit"] for r in rows}["forget_mae"] == "target units"
    rc, out, _ = cli("metrics", "--kind", "language")
    assert rc == 0 and "privleak *" in out and "percent" in out and "forget_truth_ratio" in out


def test_metrics_command_refuses_an_unknown_kind(cli):
    rc, out, err = cli("metrics", "--kind", "vision")
    assert rc == 2 and out == ""
    assert err.strip().count("\n") == 0 and "unknown task kind 'vision'" in err and "classification" in err
