"""SQLite backend of the store: one file, WAL, synchronous=FULL, safe across threads and processes.

Concurrency: every thread (and every process: a forked child never reuses its parent's handle)
opens its own connection. Anything that writes runs in `BEGIN IMMEDIATE`, which takes SQLite's
single write lock up front, so a budget check and the reservation it allows can never
interleave with another writer's. Readers never block on WAL.

At rest: each dataset gets a fresh data key, wrapped (AES-GCM) by the master key; its records
are JSON chunks encrypted with the data key, each bound to (dataset id, chunk number); its
partition secret is encrypted with the master key. Deleting a dataset DELETEs its records and
NULLs its wrapped key and secret with `secure_delete=ON` (freed cells are zeroed) and then
truncates the WAL; because the wrapped key is gone, any copy of a blob that survives elsewhere
(a backup, a disk block) can no longer be decrypted either.

Budgets: every event is zCDP, so composition adds rho. Each dataset row keeps `rho_spent` (the
composed rho of its ledger) and `ledger_entries`, updated in the transaction that inserts a
reservation; budgets and the cap check read that one row, never the ledger.

Schema versions (meta.schema_version): 1 had no rho_spent/ledger_entries; opening a version-1
database adds them and fills them from its ledger in one transaction.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mechanisms import Ledger, LedgerEntry, PrivacyEvent
from mechanisms.accounting import epsilon_of
from mechanisms.config import require

from .crypto import KEY_BYTES, DecryptionError, RecordCipher
from .interface import (
    JOB_STATES,
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
    echo_id,
)
from .interface import TERMINAL_JOB_STATES as _TERMINAL
from .interface import check_events as _check_events
from .interface import clean_record as _clean_record
from .interface import epsilon_of_rho as _epsilon_of_rho
from .interface import events_from_json as _events_from_json
from .interface import events_rho as _events_rho
from .interface import events_to_json as _events_json
from .interface import remaining_epsilon as _remaining_epsilon
from .interface import require_nonempty_str as _nonempty_str

SCHEMA_VERSION = 4
_KEY_CHECK = b"privtext key check v1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    text_field TEXT NOT NULL,
    label_field TEXT,
    unit_field TEXT,
    epsilon_cap REAL NOT NULL,
    delta REAL NOT NULL,
    declared_public_units INTEGER,
    records INTEGER NOT NULL,
    created_at REAL NOT NULL,
    deleted_at REAL,
    wrapped_key BLOB,
    secret BLOB,
    rho_spent REAL NOT NULL DEFAULT 0,
    ledger_entries INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS datasets_live_name ON datasets(tenant, name) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS datasets_tenant ON datasets(tenant, created_at);
CREATE TABLE IF NOT EXISTS records (
    dataset_id TEXT NOT NULL REFERENCES datasets(id),
    chunk INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (dataset_id, chunk)
);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset_id TEXT NOT NULL REFERENCES datasets(id),
    label TEXT NOT NULL,
    events TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state = 'reserved'),
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_dataset ON ledger(dataset_id, id);
CREATE TRIGGER IF NOT EXISTS ledger_never_deleted BEFORE DELETE ON ledger
    BEGIN SELECT RAISE(ABORT, 'ledger rows are never deleted'); END;
CREATE TRIGGER IF NOT EXISTS ledger_never_updated BEFORE UPDATE ON ledger
    BEGIN SELECT RAISE(ABORT, 'ledger rows are never updated'); END;
CREATE TRIGGER IF NOT EXISTS datasets_never_deleted BEFORE DELETE ON datasets
    BEGIN SELECT RAISE(ABORT, 'datasets are tombstoned, never deleted'); END;
CREATE TABLE IF NOT EXISTS released_counts (
    dataset_id TEXT NOT NULL REFERENCES datasets(id),
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    charged INTEGER NOT NULL,
    ledger_id INTEGER REFERENCES ledger(id),
    created_at REAL NOT NULL,
    PRIMARY KEY (dataset_id, kind)
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    dataset_id TEXT NOT NULL REFERENCES datasets(id),
    request_json TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL,
    message TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ledger_id INTEGER REFERENCES ledger(id),
    nonce BLOB,
    lease_owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at);
CREATE TABLE IF NOT EXISTS job_results (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS job_groups (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    group_id INTEGER NOT NULL,
    PRIMARY KEY (job_id, group_id)
);
"""


