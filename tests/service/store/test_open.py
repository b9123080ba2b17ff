"""open_store: a path or sqlite:/// URL opens SQLite, a postgresql:// URL opens PostgreSQL, and
anything else is refused without echoing it (a URL may carry a password)."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_kit import KEY, make_dataset

from service.store import SqliteStore, open_store


def test_paths_and_sqlite_urls_open_sqlite(tmp_path, monkeypatch):
    for location, path in [
        (tmp_path / "a.db", tmp_path / "a.db"),
        (str(tmp_path / "b.db"), tmp_path / "b.db"),
        ("sqlite:///" + str(tmp_path / "c.db"), tmp_path / "c.db"),  # sqlite:////abs/c.db
    ]:
        with open_store(location, KEY) as s:
            assert isinstance(s, SqliteStore) and s.path == path
            make_dataset(s)
        assert path.exists()
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///rel%20d.db", KEY) as s:  # relative, percent-decoded
        assert s.path == Path("rel d.db")
    assert (tmp_path / "rel d.db").exists()


@pytest.mark.parametrize("bad", ["", "   ", "mysql://root:hunter2@db/privtext", "sqlite://c.db", "sqlite:///"])
def test_other_locations_are_refused(bad):
    with pytest.raises(ValueError, match="store must be") as e:
        open_store(bad, KEY)
    assert "hunter2" not in str(e.value)


def test_postgresql_urls_open_postgres(pg_server):
    from service.store.postgres import PostgresStore

    url = pg_server.create_database()
    try:
        for location in (url, "postgres://" + url[len("postgresql://"):]):
            with open_store(location, KEY) as s:
                assert isinstance(s, PostgresStore)
                assert s.list_datasets("acme") == []
        with_password = url + "&password=hunter2"  # trust authentication ignores it
        with open_store(with_password, KEY) as s:
            assert "hunter2" not in repr(s)
        with pytest.raises(ValueError, match="does not match") as e:
            open_store(with_password, bytes(32))
        assert "hunter2" not in str(e.value)
    finally:
        pg_server.drop_database(url)


def test_a_password_is_never_echoed():
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from service.store.postgres import redacted_url

    assert redacted_url("postgresql://privtext:hunter2@db.internal:5432/privtext") == "postgresql://privtext:***@db.internal:5432/privtext"
    assert redacted_url("postgresql://privtext:p%40ss@db/privtext") == "postgresql://privtext:***@db/privtext"
    assert redacted_url("postgresql://privtext@db/privtext?password=hunter2&sslmode=require") == (
        "postgresql://privtext@db/privtext?password=***&sslmode=require")
    assert redacted_url("host=db user=privtext password=hunter2 dbname=privtext") == "host=db user=privtext password=*** dbname=privtext"
    assert redacted_url("postgresql:///privtext?host=/run/postgresql") == "postgresql:///privtext?host=/run/postgresql"
