"""The throwaway PostgreSQL server for tests (tests/pgserver.py, scripts/pg-test-server.sh) really works."""
from __future__ import annotations

import glob

import pytest
import sqlalchemy as sa

from pgserver import drop_database, fresh_database, postgres_url


@pytest.fixture(scope="module")
def pg_url() -> str:
    url = postgres_url()
    if url is None:
        if glob.glob("/usr/lib/postgresql/*/bin/initdb"):
            pytest.fail("PostgreSQL binaries are installed but scripts/pg-test-server.sh gave no server")
        pytest.skip("no PostgreSQL server available (set OBLIVIATE_TEST_PG_URL or install postgresql)")
    return url


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def test_url_connects(pg_url):
    assert pg_url.startswith("postgresql+psycopg://")
    eng = _engine(pg_url)
    with eng.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        assert conn.execute(sa.text("SHOW fsync")).scalar_one() == "on"
    eng.dispose()


def test_fresh_databases_are_isolated_and_droppable(pg_url):
    a, b = fresh_database(pg_url), fresh_database(pg_url)
    try:
        assert a != b and sa.make_url(a).database.startswith("obliviate_t_")
        ea, eb = _engine(a), _engine(b)
        with ea.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_in_a (x int)"))
            conn.execute(sa.text("INSERT INTO only_in_a VALUES (42)"))
        with ea.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM only_in_a")).scalar_one() == 42
        assert "only_in_a" not in sa.inspect(eb).get_table_names()
        assert "only_in_a" not in sa.inspect(_engine(pg_url)).get_table_names()

        # drop works even with a connection still open to the database
        held = ea.connect()
        drop_database(a)
        held.invalidate()
        with _engine(pg_url).connect() as conn:
            names = conn.execute(sa.text("SELECT datname FROM pg_database")).scalars().all()
        assert sa.make_url(a).database not in names and sa.make_url(b).database in names
        drop_database(a)  # already gone: no error
    finally:
        drop_database(a)
        drop_database(b)
