"""The SQLite store on real files: atomic uploads, encryption at rest, a ledger that never
exceeds its cap under threads and processes, durability across SIGKILL, deletion, keys."""

from __future__ import annotations

import base64
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import stat
import threading

import pytest

from mechanisms import PrivacyEvent
from mechanisms.accounting import epsilon_of
from service.store import (
    BudgetExhausted,
    Conflict,
    DecryptionError,
    NotFound,
    RecordCipher,
    SqliteStore,
    Store,
    load_or_create_key,
)

KEY = bytes(range(32))
DELTA = 1e-5
RHO = 0.002
SECRET_TEXT = "zebra-quokka-7781 said the private thing"


def _records(n: int, text: str = "record"):
    return [{"text": f"{text} {i}", "label": "ab"[i % 2], "unit": f"u{i}"} for i in range(n)]


def _dataset(store: SqliteStore, tenant: str = "acme", name: str = "d", cap: float = 1.0, n: int = 10, text: str = "record"):
    return store.create_dataset(tenant, name, label_field="label", unit_field="unit", epsilon_cap=cap, delta=DELTA, records=_records(n, text))


def _cap_fitting(k: int) -> float:
    """A cap strictly between the epsilon of k and of k+1 events of RHO (robust to rounding)."""
    lo = epsilon_of([PrivacyEvent("zcdp", RHO)] * k, DELTA)
    hi = epsilon_of([PrivacyEvent("zcdp", RHO)] * (k + 1), DELTA)
    return (lo + hi) / 2


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "privtext.db", KEY)
    yield s
    s.close()


def test_is_a_store_and_round_trips(store):
    assert isinstance(store, Store)
    info = _dataset(store, n=600)  # several chunks
    assert info.records == 600 and info.epsilon_cap == 1.0 and info.delta == DELTA
    assert store.get_dataset("acme", info.id) == info
    assert store.list_datasets("acme") == [info]
    assert store.read_records("acme", info.id) == _records(600)
    secret = store.partition_secret("acme", info.id)
    assert len(secret) == 32 and store.partition_secret("acme", info.id) == secret
    with pytest.raises(Conflict):
        _dataset(store)  # same live name for the same tenant
    with pytest.raises(ValueError, match="delta must be"):
        store.create_dataset("acme", "bad", epsilon_cap=1.0, delta=2.0, records=[])


def test_upload_is_one_transaction(store, tmp_path):
    def records():
        yield from _records(700)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        store.create_dataset("acme", "d", epsilon_cap=1.0, delta=DELTA, records=records())
    with pytest.raises(ValueError, match=r"records\[3\].text"):
        store.create_dataset("acme", "d", epsilon_cap=1.0, delta=DELTA, records=[*_records(3), {"label": "x"}])
    raw = sqlite3.connect(tmp_path / "privtext.db")
    assert raw.execute("SELECT COUNT(*) FROM datasets").fetchone()[0] == 0
    assert raw.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0
    raw.close()
    assert store.list_datasets("acme") == []


def test_records_and_secret_not_stored_in_plaintext(store, tmp_path):
    info = _dataset(store, text=SECRET_TEXT, n=20)
    secret = store.partition_secret("acme", info.id)
    db, wal = tmp_path / "privtext.db", tmp_path / "privtext.db-wal"
    assert wal.exists()  # checked while the store is open: the WAL still holds the frames
    for f in (db, wal):
        raw = f.read_bytes()
        assert SECRET_TEXT.encode() not in raw and b"zebra-quokka" not in raw
        assert secret not in raw
    assert store.read_records("acme", info.id)[0]["text"] == f"{SECRET_TEXT} 0"


def test_events_round_trip_losslessly(store):
    info = _dataset(store, cap=100.0)
    events = (PrivacyEvent("zcdp", 0.1 / 3, 7, "em selection"), PrivacyEvent("gaussian", 1.2345678901234567, 2, "count"))
    row = store.reserve("acme", info.id, "job-1", events)
    assert row.events == events and row.state == "reserved"
    assert store.ledger_rows("acme", info.id) == [row]
    assert store.ledger("acme", info.id).events == events


def _reserve_many_threads(store, dataset_id, n):
    ok, refused, errors = [], [], []
    barrier = threading.Barrier(n)

    def work(i):
        barrier.wait()
        try:
            ok.append(store.reserve("acme", dataset_id, f"job-{i}", [PrivacyEvent("zcdp", RHO)]))
        except BudgetExhausted as e:
            refused.append(e)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok, refused, errors


