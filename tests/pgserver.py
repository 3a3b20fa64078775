"""Real PostgreSQL for tests (a helper module, not a test file).

``postgres_url()`` gives the SQLAlchemy URL of the throwaway server: ``$OBLIVIATE_TEST_PG_URL`` when set (CI sets
it, see ``.ci/run``), otherwise whatever ``scripts/pg-test-server.sh`` starts or finds (run once per process), or
None when there is no server to be had. ``fresh_database(url)`` makes an isolated, uniquely named database on
that server and returns its URL; ``drop_database(url)`` removes it again.
"""
from __future__ import annotations

import functools
import os
import subprocess
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pg-test-server.sh"


@functools.lru_cache(maxsize=None)
def _script_url() -> str | None:
    try:
        proc = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return None
    return lines[-1].strip()


def postgres_url() -> str | None:
    """SQLAlchemy URL (``postgresql+psycopg://...``) of the test server, or None when none is available."""
    return os.environ.get("OBLIVIATE_TEST_PG_URL") or _script_url()


def _conninfo(url: str, database: str | None = None) -> str:
    """libpq URI for psycopg from a SQLAlchemy URL (optionally for another database on the same server)."""
    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


def fresh_database(url: str) -> str:
    """Create a new, empty database ``obliviate_t_<8 hex>`` on the server of ``url``; return its URL."""
    name = f"obliviate_t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database of ``url`` (connections to it are terminated first); no error if it is gone."""
    name = make_url(url).database
    with psycopg.connect(_conninfo(url, database="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
