"""The keys docs/report-formats.md documents per format, and a check of a real document against them (used by the
tests that already produce each kind of document, so the docs are checked against what the code writes)."""
from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "report-formats.md"


def documented_keys(page: Path = PAGE) -> dict[str, dict[str, str]]:
    """``{format: {key: meaning}}`` from the tables under each ``## `obliviate.NAME/N` `` heading."""
    out: dict[str, dict[str, str]] = {}
    current = None
    for line in page.read_text().splitlines():
        heading = re.match(r"^## `(obliviate\.[a-z0-9-]+/\d+)`", line)
        if heading:
            current = out.setdefault(heading.group(1), {})
        elif line.startswith("## "):
            current = None
        elif current is not None:
            row = re.match(r"^\| `([^`]+)` \| [^|]+ \| (.*) \|$", line)
            if row:
                current[row.group(1)] = row.group(2)
    return out


def check_documented(doc: dict, fmt: str) -> None:
    """Every key of ``doc`` is documented under ``fmt``, and every documented key not marked optional is there."""
    keys = documented_keys()[fmt]
    undocumented = sorted(set(doc) - set(keys))
    assert not undocumented, f"{fmt}: keys not in docs/report-formats.md: {undocumented}"
    missing = sorted(k for k, meaning in keys.items() if not meaning.startswith("optional") and k not in doc)
    assert not missing, f"{fmt}: documented keys missing from a real document: {missing}"
