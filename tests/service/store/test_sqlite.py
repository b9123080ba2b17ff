"""What only the SQLite store has: its file (WAL, synchronous commits), migrations of older
SQLite databases, and the key file beside it. The Store contract itself is tested on every
backend in test_store_contract.py."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat

import pytest
from store_kit import KEY, cap_fitting, make_dataset, mixed_events

from mechanisms import PrivacyEvent
from service.store import DecryptionError, RecordCipher, SqliteStore, StoreError, load_or_create_key
from service.store.sqlite import SCHEMA_VERSION


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "privtext.db", KEY)
    yield s
    s.close()


def test_the_file_is_in_wal_mode(store, tmp_path):
    make_dataset(store)
    assert (tmp_path / "privtext.db-wal").exists()
    raw = sqlite3.connect(tmp_path / "privtext.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent: set by the store
    raw.close()


def test_aes_gcm_tamper_and_swap():
    c = RecordCipher(KEY)
    blob = c.encrypt(b"hello", "ds_a")
    assert c.decrypt(blob, "ds_a") == b"hello"
    assert c.encrypt(b"hello", "ds_a") != blob  # fresh nonce
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises(DecryptionError):
        c.decrypt(bytes(bad), "ds_a")
    with pytest.raises(DecryptionError):
        c.decrypt(blob, "ds_b")
    with pytest.raises(DecryptionError):
        c.decrypt(blob, "ds_a", "records/1")


def test_key_file_env_and_location(tmp_path, monkeypatch):
    monkeypatch.delenv("PRIVTEXT_DATA_KEY", raising=False)
    cfg, data = tmp_path / "config", tmp_path / "data"
    key, created = load_or_create_key(cfg, data_dir=data)
    assert created and len(key) == 32
    assert stat.S_IMODE((cfg / "data.key").stat().st_mode) == 0o600
    assert load_or_create_key(cfg, data_dir=data) == (key, False)
    env_key = os.urandom(32)
    monkeypatch.setenv("PRIVTEXT_DATA_KEY", base64.b64encode(env_key).decode())
    assert load_or_create_key(cfg, data_dir=data) == (env_key, False)
    monkeypatch.setenv("PRIVTEXT_DATA_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="32 bytes"):
        load_or_create_key(cfg)
    monkeypatch.delenv("PRIVTEXT_DATA_KEY")
    with pytest.raises(ValueError, match="outside the data directory"):
        load_or_create_key(data / "conf", data_dir=data)
    with pytest.raises(ValueError, match="outside the data directory"):
        load_or_create_key(data, data_dir=data)
    os.chmod(cfg / "data.key", 0o644)
    with pytest.raises(ValueError, match="0600"):
        load_or_create_key(cfg, data_dir=data)


def test_a_schema_1_database_is_migrated(tmp_path):
    path = tmp_path / "privtext.db"
    with SqliteStore(path, KEY) as s:
        info = make_dataset(s, cap=40.0)
        for i in range(12):
            s.reserve("acme", info.id, f"job-{i}", mixed_events(i))
        empty = make_dataset(s, name="empty")
        job = s.create_job("acme", info.id, "{}")
        full = s.budget("acme", info.id)
    raw = sqlite3.connect(path)  # what version 1 wrote: no rho_spent, no ledger_entries, no job nonce
    raw.execute("ALTER TABLE datasets DROP COLUMN rho_spent")
    raw.execute("ALTER TABLE datasets DROP COLUMN ledger_entries")
    raw.execute("ALTER TABLE jobs DROP COLUMN nonce")
    raw.execute("UPDATE meta SET v = '1' WHERE k = 'schema_version'")
    raw.commit()
    raw.close()
    with SqliteStore(path, KEY) as s:
        b = s.budget("acme", info.id)
        assert (b["spent"], b["remaining"], b["entries"]) == (full["spent"], full["remaining"], full["entries"])
        assert s.budget("acme", empty.id)["entries"] == 0 and s.budget("acme", empty.id)["spent"] == 0
        assert s.get_job(job).nonce is None  # a job from before nonces
        s.reserve("acme", info.id, "after the migration", [PrivacyEvent("zcdp", 0.01)])
        assert s.budget("acme", info.id)["entries"] == 13
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    raw.execute("UPDATE meta SET v = '9' WHERE k = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match=f"schema_version must be <= {SCHEMA_VERSION}"):
        SqliteStore(path, KEY)


def test_a_schema_2_database_gets_job_nonces(tmp_path):
    path = tmp_path / "privtext.db"
    with SqliteStore(path, KEY) as s:
        info = make_dataset(s, cap=cap_fitting(3))
        job = s.create_job("acme", info.id, "{}")
    raw = sqlite3.connect(path)
    raw.execute("ALTER TABLE jobs DROP COLUMN nonce")
    raw.execute("UPDATE meta SET v = '2' WHERE k = 'schema_version'")
    raw.commit()
    raw.close()
    with SqliteStore(path, KEY) as s:
        assert s.get_job(job).nonce is None
        nonce = bytes(16)
        assert s.get_job(s.create_job("acme", info.id, "{}", nonce=nonce)).nonce == nonce
