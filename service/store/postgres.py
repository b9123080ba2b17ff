"""PostgreSQL backend of the store (psycopg 3): one database shared by several servers or machines.

Same contract and same encryption at rest as SqliteStore (service/store/sqlite.py, the same
crypto helpers and associated data): a fresh data key per dataset wrapped by the master key, records as JSON chunks encrypted with it and bound to
(dataset id, chunk number), the partition secret encrypted with the master key; the master key
never reaches the database.

Concurrency: a connection per thread (and per process: a forked child opens its own and never
touches, closes or finalizes its parent's). Every write runs in one transaction. A reservation
locks its dataset's row (`SELECT ... FOR UPDATE`), checks the cap against the row's composed
rho and inserts the ledger row and the new rho before it commits, so two servers can never both
spend the last of a budget. A released count is saved under the same lock: the second of two
concurrent releases finds the first one's row and returns it, charging nothing. Reads that must
agree with each other (a key and its chunks, a budget and its recent entries) share one
REPEATABLE READ snapshot.

The wrapped data key and the partition secret live in their own table, `dataset_keys`, one
row per dataset, written once and never updated: a reservation's update of the dataset row
leaves no stale copy of them behind. Deletion removes the records, the results and the key
row, then rewrites `dataset_keys` (VACUUM FULL: a tiny table) so that no table file keeps the
wrapped key, and VACUUMs the records (their ciphertext is useless without it). Best effort: a
rewrite that would wait on a lock is skipped, and the next deletion's catches up. PostgreSQL has
no secure_delete: copies remain in WAL segments until it recycles them, and in any backup,
replica or WAL archive; those stay readable with the master key.

Schema versions (meta.schema_version): PostgreSQL stores begin at 3, SQLite's version when this
backend was added; `_MIGRATIONS[n]` will bring a version-n database to n + 1.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict

from mechanisms import Ledger, LedgerEntry, PrivacyEvent
from mechanisms.accounting import epsilon_of
from mechanisms.config import require

from .crypto import KEY_BYTES, DecryptionError, RecordCipher
from .interface import (
    JOB_STATES,
    TERMINAL_JOB_STATES,
    UNFINISHED_JOB_STATES,
    BudgetExhausted,
    Conflict,
    DatasetInfo,
    JobInfo,
    LedgerRow,
    NotFound,
    ReleasedCount,
    StoreError,
    bounded_label,
    check_events,
    clean_record,
    echo_id,
    epsilon_of_rho,
    events_from_json,
    events_rho,
    events_to_json,
    remaining_epsilon,
    require_nonempty_str,
)

SCHEMA_VERSION = 4
_KEY_CHECK = b"privtext key check v1"
# Held (per transaction) while a process creates or migrates the schema, so that servers
# starting together on an empty database neither race nor migrate twice.
_SCHEMA_LOCK = 0x70726976_74657874  # "privtext"

_SCHEMA = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v BYTEA NOT NULL);
CREATE TABLE datasets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    text_field TEXT NOT NULL,
    label_field TEXT,
    unit_field TEXT,
    epsilon_cap DOUBLE PRECISION NOT NULL,
    delta DOUBLE PRECISION NOT NULL,
    declared_public_units BIGINT,
    records BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    deleted_at DOUBLE PRECISION,
    rho_spent DOUBLE PRECISION NOT NULL DEFAULT 0,
    ledger_entries BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX datasets_live_name ON datasets (tenant, name) WHERE deleted_at IS NULL;
CREATE INDEX datasets_tenant ON datasets (tenant, created_at);
CREATE TABLE dataset_keys (
    dataset_id TEXT PRIMARY KEY REFERENCES datasets (id),
    wrapped_key BYTEA NOT NULL,
    secret BYTEA NOT NULL
);
CREATE TABLE records (
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    chunk INTEGER NOT NULL,
    blob BYTEA NOT NULL,
    PRIMARY KEY (dataset_id, chunk)
);
CREATE TABLE ledger (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    label TEXT NOT NULL,
    events TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state = 'reserved'),
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX ledger_dataset ON ledger (dataset_id, id);
CREATE FUNCTION privtext_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation'; END
$$;
CREATE TRIGGER ledger_never_deleted BEFORE DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION privtext_refuse('ledger rows are never deleted');
CREATE TRIGGER ledger_never_truncated BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION privtext_refuse('ledger rows are never deleted');
CREATE TRIGGER ledger_never_updated BEFORE UPDATE ON ledger
    FOR EACH ROW EXECUTE FUNCTION privtext_refuse('ledger rows are never updated');
CREATE TRIGGER datasets_never_deleted BEFORE DELETE ON datasets
    FOR EACH ROW EXECUTE FUNCTION privtext_refuse('datasets are tombstoned, never deleted');
CREATE TRIGGER datasets_never_truncated BEFORE TRUNCATE ON datasets
    FOR EACH STATEMENT EXECUTE FUNCTION privtext_refuse('datasets are tombstoned, never deleted');
CREATE TABLE released_counts (
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    charged BOOLEAN NOT NULL,
    ledger_id BIGINT REFERENCES ledger (id),
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (dataset_id, kind)
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    dataset_id TEXT NOT NULL REFERENCES datasets (id),
    request_json TEXT NOT NULL,
    state TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL,
    message TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    ledger_id BIGINT REFERENCES ledger (id),
    nonce BYTEA,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION
);
CREATE INDEX jobs_state ON jobs (state, created_at);
CREATE INDEX jobs_dataset ON jobs (dataset_id);
CREATE TABLE job_results (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    seq BIGINT NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE job_groups (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    group_id BIGINT NOT NULL,
    PRIMARY KEY (job_id, group_id)
)
"""

