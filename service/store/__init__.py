"""privtext durable store: datasets (records encrypted at rest), the privacy ledger, jobs.

    from service.store import SqliteStore, load_or_create_key
    key, _ = load_or_create_key(config_dir, data_dir=data_dir)
    store = SqliteStore(data_dir / "privtext.db", key)
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
from .sqlite import SqliteStore

__all__ = [
    "BudgetExhausted", "Conflict", "DatasetInfo", "DecryptionError", "JobInfo", "LedgerRow", "NotFound",
    "RecordCipher", "ReleasedCount", "SqliteStore", "Store", "StoreError", "load_or_create_key",
]
