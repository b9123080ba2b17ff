"""Private Evolution through the real server (gRPC Generate and SubmitJob), with the real model
and the real MiniLM: the T Gaussian events are reserved on the dataset's ledger before any
candidate is written, an over-budget request is refused before anything is drawn or charged,
and a PE job never resumes by releasing its histograms again."""

from __future__ import annotations

import json
import time
import uuid

import grpc
import pytest
from server_kit import corpus, quota, request

from mechanisms.pe import plan_pe
from service.api.gen.privtext.v1 import generation_pb2
from service.jobs.dataset_job import PE_NOT_RESUMABLE, PE_STARTED, PE_STORED, Admission, decode, prepare
from service.jobs.request import JobRequest
from service.jobs.records import RecordFilter


def pe_request(dataset_id: str, records: int = 2, max_tokens: int = 4, epsilon: float = 2.0, **pe) -> generation_pb2.GenerateRequest:
    pe = {"iterations": 1, "population": 2, **pe}
    return request(dataset_id, records=records, max_tokens=max_tokens, epsilon=epsilon, method=generation_pb2.METHOD_PE,
                   pe=generation_pb2.PeSettings(**pe), settings=generation_pb2.MechanismSettings())


def histogram_events(entry) -> list:
    return [e for e in entry.events if e.note.startswith("PE iteration")]


def wait_job(acme, job_id: str, timeout: float = 600) -> generation_pb2.Job:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = acme.generation.GetJob(generation_pb2.GetJobRequest(id=job_id), metadata=acme.md)
        if job.state in (generation_pb2.JOB_STATE_SUCCEEDED, generation_pb2.JOB_STATE_FAILED, generation_pb2.JOB_STATE_CANCELLED):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish")


def test_pe_generate_reserves_t_gaussian_events_before_any_candidate(server, acme, engine):
    ds = acme.upload("pe-generate", corpus(40), epsilon_cap=20.0)
    recs = list(acme.generation.Generate(pe_request(ds.id, iterations=2, population=3), metadata=acme.md, timeout=600))
    assert 1 <= len(recs) <= 2 and [r.index for r in recs] == list(range(len(recs)))
    assert all(1 <= r.tokens <= 4 for r in recs)
    b = acme.budget(ds.id)
    assert [e.label.split()[0] for e in b.entries] == ["released", "generate"]  # the DP count once, then the request
    events = histogram_events(b.entries[1])
    assert len(events) == 2 == len(b.entries[1].events)  # T = 2 Gaussian histograms, nothing else
    units = server.server.state.store.released_count("acme", ds.id, "unit count").value
    expected = plan_pe(units=max(int(units), 1), records=2, iterations=2, threshold=0.0, delta=1e-3, epsilon=2.0)
    assert [(e.kind, e.parameter, e.note) for e in events] == [(e.kind, e.parameter, e.note) for e in expected.events]
    assert b.entries[1].epsilon == pytest.approx(2.0, rel=1e-6)

    # The server's own steps: after prepare (the reservation) no group has reached the engine yet.
    state = server.server.state
    req = JobRequest(records=2, max_tokens=3, epsilon=1.0, method="pe", iterations=1, pe_population=2)
    before = engine.stats.groups_finished
    prep = prepare(state.store, "acme", ds.id, req, "pe order check", state.settings.count_noise, state.server_secret,
                   state.engine, state.settings.batch_rows)
    assert engine.stats.groups_finished == before  # reserved, nothing written
    row = state.store.ledger_row("acme", ds.id, prep.ledger_id)
    assert len(row.events) == 1 and row.events == prep.plan.events and row.events[0].kind == "gaussian"
    admission = Admission(state.scheduler, "pe order check")
    out = list(decode(prep, state.engine, admission, RecordFilter("off")))
    assert 1 <= len(out) <= 2 and engine.stats.groups_finished > before
    assert len(state.store.ledger_rows("acme", ds.id)) == 3  # running it charged nothing more


def test_pe_over_budget_is_refused_before_anything_is_drawn_or_charged(acme, engine):
    ds = acme.upload("pe-small-cap", corpus(40), epsilon_cap=1.0)
    before = engine.stats.groups_finished
    with pytest.raises(grpc.RpcError) as e:
        list(acme.generation.Generate(pe_request(ds.id, epsilon=5.0), metadata=acme.md, timeout=120))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over its cap 1" in e.value.details() and "What fits" in e.value.details()
    [v] = quota(e.value)
    assert v.subject == f"datasets/{ds.id}" and "epsilon remaining" in v.description
    with pytest.raises(grpc.RpcError) as e2:
        acme.generation.SubmitJob(pe_request(ds.id, epsilon=5.0), metadata=acme.md, timeout=120)
    assert e2.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    b = acme.budget(ds.id)
    assert b.spent == 0 and len(b.entries) == 0  # not even the DP count: its cost was checked with the plan's
    assert engine.stats.groups_finished == before


