"""Several servers, one store: a job runs under one server's lease; when that server dies,
another takes the job over after the lease expires and finishes it, without decoding a started
group again or charging anything again."""

from __future__ import annotations

import json
import secrets
import time

import grpc
import pytest
from server_kit import KEYS, Client, Process, corpus, request

from service.api.auth import hash_key
from service.api.gen.privtext.v1 import generation_pb2
from service.jobs.dataset_job import JobRunner, prepare
from service.jobs.generate import JobRequest
from service.jobs.scheduler import EngineScheduler
from service.store.sqlite import SqliteStore

SECRET = secrets.token_bytes(32)


def wait(cond, seconds=300, what="a condition"):
    deadline = time.time() + seconds
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_a_job_whose_server_stops_renewing_is_taken_over_once(engine, tmp_path):
    store = SqliteStore(tmp_path / "privtext.db", secrets.token_bytes(32))
    ds = store.create_dataset("t", "sms", text_field="text", label_field=None, unit_field=None, epsilon_cap=50.0, delta=1e-3,
                              declared_public_units=None, records=[{"text": r["text"]} for r in corpus(48)])
    a = JobRunner(store, EngineScheduler(engine, 160), engine, SECRET, owner="server-a", lease_s=1.0)
    prep = prepare(store, "t", ds.id, JobRequest(records=8, max_tokens=8, epsilon=2.0, partitions=4, pii="off"), "job", 10.0,
                   SECRET, engine, 160)
    entries = len(store.ledger_rows("t", ds.id))
    job = a.submit(prep)
    wait(lambda: len(store.started_groups(job.id)) >= 2, what="two groups started")
    b = JobRunner(store, EngineScheduler(engine, 160), engine, SECRET, owner="server-b", lease_s=1.0)
    assert b.resume_all() == 0  # a's lease is live: b leaves the job alone
    a.stop(60)  # server a dies: its job stays "running", its lease is no longer renewed
    a.scheduler.close(30)
    b.start_leases()
    try:
        wait(lambda: store.get_job(job.id).state not in ("queued", "running"), what="the job taken over and finished")
    finally:
        b.stop(60)
        b.scheduler.close(30)
    done = store.get_job(job.id)
    assert done.state == "succeeded" and "resumed after an interruption" in done.message, done.message
    assert store.started_groups(job.id) == set(range(8))
    assert len(store.ledger_rows("t", ds.id)) == entries  # nothing charged again


@pytest.mark.slow
def test_two_servers_on_one_postgresql_a_sigkilled_servers_job_is_finished_by_the_other(pg_server, tmp_path):
    url = pg_server.create_database("leases")
    env = {"PRIVTEXT_STORE": url, "PRIVTEXT_JOB_LEASE_SECONDS": "3",
           "PRIVTEXT_API_KEYS": json.dumps({t: [hash_key(k)] for t, k in KEYS.items()})}
    config = tmp_path / "config"  # one data key for both servers
    a = Process(tmp_path / "a", config, tmp_path / "a.log", env=env)
    b = Process(tmp_path / "b", config, tmp_path / "b.log", env=env)
    try:
        ca, cb = Client(a.address, KEYS["acme"]), Client(b.address, KEYS["acme"])
        ds = ca.upload("shared", corpus(48), epsilon_cap=50.0)
        job = ca.generation.SubmitJob(request(ds.id, records=10, max_tokens=16, epsilon=2.0), metadata=ca.md)
        wait(lambda: cb.generation.GetJob(generation_pb2.GetJobRequest(id=job.id), metadata=cb.md).state
             == generation_pb2.JOB_STATE_RUNNING, what="the job running on server a")
        time.sleep(2)
        spent = cb.budget(ds.id)
        a.kill()  # SIGKILL: no clean-up, no lease released
        streamed = list(cb.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id), metadata=cb.md,
                                                       timeout=600))
        done = cb.generation.GetJob(generation_pb2.GetJobRequest(id=job.id), metadata=cb.md)
        assert done.state == generation_pb2.JOB_STATE_SUCCEEDED, done.message
        assert len(streamed) == done.records_done <= 10
        after = cb.budget(ds.id)
        assert after.entries_total == spent.entries_total and after.spent == spent.spent  # nothing charged again
        assert "took over" in (tmp_path / "b.log").read_text()
    finally:
        for p in (a, b):
            if p.proc.poll() is None:
                p.terminate()
