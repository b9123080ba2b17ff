"""What only the PostgreSQL store has: its schema versions, servers that start together on an
empty database, triggers against TRUNCATE, and connections shared with forked children and
finished threads. The Store contract itself is tested on every backend in
test_store_contract.py."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import threading
import time

import pytest
from store_kit import KEY, Backend, make_dataset

from mechanisms import PrivacyEvent
from service.store import StoreError

FORK = mp.get_context("fork")


@pytest.fixture
def pg(pg_server):
    """A Backend on a fresh, empty database."""
    url = pg_server.create_database()
    yield Backend("postgres", url, pg_server)
    pg_server.drop_database(url)


def test_schema_version_is_kept_and_a_newer_one_refused(pg):
    from service.store.postgres import SCHEMA_VERSION, PostgresStore

    PostgresStore(pg.location, KEY).close()
    assert pg.sql("SELECT v FROM meta WHERE k = 'schema_version'") == [(str(SCHEMA_VERSION).encode(),)]
    PostgresStore(pg.location, KEY).close()  # reopening changes nothing
    assert pg.sql("SELECT COUNT(*) FROM meta") == [(2,)]
    pg.sql("UPDATE meta SET v = ? WHERE k = 'schema_version'", (str(SCHEMA_VERSION + 1).encode(),))
    with pytest.raises(StoreError, match=f"schema_version must be <= {SCHEMA_VERSION}"):
        PostgresStore(pg.location, KEY)
    pg.sql("UPDATE meta SET v = '2'::bytea WHERE k = 'schema_version'")  # older than any PostgreSQL store
    with pytest.raises(StoreError, match="schema_version must be between"):
        PostgresStore(pg.location, KEY)


def _proc_open(url, barrier, out):
    try:
        from service.store.postgres import PostgresStore

        barrier.wait(timeout=60)
        with PostgresStore(url, KEY) as s:
            out.put(make_dataset(s, name=f"d{os.getpid()}").id)
    except Exception as e:
        barrier.abort()
        out.put("error: " + repr(e))


def test_servers_starting_together_create_the_schema_once(pg):
    barrier, out = FORK.Barrier(4), FORK.Queue()
    procs = [FORK.Process(target=_proc_open, args=(pg.location, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(g.startswith("ds_") for g in got), got
    assert pg.sql("SELECT k FROM meta ORDER BY k") == [("key_check",), ("schema_version",)]
    assert pg.sql("SELECT COUNT(*) FROM datasets") == [(4,)]


def test_truncate_is_refused_too(pg):
    with pg.open() as s:
        info = make_dataset(s)
        s.reserve("acme", info.id, "job", [PrivacyEvent("zcdp", 0.01)])
    for statement in ("TRUNCATE ledger CASCADE", "TRUNCATE datasets CASCADE"):
        with pytest.raises(pg.raw_error, match="never"):
            pg.sql(statement)
    assert pg.sql("SELECT COUNT(*) FROM ledger") == [(1,)]


def test_a_forked_child_never_ends_the_parents_session(pg):
    """A child that inherits an open store, uses it (its own connection) and closes it must
    leave the parent's connection working: closing the inherited one would end the parent's
    session on the socket they share."""
    s = pg.open()
    info = make_dataset(s)
    (before,) = pg.sql("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()")[0]
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            s.reserve("acme", info.id, "child", [PrivacyEvent("zcdp", 0.01)])
            s.close()
            del s
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [r.label for r in s.ledger_rows("acme", info.id)] == ["child"]  # the parent's session still works
    (after,) = pg.sql("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()")[0]
    assert after == before  # the child's connection is gone, the parent's is still there
    s.close()


def _connections(pg) -> int:
    return pg.sql("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")[0][0]


def test_a_finished_threads_connection_is_closed(pg):
    s = pg.open()
    info = make_dataset(s)
    base = _connections(pg)
    threads = [threading.Thread(target=s.budget, args=("acme", info.id)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    deadline = time.monotonic() + 10
    while _connections(pg) > base and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices a closed socket a moment later
    assert _connections(pg) == base
    s.close()
    deadline = time.monotonic() + 10
    while _connections(pg) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _connections(pg) == 0


def test_a_database_error_is_described_without_its_detail(pg):
    """Logs name a PostgreSQL error by its primary message only: its DETAIL quotes the row."""
    import psycopg

    from service.store.interface import describe_internal

    private = "a private value for this test alone"
    pg.sql("CREATE TABLE t (x TEXT PRIMARY KEY)")
    pg.sql("INSERT INTO t VALUES (?)", (private,))
    with pytest.raises(psycopg.errors.UniqueViolation) as e:
        pg.sql("INSERT INTO t VALUES (?)", (private,))
    assert private in str(e.value)  # the DETAIL line quotes it
    assert describe_internal(e.value) == 'UniqueViolation: duplicate key value violates unique constraint "t_pkey"'
    try:
        raise RuntimeError("wrapper") from e.value
    except RuntimeError as wrapped:
        assert describe_internal(wrapped) == 'RuntimeError, caused by UniqueViolation: duplicate key value violates unique constraint "t_pkey"'
