"""The Store contract, on every backend (SQLite and PostgreSQL, see conftest.py): atomic uploads,
encryption at rest, a ledger that never exceeds its cap under threads and processes, DP counts
released once, durability across SIGKILL, deletion, jobs. Backend-specific matters (files and
WAL, migrations of old schemas) live in test_sqlite.py and test_postgres.py."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import secrets
import signal
import threading

import pytest
from store_kit import (
    DELTA,
    KEY,
    RHO,
    SECRET_TEXT,
    cap_fitting,
    make_dataset,
    mixed_events,
    records,
)

from mechanisms import PrivacyEvent
from mechanisms.accounting import epsilon_of
from service.store import BudgetExhausted, Conflict, DecryptionError, NotFound, Store, open_store
from service.store.interface import MAX_LABEL_CHARS

# fork: spawned interpreters importing numpy/dp-accounting take seconds each on a 2-core box.
# A child never uses its parent's connections (each store reopens per pid) and exits with
# os._exit, so the parent's SQLite locks and PostgreSQL sessions are never touched.
FORK = mp.get_context("fork")


def test_is_a_store_and_round_trips(store):
    assert isinstance(store, Store)
    info = make_dataset(store, n=600)  # several chunks
    assert info.records == 600 and info.epsilon_cap == 1.0 and info.delta == DELTA
    assert store.get_dataset("acme", info.id) == info
    assert store.list_datasets("acme") == [info]
    assert store.read_records("acme", info.id) == records(600)
    secret = store.partition_secret("acme", info.id)
    assert len(secret) == 32 and store.partition_secret("acme", info.id) == secret
    with pytest.raises(Conflict):
        make_dataset(store)  # same live name for the same tenant
    assert make_dataset(store, tenant="globex").name == "d"  # another tenant may use the name
    with pytest.raises(ValueError, match="delta must be"):
        store.create_dataset("acme", "bad", epsilon_cap=1.0, delta=2.0, records=[])
    empty = store.create_dataset("acme", "empty", epsilon_cap=1.0, delta=DELTA, records=[], declared_public_units=7)
    assert empty.records == 0 and store.read_records("acme", empty.id) == []
    assert store.get_dataset("acme", empty.id).declared_public_units == 7


def test_upload_is_one_transaction(store, backend):
    def failing():
        yield from records(700)
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        store.create_dataset("acme", "d", epsilon_cap=1.0, delta=DELTA, records=failing())
    with pytest.raises(ValueError, match=r"records\[3\].text"):
        store.create_dataset("acme", "d", epsilon_cap=1.0, delta=DELTA, records=[*records(3), {"label": "x"}])
    assert backend.sql("SELECT COUNT(*) FROM datasets") == [(0,)]
    assert backend.sql("SELECT COUNT(*) FROM records") == [(0,)]
    assert store.list_datasets("acme") == []


def test_records_and_secret_not_stored_in_plaintext(store, backend):
    # A marker of this test's own: PostgreSQL's WAL is shared by every database of the server.
    private = f"{SECRET_TEXT} {secrets.token_hex(8)}"
    info = make_dataset(store, text=private, n=20)
    secret = store.partition_secret("acme", info.id)
    files = backend.files_at_rest()  # read while the store is open: a WAL still holds the frames
    assert files
    for f in files:
        raw = f.read_bytes()
        assert private.encode() not in raw and private[-16:].encode() not in raw, f
        assert secret not in raw, f
    # the records are there, encrypted: the blobs themselves are in the files
    (blob,) = backend.sql("SELECT blob FROM records WHERE dataset_id = ? AND chunk = 0", (info.id,))[0]
    assert any(blob[13:45] in f.read_bytes() for f in files)
    assert store.read_records("acme", info.id)[0]["text"] == f"{private} 0"


def test_events_round_trip_losslessly(store):
    info = make_dataset(store, cap=100.0)
    events = (PrivacyEvent("zcdp", 0.1 / 3, 7, "em selection"), PrivacyEvent("gaussian", 1.2345678901234567, 2, "count"))
    row = store.reserve("acme", info.id, "job-1", events)
    assert row.events == events and row.state == "reserved"
    assert store.ledger_rows("acme", info.id) == [row]
    assert store.ledger_row("acme", info.id, row.id) == row
    assert store.ledger("acme", info.id).events == events
    with pytest.raises(NotFound):
        store.ledger_row("acme", info.id, row.id + 1000)


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
    info = make_dataset(store, cap=cap_fitting(fit))
    ok, refused, errors = _reserve_many_threads(store, info.id, 50)
    assert not errors
    assert len(ok) == fit and len(refused) == 50 - fit
    assert len({r.id for r in ok}) == fit
    b = store.budget("acme", info.id)
    assert b["entries"] == fit and b["spent"] <= b["cap"]
    e = refused[0]
    assert e.needed_epsilon == pytest.approx(epsilon_of([PrivacyEvent("zcdp", RHO)], DELTA))
    assert e.remaining_epsilon < e.needed_epsilon
    assert f"{e.needed_epsilon:.4g}" in str(e) and f"{e.remaining_epsilon:.4g}" in str(e)


def _proc_reserve(location, dataset_id, tries, start, out):
    try:
        store = open_store(location, KEY)
        start.wait()
        got = 0
        for i in range(tries):
            try:
                store.reserve("acme", dataset_id, f"p{os.getpid()}-{i}", [PrivacyEvent("zcdp", RHO)])
                got += 1
            except BudgetExhausted:
                pass
        out.put(got)
    except Exception as e:  # reported, so the test fails at once and says why
        out.put(repr(e))


def test_concurrent_processes_never_exceed_cap(store, backend):
    fit = 13
    info = make_dataset(store, cap=cap_fitting(fit))
    store.budget("acme", info.id)  # the parent's connection is open while the children run
    start, out = FORK.Event(), FORK.Queue()
    procs = [FORK.Process(target=_proc_reserve, args=(backend.location, info.id, 4, start, out)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(isinstance(g, int) for g in got), got
    assert sum(got) == fit  # 32 tries, exactly the 13 that fit succeed
    b = store.budget("acme", info.id)  # the parent's own connection still works
    assert b["entries"] == fit and b["spent"] <= b["cap"]
    assert len(store.ledger_rows("acme", info.id)) == fit


def _proc_release(location, dataset_id, kinds, barrier, out):
    """Release each kind once, racing the other process at each: draw a value of our own, save
    it, and report what the store says was released."""
    try:
        store = open_store(location, KEY)
        seen = []
        for kind in kinds:
            mine = 1000 + os.getpid() % 1000  # differs between the two racers
            barrier.wait(timeout=60)
            saved = store.save_released_count("acme", dataset_id, kind, mine, [PrivacyEvent("gaussian", 5.0, 1, "dp unit count")])
            seen.append((kind, mine, saved.value, saved.ledger_id, saved.charged))
        out.put(seen)
    except Exception as e:  # reported, and the other racer released from the barrier
        barrier.abort()
        out.put(repr(e))


def test_concurrent_processes_release_a_count_once(store, backend):
    """Two processes race to release the same DP count, ten times: each time exactly one draw
    is stored and charged, and both callers get that stored value back (the loser's own draw is
    discarded unseen)."""
    info = make_dataset(store, cap=100.0)
    kinds = [f"units-{i}" for i in range(10)]
    barrier, out = FORK.Barrier(2), FORK.Queue()
    procs = [FORK.Process(target=_proc_release, args=(backend.location, info.id, kinds, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    a, b = (out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert isinstance(a, list) and isinstance(b, list), (a, b)
    assert a[0][1] != b[0][1]  # the two draws differed, so "one value" is a real check
    for (kind, mine_a, got_a, ledger_a, charged_a), (_, mine_b, got_b, ledger_b, charged_b) in zip(a, b):
        saved = store.released_count("acme", info.id, kind)
        assert got_a == got_b == saved.value and saved.value in (mine_a, mine_b)
        assert ledger_a == ledger_b == saved.ledger_id and charged_a and charged_b
    rows = store.ledger_rows("acme", info.id)
    assert sorted(r.label for r in rows) == sorted(f"released {k}" for k in kinds)  # charged once each
    assert store.budget("acme", info.id)["entries"] == len(kinds)


def _proc_claim(location, job_id, groups, barrier, out):
    try:
        store = open_store(location, KEY)
        barrier.wait(timeout=60)
        out.put([g for g in groups if store.mark_group_started(job_id, g)])
    except Exception as e:
        barrier.abort()
        out.put([repr(e)])


def test_concurrent_processes_claim_each_group_once(store, backend):
    info = make_dataset(store)
    job = store.create_job("acme", info.id, "{}")
    groups = list(range(40))
    barrier, out = FORK.Barrier(4), FORK.Queue()
    procs = [FORK.Process(target=_proc_claim, args=(backend.location, job, groups, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    every = sorted(g for c in claimed for g in c)
    assert every == groups  # each group claimed by exactly one process
    assert store.started_groups(job) == set(groups)


def _reserve_then_die(location, dataset_id):
    store = open_store(location, KEY)
    store.reserve("acme", dataset_id, "doomed-job", [PrivacyEvent("zcdp", 0.01)])
    os.kill(os.getpid(), signal.SIGKILL)  # right after reserve returns: no close, no checkpoint


def test_reservation_survives_sigkill(backend):
    with backend.open() as s:
        info = make_dataset(s)
    p = mp.get_context("spawn").Process(target=_reserve_then_die, args=(backend.location, info.id))
    p.start()
    p.join(timeout=120)
    assert p.exitcode == -signal.SIGKILL
    with backend.open() as s:
        rows = s.ledger_rows("acme", info.id)
        assert [r.label for r in rows] == ["doomed-job"]
        assert s.budget("acme", info.id)["spent"] > 0


def test_delete_keeps_ledger_and_erases_records(store, backend):
    info = make_dataset(store, text=SECRET_TEXT)
    other = make_dataset(store, name="other")
    job = store.create_job("acme", info.id, "{}")
    store.append_result(job, 0, json.dumps({"text": "synthetic"}))
    store.reserve("acme", info.id, "job-1", [PrivacyEvent("zcdp", 0.01)])
    spent = store.budget("acme", info.id)["spent"]
    blobs = [b for (b,) in backend.sql("SELECT blob FROM records WHERE dataset_id = ?", (info.id,))]
    wrapped, secret = backend.key_material(info.id)
    assert backend.key_material(other.id) is not None

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
    assert store.results(job) == []
    # the ciphertext, the wrapped data key and the secret are gone from the database
    assert backend.sql("SELECT COUNT(*) FROM records WHERE dataset_id = ?", (info.id,)) == [(0,)]
    assert backend.key_material(info.id) is None and backend.key_material(other.id) is not None
    # ... and the key from the table files, so surviving ciphertext can no longer be decrypted
    # (SQLite: secure_delete zeroes freed cells and the WAL is cut, so the blobs go too;
    # PostgreSQL: dataset_keys is rewritten, while its WAL keeps old copies until it recycles
    # its segments and freed record pages may keep ciphertext until reused: docs/server.md).
    for f in backend.table_files():
        data = f.read_bytes()
        assert wrapped[13:] not in data and secret[13:] not in data, f
        if backend.kind == "sqlite":
            assert all(bl[13:45] not in data for bl in blobs), f
    # ledger rows cannot be removed or changed behind the store's back, nor datasets removed
    for statement in ("DELETE FROM ledger", "UPDATE ledger SET label = 'x'", "DELETE FROM datasets"):
        with pytest.raises(backend.raw_error, match="never"):
            backend.sql(statement)
    assert store.budget("acme", info.id)["entries"] == 1
    # the name can be reused; the new dataset starts with a fresh ledger
    again = make_dataset(store)
    assert again.id != info.id and store.budget("acme", again.id)["entries"] == 0


def test_reservations_and_jobs_racing_a_deletion(store):
    """Reservations and new jobs racing a deletion: each either succeeds, and is counted, or
    gets NotFound; nothing else (no deadlock, no error, no charge lost or counted twice)."""
    info = make_dataset(store, cap=1000.0)
    reserved, created, stop = [], [], threading.Event()

    def reserve():
        while not stop.is_set():
            try:
                reserved.append(store.reserve("acme", info.id, "race", [PrivacyEvent("zcdp", 1e-6)]))
            except NotFound:
                return

    def create():
        while not stop.is_set():
            try:
                created.append(store.create_job("acme", info.id, "{}"))
            except NotFound:
                return

    threads = [threading.Thread(target=f) for f in (reserve, reserve, create)]
    for t in threads:
        t.start()
    while len(reserved) < 20 or not created:
        threading.Event().wait(0.01)
    store.delete_dataset("acme", info.id)
    stop.set()
    for t in threads:
        t.join()
    rows = store.ledger_rows("acme", info.id)
    assert sorted(r.id for r in rows) == sorted(r.id for r in reserved)  # every success counted, no other
    b = store.budget("acme", info.id)
    assert b["deleted"] and b["entries"] == len(reserved)
    assert all(store.get_job(j).dataset_id == info.id for j in created)


def test_other_tenant_gets_not_found(store):
    info = make_dataset(store)
    for call in (store.get_dataset, store.read_records, store.partition_secret, store.delete_dataset, store.budget,
                 store.ledger_rows, store.ledger, store.composed_ledger):
        with pytest.raises(NotFound, match="not found"):
            call("evil", info.id)
    with pytest.raises(NotFound):
        store.reserve("evil", info.id, "x", [PrivacyEvent("zcdp", 0.01)])
    with pytest.raises(NotFound):
        store.save_released_count("evil", info.id, "units", 3)
    with pytest.raises(NotFound):
        store.create_job("evil", info.id, "{}")
    assert store.list_datasets("evil") == []
    job = store.create_job("acme", info.id, "{}")
    with pytest.raises(NotFound):
        store.get_job(job, tenant="evil")
    with pytest.raises(NotFound):
        store.results(job, tenant="evil")
    assert store.get_job(job, tenant="acme").id == job


def test_tampered_or_swapped_blobs_fail(store, backend):
    a = make_dataset(store, name="a", text="alpha")
    b = make_dataset(store, name="b", text="beta")
    (blob_a,) = backend.sql("SELECT blob FROM records WHERE dataset_id = ? AND chunk = 0", (a.id,))[0]
    backend.sql("UPDATE records SET blob = ? WHERE dataset_id = ? AND chunk = 0", (blob_a, b.id))
    with pytest.raises(DecryptionError):
        store.read_records("acme", b.id)  # a's chunk is bound to a's id
    flipped = bytearray(blob_a)
    flipped[20] ^= 0x40
    backend.sql("UPDATE records SET blob = ? WHERE dataset_id = ? AND chunk = 0", (bytes(flipped), a.id))
    with pytest.raises(DecryptionError):
        store.read_records("acme", a.id)
    c = make_dataset(store, name="c", n=600)  # chunks 0..2: swapping two fails too
    (c0,), (c1,) = backend.sql("SELECT blob FROM records WHERE dataset_id = ? AND chunk < 2 ORDER BY chunk", (c.id,))
    backend.sql("UPDATE records SET blob = ? WHERE dataset_id = ? AND chunk = 0", (c1, c.id))
    backend.sql("UPDATE records SET blob = ? WHERE dataset_id = ? AND chunk = 1", (c0, c.id))
    with pytest.raises(DecryptionError):
        store.read_records("acme", c.id)


def test_wrong_key_refused(backend):
    backend.open().close()
    with pytest.raises(ValueError, match="does not match"):
        backend.open(bytes(32))
    backend.open().close()  # the right key still opens it


def test_released_count_saved_once(store):
    info = make_dataset(store)
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
    tight = make_dataset(store, name="tight", cap=0.01)
    with pytest.raises(BudgetExhausted):
        store.save_released_count("acme", tight.id, "units", 10, [PrivacyEvent("gaussian", 1.0)])
    assert store.released_count("acme", tight.id, "units") is None
    assert store.budget("acme", tight.id)["entries"] == 0


def test_jobs_results_idempotent_and_resumable(store, backend):
    info = make_dataset(store)
    row = store.reserve("acme", info.id, "job", [PrivacyEvent("zcdp", 0.01)])
    nonce = bytes(range(16))
    job = store.create_job("acme", info.id, json.dumps({"n": 5}), ledger_id=row.id, nonce=nonce)
    got = store.get_job(job)
    assert got.state == "queued" and got.ledger_id == row.id and got.nonce == nonce and got.tenant == "acme"
    with pytest.raises(ValueError, match="ledger_id"):
        store.create_job("acme", make_dataset(store, name="x").id, "{}", ledger_id=row.id)  # another dataset's charge
    assert [j.id for j in store.list_unfinished_jobs()] == [job]
    store.update_job(job, "running", progress=0.2, message="decoding")
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
    s2 = backend.open()
    j = s2.list_unfinished_jobs()[0]
    assert j.id == job and j.state == "running" and j.progress == 0.2 and j.message == "decoding" and j.nonce == nonce
    done = s2.update_job(job, "succeeded", progress=1.0)
    assert done.state == "succeeded" and done.message == "decoding" and s2.list_unfinished_jobs() == []
    with pytest.raises(Conflict):
        s2.update_job(job, "running")
    with pytest.raises(NotFound):
        s2.get_job("job_nope")
    with pytest.raises(NotFound):
        s2.update_job("job_nope", "running")
    with pytest.raises(NotFound):
        s2.append_result("job_nope", 0, "{}")
    s2.close()


# ---------------------------------------------------------------------------------------------
# budgets from the composed rho, bounded labels, atomic group claims, abandoned uploads


def assert_budget_is_the_full_composition(store, dataset_id: str) -> None:
    b = store.budget("acme", dataset_id)
    full = store.ledger("acme", dataset_id)  # every entry converted and composed by the accountant
    assert b["entries"] == len(full.entries)
    assert b["spent"] == pytest.approx(full.spent_epsilon(), rel=1e-12, abs=1e-12)
    assert b["remaining"] == pytest.approx(full.remaining_epsilon(), rel=1e-9, abs=1e-9)
    composed = store.composed_ledger("acme", dataset_id)
    assert composed.spent_epsilon() == pytest.approx(full.spent_epsilon(), rel=1e-12, abs=1e-12)


def test_budget_from_composed_rho_equals_the_full_composition(store):
    info = make_dataset(store, cap=40.0)
    assert_budget_is_the_full_composition(store, info.id)  # empty ledger
    for i in range(30):
        store.reserve("acme", info.id, f"job-{i}", mixed_events(i))
        if i in (0, 4, 29):
            assert_budget_is_the_full_composition(store, info.id)
    # the cap check uses the same figure: what the full ledger says fits is what reserve accepts
    full = store.ledger("acme", info.id)
    big = [PrivacyEvent("zcdp", full.remaining_rho() * 1.001)]
    small = [PrivacyEvent("zcdp", full.remaining_rho() * 0.999)]
    assert not full.fits(big) and full.fits(small)
    with pytest.raises(BudgetExhausted) as e:
        store.reserve("acme", info.id, "too big", big)
    assert e.value.remaining_epsilon == pytest.approx(full.remaining_epsilon(), rel=1e-9)
    store.reserve("acme", info.id, "fits", small)
    assert store.budget("acme", info.id)["spent"] <= 40.0


def test_the_backends_agree_on_a_budget(store, backend, tmp_path):
    """The same reservations give the same figures on this backend as on SQLite (bit for bit:
    one arithmetic, floats stored exactly)."""
    reference = open_store(tmp_path / "reference.db", KEY)
    figures = []
    for s in (store, reference):
        info = make_dataset(s, cap=40.0)
        for i in range(12):
            s.reserve("acme", info.id, f"job-{i}", mixed_events(i))
        b = s.budget("acme", info.id, recent=2)
        figures.append((b["cap"], b["spent"], b["remaining"], b["entries"], [(r.label, r.events) for r in b["recent_entries"]]))
    reference.close()
    assert figures[0] == figures[1]


def _profiled_calls(fn) -> dict[str, int]:
    """Call counts by function name while fn runs (cProfile: the real calls, nothing replaced)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(fn)
    counts: dict[str, int] = {}
    for (_file, _line, name), (_cc, ncalls, *_rest) in pstats.Stats(prof).stats.items():
        counts[name] = counts.get(name, 0) + ncalls
    return counts


