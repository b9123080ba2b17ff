"""privtext durable store: datasets (records encrypted at rest), the privacy ledger, jobs.

    from service.store import load_or_create_key, open_store
    key, _ = load_or_create_key(config_dir, data_dir=data_dir)
    store = open_store(data_dir / "privtext.db", key)             # SQLite
    store = open_store("postgresql://privtext@db/privtext", key)  # PostgreSQL

PostgresStore (service.store.postgres) is loaded on first use: psycopg is the optional
`postgres` extra.
"""

from .crypto import DecryptionError, RecordCipher, load_or_create_key
from .interface import (
    BudgetExhausted,
    Conflict,
    DatasetInfo,
    JobInfo,
    LedgerRow,
    NotFound,
    ReleasedCount,
    Store,
    StoreError,
)
from .open import open_store
from .sqlite import SqliteStore

__all__ = [
    "BudgetExhausted", "Conflict", "DatasetInfo", "DecryptionError", "JobInfo", "LedgerRow", "NotFound",
    "RecordCipher", "ReleasedCount", "SqliteStore", "Store", "StoreError", "load_or_create_key", "open_store",
]


def __getattr__(name: str):
    if name == "PostgresStore":  # imports psycopg: only when asked for
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
