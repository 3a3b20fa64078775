"""The package's layers: data flows one way, and no module reaches into another package's private names.

Every module of ``src/obliviate`` is parsed with ``ast`` (module-level *and* function-level imports count: a lazy
import is still a dependency) and given a layer; a module may import its own layer and the layers below it.
The order was read off the code, lowest first:

 0 foundation   errors, config, atomic (the one file writer), seeding (the seed streams), dist, distributed,
                requests (forget specs)
 1 training     the deterministic training loop
 2 lm           tokenising, scoring and generating with causal LMs (and the QA prompt layout)
 3 models       nets, the model store, the tiny LM and MiniLM
 4 tasks        the tasks (and models.tiny_hf: test model directories, reloaded through the hf task's loader)
 5 systems      oracle (original and retrain oracle), exact (SISA / S3T systems)
 6 metrics      the metrics (pure functions and their composition)
 7 guard        generation-time suppression (uses the language metrics' matching)
 8 methods      the unlearning methods (wrap guard, exact systems)
 9 pipeline     pipeline (context → apply → evaluate → run report), memory (fits-the-device plans), verdict
10 report       JSON / HTML rendering
11 session      one run (Session.run) and the models several runs share
12 protocols    the challenge, scalability / sustainability, relearn time (on top of Session.run)
13 api          unlearn / bench / evaluate
14 tools        audit, tune (built on the api)
15 service      the deletion service (ledger)
16 entry        cli, ledger.cli, exact.cli_s3t, ``obliviate/__init__`` (re-exports the api), ``__main__``
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: module (or package prefix) -> layer; the longest matching prefix wins
LAYERS: dict[str, int] = {
    "obliviate.errors": 0, "obliviate.config": 0, "obliviate.atomic": 0, "obliviate.seeding": 0,
    "obliviate.dist": 0, "obliviate.distributed": 0, "obliviate.requests": 0,
    "obliviate.training": 1,
    "obliviate.lm": 2,
    "obliviate.models": 3,
    "obliviate.tasks": 4, "obliviate.models.tiny_hf": 4,
    "obliviate.oracle": 5, "obliviate.exact": 5,
    "obliviate.metrics": 6,
    "obliviate.guard": 7,
    "obliviate.methods": 8,
    "obliviate.pipeline": 9, "obliviate.memory": 9, "obliviate.verdict": 9,
    "obliviate.report": 10,
    "obliviate.session": 11,
    "obliviate.protocols": 12,
    "obliviate.api": 13,
    "obliviate.audit": 14, "obliviate.tune": 14,
    "obliviate.ledger": 15,
    "obliviate.cli": 16, "obliviate.ledger.cli": 16, "obliviate.exact.cli_s3t": 16, "obliviate": 16,
    "obliviate.__main__": 16,
}

#: upward imports that remain, each with its reason (importer, imported)
UPWARD_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("obliviate.tasks.hf", "obliviate.guard"):
        "a given model directory may hold a saved GUARD; the hf task loads it guarded again (function-level "
        "import). To remove: a loader hook the guard registers with the task.",
    ("obliviate.tasks.muse", "obliviate.metrics.muse"):
        "MUSE's published retrain AUC (constants.AUC_RETRAIN) lives with the PrivLeak metric that uses it; the "
        "task reads it for PrivLeak without an oracle (function-level import).",
}

#: cross-package imports of private names that remain, each with its reason (importer, imported, name)
PRIVATE_EXCEPTIONS: dict[tuple[str, str, str], str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "obliviate").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layering.py")


def _package(module: str) -> str:
    """``obliviate.methods.npo`` -> ``obliviate.methods``; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def imports(module: str, path: Path | None = None) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every obliviate import of ``module``, at any depth;
    ``obj._name`` on a name bound to an imported obliviate module counts as importing ``_name``."""
    path = path or MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, str | None, int]] = []
    bound: dict[str, str] = {}  # local name -> obliviate module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "obliviate":
                    out.append((a.name, None, node.lineno))
                    if a.asname:
                        bound[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "obliviate":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:  # ``from obliviate import api``: the submodule itself
                    out.append((sub, None, node.lineno))
                    bound[a.asname or a.name] = sub
                else:
                    out.append((target, a.name, node.lineno))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            out.append((bound[node.value.id], node.attr, node.lineno))
    return out


def _resolve(target: str) -> str:
    """The module an import names (``obliviate.metrics.core`` exists; ``obliviate.x.y`` may be a package)."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