def test_budget_work_does_not_grow_with_the_ledger(store):
    """A 5,000-entry ledger's budget() and reservation make exactly the calls a 1-entry one makes:
    no entry is converted (from_dict), nothing is composed per entry (dp_event)."""
    one = make_dataset(store, name="one", cap=1000.0)
    many = make_dataset(store, name="many", cap=1000.0)
    for i in range(5000):
        store.reserve("acme", many.id, f"job-{i}", [PrivacyEvent("zcdp", 1e-6 * (1 + i % 3))])
    store.reserve("acme", one.id, "job", [PrivacyEvent("zcdp", 1e-6)])
    store.budget("acme", make_dataset(store, name="warm", cap=1000.0).id)  # the cap's rho: computed once per (cap, delta)
    small = _profiled_calls(lambda: store.budget("acme", one.id, recent=0))
    large = _profiled_calls(lambda: store.budget("acme", many.id, recent=0))
    for name in ("from_dict", "dp_event", "epsilon_of", "get_epsilon", "largest_rho_within", "fetchone", "fetchall"):
        assert small.get(name, 0) == large.get(name, 0), name
    assert large.get("from_dict", 0) == 0 and large.get("dp_event", 0) <= 2
    assert store.budget("acme", many.id)["entries"] == 5000
    reserve = _profiled_calls(lambda: store.reserve("acme", many.id, "one more", [PrivacyEvent("zcdp", 1e-6)]))
    assert reserve.get("from_dict", 0) == 0 and reserve.get("dp_event", 0) <= 2
    recent = store.budget("acme", many.id, recent=3)["recent_entries"]
    assert [r.label for r in recent] == ["job-4998", "job-4999", "one more"]


