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
from service.jobs.request import JobRequest
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


@pytest.fixture(scope="module")
def two_servers(pg_server, tmp_path_factory):
    """Two `privtext serve` processes on one PostgreSQL (one data key, their own data dirs)."""
    tmp = tmp_path_factory.mktemp("two-servers")
    env = {"PRIVTEXT_STORE": pg_server.create_database("servers"), "PRIVTEXT_JOB_LEASE_SECONDS": "3",
           "PRIVTEXT_API_KEYS": json.dumps({t: [hash_key(k)] for t, k in KEYS.items()})}
    a = Process(tmp / "a", tmp / "config", tmp / "a.log", env=env)
    b = Process(tmp / "b", tmp / "config", tmp / "b.log", env=env)
    yield a, b, tmp
    for p in (a, b):
        if p.proc.poll() is None:
            p.terminate()


@pytest.mark.slow
def test_a_race_spread_over_two_servers_never_overspends(two_servers):
    """24 requests at once, round-robin over both servers, on a cap that pays for about half:
    never over the cap, every refusal RESOURCE_EXHAUSTED before any record, one ledger entry per
    request that ran."""
    import threading

    a, b, _ = two_servers
    ca = Client(a.address, KEYS["acme"])
    ds = ca.upload("race", corpus(40), epsilon_cap=3.0)
    both = Client(f"ipv4:{a.address},{b.address}", KEYS["acme"])
    both.channel = grpc.insecure_channel(f"ipv4:{a.address},{b.address}", options=[("grpc.lb_policy_name", "round_robin")])
    from service.api.gen.privtext.v1 import generation_pb2_grpc

    both.generation = generation_pb2_grpc.GenerationStub(both.channel)
    outcomes: list[tuple[str, int]] = []

    def one() -> None:
        try:
            outcomes.append(("ok", len(both.generate(ds.id, records=1, max_tokens=2, epsilon=0.5, timeout=600))))
        except grpc.RpcError as e:
            outcomes.append((e.code().name, 0))

    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ran = sum(1 for o, _ in outcomes if o == "ok")
    assert len(outcomes) == 24 and {o for o, _ in outcomes} <= {"ok", "RESOURCE_EXHAUSTED"}
    assert 0 < ran < 24
    budget = ca.budget(ds.id)
    assert budget.spent <= 3.0 + 1e-9
    assert budget.entries_total == 1 + ran  # the DP count, then one reservation per request that ran
    served = [p.log.read_text().count("reserved (ledger entry") for p in (a, b)]
    assert sum(served) == ran and all(n > 0 for n in served)  # both servers ran requests of the race


@pytest.mark.slow
def test_two_servers_on_one_postgresql_a_sigkilled_servers_job_is_finished_by_the_other(two_servers):
    a, b, tmp = two_servers
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
    assert "took over" in (tmp / "b.log").read_text()
