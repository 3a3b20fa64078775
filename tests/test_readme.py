"""The README's Python example runs as written (docs that drift are bugs)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_opens_with_the_two_setup_commands():
    head = README.read_text().splitlines()[:6]
    text = "\n".join(head)
    assert "make demo" in text and "make test" in text
    assert text.index("make demo") < text.index("make test")


def test_readme_api_example_runs(tmp_path, monkeypatch):
    blocks = _python_blocks()
    api = next(b for b in blocks if "obliviate.unlearn(" in b)
    rng = np.random.default_rng(0)
    pd.DataFrame({"age": rng.integers(18, 80, 60), "plan": rng.choice(["basic", "pro"], 60),
                  "churn": rng.choice(["yes", "no"], 60)}).to_csv(tmp_path / "customers.csv", index=False)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(api, "README.md", "exec"), scope)
    result, doc, task = scope["result"], scope["doc"], scope["task"]
    assert result.report["guarantee"] == "approximate" and result.report["forget"]["spec"] == "class:3"
    assert result.report["metrics"]["unlearned"]["forget_acc"] <= 0.05
    assert doc["schema"] == "obliviate.bench/1" and len(doc["runs"]) == 4
    assert task.kind == "classification" and task.data.class_names == ["no", "yes"]