def test_ledger_labels_are_bounded(store):
    info = make_dataset(store, cap=100.0)
    long = "released label histogram " + json.dumps(["x" * 1000 + str(i) for i in range(1000)])
    row = store.reserve("acme", info.id, long, [PrivacyEvent("zcdp", 0.01)])
    other = store.reserve("acme", info.id, long.replace("999", "998"), [PrivacyEvent("zcdp", 0.01)])
    assert len(row.label) == MAX_LABEL_CHARS and row.label.startswith("released label histogram")
    assert "sha256:" in row.label and row.label != other.label  # the same start, distinct labels
    assert [r.label for r in store.ledger_rows("acme", info.id)] == [row.label, other.label]
    kind = "label histogram " + json.dumps(["y" * 5000])
    saved = store.save_released_count("acme", info.id, kind, {"y": 3}, [PrivacyEvent("gaussian", 10.0)])
    assert store.released_count("acme", info.id, kind) == saved  # the count keeps its full kind
    assert len(store.ledger_rows("acme", info.id)[-1].label) == MAX_LABEL_CHARS
    assert store.reserve("acme", info.id, "short", [PrivacyEvent("zcdp", 0.01)]).label == "short"


def test_a_huge_id_is_not_echoed(store):
    for call in (lambda: store.get_dataset("acme", "d" * 1_000_000), lambda: store.get_job("j" * 1_000_000)):
        with pytest.raises(NotFound) as e:
            call()
        assert len(str(e.value)) < 200 and "1000000 characters" in str(e.value)


