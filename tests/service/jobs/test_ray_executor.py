"""Batch jobs on a local Ray cluster of engine workers: the same records on one worker or many,
one reservation, and a worker killed mid-job costs its claimed groups but never decodes a group
twice or charges anything twice."""

from __future__ import annotations

import secrets
import time
from collections import Counter

import pytest

pytest.importorskip("ray")

from service.jobs.dataset_job import JobRunner, decode, prepare  # noqa: E402
from service.jobs.request import JobRequest  # noqa: E402
from service.jobs.ray_executor import RayWorkers, init_ray  # noqa: E402
from service.jobs.records import RecordFilter  # noqa: E402
from service.jobs.scheduler import EngineScheduler  # noqa: E402
from service.store.sqlite import SqliteStore  # noqa: E402

SECRET = secrets.token_bytes(32)


@pytest.fixture(scope="module")
def cluster():
    import ray

    init_ray("auto")  # a local cluster: loopback only, no dashboard, no usage stats, a sized object store
    yield
    ray.shutdown()


@pytest.fixture()
def store(tmp_path):
    from server_kit import corpus

    s = SqliteStore(tmp_path / "privtext.db", secrets.token_bytes(32))
    yield s
    s.close()


def dataset(store, n=48):
    from server_kit import corpus

    return store.create_dataset("t", "sms", text_field="text", label_field=None, unit_field=None, epsilon_cap=50.0, delta=1e-3,
                                declared_public_units=None, records=[{"text": r["text"]} for r in corpus(n)])


def test_the_same_job_gives_the_same_records_on_one_worker_or_two(cluster, engine, store):
    ds = dataset(store)
    prep = prepare(store, "t", ds.id, JobRequest(records=6, max_tokens=6, epsilon=2.0, partitions=4, pii="off"), "ray", 10.0,
                   SECRET, engine, 160)
    texts = {}
    for workers in (1, 2):
        pool = RayWorkers("auto", workers, chunk_groups=2)
        try:
            texts[workers] = Counter(r.text for r in decode(prep, engine, pool.run(), RecordFilter("off")))
        finally:
            pool.close()
    assert sum(texts[1].values()) == 6
    assert texts[1] == texts[2]  # per-group streams and per-chunk batches: independent of the worker count
    assert len(store.ledger_rows("t", ds.id)) == 2  # the DP count and the one reservation, nothing per worker


def test_a_worker_killed_mid_job_never_decodes_a_group_twice_or_charges_twice(cluster, engine, store):
    import ray

    ds = dataset(store)
    pool = RayWorkers("auto", 2, chunk_groups=1)
    runner = JobRunner(store, EngineScheduler(engine, 160), engine, SECRET, workers=pool)
    try:
        prep = prepare(store, "t", ds.id, JobRequest(records=10, max_tokens=10, epsilon=2.0, partitions=4, pii="off"), "ray job",
                       10.0, SECRET, engine, 160)
        entries = len(store.ledger_rows("t", ds.id))
        job = runner.submit(prep)
        deadline = time.time() + 300
        while len(store.started_groups(job.id)) < 2 and time.time() < deadline:
            time.sleep(0.1)
        ray.kill(pool.actors[0])  # SIGKILL-like: the actor and the chunk it holds are gone
        while store.get_job(job.id).state in ("queued", "running") and time.time() < deadline:
            time.sleep(0.2)
        done = store.get_job(job.id)
        assert done.state == "succeeded", done.message
        assert len(store.ledger_rows("t", ds.id)) == entries  # nothing charged again
        started = store.started_groups(job.id)
        assert started == set(range(10))  # every group claimed exactly once (a set: no group twice)
        lost = int(done.message.split("; ")[2].split()[0]) if "lost when an engine worker died" in done.message else 0
        assert 1 <= lost and done.results + lost <= 10  # the killed worker lost the chunk it was handed
        assert f"{10 - lost} of 10 groups decoded" in done.message
    finally:
        runner.stop(30)
        pool.close()