def _migrate_1_to_2(c: sqlite3.Connection) -> None:
    """Add rho_spent and ledger_entries and fill them from each dataset's ledger, adding entry
    by entry in id order (the same sums as reservations made one by one)."""
    c.execute("ALTER TABLE datasets ADD COLUMN rho_spent REAL NOT NULL DEFAULT 0")
    c.execute("ALTER TABLE datasets ADD COLUMN ledger_entries INTEGER NOT NULL DEFAULT 0")
    totals: dict[str, list] = {}
    for dataset_id, events in c.execute("SELECT dataset_id, events FROM ledger ORDER BY id"):
        t = totals.setdefault(dataset_id, [0.0, 0])
        t[0] += _events_rho(_events_from_json(events))
        t[1] += 1
    c.executemany("UPDATE datasets SET rho_spent = ?, ledger_entries = ? WHERE id = ?", ((r, n, d) for d, (r, n) in totals.items()))


def _migrate_2_to_3(c: sqlite3.Connection) -> None:
    """Jobs keep their randomness nonce (mechanisms.randomness); older jobs have none and resume
    under a fresh one (their started groups are skipped, so no stream is reused)."""
    if "nonce" not in {r[1] for r in c.execute("PRAGMA table_info(jobs)")}:
        c.execute("ALTER TABLE jobs ADD COLUMN nonce BLOB")


def _migrate_3_to_4(c: sqlite3.Connection) -> None:
    """Jobs run under a lease (lease_owner, lease_until): one server at a time runs a job."""
    have = {r[1] for r in c.execute("PRAGMA table_info(jobs)")}
    for column, kind in (("lease_owner", "TEXT"), ("lease_until", "REAL")):
        if column not in have:
            c.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")


_MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4}


