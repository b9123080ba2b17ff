"""`privtext generate`'s ledger: local runs on one corpus compose, as a server dataset's jobs do.

A command-line run that kept no ledger let the same corpus be spent again and again, each
report stating only its own epsilon. Here every run on a corpus (identified by the SHA-256 of
its file's bytes) is reserved, worst case and before decoding, on that corpus's ledger in the
user's data directory (PRIVTEXT_DATA_DIR, default ~/.local/share/privtext), and a run that the
corpus's cap cannot pay is refused with what still fits. The cap is fixed at the corpus's first
run (--epsilon-cap, default DEFAULT_CAP), as is its delta. The file holds events and digests,
never a record. Editing or copying the corpus file gives it a new digest, and so a new cap: the
same caveat as re-uploading a dataset to a server (docs/privacy/threat-model.md).
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from mechanisms import Ledger, LedgerEntry, PrivacyEvent
from mechanisms.config import require

DEFAULT_CAP = 10.0
FILE = "local-ledger.db"


def default_dir() -> Path:
    return Path(os.environ.get("PRIVTEXT_DATA_DIR") or Path.home() / ".local" / "share" / "privtext")


class LocalLedger:
    def __init__(self, directory: Path | None = None):
        self.directory = directory or default_dir()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.directory / FILE
        with self._tx() as c:
            c.execute("CREATE TABLE IF NOT EXISTS corpora (digest TEXT PRIMARY KEY, ledger TEXT NOT NULL, updated_at REAL NOT NULL)")

    @contextmanager
    def _tx(self):
        c = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            c.execute("BEGIN IMMEDIATE")  # one writer at a time: two runs cannot both pass the check
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
        finally:
            c.close()

    @staticmethod
    def _load(c: sqlite3.Connection, digest: str, cap: float | None, delta: float) -> Ledger:
        row = c.execute("SELECT ledger FROM corpora WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return Ledger(DEFAULT_CAP if cap is None else cap, delta)
        ledger = Ledger.from_json(row[0])
        require(cap is None or math.isclose(cap, ledger.epsilon_cap), "epsilon_cap",
                f"this corpus's cap {ledger.epsilon_cap:g}, fixed at its first run (leave it unset)", cap)
        require(math.isclose(delta, ledger.delta), "delta", f"this corpus's delta {ledger.delta:g}, fixed at its first run", delta)
        return ledger

    def stored(self, digest: str) -> Ledger | None:
        """The corpus's stored ledger, or None for a corpus never run."""
        with self._tx() as c:
            row = c.execute("SELECT ledger FROM corpora WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else Ledger.from_json(row[0])

    def ledger(self, digest: str, cap: float | None, delta: float) -> Ledger:
        """The corpus's ledger (a new one, not yet stored, for a corpus never run)."""
        with self._tx() as c:
            return self._load(c, digest, cap, delta)

    def reserve(self, digest: str, cap: float | None, delta: float, label: str, events: Sequence[PrivacyEvent]) -> Ledger:
        """Charge a run's worst case before it decodes; ValueError if the cap cannot pay it."""
        with self._tx() as c:
            ledger = self._load(c, digest, cap, delta).charge(LedgerEntry(label, tuple(events)))
            c.execute("INSERT INTO corpora VALUES (?, ?, ?) ON CONFLICT (digest) DO UPDATE SET ledger = excluded.ledger, "
                      "updated_at = excluded.updated_at", (digest, ledger.to_json(), time.time()))
            return ledger
