"""`privtext serve` as a process: SIGKILL mid-job and restart, a job that survives it, SIGTERM
drain, and logs that never hold a record of the corpus."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_kit import Client, Process, corpus, request

from service.api.gen.privtext.v1 import generation_pb2

pytestmark = pytest.mark.slow


def wait_for(pred, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


def test_sigkill_restart_keeps_the_ledger_and_the_job_finishes(tmp_path):
    data, config, log = tmp_path / "data", tmp_path / "config", tmp_path / "serve.log"
    rows = corpus(40)
    first = Process(data, config, log)
    c = Client(first.address, None)
    ds = c.upload("sms", rows)
    job = c.generation.SubmitJob(request(ds.id, records=40, max_tokens=12, epsilon=2.0), metadata=c.md)

    def get():
        return c.generation.GetJob(generation_pb2.GetJobRequest(id=job.id), metadata=c.md)

    wait_for(lambda: get().records_done >= 1, 300, "a first result")
    before = c.budget(ds.id)
    assert get().state == generation_pb2.JOB_STATE_RUNNING  # killed mid-job, not after it
    first.kill()  # mid-job: no drain, no goodbye

    second = Process(data, config, log)
    c = Client(second.address, None)
    after = c.budget(ds.id)
    assert [(e.label, e.epsilon) for e in after.entries] == [(e.label, e.epsilon) for e in before.entries]
    assert after.spent == pytest.approx(before.spent)  # every reservation still charged, nothing new

    done = wait_for(lambda: (j := get()).state in (generation_pb2.JOB_STATE_SUCCEEDED, generation_pb2.JOB_STATE_FAILED) and j, 600, "the resumed job")
    assert done.state == generation_pb2.JOB_STATE_SUCCEEDED
    results = list(c.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id), metadata=c.md, timeout=60))
    assert 1 <= len(results) <= 40 and [r.index for r in results] == list(range(len(results)))
    assert len(c.budget(ds.id).entries) == len(before.entries)  # the resumed job paid nothing more

    # SIGTERM drains: a stream in flight is cancelled within the grace period, the process exits 0
    stream = c.generation.Generate(request(ds.id, records=20, max_tokens=60, epsilon=0.5), metadata=c.md, timeout=300)
    health = health_pb2_grpc.HealthStub(c.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    t0 = time.time()
    rc = second.terminate(timeout=120)
    assert rc == 0 and time.time() - t0 < 60
    with pytest.raises(grpc.RpcError):
        list(stream)

    text = log.read_text(errors="replace")
    assert "resumed 1 unfinished job" in text and "draining" in text
    for r in rows:  # no private record, nor a long piece of one, ever reaches a log line
        assert r["text"] not in text and r["text"][:30] not in text