# version n -> n + 1, each run inside the opening transaction. None yet: PostgreSQL began at 3.
def _migrate_3_to_4(c: psycopg.Connection) -> None:
    """Jobs run under a lease (lease_owner, lease_until): one server at a time runs a job."""
    c.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS lease_owner TEXT")
    c.execute("ALTER TABLE jobs ADD COLUMN IF NOT EXISTS lease_until DOUBLE PRECISION")


_MIGRATIONS: dict[int, Callable[[psycopg.Connection], None]] = {3: _migrate_3_to_4}


def redacted_url(url: str) -> str:
    """The URL (or key=value conninfo) with its password, if any, replaced by ***: safe for
    logs and error messages."""
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        return "<a PostgreSQL URL that libpq cannot parse>"
    if not password:
        return url
    for form in (quote(password, safe=""), password):
        url = url.replace(form, "***")
    return url


class _Held:
    """One thread's connection, with the process that opened it."""

    __slots__ = ("conn", "pid", "__weakref__")

    def __init__(self, conn: psycopg.Connection, pid: int) -> None:
        self.conn, self.pid = conn, pid


def _close_if_ours(conn: psycopg.Connection, pid: int) -> None:
    """Close conn when its thread is gone, but only in the process that opened it: a forked
    child closing an inherited connection would end the parent's session on the shared socket."""
    if os.getpid() == pid and not conn.closed:
        try:
            conn.close()
        except psycopg.Error:  # pragma: no cover - closing a broken connection
            pass