@pytest.mark.parametrize(
    "kw,field,message",
    [
        ({"pe": generation_pb2.PeSettings(iterations=11)}, "pe.iterations", "in [1, 10] (max_pe_iterations)"),
        ({"pe": generation_pb2.PeSettings(population=257)}, "pe.population", "in [1, 256] (max_pe_population)"),
        ({"pe": generation_pb2.PeSettings(threshold=-1.0)}, "pe.threshold", "a finite number >= 0"),
        ({"pe": generation_pb2.PeSettings(sigma=0.0)}, "pe.sigma", "a finite number > 0"),
        ({"method": generation_pb2.METHOD_DECODE, "pe": generation_pb2.PeSettings(iterations=2)}, "pe", "unset unless method is METHOD_PE"),
        ({"method": 7}, "method", "METHOD_DECODE or METHOD_PE"),
    ],
)
def test_bad_pe_settings_name_the_field_and_limit_and_charge_nothing(acme, kw, field, message):
    ds = acme.upload(f"pe-bad-{uuid.uuid4().hex}", corpus(40))
    req = pe_request(ds.id)
    req.MergeFrom(generation_pb2.GenerateRequest(**kw))
    if "method" in kw:
        req.method = kw["method"]
    with pytest.raises(grpc.RpcError) as e:
        list(acme.generation.Generate(req, metadata=acme.md, timeout=60))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(f"{field} must be") and message in e.value.details()
    assert len(acme.budget(ds.id).entries) == 0


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"settings": generation_pb2.MechanismSettings(gate=generation_pb2.GateSettings(threshold=0.3))},
         "gate_threshold: private-decoding settings, not used by method 'pe'"),
        ({"mechanism": generation_pb2.MECHANISM_GAUSSIAN}, "mechanism: private-decoding settings"),
        ({"records": 3}, "pe_population must be at least records (3)"),
        ({"pe": generation_pb2.PeSettings(sigma=0.2, iterations=1, population=2)}, "over the budget of 2"),
    ],
)
def test_requests_pe_cannot_honour_are_refused_before_the_count(acme, kw, message):
    ds = acme.upload(f"pe-refused-{uuid.uuid4().hex}", corpus(40))
    req = pe_request(ds.id)
    req.MergeFrom(generation_pb2.GenerateRequest(**kw))
    with pytest.raises(grpc.RpcError) as e:
        list(acme.generation.Generate(req, metadata=acme.md, timeout=60))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()
    assert len(acme.budget(ds.id).entries) == 0


def test_a_pe_job_succeeds_and_never_resumes_by_releasing_again(server, acme):
    ds = acme.upload("pe-job", corpus(40), epsilon_cap=20.0)
    job = acme.generation.SubmitJob(pe_request(ds.id), metadata=acme.md, timeout=120)
    assert job.records_total == 2 and job.epsilon_reserved == pytest.approx(2.0, rel=1e-6)
    streamed = list(acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id), metadata=acme.md, timeout=600))
    done = wait_job(acme, job.id)
    assert done.state == generation_pb2.JOB_STATE_SUCCEEDED, done.message
    assert done.records_done == len(streamed) >= 1 and "Private Evolution: 1 histograms released, 2 candidates written" in done.message
    b = acme.budget(ds.id)
    assert [e.label.split()[0] for e in b.entries] == ["released", "job"] and len(histogram_events(b.entries[1])) == 1

    # Interrupted copies of that job (its request, reservation and nonce), resumed by the runner:
    store, runner = server.server.state.store, server.server.state.runner
    stored = store.get_job(job.id)
    began = store.create_job("acme", ds.id, stored.request_json, stored.ledger_id, stored.nonce)
    store.mark_group_started(began, PE_STARTED)  # its evolution had begun: its histograms are gone
    finished = store.create_job("acme", ds.id, stored.request_json, stored.ledger_id, stored.nonce)
    store.mark_group_started(finished, PE_STARTED)
    store.append_result(finished, 0, json.dumps({"text": "kept", "tokens": 1, "finish_reason": "eos"}))
    store.mark_group_started(finished, PE_STORED)  # its records were all stored
    assert runner.resume_all() >= 2
    failed = wait_job(acme, began, 60)
    assert failed.state == generation_pb2.JOB_STATE_FAILED and failed.error == PE_NOT_RESUMABLE
    ok = wait_job(acme, finished, 60)
    assert ok.state == generation_pb2.JOB_STATE_SUCCEEDED and ok.records_done == 1
    assert [r.text for r in acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=finished), metadata=acme.md)] == ["kept"]
    assert len(acme.budget(ds.id).entries) == 2  # nothing charged again