def test_concurrent_threads_never_exceed_cap(store):
    fit = 20
    info = _dataset(store, cap=_cap_fitting(fit))
    ok, refused, errors = _reserve_many_threads(store, info.id, 50)
    assert not errors
    assert len(ok) == fit and len(refused) == 50 - fit
    b = store.budget("acme", info.id)
    assert b["entries"] == fit and b["spent"] <= b["cap"]
    e = refused[0]
    assert e.needed_epsilon == pytest.approx(epsilon_of([PrivacyEvent("zcdp", RHO)], DELTA))
    assert e.remaining_epsilon < e.needed_epsilon
    assert f"{e.needed_epsilon:.4g}" in str(e) and f"{e.remaining_epsilon:.4g}" in str(e)


def _proc_reserve(path, dataset_id, tries, start, out):
    store = SqliteStore(path, KEY)
    start.wait()
    got = 0
    for i in range(tries):
        try:
            store.reserve("acme", dataset_id, f"p{os.getpid()}-{i}", [PrivacyEvent("zcdp", RHO)])
            got += 1
        except BudgetExhausted:
            pass
    out.put(got)


def test_concurrent_processes_never_exceed_cap(store, tmp_path):
    fit = 13
    info = _dataset(store, cap=_cap_fitting(fit))
    # fork: 8 spawned interpreters importing numpy/dp-accounting take ~40 s on a 2-core box.
    # The children never touch the parent's connection (the store reopens per pid) and exit
    # with os._exit, so the parent's SQLite locks are never released behind its back.
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_proc_reserve, args=(tmp_path / "privtext.db", info.id, 4, start, out)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(got) == fit  # 32 tries, exactly the 13 that fit succeed
    b = store.budget("acme", info.id)
    assert b["entries"] == fit and b["spent"] <= b["cap"]


def _reserve_then_die(path, dataset_id):
    store = SqliteStore(path, KEY)
    store.reserve("acme", dataset_id, "doomed-job", [PrivacyEvent("zcdp", 0.01)])
    os.kill(os.getpid(), signal.SIGKILL)  # right after reserve returns: no close, no checkpoint


def test_reservation_survives_sigkill(tmp_path):
    path = tmp_path / "privtext.db"
    with SqliteStore(path, KEY) as s:
        info = _dataset(s)
    p = mp.get_context("spawn").Process(target=_reserve_then_die, args=(path, info.id))
    p.start()
    p.join(timeout=60)
    assert p.exitcode == -signal.SIGKILL
    with SqliteStore(path, KEY) as s:
        rows = s.ledger_rows("acme", info.id)
        assert [r.label for r in rows] == ["doomed-job"]
        assert s.budget("acme", info.id)["spent"] > 0


def test_delete_keeps_ledger_and_erases_records(store, tmp_path):
    info = _dataset(store, text=SECRET_TEXT)
    other = _dataset(store, name="other")
    store.reserve("acme", info.id, "job-1", [PrivacyEvent("zcdp", 0.01)])
    spent = store.budget("acme", info.id)["spent"]
    raw = sqlite3.connect(tmp_path / "privtext.db")
    blobs = [b for (b,) in raw.execute("SELECT blob FROM records WHERE dataset_id = ?", (info.id,))]
    (wrapped,) = raw.execute("SELECT wrapped_key FROM datasets WHERE id = ?", (info.id,)).fetchone()
    raw.close()

    store.delete_dataset("acme", info.id)

    b = store.budget("acme", info.id)
    assert b["spent"] == pytest.approx(spent) and b["entries"] == 1 and b["deleted"]
    assert store.deleted_dataset("acme", info.id)["name"] == "d"
    for call in (store.get_dataset, store.read_records, store.partition_secret, store.delete_dataset):
        with pytest.raises(NotFound):
            call("acme", info.id)
    with pytest.raises(NotFound):
        store.reserve("acme", info.id, "late", [PrivacyEvent("zcdp", 0.01)])
    assert [d.id for d in store.list_datasets("acme")] == [other.id]
    # the ciphertext and the wrapped data key are gone from the files (secure_delete + WAL cut)
    for f in tmp_path.glob("privtext.db*"):
        data = f.read_bytes()
        assert all(bl[13:45] not in data for bl in blobs) and wrapped[13:] not in data
    # ledger rows cannot be removed behind the store's back
    raw = sqlite3.connect(tmp_path / "privtext.db")
    with pytest.raises(sqlite3.IntegrityError, match="never deleted"):
        raw.execute("DELETE FROM ledger")
    raw.close()
    # the name can be reused; the new dataset starts with a fresh ledger
    again = _dataset(store)
    assert again.id != info.id and store.budget("acme", again.id)["entries"] == 0


