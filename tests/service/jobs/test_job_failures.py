"""A batch job always reaches a final state with a reason the API returns, even when the store
fails under it (a full disk), and a resumed job says what an interruption cost it."""

from __future__ import annotations

import sqlite3
import time

import grpc
import pytest
from server_kit import corpus, request

from service.api.gen.privtext.v1 import generation_pb2

FULL = "database or disk is full"


def db(server):
    return sqlite3.connect(server.server.state.store.path)


def test_a_job_whose_store_fills_up_fails_with_its_reason_and_its_stream_ends(server, acme):
    """The reported zombie: the disk filled mid-job, marking the job failed hit the full disk too,
    and the job stayed RUNNING forever while StreamJobResults hung. SQLite triggers make every
    result write after the first, and the write of the failed state, fail as a full disk does."""
    ds = acme.upload("disk-full", corpus(40))
    with db(server) as c:
        c.execute(f"CREATE TRIGGER full_results BEFORE INSERT ON job_results WHEN (SELECT COUNT(*) FROM job_results "
                  f"WHERE job_id = NEW.job_id) >= 1 BEGIN SELECT RAISE(ABORT, '{FULL}'); END")
        c.execute(f"CREATE TRIGGER full_state BEFORE UPDATE OF state ON jobs WHEN NEW.state = 'failed' "
                  f"BEGIN SELECT RAISE(ABORT, '{FULL}'); END")
    try:
        job = acme.generation.SubmitJob(request(ds.id, records=4, max_tokens=4, epsilon=1.0), metadata=acme.md)
        with pytest.raises(grpc.RpcError) as e:
            list(acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id), metadata=acme.md, timeout=300))
        assert e.value.code() == grpc.StatusCode.ABORTED and FULL in e.value.details()
        got = acme.generation.GetJob(generation_pb2.GetJobRequest(id=job.id), metadata=acme.md)
        assert got.state == generation_pb2.JOB_STATE_FAILED and FULL in got.error and got.message == got.error
    finally:
        with db(server) as c:
            c.execute("DROP TRIGGER full_results")
            c.execute("DROP TRIGGER full_state")
    # the disk has room again: the next read writes the failure down for good
    acme.generation.GetJob(generation_pb2.GetJobRequest(id=job.id), metadata=acme.md)
    with db(server) as c:
        state, message = c.execute("SELECT state, message FROM jobs WHERE id = ?", (job.id,)).fetchone()
    assert state == "failed" and FULL in message


def test_a_job_resumed_after_an_interruption_says_how_many_groups_it_lost(server, acme):
    """Groups started before a restart are never decoded again; the final message says so."""
    ds = acme.upload("resumed", corpus(40))
    runner, store = server.server.state.runner, server.server.state.store
    job = acme.generation.SubmitJob(request(ds.id, records=3, max_tokens=4, epsilon=1.0), metadata=acme.md)
    list(acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id), metadata=acme.md, timeout=300))
    # the same job's row again, as if the server had died after starting group 0 of a fresh copy
    with db(server) as c:
        c.execute("INSERT INTO jobs (id, tenant, dataset_id, request_json, state, progress, message, created_at, updated_at, "
                  "ledger_id, nonce) SELECT 'job_resumed_copy', tenant, dataset_id, request_json, 'running', 0.0, '', "
                  "created_at, updated_at, ledger_id, NULL FROM jobs WHERE id = ?", (job.id,))  # NULL: a job from before nonces
        c.execute("INSERT INTO job_groups VALUES ('job_resumed_copy', 0)")
    runner._start("job_resumed_copy", None)
    deadline = time.time() + 300
    while store.get_job("job_resumed_copy").state == "running" and time.time() < deadline:
        time.sleep(0.2)
    done = store.get_job("job_resumed_copy")
    assert done.state == "succeeded"
    assert "1 groups had started before it and were not decoded again, 1 of them without a stored record" in done.message
    assert store.started_groups("job_resumed_copy") == {0, 1, 2}