EDGES = {m: [(_resolve(t), name, line) for t, name, line in imports(m)] for m in MODULES}


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if not any(m == p or m.startswith(p + ".") for p in LAYERS)]
    assert not missing, f"modules without a layer (add them to LAYERS): {missing}"


def test_no_upward_imports():
    found = set()
    bad = []
    for m, edges in EDGES.items():
        for target, name, line in edges:
            if target == "obliviate" and name == "__version__":
                continue  # a constant the package root defines before it imports anything
            if layer(target) > layer(m):
                key = (m, _package(target) if (m, _package(target)) in UPWARD_EXCEPTIONS else target)
                if key in UPWARD_EXCEPTIONS:
                    found.add(key)
                    continue
                bad.append(f"{MODULES[m].relative_to(SRC)}:{line}: {m} (layer {layer(m)}) imports {target} "
                           f"(layer {layer(target)})")
    assert not bad, "upward imports:\n" + "\n".join(bad)
    stale = set(UPWARD_EXCEPTIONS) - found
    assert not stale, f"exceptions no longer needed (remove them from UPWARD_EXCEPTIONS): {sorted(stale)}"


def test_no_private_names_across_packages():
    """``_name`` is private to its package: ``methods/lm_gradient`` may use ``methods/_lm``'s helpers, the ledger
    may not use the api's."""
    found = set()
    bad = []
    for m, edges in EDGES.items():
        for target, name, line in edges:
            if name is None or not name.startswith("_") or name.startswith("__"):
                continue
            if _package(target) == _package(m):
                continue
            if (m, target, name) in PRIVATE_EXCEPTIONS:
                found.add((m, target, name))
                continue
            bad.append(f"{MODULES[m].relative_to(SRC)}:{line}: {m} uses {target}.{name}")
    assert not bad, "private names used across packages (make them public where they belong):\n" + "\n".join(bad)
    stale = set(PRIVATE_EXCEPTIONS) - found
    assert not stale, f"exceptions no longer needed (remove them from PRIVATE_EXCEPTIONS): {sorted(stale)}"


@pytest.mark.parametrize("a, b", [("obliviate.metrics.core", "obliviate.metrics.language"),
                                  ("obliviate.guard", "obliviate.methods"),
                                  ("obliviate.models.tiny_lm", "obliviate.tasks")])
def test_former_cycles_stay_broken(a, b):
    """Within a layer imports are free, so the cycles that were broken are checked by name: ``b`` may use ``a``,
    never the other way round."""
    def inside(module, prefix):
        return module == prefix or module.startswith(prefix + ".")

    back = [f"{m}:{line} -> {t}" for m, edges in EDGES.items() if inside(m, a)
            for t, _, line in edges if inside(t, b)]
    assert not back, f"{a} imports {b} again: {back}"


def test_the_checks_catch_what_they_claim(tmp_path):
    """The parser sees function-level imports, relative imports and ``module._name`` access."""
    src = ("from obliviate.api import build_method\n"
           "def f():\n    from obliviate.ledger import worker\n    from . import _hidden\n"
           "from obliviate import api\nx = api._as_task\n")
    path = tmp_path / "probe.py"
    path.write_text(src)
    got = {(t, n) for t, n, _ in imports("obliviate.metrics.probe", path)}
    assert ("obliviate.api", "build_method") in got and ("obliviate.ledger.worker", None) in got
    assert ("obliviate.metrics", "_hidden") in got and ("obliviate.api", "_as_task") in got


def test_session_run_reads_in_one_screen():
    """The run is composed from named steps (pipeline, references, report); the protocols live in
    ``obliviate.protocols``, not in the session or the api."""
    tree = ast.parse(MODULES["obliviate.session"].read_text())
    run = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "run")
    assert run.end_lineno - run.lineno + 1 <= 40, f"Session.run is {run.end_lineno - run.lineno + 1} lines"
    for module in ("obliviate.session", "obliviate.api"):
        names = {n.name for n in ast.walk(ast.parse(MODULES[module].read_text()))
                 if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not names & {"challenge", "scalability", "sustainability", "relearn_time"}, (module, names)


def test_protocol_blocks_keep_per_example_last():
    from obliviate.pipeline import add_block

    doc = {"metrics": {}, "exact": {"time_s": 0.1}, "per_example": {"forget_ids": [1]}}
    add_block(doc, "relearn", {"target": 0.5})
    add_block(doc, "challenge", {"n": 3})
    assert list(doc) == ["metrics", "relearn", "exact", "challenge", "per_example"]
    doc = {"metrics": {}}
    add_block(doc, "scalability", {"points": []})
    assert list(doc) == ["metrics", "scalability"]
