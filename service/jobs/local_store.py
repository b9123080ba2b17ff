"""`privtext generate`'s store: the server's Store on a SQLite file in the user's data directory.

A local run goes through the same pipeline as a server request (service/jobs/dataset_job.py):
its corpus file is a dataset of this store, keyed by the SHA-256 of the file's bytes, created at
its first run with the cap, delta, fields and declared unit count of that run and fixed after
it (a later run that names others is refused, naming the setting). Every run on the corpus is
reserved on the dataset's ledger before decoding, the DP count is released once per corpus as
on the server, and a run the cap cannot pay is refused with what still fits. The records are
stored encrypted under the user's data key (PRIVTEXT_CONFIG_DIR), as on a server.

`--no-local-ledger` runs on a throwaway store in a temporary directory: that run's report alone
states its epsilon (eval and audit cells, which are not releases).

Editing or copying the corpus file gives it a new digest, and so a new dataset and cap: the same
caveat as re-uploading a dataset to a server (docs/privacy/threat-model.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mechanisms.config import require

from ..generation.corpus import Corpus
from ..store.interface import DatasetInfo, Store
from ..store.open import open_store
from .corpora import CORPORA
from .local_ledger import FILE as LEGACY_LEDGER, LocalLedger

TENANT = "local"
STORE_FILE = "local-store.db"
DEFAULT_CAP = 10.0
THROWAWAY_CAP = 1e6  # --no-local-ledger: the run's own epsilon is checked by its plan, not by a cap


def data_dir() -> Path:
    return Path(os.environ.get("PRIVTEXT_DATA_DIR") or Path.home() / ".local" / "share" / "privtext")


def config_dir() -> Path:
    return Path(os.environ.get("PRIVTEXT_CONFIG_DIR") or Path.home() / ".config" / "privtext")


def data_key() -> bytes:
    """The user's data key (created on first use, mode 0600), as the seeded runs' secret is."""
    from ..store.crypto import load_or_create_key

    key, _created = load_or_create_key(config_dir())
    return key


@contextlib.contextmanager
def local_store(keep: bool = True) -> Iterator[tuple[Store, Path | None]]:
    """(the store, its file) in the data directory; keep=False: a throwaway store (file None)."""
    with contextlib.ExitStack() as stack:
        if keep:
            directory = data_dir()
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path, key = directory / STORE_FILE, data_key()
        else:
            path, key = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="privtext-run-"))) / STORE_FILE, os.urandom(32)
        store = stack.enter_context(contextlib.closing(open_store(path, key)))
        yield store, path if keep else None


def dataset_name(digest: str) -> str:
    return f"corpus sha256:{digest}"


@contextlib.contextmanager
def _creation_lock() -> Iterator[None]:
    """One process at a time looks a corpus up and creates it: two first runs of one corpus
    never make two datasets (two ledgers, each with the full cap)."""
    directory = data_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / "local-store.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def corpus_dataset(store: Store, corpus: Corpus, digest: str, *, epsilon_cap: float | None, delta: float,
                   public_count: int | None, keep: bool = True) -> DatasetInfo:
    """The corpus file's dataset: created at its first run, then checked against each later run.
    A corpus spent before this store existed (local-ledger.db) keeps that spending. The parsed
    corpus is what the dataset holds (same digest, same fields), so the pipeline uses it as it is
    instead of reading and decrypting the rows back (CORPORA)."""
    info = _find_or_create(store, corpus, digest, epsilon_cap=epsilon_cap, delta=delta, public_count=public_count, keep=keep)
    CORPORA.put(store, info, corpus)
    return info


def _find_or_create(store: Store, corpus: Corpus, digest: str, *, epsilon_cap: float | None, delta: float,
                    public_count: int | None, keep: bool) -> DatasetInfo:
    name = dataset_name(digest)
    with _creation_lock() if keep else contextlib.nullcontext():
        found = next((d for d in store.list_datasets(TENANT) if d.name == name), None)
        legacy = None
        if found is None and keep and (data_dir() / LEGACY_LEDGER).exists():
            legacy = LocalLedger(data_dir()).stored(digest)
        fixed_cap = found.epsilon_cap if found is not None else legacy.epsilon_cap if legacy is not None else None
        if fixed_cap is not None:
            require(epsilon_cap is None or math.isclose(epsilon_cap, fixed_cap), "epsilon_cap",
                    f"this corpus's cap {fixed_cap:g}, fixed at its first run (leave it unset)", epsilon_cap)
        if found is not None:
            require(math.isclose(delta, found.delta), "delta", f"this corpus's delta {found.delta:g}, fixed at its first run", delta)
            for setting, asked, have in (("text_field", corpus.text_field, found.text_field), ("label_field", corpus.label_field, found.label_field),
                                         ("unit_field", corpus.unit_field, found.unit_field), ("public_count", public_count, found.declared_public_units)):
                require(asked == have, setting, f"this corpus's {setting} {have!r}, fixed at its first run", asked)
            return found
        if not keep:
            cap = THROWAWAY_CAP
        elif fixed_cap is not None:
            cap = fixed_cap
        else:
            cap = DEFAULT_CAP if epsilon_cap is None else epsilon_cap
        rows = [{"text": r.text, "label": r.label, "unit": r.unit} for r in corpus.records]
        info = store.create_dataset(TENANT, name, text_field=corpus.text_field, label_field=corpus.label_field,
                                    unit_field=corpus.unit_field, epsilon_cap=cap, delta=delta,
                                    declared_public_units=public_count, records=rows)
        if legacy is not None:
            for entry in legacy.entries:
                store.reserve(TENANT, info.id, f"{entry.label} (from {LEGACY_LEDGER})", entry.events)
        return info