class SqliteStore:
    """The SQLite store. `key` is the 32-byte master data key (see crypto.load_or_create_key);
    it is never written to the database."""

    def __init__(self, path: str | os.PathLike, key: bytes, *, chunk_records: int = 256, busy_timeout_s: float = 60.0) -> None:
        require(isinstance(chunk_records, int) and chunk_records >= 1, "chunk_records", "an integer >= 1", chunk_records)
        require(isinstance(key, (bytes, bytearray)) and len(key) == KEY_BYTES, "key", f"{KEY_BYTES} bytes", f"{len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__}")
        self.path = Path(path)
        self._master = RecordCipher(bytes(key))
        self._chunk = chunk_records
        self._timeout = busy_timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        c = self._conn()
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"could not put {str(self.path)!r} in WAL mode (got {mode!r})")
        with self._tx() as c:
            for stmt in _SCHEMA.split(";\n"):
                if stmt.strip():
                    c.execute(stmt)
            row = c.execute("SELECT v FROM meta WHERE k = 'key_check'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                c.execute("INSERT INTO meta VALUES ('key_check', ?)", (self._master.encrypt(_KEY_CHECK, "-", "key-check"),))
            else:
                try:
                    ok = self._master.decrypt(row[0], "-", "key-check") == _KEY_CHECK
                except DecryptionError:
                    ok = False
                if not ok:
                    raise ValueError(f"key does not match the data key of {str(self.path)!r}")
                self._migrate(c)

    def _migrate(self, c: sqlite3.Connection) -> None:
        """Bring an older database to SCHEMA_VERSION, inside the opening transaction."""
        row = c.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
        version = int(row[0]) if row is not None else 1
        if version > SCHEMA_VERSION:
            raise StoreError(f"schema_version must be <= {SCHEMA_VERSION} (this privtext), got {version} in {str(self.path)!r}")
        while version < SCHEMA_VERSION:
            _MIGRATIONS[version](c)
            version += 1
        c.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version),))

    # -----------------------------------------------------------------------------------------
    # connections and transactions

    def _conn(self) -> sqlite3.Connection:
        loc = self._local
        if getattr(loc, "conn", None) is None or loc.pid != os.getpid():
            # After fork the parent's handle is abandoned, never used or closed (SQLite forbids it).
            c = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            c.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            c.execute("PRAGMA foreign_keys = ON")
            c.execute("PRAGMA synchronous = FULL")
            c.execute("PRAGMA secure_delete = ON")
            loc.conn, loc.pid = c, os.getpid()
            with self._all_lock:
                self._all.append(c)
        return loc.conn

    @contextmanager
    def _tx(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield c
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        else:
            c.execute("COMMIT")

    def close(self) -> None:
        """Close every connection this process opened (call when no thread uses the store)."""
        with self._all_lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:  # pragma: no cover
                pass
        self._local = threading.local()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -----------------------------------------------------------------------------------------
    # datasets

    @staticmethod
    def _row_to_info(r: sqlite3.Row | tuple) -> DatasetInfo:
        return DatasetInfo(
            id=r[0], tenant=r[1], name=r[2], text_field=r[3], label_field=r[4], unit_field=r[5],
            epsilon_cap=r[6], delta=r[7], declared_public_units=r[8], records=r[9], created_at=r[10],
        )

    _COLS = ("id, tenant, name, text_field, label_field, unit_field, epsilon_cap, delta, declared_public_units, records, created_at, "
             "deleted_at, wrapped_key, secret, rho_spent, ledger_entries")

    def _dataset(self, c: sqlite3.Connection, tenant: str, dataset_id: str, *, include_deleted: bool = False) -> tuple:
        r = c.execute(f"SELECT {self._COLS} FROM datasets WHERE id = ? AND tenant = ?", (dataset_id, tenant)).fetchone()
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
        write transaction starts, so a slow upload never holds the write lock.

        abandoned: asked inside the transaction just before it commits; True (the client gave
        up: cancelled, deadline passed) rolls everything back and raises Conflict, so a retry
        with the same name is never refused by a half-finished upload."""
        _nonempty_str(tenant, "tenant")
        _nonempty_str(name, "name")
        _nonempty_str(text_field, "text_field")
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
            chunk.append(_clean_record(r, i))
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
                    f"INSERT INTO datasets ({self._COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, 0.0, 0)",
                    (
                        dataset_id, tenant, name, text_field, label_field, unit_field, float(epsilon_cap), float(delta),
                        declared_public_units, n, now,
                        self._master.encrypt(dek, dataset_id, "data-key"),
                        self._master.encrypt(secrets.token_bytes(32), dataset_id, "partition-secret"),
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"tenant already has a dataset named {name!r}") from None
            c.executemany(
                "INSERT INTO records (dataset_id, chunk, blob) VALUES (?, ?, ?)",
                ((dataset_id, i, b) for i, b in enumerate(blobs)),
            )
            if abandoned is not None and abandoned():
                raise Conflict(f"upload of {name!r} was abandoned by its client; nothing was stored")
        return DatasetInfo(dataset_id, tenant, name, text_field, label_field, unit_field, float(epsilon_cap), float(delta), declared_public_units, n, now)

    def get_dataset(self, tenant: str, dataset_id: str) -> DatasetInfo:
        return self._row_to_info(self._dataset(self._conn(), tenant, dataset_id))

    def list_datasets(self, tenant: str) -> list[DatasetInfo]:
        rows = self._conn().execute(
            f"SELECT {self._COLS} FROM datasets WHERE tenant = ? AND deleted_at IS NULL ORDER BY created_at, id", (tenant,)
        ).fetchall()
        return [self._row_to_info(r) for r in rows]

    def delete_dataset(self, tenant: str, dataset_id: str) -> None:
        """Erase the records, the jobs' results, the data key and the partition secret; keep a tombstone (name, cap,
        deleted_at), the ledger and the released counts, so what was spent is never forgotten."""
        with self._tx() as c:
            self._dataset(c, tenant, dataset_id)
            c.execute("DELETE FROM records WHERE dataset_id = ?", (dataset_id,))
            c.execute("DELETE FROM job_results WHERE job_id IN (SELECT id FROM jobs WHERE dataset_id = ?)", (dataset_id,))
            c.execute(
                "UPDATE datasets SET deleted_at = ?, wrapped_key = NULL, secret = NULL WHERE id = ?", (time.time(), dataset_id)
            )
        # Move the zeroed pages into the database file and cut the WAL (old frames hold the
        # blobs' former pages). Best effort: a concurrent reader can hold the checkpoint back;
        # the wrapped key is gone either way.
        try:
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError:  # pragma: no cover
            pass

    def deleted_dataset(self, tenant: str, dataset_id: str) -> dict:
        """The tombstone of a deleted dataset: id, name, epsilon_cap, delta, deleted_at."""
        r = self._dataset(self._conn(), tenant, dataset_id, include_deleted=True)
        if r[11] is None:
            raise NotFound(f"dataset {echo_id(dataset_id)} is not deleted")
        return {"id": r[0], "name": r[2], "epsilon_cap": r[6], "delta": r[7], "deleted_at": r[11]}

    def _data_cipher(self, r: tuple) -> RecordCipher:
        return RecordCipher(self._master.decrypt(r[12], r[0], "data-key"))

    def read_records(self, tenant: str, dataset_id: str) -> list[dict]:
        with self._tx(immediate=False) as c:  # one snapshot: the key and the chunks agree
            r = self._dataset(c, tenant, dataset_id)
            blobs = c.execute("SELECT chunk, blob FROM records WHERE dataset_id = ? ORDER BY chunk", (dataset_id,)).fetchall()
        data = self._data_cipher(r)
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
        return LedgerRow(r[0], r[1], r[2], _events_from_json(r[3]), r[4], r[5])

    def _ledger_rows(self, c: sqlite3.Connection, dataset_id: str, last: int | None = None) -> list[LedgerRow]:
        """The ledger oldest first; with `last`, only its `last` most recent rows (read from the
        end of the index: O(last), not O(ledger))."""
        if last is None:
            rows = c.execute(f"SELECT {self._LEDGER_COLS} FROM ledger WHERE dataset_id = ? ORDER BY id", (dataset_id,)).fetchall()
        else:
            rows = c.execute(
                f"SELECT {self._LEDGER_COLS} FROM ledger WHERE dataset_id = ? ORDER BY id DESC LIMIT ?", (dataset_id, last)
            ).fetchall()[::-1]
        return [self._ledger_row(r) for r in rows]

    @staticmethod
    def _make_ledger(r: tuple, rows: Sequence[LedgerRow]) -> Ledger:
        return Ledger(r[6], r[7], tuple(LedgerEntry(x.label, x.events) for x in rows))

    @staticmethod
    def _exhausted(r: tuple, events: Sequence[PrivacyEvent]) -> BudgetExhausted:
        return BudgetExhausted(_remaining_epsilon(r[6], r[7], r[14]), epsilon_of(events, r[7]), r[7])

    def _charge(self, c: sqlite3.Connection, r: tuple, label: str, events: tuple[PrivacyEvent, ...]) -> LedgerRow | None:
        """Inside an IMMEDIATE transaction: insert the row and add its rho to the dataset's
        composed rho if the total still fits under the cap; None if it does not. Reads one
        dataset row, whatever the ledger's length."""
        rho_after = r[14] + _events_rho(events)
        if _epsilon_of_rho(rho_after, r[7]) > r[6]:
            return None
        label = bounded_label(label)
        now = time.time()
        cur = c.execute(
            "INSERT INTO ledger (dataset_id, label, events, state, created_at) VALUES (?, ?, ?, 'reserved', ?)",
            (r[0], label, _events_json(events), now),
        )
        c.execute("UPDATE datasets SET rho_spent = ?, ledger_entries = ledger_entries + 1 WHERE id = ?", (rho_after, r[0]))
        return LedgerRow(cur.lastrowid, r[0], label, events, "reserved", now)

    _check_events = staticmethod(_check_events)

    def reserve(self, tenant: str, dataset_id: str, label: str, events: Sequence[PrivacyEvent]) -> LedgerRow:
        """Charge `events` to the dataset's ledger if they fit under its cap (BudgetExhausted
        otherwise). The check and the insert share one BEGIN IMMEDIATE transaction. A
        reservation is never released. A label over MAX_LABEL_CHARS is stored shortened
        (interface.bounded_label); the returned row holds the stored label."""
        events = self._check_events(label, events)
        with self._tx() as c:
            r = self._dataset(c, tenant, dataset_id)
            out = self._charge(c, r, label, events)
        if out is None:  # computed outside the write lock
            raise self._exhausted(r, events)
        return out

    def ledger_rows(self, tenant: str, dataset_id: str) -> list[LedgerRow]:
        """Every reservation, deleted datasets included."""
        with self._tx(immediate=False) as c:
            self._dataset(c, tenant, dataset_id, include_deleted=True)
            return self._ledger_rows(c, dataset_id)

    def ledger_row(self, tenant: str, dataset_id: str, ledger_id: int) -> LedgerRow:
        """One reservation of the dataset (deleted datasets included), by its id."""
        with self._tx(immediate=False) as c:
            self._dataset(c, tenant, dataset_id, include_deleted=True)
            r = c.execute(f"SELECT {self._LEDGER_COLS} FROM ledger WHERE id = ? AND dataset_id = ?", (ledger_id, dataset_id)).fetchone()
        if r is None:
            raise NotFound(f"ledger entry {ledger_id!r} not found")
        return self._ledger_row(r)

    def ledger(self, tenant: str, dataset_id: str) -> Ledger:
        """The full ledger, entry by entry (O(entries); budgets use composed_ledger or budget)."""
        with self._tx(immediate=False) as c:
            r = self._dataset(c, tenant, dataset_id, include_deleted=True)
            return self._make_ledger(r, self._ledger_rows(c, dataset_id))

    def composed_ledger(self, tenant: str, dataset_id: str) -> Ledger:
        """The ledger as one entry holding its composed rho: what the full ledger costs, read
        from one row (for planning and checks, where the entries' labels do not matter)."""
        r = self._dataset(self._conn(), tenant, dataset_id, include_deleted=True)
        entries = (LedgerEntry("composed ledger", (PrivacyEvent("zcdp", r[14], note=f"{r[15]} entries"),)),) if r[15] else ()
        return Ledger(r[6], r[7], entries)

    def budget(self, tenant: str, dataset_id: str, recent: int = 0) -> dict:
        """cap, spent, remaining (epsilon at the dataset's delta), delta, entries (how many
        reservations), deleted (bool), recent_entries (the `recent` most recent reservations,
        oldest first, read in the same snapshot). Works on deleted datasets: what was spent
        stays visible. Reads one dataset row (and `recent` ledger rows)."""
        require(isinstance(recent, int) and recent >= 0, "recent", "an integer >= 0", recent)
        with self._tx(immediate=False) as c:
            r = self._dataset(c, tenant, dataset_id, include_deleted=True)
            rows = self._ledger_rows(c, dataset_id, recent) if recent else []
        cap, delta, rho = r[6], r[7], r[14]
        return {
            "cap": cap,
            "spent": _epsilon_of_rho(rho, delta) if rho > 0 else 0.0,
            "remaining": _remaining_epsilon(cap, delta, rho),
            "delta": delta,
            "entries": r[15],
            "deleted": r[11] is not None,
            "recent_entries": rows,
        }

    # -----------------------------------------------------------------------------------------
    # released counts

    @staticmethod
    def _count_row(r: tuple) -> ReleasedCount:
        return ReleasedCount(r[0], r[1], json.loads(r[2]), bool(r[3]), r[4], r[5])

    def released_count(self, tenant: str, dataset_id: str, kind: str) -> ReleasedCount | None:
        with self._tx(immediate=False) as c:
            self._dataset(c, tenant, dataset_id)
            r = c.execute(
                "SELECT dataset_id, kind, value, charged, ledger_id, created_at FROM released_counts WHERE dataset_id = ? AND kind = ?",
                (dataset_id, kind),
            ).fetchone()
        return None if r is None else self._count_row(r)

    def save_released_count(
        self, tenant: str, dataset_id: str, kind: str, value: Any, events: Sequence[PrivacyEvent] = ()
    ) -> ReleasedCount:
        """Save a released count (value: any JSON, e.g. an int or a label histogram) once per
        (dataset, kind), charging `events` to the ledger in the same transaction (no events: a
        count declared public, recorded as uncharged).

        If a count of that kind is already saved, nothing is charged and the saved one is
        returned: the caller must use the returned value (its own draw was never released)."""
        _nonempty_str(kind, "kind")
        events = self._check_events(f"released {kind}", events)
        text = json.dumps(value, allow_nan=False)
        with self._tx() as c:
            r = self._dataset(c, tenant, dataset_id)
            old = c.execute(
                "SELECT dataset_id, kind, value, charged, ledger_id, created_at FROM released_counts WHERE dataset_id = ? AND kind = ?",
                (dataset_id, kind),
            ).fetchone()
            if old is not None:
                return self._count_row(old)
            ledger_id = None
            if events:
                out = self._charge(c, r, f"released {kind}", events)
                if out is None:
                    c.execute("ROLLBACK")
                    raise self._exhausted(r, events)
                ledger_id = out.id
            now = time.time()
            c.execute(
                "INSERT INTO released_counts (dataset_id, kind, value, charged, ledger_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (dataset_id, kind, text, int(bool(events)), ledger_id, now),
            )
        return ReleasedCount(dataset_id, kind, json.loads(text), bool(events), ledger_id, now)

    # -----------------------------------------------------------------------------------------
    # jobs

    _JOB_COLS = (
        "j.id, j.tenant, j.dataset_id, j.request_json, j.state, j.progress, j.message, "
        "(SELECT COUNT(*) FROM job_results r WHERE r.job_id = j.id), j.created_at, j.updated_at, j.ledger_id, j.nonce"
    )

    def _job(self, c: sqlite3.Connection, job_id: str, tenant: str | None = None) -> JobInfo:
        r = c.execute(f"SELECT {self._JOB_COLS} FROM jobs j WHERE j.id = ?", (job_id,)).fetchone()
        if r is None or (tenant is not None and r[1] != tenant):
            raise NotFound(f"job {echo_id(job_id)} not found")
        return JobInfo(*r)

    def create_job(self, tenant: str, dataset_id: str, request_json: str, ledger_id: int | None = None,
                   nonce: bytes | None = None) -> str:
        """A queued job; ledger_id names the reservation made for it (reserved first, so a crash
        in between leaves a charge without a job, never a job without a charge); nonce is its
        randomness nonce (mechanisms.randomness), kept so that a resumed job draws each
        remaining group from that group's own stream."""
        require(isinstance(request_json, str), "request_json", "a string", type(request_json).__name__)
        require(nonce is None or (isinstance(nonce, bytes) and len(nonce) == 16), "nonce", "None or 16 bytes", type(nonce).__name__)
        job_id = "job_" + secrets.token_hex(12)
        now = time.time()
        with self._tx() as c:
            self._dataset(c, tenant, dataset_id)
            if ledger_id is not None:
                owner = c.execute("SELECT dataset_id FROM ledger WHERE id = ?", (ledger_id,)).fetchone()
                require(owner is not None and owner[0] == dataset_id, "ledger_id", f"a reservation on dataset {dataset_id}", ledger_id)
            c.execute(
                "INSERT INTO jobs (id, tenant, dataset_id, request_json, state, progress, message, created_at, updated_at, ledger_id, nonce)"
                " VALUES (?, ?, ?, ?, 'queued', 0.0, '', ?, ?, ?, ?)",
                (job_id, tenant, dataset_id, request_json, now, now, ledger_id, nonce),
            )
        return job_id

    def update_job(self, job_id: str, state: str, progress: float | None = None, message: str | None = None) -> JobInfo:
        """Set state (and progress in [0, 1], message). A finished job (succeeded, failed,
        cancelled) cannot move to another state: Conflict."""
        require(state in JOB_STATES, "state", f"one of {', '.join(JOB_STATES)}", state)
        require(
            progress is None or (isinstance(progress, (int, float)) and math.isfinite(progress) and 0 <= progress <= 1),
            "progress", "None or a number in [0, 1]", progress,
        )
        require(message is None or isinstance(message, str), "message", "None or a string", message)
        with self._tx() as c:
            job = self._job(c, job_id)
            if job.state in _TERMINAL and state != job.state:
                raise Conflict(f"job {job_id!r} is already {job.state}; it cannot become {state}")
            c.execute(
                "UPDATE jobs SET state = ?, progress = COALESCE(?, progress), message = COALESCE(?, message), updated_at = ? WHERE id = ?",
                (state, progress, message, time.time(), job_id),
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
                "INSERT INTO job_results (job_id, seq, record) VALUES (?, ?, ?) ON CONFLICT (job_id, seq) DO NOTHING",
                (job_id, seq, record_json),
            )
            if cur.rowcount == 1:
                return True
            (old,) = c.execute("SELECT record FROM job_results WHERE job_id = ? AND seq = ?", (job_id, seq)).fetchone()
            if old != record_json:
                raise Conflict(f"job {job_id!r} already holds a different result at seq {seq}")
            return False

    def results(self, job_id: str, offset: int = 0, limit: int | None = None, tenant: str | None = None) -> list[str]:
        """Results with seq >= offset, in seq order (at most `limit`). tenant: scope the lookup
        (another tenant's job is NotFound)."""
        require(isinstance(offset, int) and offset >= 0, "offset", "an integer >= 0", offset)
        require(limit is None or (isinstance(limit, int) and limit >= 0), "limit", "None or an integer >= 0", limit)
        with self._tx(immediate=False) as c:
            self._job(c, job_id, tenant)
            rows = c.execute(
                "SELECT record FROM job_results WHERE job_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (job_id, offset, -1 if limit is None else limit),
            ).fetchall()
        return [r[0] for r in rows]

    def get_job(self, job_id: str, tenant: str | None = None) -> JobInfo:
        return self._job(self._conn(), job_id, tenant)

    def list_unfinished_jobs(self) -> list[JobInfo]:
        """Queued and running jobs of every tenant, oldest first (to resume after a restart)."""
        marks = ", ".join("?" for _ in UNFINISHED_JOB_STATES)
        rows = self._conn().execute(
            f"SELECT {self._JOB_COLS} FROM jobs j WHERE j.state IN ({marks}) ORDER BY j.created_at, j.id", UNFINISHED_JOB_STATES
        ).fetchall()
        return [JobInfo(*r) for r in rows]

    def ping(self) -> None:
        """One round trip to the database; raises if it cannot be reached."""
        with self._tx(immediate=False) as c:
            c.execute("SELECT 1").fetchone()

    def claim_job(self, job_id: str, owner: str, ttl_s: float) -> bool:
        """Take (or keep) the lease on an unfinished job: True if `owner` now runs it until
        now + ttl_s; False if another owner's lease is still live or the job has finished."""
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE id = ? AND state IN ('queued', 'running') "
                "AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
                (owner, now + ttl_s, job_id, owner, now),
            )
            return cur.rowcount == 1

    def renew_leases(self, owner: str, job_ids: Sequence[str], ttl_s: float) -> set[str]:
        """Extend the leases `owner` still holds; the ids renewed (a job taken over is not)."""
        return {j for j in job_ids if self.claim_job(j, owner, ttl_s)}

    def mark_group_started(self, job_id: str, group_id: int) -> bool:
        """Claim a job's group, durably and before the engine sees it: True if this call claimed
        it, False if it was already started (by an earlier run, another thread or process). The
        check and the claim are one INSERT, so two callers can never both get True. A job resumed
        after a restart skips every started group: a group is decoded (and its private rows used)
        at most once, whether or not its record was stored."""
        require(isinstance(group_id, int) and not isinstance(group_id, bool) and group_id >= 0, "group_id", "an integer >= 0", group_id)
        with self._tx() as c:
            self._job(c, job_id)
            cur = c.execute("INSERT OR IGNORE INTO job_groups (job_id, group_id) VALUES (?, ?)", (job_id, group_id))
            return cur.rowcount == 1

    def started_groups(self, job_id: str) -> set[int]:
        rows = self._conn().execute("SELECT group_id FROM job_groups WHERE job_id = ?", (job_id,)).fetchall()
        return {r[0] for r in rows}
