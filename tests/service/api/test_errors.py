"""What the log says of an unexpected error: a store or database error's own message, so an
operator can act; any other error's type only (an engine's message may name a group's shape)."""

from __future__ import annotations

import logging
import sqlite3

import grpc
import pytest

from service.api.errors import describe_internal, status_for
from service.store import SqliteStore

PRIVATE = "zebra-quokka-7781 said the private thing"


def _real_sqlite_error(tmp_path) -> sqlite3.Error:
    """An OperationalError raised by SQLite itself: a write to a database opened read-only."""
    path = tmp_path / "x.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as e:
        ro.execute("INSERT INTO t VALUES (?)", (PRIVATE,))
    return e.value


def test_a_database_error_is_logged_with_its_message(tmp_path, caplog):
    err = _real_sqlite_error(tmp_path)
    with caplog.at_level(logging.ERROR, logger="service.api.errors"):
        st = status_for(err)
    assert st.code == grpc.StatusCode.INTERNAL.value[0] and "readonly" not in st.message  # callers get nothing more
    assert "OperationalError: attempt to write a readonly database" in caplog.text
    assert PRIVATE not in caplog.text  # the bound value of the statement never reaches the log


def test_a_cause_that_is_a_database_error_is_named(tmp_path):
    err = _real_sqlite_error(tmp_path)
    try:
        raise RuntimeError("wrapper") from err
    except RuntimeError as wrapped:
        text = describe_internal(wrapped)
    assert text == "RuntimeError, caused by OperationalError: attempt to write a readonly database"


def test_a_store_error_is_named_and_other_messages_are_not(tmp_path, caplog):
    (tmp_path / "privtext.db").write_bytes(b"not a database at all " * 100)
    with pytest.raises(sqlite3.DatabaseError) as e:
        SqliteStore(tmp_path / "privtext.db", bytes(32))
    assert describe_internal(e.value) == "DatabaseError: file is not a database"
    with caplog.at_level(logging.ERROR, logger="service.api.errors"):
        status_for(RuntimeError(f"group of 8 rows: {PRIVATE}"))
    assert "internal error: RuntimeError" in caplog.text and PRIVATE not in caplog.text
