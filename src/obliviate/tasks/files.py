"""Reading benchmark files as their authors publish them: JSON arrays, JSON lines, parquet, and the directories
``datasets.Dataset.save_to_disk`` writes (Arrow stream files), without the ``datasets`` package.

Every reader returns the file's rows as dicts and its sha256 (of the bytes read, so a task's fingerprint follows
the contents, not the path); every problem is a one-line :class:`~obliviate.errors.ObliviateError` naming the
file and, for text files, the line.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from obliviate.errors import ObliviateError

#: suffixes tried, in order, for a table named ``stem`` in a data directory
TABLE_SUFFIXES = (".json", ".jsonl", ".parquet")


def find_table(root: Path, stem: str) -> Path | None:
    """``root/stem.json`` | ``.jsonl`` | ``.parquet``, or a directory ``root/stem`` holding parquet shards or a
    ``save_to_disk`` copy; None when there is none."""
    for suffix in TABLE_SUFFIXES:
        p = root / f"{stem}{suffix}"
        if p.is_file():
            return p
    d = root / stem
    if d.is_dir() and (list(d.glob("*.parquet")) or list(d.glob("*.arrow"))):
        return d
    return None


def _decode(blob: bytes, p: Path) -> str:
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ObliviateError(f"{p} is not UTF-8 text (byte {exc.start})") from None


def read_json_any(p: Path) -> tuple[Any, str]:
    """A JSON document (object or array) or JSON lines (a list of their values), and the file's sha256."""
    blob = p.read_bytes()
    text = _decode(blob, p)
    digest = hashlib.sha256(blob).hexdigest()
    head = text.lstrip()[:1]
    if head == "[":
        try:
            return json.loads(text), digest
        except json.JSONDecodeError as exc:
            raise ObliviateError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if head == "{" and "\n{" not in text.strip():  # a single JSON object (not JSON lines)
        try:
            return json.loads(text), digest
        except json.JSONDecodeError:
            pass  # may still be one JSON line with trailing content: report it as JSON lines below
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ObliviateError(f"{p} line {n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    return out, digest


def _arrow_rows(d: Path) -> tuple[list[dict], str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # optional dependency: obliviate[llm]
        raise ObliviateError(f"reading {d} needs pyarrow (pip install 'obliviate[llm]')") from exc
    h = hashlib.sha256()
    files = sorted(d.glob("*.parquet")) if d.is_dir() else [d]
    arrow = d.is_dir() and not files
    if arrow:
        files = sorted(d.glob("*.arrow"))
    rows: list[dict] = []
    for f in files:
        h.update(f.read_bytes())
        try:
            if arrow:
                with pa.memory_map(str(f)) as src:
                    table = pa.ipc.open_stream(src).read_all()
            else:
                table = pq.read_table(str(f))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ObliviateError(f"{f}: not a readable {'Arrow' if arrow else 'parquet'} file "
                                 f"({str(exc).splitlines()[0]})") from None
        rows += table.to_pylist()
    return rows, h.hexdigest()


def read_rows(p: Path) -> tuple[list[dict], str]:
    """The rows (JSON objects) of a table file or directory, and its sha256; errors name the offending row."""
    if p.is_dir() or p.suffix == ".parquet":
        rows, digest = _arrow_rows(p)
    else:
        rows, digest = read_json_any(p)
        if isinstance(rows, dict):
            raise ObliviateError(f"{p}: expected rows (a JSON array or JSON lines), got one JSON object")
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ObliviateError(f"{p} row {n}: expected a JSON object, got {type(row).__name__}")
    if not rows:
        raise ObliviateError(f"{p} has no rows")
    return rows, digest


def field_str(row: dict, key: str, where: str, required: bool = True) -> str | None:
    """``row[key]`` as a non-empty string (None when absent and not required)."""
    if key not in row or row[key] is None:
        if required:
            raise ObliviateError(f"{where}: missing \"{key}\"")
        return None
    v = row[key]
    if not isinstance(v, str):
        raise ObliviateError(f"{where}: \"{key}\" must be a string, got {type(v).__name__}")
    if not v.strip():
        raise ObliviateError(f"{where}: \"{key}\" is empty")
    return v


def field_strings(row: dict, key: str, where: str) -> tuple[str, ...]:
    """``row[key]`` as a list of non-empty strings (empty when absent)."""
    v = row.get(key)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(w, str) and w.strip() for w in v):
        raise ObliviateError(f"{where}: \"{key}\" must be a list of non-empty strings")
    return tuple(v)


def check_keys(row: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(row) - allowed)
    if unknown:
        raise ObliviateError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(allowed))}")


__all__ = ["find_table", "read_rows", "read_json_any", "field_str", "field_strings", "check_keys"]
