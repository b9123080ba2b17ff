"""Shared by the store tests: data, budgets, and `Backend`, one store's database seen from
outside the store (raw SQL, the files that hold it at rest), the same way for each backend."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mechanisms import PrivacyEvent
from mechanisms.accounting import epsilon_of
from service.store import open_store

KEY = bytes(range(32))
DELTA = 1e-5
RHO = 0.002
SECRET_TEXT = "zebra-quokka-7781 said the private thing"


def records(n: int, text: str = "record") -> list[dict]:
    return [{"text": f"{text} {i}", "label": "ab"[i % 2], "unit": f"u{i}"} for i in range(n)]


def make_dataset(store, tenant: str = "acme", name: str = "d", cap: float = 1.0, n: int = 10, text: str = "record"):
    return store.create_dataset(tenant, name, label_field="label", unit_field="unit", epsilon_cap=cap, delta=DELTA, records=records(n, text))


def cap_fitting(k: int) -> float:
    """A cap strictly between the epsilon of k and of k+1 events of RHO (robust to rounding)."""
    lo = epsilon_of([PrivacyEvent("zcdp", RHO)] * k, DELTA)
    hi = epsilon_of([PrivacyEvent("zcdp", RHO)] * (k + 1), DELTA)
    return (lo + hi) / 2


def mixed_events(i: int) -> list[PrivacyEvent]:
    """Entry i of a ledger mixing every kind of event the service charges."""
    kinds = [
        [PrivacyEvent("zcdp", 0.0011 * (1 + i % 7), 1 + i % 40, "em selection")],
        [PrivacyEvent("gaussian", 5.0 + i % 11, 1, "dp unit count")],
        [PrivacyEvent("zcdp", 0.0007, 16, "selection"), PrivacyEvent("zcdp", 0.125 / (1 + i), 16, "gate")],
        [PrivacyEvent("gaussian", 9.5 + i / 3, 24, "gaussian noisy argmax")],
        [PrivacyEvent("zcdp", 0.0, 0, "nothing released")],
    ]
    return kinds[i % len(kinds)]


class Backend:
    """Where a test's store lives. `location` is what open_store takes (a path or a URL), so a
    child process can open the same store from it."""

    def __init__(self, kind: str, location: str, pg=None) -> None:
        self.kind = kind
        self.location = location
        self.pg = pg  # tests/pg_kit.PgServer for postgres

    def open(self, key: bytes = KEY):
        return open_store(self.location, key)

    @property
    def raw_error(self) -> type[Exception]:
        """What the database raises when a trigger or constraint refuses a raw statement."""
        if self.kind == "sqlite":
            return sqlite3.DatabaseError
        import psycopg

        return psycopg.Error

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """Run one statement on a separate connection, outside the store (autocommit). `?`
        placeholders on both backends."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.location, isolation_level=None)
            try:
                return conn.execute(query, params).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.location, autocommit=True) as conn:
            cur = conn.execute(query.replace("?", "%s"), params)
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in cur.fetchall()] if cur.description else []

    def key_material(self, dataset_id: str) -> tuple[bytes, bytes] | None:
        """The dataset's wrapped data key and encrypted partition secret as stored; None once
        erased (SQLite NULLs them in the dataset's row, PostgreSQL deletes its dataset_keys row)."""
        if self.kind == "sqlite":
            rows = self.sql("SELECT wrapped_key, secret FROM datasets WHERE id = ? AND wrapped_key IS NOT NULL", (dataset_id,))
        else:
            rows = self.sql("SELECT wrapped_key, secret FROM dataset_keys WHERE dataset_id = ?", (dataset_id,))
        return rows[0] if rows else None

    def files_at_rest(self) -> list[Path]:
        """Every file that holds this store's database: SQLite's file and WAL; for PostgreSQL,
        after a CHECKPOINT (pages written to the table files), the database's directory and
        the cluster's WAL."""
        if self.kind == "sqlite":
            return [p for p in Path(self.location).parent.glob(Path(self.location).name + "*") if p.is_file()]
        self.sql("CHECKPOINT")
        (oid,) = self.sql("SELECT oid FROM pg_database WHERE datname = current_database()")[0]
        dirs = [self.pg.data_dir / "base" / str(oid), self.pg.data_dir / "pg_wal"]
        return [p for d in dirs for p in d.rglob("*") if p.is_file()]

    def table_files(self) -> list[Path]:
        """The files of the tables themselves (no WAL): where erased rows must not linger."""
        if self.kind == "sqlite":
            return self.files_at_rest()
        return [p for p in self.files_at_rest() if "pg_wal" not in p.parts]
