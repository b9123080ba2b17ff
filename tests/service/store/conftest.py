"""`backend` and `store`: each contract test runs once on SQLite (a fresh file) and once on
PostgreSQL (a fresh database on the session's throwaway server, tests/pg_kit.py)."""

from __future__ import annotations

import pytest
from store_kit import Backend


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "privtext.db"))
        return
    pg = request.getfixturevalue("pg_server")  # skipped (or failed, in CI) without PostgreSQL
    url = pg.create_database()
    yield Backend("postgres", url, pg)
    pg.drop_database(url)


@pytest.fixture
def store(backend):
    s = backend.open()
    yield s
    s.close()