def test_other_tenant_gets_not_found(store):
    info = _dataset(store)
    for call in (store.get_dataset, store.read_records, store.partition_secret, store.delete_dataset, store.budget):
        with pytest.raises(NotFound, match="not found"):
            call("evil", info.id)
    with pytest.raises(NotFound):
        store.reserve("evil", info.id, "x", [PrivacyEvent("zcdp", 0.01)])
    assert store.list_datasets("evil") == []
    job = store.create_job("acme", info.id, "{}")
    with pytest.raises(NotFound):
        store.get_job(job, tenant="evil")
    with pytest.raises(NotFound):
        store.results(job, tenant="evil")


def test_aes_gcm_tamper_and_swap(store, tmp_path):
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

    a = _dataset(store, name="a", text="alpha")
    b = _dataset(store, name="b", text="beta")
    path = tmp_path / "privtext.db"
    raw = sqlite3.connect(path, isolation_level=None)
    (blob_a,) = raw.execute("SELECT blob FROM records WHERE dataset_id = ? AND chunk = 0", (a.id,)).fetchone()
    raw.execute("UPDATE records SET blob = ? WHERE dataset_id = ? AND chunk = 0", (blob_a, b.id))
    with pytest.raises(DecryptionError):
        store.read_records("acme", b.id)
    flipped = bytearray(blob_a)
    flipped[20] ^= 0x40
    raw.execute("UPDATE records SET blob = ? WHERE dataset_id = ? AND chunk = 0", (bytes(flipped), a.id))
    with pytest.raises(DecryptionError):
        store.read_records("acme", a.id)
    raw.close()


def test_wrong_key_refused(tmp_path):
    SqliteStore(tmp_path / "privtext.db", KEY).close()
    with pytest.raises(ValueError, match="does not match"):
        SqliteStore(tmp_path / "privtext.db", bytes(32))


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


def test_released_count_saved_once(store):
    info = _dataset(store)
    assert store.released_count("acme", info.id, "units") is None
    ev = [PrivacyEvent("gaussian", 5.0, 1, "dp unit count")]
    saved = store.save_released_count("acme", info.id, "units", 11, ev)
    assert saved.value == 11 and saved.charged and saved.ledger_id is not None
    again = store.save_released_count("acme", info.id, "units", 9, ev)  # a second draw is not released
    assert again == saved
    assert store.released_count("acme", info.id, "units") == saved
    assert store.budget("acme", info.id)["entries"] == 1  # charged once
    hist = store.save_released_count("acme", info.id, "labels", {"a": 5, "b": 4})
    assert not hist.charged and store.released_count("acme", info.id, "labels").value == {"a": 5, "b": 4}
    tight = _dataset(store, name="tight", cap=0.01)
    with pytest.raises(BudgetExhausted):
        store.save_released_count("acme", tight.id, "units", 10, [PrivacyEvent("gaussian", 1.0)])
    assert store.released_count("acme", tight.id, "units") is None


def test_jobs_results_idempotent_and_resumable(store, tmp_path):
    info = _dataset(store)
    job = store.create_job("acme", info.id, json.dumps({"n": 5}))
    assert store.get_job(job).state == "queued"
    assert [j.id for j in store.list_unfinished_jobs()] == [job]
    store.update_job(job, "running", progress=0.2)
    recs = [json.dumps({"text": f"synthetic {i}"}) for i in range(5)]
    assert all(store.append_result(job, i, r) for i, r in enumerate(recs))
    assert store.append_result(job, 2, recs[2]) is False  # retried write: no duplicate
    with pytest.raises(Conflict):
        store.append_result(job, 2, recs[3])
    assert store.results(job) == recs
    assert store.results(job, 3) == recs[3:]
    assert store.results(job, 1, limit=2) == recs[1:3]
    assert store.results(job, 9) == []
    assert store.get_job(job).results == 5
    # after a restart the job is still there to resume
    store.close()
    s2 = SqliteStore(tmp_path / "privtext.db", KEY)
    j = s2.list_unfinished_jobs()[0]
    assert j.id == job and j.state == "running" and j.progress == 0.2
    done = s2.update_job(job, "succeeded", progress=1.0)
    assert done.state == "succeeded" and s2.list_unfinished_jobs() == []
    with pytest.raises(Conflict):
        s2.update_job(job, "running")
    with pytest.raises(NotFound):
        s2.get_job("job_nope")
    s2.close()