def test_mark_group_started_claims_each_group_once(store):
    info = make_dataset(store)
    job = store.create_job("acme", info.id, "{}")
    claims: list[bool] = []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        claims.append(store.mark_group_started(job, 3))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claims) == [False] * 7 + [True]  # exactly one caller claimed it
    assert store.mark_group_started(job, 4) is True and store.mark_group_started(job, 4) is False
    assert store.started_groups(job) == {3, 4}
    with pytest.raises(NotFound):
        store.mark_group_started("job_nope", 0)


def test_an_abandoned_upload_leaves_nothing(store):
    with pytest.raises(Conflict, match="abandoned"):
        store.create_dataset("acme", "d", epsilon_cap=1.0, delta=DELTA, records=records(300), abandoned=lambda: True)
    assert store.list_datasets("acme") == []
    info = store.create_dataset("acme", "d", epsilon_cap=1.0, delta=DELTA, records=records(3), abandoned=lambda: False)
    assert store.list_datasets("acme") == [info] and store.read_records("acme", info.id) == records(3)


def test_one_owner_at_a_time_holds_a_jobs_lease(store, backend):
    """Several servers on one store: a job runs under a lease that only one owner holds while it
    is live; an expired lease (its server died) can be taken over; a finished job cannot."""
    info = make_dataset(store)
    job = store.create_job("acme", info.id, "{}")
    assert store.claim_job(job, "server-a", 60.0)
    assert not store.claim_job(job, "server-b", 60.0)  # a's lease is live
    assert store.renew_leases("server-a", [job], 60.0) == {job}
    assert store.renew_leases("server-b", [job], 60.0) == set()
    assert store.claim_job(job, "server-a", -1.0)  # a's lease, now expired (its server stopped renewing)
    assert store.claim_job(job, "server-b", 60.0)  # taken over
    assert store.renew_leases("server-a", [job], 60.0) == set()  # a learns it lost the job
    store.update_job(job, "succeeded")
    assert not store.claim_job(job, "server-b", 60.0)  # nothing to run


def test_a_lease_race_has_one_winner(store, backend):
    info = make_dataset(store)
    job = store.create_job("acme", info.id, "{}")
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        if store.claim_job(job, f"server-{i}", 60.0):
            wins.append(f"server-{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
