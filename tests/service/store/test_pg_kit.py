"""The throwaway PostgreSQL server of the tests: found, started on a Unix socket only, stopped
and removed; and when PostgreSQL is missing, a skip on a developer's machine but a failure in CI."""

from __future__ import annotations

import pytest
from pg_kit import BIN_ENV, find_bin_dir, in_ci, server_for_tests


@pytest.mark.parametrize(("value", "ci"), [("", False), ("0", False), ("false", False), ("true", True), ("1", True)])
def test_ci_is_read_from_the_environment(monkeypatch, value, ci):
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_missing_postgres_skips_here_and_fails_in_ci(monkeypatch, tmp_path):
    monkeypatch.setenv(BIN_ENV, str(tmp_path / "no-postgres-here"))
    assert find_bin_dir() is None
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y postgresql"):
        server_for_tests()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI needs PostgreSQL"):
        server_for_tests()


def test_the_server_listens_on_its_socket_only(pg_server):
    import psycopg

    with psycopg.connect(pg_server.url(), autocommit=True) as c:
        assert c.execute("SHOW listen_addresses").fetchone() == ("",)  # no TCP port
        assert c.execute("SHOW unix_socket_directories").fetchone() == (str(pg_server.root),)
    assert (pg_server.root / ".s.PGSQL.5432").is_socket()


def test_a_server_stops_and_leaves_nothing_behind():
    from pg_kit import start_server

    server, why = start_server()
    if server is None:
        pytest.skip(why)
    root = server.root
    assert (root / ".s.PGSQL.5432").is_socket()
    server.stop()
    assert not root.exists()