class PostgresStore:
    """The PostgreSQL store. `url` is a libpq URL or conninfo (postgresql://user@host/db,
    postgresql:///db?host=/socket/dir); `key` is the 32-byte master data key (see
    crypto.load_or_create_key), never written to the database. lock_timeout_s bounds how long a
    write waits for another's row lock (SQLite's busy timeout)."""

    def __init__(self, url: str, key: bytes, *, chunk_records: int = 256, lock_timeout_s: float = 60.0,
                 connect_timeout_s: float = 30.0) -> None:
        require(isinstance(chunk_records, int) and chunk_records >= 1, "chunk_records", "an integer >= 1", chunk_records)
        require(isinstance(key, (bytes, bytearray)) and len(key) == KEY_BYTES, "key", f"{KEY_BYTES} bytes", f"{len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__}")
        require(isinstance(url, str) and url != "", "url", "a PostgreSQL URL", type(url).__name__)
        self.url = url
        self._master = RecordCipher(bytes(key))
        self._chunk = chunk_records
        self._lock_timeout_ms = int(lock_timeout_s * 1000)
        self._connect_timeout = max(1, int(connect_timeout_s))
        self._local = threading.local()
        self._all: weakref.WeakSet[_Held] = weakref.WeakSet()
        self._all_lock = threading.Lock()
        try:
            self._open_schema()
        except BaseException:
            self.close()
            raise

    def _open_schema(self) -> None:
        """Create the schema on an empty database, or check the key and migrate, in one
        transaction under an advisory lock (servers that start together take turns)."""
        with self._tx() as c:
            c.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            if c.execute("SELECT to_regclass('meta')").fetchone()[0] is None:
                c.execute(_SCHEMA)
                c.execute("INSERT INTO meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION).encode(),))
                c.execute("INSERT INTO meta VALUES ('key_check', %s)", (self._master.encrypt(_KEY_CHECK, "-", "key-check"),))
            else:
                row = c.execute("SELECT v FROM meta WHERE k = 'key_check'").fetchone()
                try:
                    ok = row is not None and self._master.decrypt(row[0], "-", "key-check") == _KEY_CHECK
                except DecryptionError:
                    ok = False
                if not ok:
                    raise ValueError(f"key does not match the data key of the database at {redacted_url(self.url)!r}")
                self._migrate(c)

    def _migrate(self, c: psycopg.Connection) -> None:
        """Bring an older database to SCHEMA_VERSION, inside the opening transaction."""
        row = c.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
        version = int(bytes(row[0]).decode()) if row is not None else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"schema_version must be <= {SCHEMA_VERSION} (this privtext), got {version} in {redacted_url(self.url)!r}")
        if version not in _MIGRATIONS and version != SCHEMA_VERSION:
            raise StoreError(f"schema_version must be between 3 and {SCHEMA_VERSION}, got {version} in {redacted_url(self.url)!r}")
        while version < SCHEMA_VERSION:
            _MIGRATIONS[version](c)
            version += 1
        c.execute("UPDATE meta SET v = %s WHERE k = 'schema_version'", (str(version).encode(),))

    # -----------------------------------------------------------------------------------------
    # connections and transactions

    def _conn(self) -> psycopg.Connection:
        held = getattr(self._local, "held", None)
        pid = os.getpid()
        if held is None or held.pid != pid or held.conn.closed or held.conn.broken:
            # A parent's connection (after fork) is dropped here, never used: psycopg does not
            # finish a connection that another process opened.
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=self._connect_timeout)
            conn.execute(f"SET lock_timeout = {self._lock_timeout_ms}")
            held = _Held(conn, pid)
            weakref.finalize(held, _close_if_ours, conn, pid)  # runs when the thread's local goes
            self._local.held = held
            with self._all_lock:
                self._all.add(held)
        return held.conn

    @contextmanager
    def _tx(self, snapshot: bool = False) -> Iterator[psycopg.Connection]:
        """One transaction (committed on exit, rolled back on an exception). snapshot: a
        read-only REPEATABLE READ one, whose reads all see the same committed state."""
        c = self._conn()
        with c.transaction():
            if snapshot:
                c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield c

    def close(self) -> None:
        """Close every connection this process opened (call when no thread uses the store)."""
        with self._all_lock:
            held, self._all = list(self._all), weakref.WeakSet()
        for h in held:
            _close_if_ours(h.conn, h.pid)
        self._local = threading.local()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresStore({redacted_url(self.url)!r})"

    # -----------------------------------------------------------------------------------------
    # datasets

    @staticmethod
    def _row_to_info(r: tuple) -> DatasetInfo:
        return DatasetInfo(
            id=r[0], tenant=r[1], name=r[2], text_field=r[3], label_field=r[4], unit_field=r[5],
            epsilon_cap=r[6], delta=r[7], declared_public_units=r[8], records=r[9], created_at=r[10],
        )

    _COLS = ("id, tenant, name, text_field, label_field, unit_field, epsilon_cap, delta, declared_public_units, records, created_at, "
             "deleted_at, rho_spent, ledger_entries")
    # The same positions as SqliteStore's rows: 12 wrapped key, 13 secret (NULL once deleted).
    _SELECT = ("SELECT d.id, d.tenant, d.name, d.text_field, d.label_field, d.unit_field, d.epsilon_cap, d.delta, "
               "d.declared_public_units, d.records, d.created_at, d.deleted_at, k.wrapped_key, k.secret, d.rho_spent, "
               "d.ledger_entries FROM datasets d LEFT JOIN dataset_keys k ON k.dataset_id = d.id")

    def _dataset(self, c: psycopg.Connection, tenant: str, dataset_id: str, *, include_deleted: bool = False,
                 lock: str = "") -> tuple:
        """The dataset's row. lock "UPDATE" (a charge, a deletion) or "SHARE" (a new job): a
        row lock of that mode, held until the transaction ends; either waits for a deletion in
        flight and then sees the tombstone."""
        r = c.execute(
            f"{self._SELECT} WHERE d.id = %s AND d.tenant = %s" + (f" FOR {lock} OF d" if lock else ""), (dataset_id, tenant)
        ).fetchone()
        if r is None or (r[11] is not None and not include_deleted):
            # Same answer for "never existed", "deleted" and "another tenant's".
            raise NotFound(f"dataset {echo_id(dataset_id)} not found")
        return r

    def create_dataset(
        self,
        tenant: str,
        name: str,
        *,
        text_field: str = "text",
        label_field: str | None = None,
        unit_field: str | None = None,
        epsilon_cap: float,
        delta: float,
        declared_public_units: int | None = None,
        records: Iterable[dict],
        abandoned: Callable[[], bool] | None = None,
    ) -> DatasetInfo:
        """Store a dataset and its records (encrypted) atomically: if `records` raises, or the
        process dies, nothing is left behind. The records are read and encrypted before the
        transaction starts. abandoned: asked just before the commit; True rolls everything
        back and raises Conflict (as SqliteStore.create_dataset)."""
        require_nonempty_str(tenant, "tenant")
        require_nonempty_str(name, "name")
        require_nonempty_str(text_field, "text_field")
        require(label_field is None or (isinstance(label_field, str) and label_field), "label_field", "None or a non-empty string", label_field)
        require(unit_field is None or (isinstance(unit_field, str) and unit_field), "unit_field", "None or a non-empty string", unit_field)
        Ledger(epsilon_cap, delta)  # validates the cap and delta with the accounting's own checks
        require(
            declared_public_units is None or (isinstance(declared_public_units, int) and not isinstance(declared_public_units, bool) and declared_public_units >= 0),
            "declared_public_units", "None or an integer >= 0", declared_public_units,
        )
        dataset_id = "ds_" + secrets.token_hex(12)
        dek = secrets.token_bytes(KEY_BYTES)
        data = RecordCipher(dek)
        blobs: list[bytes] = []
        chunk: list[dict] = []
        n = 0
        for i, r in enumerate(records):
            chunk.append(clean_record(r, i))
            n += 1
            if len(chunk) == self._chunk:
                blobs.append(data.encrypt(json.dumps(chunk).encode(), dataset_id, f"records/{len(blobs)}"))
                chunk = []
        if chunk:
            blobs.append(data.encrypt(json.dumps(chunk).encode(), dataset_id, f"records/{len(blobs)}"))
        now = time.time()
        with self._tx() as c:
            try:
                c.execute(
                    f"INSERT INTO datasets ({self._COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, 0.0, 0)",
                    (dataset_id, tenant, name, text_field, label_field, unit_field, float(epsilon_cap), float(delta),
                     declared_public_units, n, now),
                )
            except pg_errors.UniqueViolation as e:
                if e.diag.constraint_name != "datasets_live_name":
                    raise
                raise Conflict(f"tenant already has a dataset named {name!r}") from None
            c.execute(
                "INSERT INTO dataset_keys (dataset_id, wrapped_key, secret) VALUES (%s, %s, %s)",
                (dataset_id, self._master.encrypt(dek, dataset_id, "data-key"),
                 self._master.encrypt(secrets.token_bytes(32), dataset_id, "partition-secret")),
            )
            with c.cursor() as cur:
                cur.executemany(
                    "INSERT INTO records (dataset_id, chunk, blob) VALUES (%s, %s, %s)",
                    [(dataset_id, i, b) for i, b in enumerate(blobs)],
                )
            if abandoned is not None and abandoned():
                raise Conflict(f"upload of {name!r} was abandoned by its client; nothing was stored")
        return DatasetInfo(dataset_id, tenant, name, text_field, label_field, unit_field, float(epsilon_cap), float(delta), declared_public_units, n, now)

    def get_dataset(self, tenant: str, dataset_id: str) -> DatasetInfo:
        return self._row_to_info(self._dataset(self._conn(), tenant, dataset_id))

    def list_datasets(self, tenant: str) -> list[DatasetInfo]:
        rows = self._conn().execute(
            f"SELECT {self._COLS} FROM datasets WHERE tenant = %s AND deleted_at IS NULL ORDER BY created_at, id", (tenant,)
        ).fetchall()
        return [self._row_to_info(r) for r in rows]

    def delete_dataset(self, tenant: str, dataset_id: str) -> None:
        """Erase the records, the jobs' results, the data key and the partition secret; keep a
        tombstone (name, cap, deleted_at), the ledger and the released counts, so what was
        spent is never forgotten. Waits for a charge in flight on the dataset (its row lock)."""
        with self._tx() as c:
            self._dataset(c, tenant, dataset_id, lock="UPDATE")
            c.execute("DELETE FROM records WHERE dataset_id = %s", (dataset_id,))
            c.execute("DELETE FROM job_results WHERE job_id IN (SELECT id FROM jobs WHERE dataset_id = %s)", (dataset_id,))
            c.execute("DELETE FROM dataset_keys WHERE dataset_id = %s", (dataset_id,))
            c.execute("UPDATE datasets SET deleted_at = %s WHERE id = %s", (time.time(), dataset_id))
        self._purge()

    def _purge(self) -> None:
        """Rewrite dataset_keys into a fresh file (VACUUM FULL frees the old one, dead key rows
        and all) and prune the records' dead rows now rather than at the next autovacuum. Best
        effort: a table that another transaction holds is skipped, never waited for (a waiting
        VACUUM FULL would queue every reader behind it)."""
        c = self._conn()
        for statement in ("VACUUM (FULL, SKIP_LOCKED) dataset_keys", "VACUUM (SKIP_LOCKED) records, job_results"):
            try:
                c.execute(statement)
            except psycopg.Error:  # pragma: no cover - e.g. a role that does not own the tables
                pass

    def deleted_dataset(self, tenant: str, dataset_id: str) -> dict:
        """The tombstone of a deleted dataset: id, name, epsilon_cap, delta, deleted_at."""
        r = self._dataset(self._conn(), tenant, dataset_id, include_deleted=True)
        if r[11] is None:
            raise NotFound(f"dataset {echo_id(dataset_id)} is not deleted")
        return {"id": r[0], "name": r[2], "epsilon_cap": r[6], "delta": r[7], "deleted_at": r[11]}

    def read_records(self, tenant: str, dataset_id: str) -> list[dict]:
        with self._tx(snapshot=True) as c:  # one snapshot: the key and the chunks agree
            r = self._dataset(c, tenant, dataset_id)
            blobs = c.execute("SELECT chunk, blob FROM records WHERE dataset_id = %s ORDER BY chunk", (dataset_id,)).fetchall()
        data = RecordCipher(self._master.decrypt(r[12], r[0], "data-key"))
        out: list[dict] = []
        for i, (chunk, blob) in enumerate(blobs):
            if chunk != i:
                raise DecryptionError(f"dataset {dataset_id!r}: record chunk {i} is missing")
            out.extend(json.loads(data.decrypt(blob, dataset_id, f"records/{chunk}")))
        if len(out) != r[9]:
            raise DecryptionError(f"dataset {dataset_id!r}: {len(out)} records decrypted, {r[9]} stored")
        return out

    def partition_secret(self, tenant: str, dataset_id: str) -> bytes:
        r = self._dataset(self._conn(), tenant, dataset_id)
        return self._master.decrypt(r[13], dataset_id, "partition-secret")

    # -----------------------------------------------------------------------------------------
    # ledger

    _LEDGER_COLS = "id, dataset_id, label, events, state, created_at"

    @staticmethod
    def _ledger_row(r: tuple) -> LedgerRow:
        return LedgerRow(r[0], r[1], r[2], events_from_json(r[3]), r[4], r[5])

    def _ledger_rows(self, c: psycopg.Connection, dataset_id: str, last: int | None = None) -> list[LedgerRow]:
        """The ledger oldest first; with `last`, only its `last` most recent rows (read from the
        end of the index: O(last), not O(ledger))."""
        if last is None:
            rows = c.execute(f"SELECT {self._LEDGER_COLS} FROM ledger WHERE dataset_id = %s ORDER BY id", (dataset_id,)).fetchall()
        else:
            rows = c.execute(
                f"SELECT {self._LEDGER_COLS} FROM ledger WHERE dataset_id = %s ORDER BY id DESC LIMIT %s", (dataset_id, last)
            ).fetchall()[::-1]
        return [self._ledger_row(r) for r in rows]

    @staticmethod
    def _exhausted(r: tuple, events: Sequence[PrivacyEvent]) -> BudgetExhausted:
        return BudgetExhausted(remaining_epsilon(r[6], r[7], r[14]), epsilon_of(events, r[7]), r[7])

    def _charge(self, c: psycopg.Connection, r: tuple, label: str, events: tuple[PrivacyEvent, ...]) -> LedgerRow | None:
        """Inside a transaction holding the dataset's row lock (r was read FOR UPDATE): insert
        the row and add its rho to the composed rho if the total still fits under the cap; None
        if it does not. Reads one dataset row, whatever the ledger's length."""
        rho_after = r[14] + events_rho(events)
        if epsilon_of_rho(rho_after, r[7]) > r[6]:
            return None
        label = bounded_label(label)
        now = time.time()
        (ledger_id,) = c.execute(
            "INSERT INTO ledger (dataset_id, label, events, state, created_at) VALUES (%s, %s, %s, 'reserved', %s) RETURNING id",
            (r[0], label, events_to_json(events), now),
        ).fetchone()
        c.execute("UPDATE datasets SET rho_spent = %s, ledger_entries = ledger_entries + 1 WHERE id = %s", (rho_after, r[0]))
        return LedgerRow(ledger_id, r[0], label, events, "reserved", now)

    def reserve(self, tenant: str, dataset_id: str, label: str, events: Sequence[PrivacyEvent]) -> LedgerRow:
        """Charge `events` to the dataset's ledger if they fit under its cap (BudgetExhausted
        otherwise). The check and the insert share one transaction under the dataset's row
        lock, across every process and machine using the database. A reservation is never
        released. A label over MAX_LABEL_CHARS is stored shortened (interface.bounded_label)."""
        events = check_events(label, events)
        with self._tx() as c:
            r = self._dataset(c, tenant, dataset_id, lock="UPDATE")
            out = self._charge(c, r, label, events)
        if out is None:  # computed after the lock is released
            raise self._exhausted(r, events)
        return out

    def ledger_rows(self, tenant: str, dataset_id: str) -> list[LedgerRow]:
        """Every reservation, deleted datasets included."""
        with self._tx(snapshot=True) as c:
            self._dataset(c, tenant, dataset_id, include_deleted=True)
            return self._ledger_rows(c, dataset_id)

    def ledger_row(self, tenant: str, dataset_id: str, ledger_id: int) -> LedgerRow:
        """One reservation of the dataset (deleted datasets included), by its id."""
        require(isinstance(ledger_id, int) and not isinstance(ledger_id, bool), "ledger_id", "an integer", ledger_id)
        with self._tx(snapshot=True) as c:
            self._dataset(c, tenant, dataset_id, include_deleted=True)
            r = c.execute(f"SELECT {self._LEDGER_COLS} FROM ledger WHERE id = %s AND dataset_id = %s", (ledger_id, dataset_id)).fetchone()
        if r is None:
            raise NotFound(f"ledger entry {ledger_id!r} not found")
        return self._ledger_row(r)

    def ledger(self, tenant: str, dataset_id: str) -> Ledger:
        """The full ledger, entry by entry (O(entries); budgets use composed_ledger or budget)."""
        with self._tx(snapshot=True) as c:
            r = self._dataset(c, tenant, dataset_id, include_deleted=True)
            rows = self._ledger_rows(c, dataset_id)
        return Ledger(r[6], r[7], tuple(LedgerEntry(x.label, x.events) for x in rows))

    def composed_ledger(self, tenant: str, dataset_id: str) -> Ledger:
        """The ledger as one entry holding its composed rho, read from one row."""
        r = self._dataset(self._conn(), tenant, dataset_id, include_deleted=True)
        entries = (LedgerEntry("composed ledger", (PrivacyEvent("zcdp", r[14], note=f"{r[15]} entries"),)),) if r[15] else ()
        return Ledger(r[6], r[7], entries)

    def budget(self, tenant: str, dataset_id: str, recent: int = 0) -> dict:
        """cap, spent, remaining (epsilon at the dataset's delta), delta, entries, deleted,
        recent_entries (the `recent` most recent reservations, oldest first, from the same
        snapshot as the totals). Reads one dataset row (and `recent` ledger rows)."""
        require(isinstance(recent, int) and recent >= 0, "recent", "an integer >= 0", recent)
        with self._tx(snapshot=True) as c:
            r = self._dataset(c, tenant, dataset_id, include_deleted=True)
            rows = self._ledger_rows(c, dataset_id, recent) if recent else []
        cap, delta, rho = r[6], r[7], r[14]
        return {
            "cap": cap,
            "spent": epsilon_of_rho(rho, delta) if rho > 0 else 0.0,
            "remaining": remaining_epsilon(cap, delta, rho),
            "delta": delta,
            "entries": r[15],
            "deleted": r[11] is not None,
            "recent_entries": rows,
        }

    # -----------------------------------------------------------------------------------------
    # released counts

    _COUNT_COLS = "dataset_id, kind, value, charged, ledger_id, created_at"

    @staticmethod
    def _count_row(r: tuple) -> ReleasedCount:
        return ReleasedCount(r[0], r[1], json.loads(r[2]), bool(r[3]), r[4], r[5])

    def released_count(self, tenant: str, dataset_id: str, kind: str) -> ReleasedCount | None:
        with self._tx(snapshot=True) as c:
            self._dataset(c, tenant, dataset_id)
            r = c.execute(f"SELECT {self._COUNT_COLS} FROM released_counts WHERE dataset_id = %s AND kind = %s", (dataset_id, kind)).fetchone()
        return None if r is None else self._count_row(r)

    def save_released_count(
        self, tenant: str, dataset_id: str, kind: str, value: Any, events: Sequence[PrivacyEvent] = ()
    ) -> ReleasedCount:
        """Save a released count once per (dataset, kind), charging `events` in the same
        transaction (no events: a count declared public, recorded as uncharged).

        If a count of that kind is already saved, nothing is charged and the saved one is
        returned: the caller must use the returned value (its own draw was never released).
        The dataset's row lock orders concurrent savers, so the later one always finds the
        earlier one's row (READ COMMITTED: each statement sees what committed before it)."""
        require_nonempty_str(kind, "kind")
        events = check_events(f"released {kind}", events)
        text = json.dumps(value, allow_nan=False)
        exhausted = None
        with self._tx() as c:
            r = self._dataset(c, tenant, dataset_id, lock="UPDATE")
            old = c.execute(f"SELECT {self._COUNT_COLS} FROM released_counts WHERE dataset_id = %s AND kind = %s", (dataset_id, kind)).fetchone()
            if old is not None:
                return self._count_row(old)
            ledger_id = None
            if events:
                out = self._charge(c, r, f"released {kind}", events)
                if out is None:
                    exhausted = r
                else:
                    ledger_id = out.id
            if exhausted is None:
                now = time.time()
                c.execute(
                    f"INSERT INTO released_counts ({self._COUNT_COLS}) VALUES (%s, %s, %s, %s, %s, %s)",
                    (dataset_id, kind, text, bool(events), ledger_id, now),
                )
        if exhausted is not None:  # nothing was written; computed after the lock is released
            raise self._exhausted(exhausted, events)
        return ReleasedCount(dataset_id, kind, json.loads(text), bool(events), ledger_id, now)

    # -----------------------------------------------------------------------------------------
    # jobs

    _JOB_COLS = (
        "j.id, j.tenant, j.dataset_id, j.request_json, j.state, j.progress, j.message, "
        "(SELECT COUNT(*) FROM job_results r WHERE r.job_id = j.id), j.created_at, j.updated_at, j.ledger_id, j.nonce"
    )

    def _job(self, c: psycopg.Connection, job_id: str, tenant: str | None = None) -> JobInfo:
        r = c.execute(f"SELECT {self._JOB_COLS} FROM jobs j WHERE j.id = %s", (job_id,)).fetchone()
        if r is None or (tenant is not None and r[1] != tenant):
            raise NotFound(f"job {echo_id(job_id)} not found")
        return JobInfo(*r)

    def create_job(self, tenant: str, dataset_id: str, request_json: str, ledger_id: int | None = None,
                   nonce: bytes | None = None) -> str:
        """A queued job; ledger_id names the reservation made for it (reserved first, so a crash
        in between leaves a charge without a job, never a job without a charge); nonce is its
        randomness nonce (mechanisms.randomness), kept for a resumed job."""
        require(isinstance(request_json, str), "request_json", "a string", type(request_json).__name__)
        require(nonce is None or (isinstance(nonce, bytes) and len(nonce) == 16), "nonce", "None or 16 bytes", type(nonce).__name__)
        require(ledger_id is None or (isinstance(ledger_id, int) and not isinstance(ledger_id, bool)), "ledger_id", "None or an integer", ledger_id)
        job_id = "job_" + secrets.token_hex(12)
        now = time.time()
        with self._tx() as c:
            self._dataset(c, tenant, dataset_id, lock="SHARE")  # no job on a dataset deleted meanwhile
            if ledger_id is not None:
                owner = c.execute("SELECT dataset_id FROM ledger WHERE id = %s", (ledger_id,)).fetchone()
                require(owner is not None and owner[0] == dataset_id, "ledger_id", f"a reservation on dataset {dataset_id}", ledger_id)
            c.execute(
                "INSERT INTO jobs (id, tenant, dataset_id, request_json, state, progress, message, created_at, updated_at, ledger_id, nonce)"
                " VALUES (%s, %s, %s, %s, 'queued', 0.0, '', %s, %s, %s, %s)",
                (job_id, tenant, dataset_id, request_json, now, now, ledger_id, nonce),
            )
        return job_id

    def update_job(self, job_id: str, state: str, progress: float | None = None, message: str | None = None) -> JobInfo:
        """Set state (and progress in [0, 1], message). A finished job (succeeded, failed,
        cancelled) cannot move to another state: Conflict. The job's row is locked for the
        check, so two processes cannot both move it out of a state."""
        require(state in JOB_STATES, "state", f"one of {', '.join(JOB_STATES)}", state)
        require(
            progress is None or (isinstance(progress, (int, float)) and math.isfinite(progress) and 0 <= progress <= 1),
            "progress", "None or a number in [0, 1]", progress,
        )
        require(message is None or isinstance(message, str), "message", "None or a string", message)
        with self._tx() as c:
            locked = c.execute("SELECT state FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if locked is None:
                raise NotFound(f"job {echo_id(job_id)} not found")
            if locked[0] in TERMINAL_JOB_STATES and state != locked[0]:
                raise Conflict(f"job {job_id!r} is already {locked[0]}; it cannot become {state}")
            c.execute(
                "UPDATE jobs SET state = %s, progress = COALESCE(%s, progress), message = COALESCE(%s, message), updated_at = %s WHERE id = %s",
                (state, None if progress is None else float(progress), message, time.time(), job_id),
            )
            return self._job(c, job_id)

    def append_result(self, job_id: str, seq: int, record_json: str) -> bool:
        """Store result number seq. Idempotent: True if stored now, False if the same record was
        already there; Conflict if a different record holds that seq."""
        require(isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0, "seq", "an integer >= 0", seq)
        require(isinstance(record_json, str), "record_json", "a string", type(record_json).__name__)
        with self._tx() as c:
            self._job(c, job_id)
            cur = c.execute(
                "INSERT INTO job_results (job_id, seq, record) VALUES (%s, %s, %s) ON CONFLICT (job_id, seq) DO NOTHING",
                (job_id, seq, record_json),
            )
            if cur.rowcount == 1:
                return True
            (old,) = c.execute("SELECT record FROM job_results WHERE job_id = %s AND seq = %s", (job_id, seq)).fetchone()
            if old != record_json:
                raise Conflict(f"job {job_id!r} already holds a different result at seq {seq}")
            return False

    def results(self, job_id: str, offset: int = 0, limit: int | None = None, tenant: str | None = None) -> list[str]:
        """Results with seq >= offset, in seq order (at most `limit`). tenant: scope the lookup
        (another tenant's job is NotFound)."""
        require(isinstance(offset, int) and offset >= 0, "offset", "an integer >= 0", offset)
        require(limit is None or (isinstance(limit, int) and limit >= 0), "limit", "None or an integer >= 0", limit)
        with self._tx(snapshot=True) as c:
            self._job(c, job_id, tenant)
            rows = c.execute(
                "SELECT record FROM job_results WHERE job_id = %s AND seq >= %s ORDER BY seq LIMIT %s", (job_id, offset, limit)
            ).fetchall()
        return [r[0] for r in rows]

    def get_job(self, job_id: str, tenant: str | None = None) -> JobInfo:
        return self._job(self._conn(), job_id, tenant)

    def list_unfinished_jobs(self) -> list[JobInfo]:
        """Queued and running jobs of every tenant, oldest first (to resume after a restart)."""
        rows = self._conn().execute(
            f"SELECT {self._JOB_COLS} FROM jobs j WHERE j.state = ANY(%s) ORDER BY j.created_at, j.id", (list(UNFINISHED_JOB_STATES),)
        ).fetchall()
        return [JobInfo(*r) for r in rows]

    def ping(self) -> None:
        """One round trip to the database; raises if it cannot be reached."""
        self._conn().execute("SELECT 1").fetchone()

    def claim_job(self, job_id: str, owner: str, ttl_s: float) -> bool:
        """Take (or keep) the lease on an unfinished job: True if `owner` now runs it until
        now + ttl_s; False if another owner's lease is still live or the job has finished. One
        conditional UPDATE: two servers can never both hold a live lease."""
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET lease_owner = %s, lease_until = %s WHERE id = %s AND state = ANY(%s) "
                "AND (lease_owner IS NULL OR lease_owner = %s OR lease_until < %s)",
                (owner, now + ttl_s, job_id, list(UNFINISHED_JOB_STATES), owner, now),
            )
            return cur.rowcount == 1

    def renew_leases(self, owner: str, job_ids: Sequence[str], ttl_s: float) -> set[str]:
        """Extend the leases `owner` still holds; the ids renewed (a job taken over is not)."""
        return {j for j in job_ids if self.claim_job(j, owner, ttl_s)}

    def mark_group_started(self, job_id: str, group_id: int) -> bool:
        """Claim a job's group, durably and before the engine sees it: True if this call claimed
        it, False if it was already started (by an earlier run, another thread, process or
        machine). The check and the claim are one INSERT ... ON CONFLICT DO NOTHING on the
        primary key, so two callers can never both get True."""
        require(isinstance(group_id, int) and not isinstance(group_id, bool) and group_id >= 0, "group_id", "an integer >= 0", group_id)
        with self._tx() as c:
            self._job(c, job_id)
            cur = c.execute("INSERT INTO job_groups (job_id, group_id) VALUES (%s, %s) ON CONFLICT DO NOTHING", (job_id, group_id))
            return cur.rowcount == 1

    def started_groups(self, job_id: str) -> set[int]:
        rows = self._conn().execute("SELECT group_id FROM job_groups WHERE job_id = %s", (job_id,)).fetchall()
        return {r[0] for r in rows}
