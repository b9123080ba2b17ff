"""The real server on a loopback port, driven through the generated stubs."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api.gen.privtext.v1 import datasets_pb2, generation_pb2

from server_kit import Client, corpus, quota, request


def status_of(call: grpc.RpcError):
    return call.code(), call.details()


def test_upload_generate_and_the_budget_drops_by_the_plan(acme):
    ds = acme.upload("sms", corpus(), chunk=777)  # chunks split lines and characters anywhere
    assert ds.records == 48 and ds.units_source == "private" and ds.fields.text_field == "text"
    got = acme.datasets.GetDataset(datasets_pb2.GetDatasetRequest(id=ds.id), metadata=acme.md)
    assert got.id == ds.id and got.name == "sms"
    assert ds.id in [d.id for d in acme.datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), metadata=acme.md).datasets]
    assert acme.budget(ds.id).spent == 0

    recs = acme.generate(ds.id, records=3, max_tokens=6, epsilon=1.5)
    assert [r.index for r in recs] == list(range(len(recs))) and 1 <= len(recs) <= 3
    assert all(1 <= r.tokens <= 6 and r.finish_reason in ("stop", "length") for r in recs)
    b = acme.budget(ds.id)
    labels = [e.label for e in b.entries]
    assert labels[0] == "released unit count" and labels[1].startswith("generate ")
    assert b.entries[1].epsilon == pytest.approx(1.5, rel=1e-3)  # the plan's worst case, solved to the request
    assert b.entries[1].epsilon <= 1.5
    assert 1.5 < b.spent < 1.5 + b.entries[0].epsilon + 1e-9
    assert 8 - b.spent < b.remaining < 8  # remaining: what one more request could spend (composition is sub-additive)

    # the count was released once: a second request adds one entry, not two
    acme.generate(ds.id, records=1, max_tokens=3, epsilon=0.5)
    assert [e.label.split()[0] for e in acme.budget(ds.id).entries] == ["released", "generate", "generate"]


def test_exhausted_budget_fails_before_any_record(acme):
    ds = acme.upload("small-cap", corpus(), epsilon_cap=2.0)
    stream = acme.generation.Generate(request(ds.id, records=2, max_tokens=4, epsilon=5.0), metadata=acme.md, timeout=60)
    with pytest.raises(grpc.RpcError) as e:
        next(stream)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    [v] = quota(e.value)
    assert v.subject == f"datasets/{ds.id}" and "epsilon remaining" in v.description
    spent = acme.budget(ds.id)
    assert [x.label for x in spent.entries] == ["released unit count"]  # the count was paid first; nothing else
    with pytest.raises(grpc.RpcError) as e2:
        acme.generate(ds.id, epsilon=spent.remaining * 1.01)
    assert e2.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(acme.generate(ds.id, records=1, max_tokens=3, epsilon=spent.remaining * 0.99)) <= 1


def test_tenants_are_isolated_and_keys_checked(server, acme, globex):
    ds = acme.upload("private-to-acme", corpus(12))
    for call in (
        lambda: globex.datasets.GetDataset(datasets_pb2.GetDatasetRequest(id=ds.id), metadata=globex.md),
        lambda: globex.budget(ds.id),
        lambda: globex.datasets.DeleteDataset(datasets_pb2.DeleteDatasetRequest(id=ds.id), metadata=globex.md),
        lambda: globex.generate(ds.id),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND  # never PERMISSION_DENIED: existence is not revealed
    assert ds.id not in [d.id for d in globex.datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), metadata=globex.md).datasets]
    for key in (None, "pt_wrong"):
        c = Client(server.address, key)
        with pytest.raises(grpc.RpcError) as e:
            c.datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), metadata=c.md)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            c.generate(ds.id)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # health needs no key
    h = health_pb2_grpc.HealthStub(Client(server.address, None).channel)
    assert h.Check(health_pb2.HealthCheckRequest(service="privtext.v1.Generation")).status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "rows,spec,code,message",
    [
        ([{"text": "x" * 401}], {}, grpc.StatusCode.INVALID_ARGUMENT, "text over 400 characters"),
        ([{"text": "ok"}, {"txt": "no text field"}], {}, grpc.StatusCode.INVALID_ARGUMENT, "line 2: missing field 'text'"),
        ([{"text": "ok"}], {"epsilon_cap": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "spec.epsilon_cap must be in [1e-06, 1000] (min_epsilon, max_epsilon)"),
        ([{"text": "ok"}], {"delta": 1.0}, grpc.StatusCode.INVALID_ARGUMENT, "spec.delta must be in [1e-30, 0.01] (min_delta, max_delta)"),
        ([{"text": "ok"}], {"delta": 0.9999999}, grpc.StatusCode.INVALID_ARGUMENT, "spec.delta must be in"),
        ([{"text": "ok"}], {"epsilon_cap": 1e308}, grpc.StatusCode.INVALID_ARGUMENT, "spec.epsilon_cap must be in"),
        ([{"text": f"r{i}"} for i in range(501)], {}, grpc.StatusCode.INVALID_ARGUMENT, "max_records=500"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(acme, rows, spec, code, message):
    before = len(acme.datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), metadata=acme.md).datasets)
    with pytest.raises(grpc.RpcError) as e:
        acme.upload("bad", rows, **spec)
    assert e.value.code() == code and message in e.value.details()
    assert len(acme.datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), metadata=acme.md).datasets) == before


def test_malformed_streams(acme):
    def up(msgs):
        return acme.datasets.UploadDataset(iter(msgs), metadata=acme.md, timeout=30)

    spec = datasets_pb2.UploadRequest(spec=datasets_pb2.DatasetSpec(name="m", epsilon_cap=1, delta=1e-3))
    cases = [
        ([datasets_pb2.UploadRequest(chunk=b'{"text": "a"}\n')], "first message of an upload must carry the spec"),
        ([spec, spec], "only the first message may carry the spec"),
        ([spec, datasets_pb2.UploadRequest(chunk=b'{"text": "a"}\n'), datasets_pb2.UploadRequest(record=datasets_pb2.Record(text="b"))], "records or chunks, not both"),
        ([spec], "no records"),
        ([spec, datasets_pb2.UploadRequest(chunk=b"not json\n")], "malformed JSON"),
    ]
    for msgs, message in cases:
        with pytest.raises(grpc.RpcError) as e:
            up(msgs)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details(), message
    with pytest.raises(grpc.RpcError) as e:  # one message over max_message_bytes: refused by gRPC itself
        up([spec, datasets_pb2.UploadRequest(chunk=b" " * (65 * 1024))])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # a record upload works the same way (structured messages)
    ds = up([spec, *[datasets_pb2.UploadRequest(record=datasets_pb2.Record(text=r["text"])) for r in corpus(10)]])
    assert ds.records == 10


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"records": 0}, "records"),
        ({"max_tokens": 65}, "max_tokens"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"labels": ["spam"]}, "labels"),  # the dataset has no label field
        ({"settings": generation_pb2.MechanismSettings(partitions=0)}, "partitions"),
    ],
)
def test_bad_requests_name_the_field(acme, kw, field):
    ds = acme.upload(f"req-{field}-{len(kw)}-{time.monotonic_ns()}", corpus(12))
    with pytest.raises(grpc.RpcError) as e:
        acme.generate(ds.id, **kw)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in e.value.details()


def test_presets_and_labels(acme):
    ds = acme.upload("labelled", corpus(), label_field="label")
    recs = acme.generate(ds.id, records=0, label_counts={"spam": 1, "ham": 2}, max_tokens=4, epsilon=None, preset="low")
    labels = [r.label for r in recs]  # an empty or PII-dropped record is skipped, never regenerated
    assert labels.count("spam") <= 1 and labels.count("ham") <= 2 and len(labels) == len(recs) >= 1
    b = acme.budget(ds.id)
    assert b.entries[0].label.startswith("released label histogram") and b.entries[1].epsilon == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(grpc.RpcError) as e:
        acme.generate(ds.id, epsilon=None, preset="reckless")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "low" in e.value.details()


def test_a_client_that_disconnects_stops_its_groups_and_stays_charged(server, acme):
    ds = acme.upload("disconnect", corpus())
    call = acme.generation.Generate(request(ds.id, records=6, max_tokens=60, epsilon=2.0), metadata=acme.md, timeout=300)
    scheduler, start = server.server.state.scheduler, time.time()
    while scheduler.active_groups == 0 and time.time() < start + 60:
        time.sleep(0.05)
    # When this fails under load, the message says which wait ran out, after how long.
    assert scheduler.active_groups > 0, f"no group started within {time.time() - start:.0f} s (call done: {call.done()})"
    call.cancel()
    cancelled = time.time()
    while scheduler.active_groups > 0 and time.time() < cancelled + 30:
        time.sleep(0.05)
    assert scheduler.active_groups == 0, (  # halted before their 60 tokens
        f"{scheduler.active_groups} groups still active {time.time() - cancelled:.0f} s after the client cancelled")
    assert [e.label.split()[0] for e in acme.budget(ds.id).entries] == ["released", "generate"]  # still charged


def test_concurrent_requests_never_overspend_together(acme):
    ds = acme.upload("race", corpus(), epsilon_cap=3.0)
    acme.generate(ds.id, records=1, max_tokens=1, epsilon=0.1)  # release the count first

    def one(_):
        try:
            return len(acme.generate(ds.id, records=1, max_tokens=1, epsilon=0.5, timeout=600)), None
        except grpc.RpcError as e:
            return None, e.code()

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(one, range(50)))
    ok = [o for o, c in outcomes if c is None]
    refused = [c for o, c in outcomes if c is not None]
    assert set(refused) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    b = acme.budget(ds.id)
    assert b.spent <= 3.0 + 1e-9
    assert len(b.entries) == 2 + len(ok)  # one entry per request that ran, none for a refused one
    assert 2 <= len(ok) < 50


def test_jobs_run_stream_resume_and_cancel(acme):
    ds = acme.upload("jobs", corpus())
    job = acme.generation.SubmitJob(request(ds.id, records=4, max_tokens=5, epsilon=1.0), metadata=acme.md)
    assert job.state in (generation_pb2.JOB_STATE_QUEUED, generation_pb2.JOB_STATE_RUNNING)
    assert job.records_total == 4 and job.epsilon_reserved == pytest.approx(1.0, rel=1e-3)
    streamed = list(acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id), metadata=acme.md, timeout=300))
    done = acme.generation.GetJob(generation_pb2.GetJobRequest(id=job.id), metadata=acme.md)
    assert done.state == generation_pb2.JOB_STATE_SUCCEEDED and done.records_done == len(streamed) >= 1
    again = list(acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id, offset=1), metadata=acme.md))
    assert [r.text for r in again] == [r.text for r in streamed[1:]] and [r.index for r in again] == list(range(1, len(streamed)))
    with pytest.raises(grpc.RpcError) as e:
        list(acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id, offset=5), metadata=acme.md))
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE

    long = acme.generation.SubmitJob(request(ds.id, records=40, max_tokens=60, epsilon=1.0), metadata=acme.md)
    cancelled = acme.generation.CancelJob(generation_pb2.CancelJobRequest(id=long.id), metadata=acme.md)
    assert cancelled.state == generation_pb2.JOB_STATE_CANCELLED and cancelled.epsilon_spent == cancelled.epsilon_reserved > 0
    with pytest.raises(grpc.RpcError) as e:
        list(acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=long.id), metadata=acme.md, timeout=120))
    assert e.value.code() == grpc.StatusCode.CANCELLED


def test_reflection_and_metrics(server, acme):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    db = ProtoReflectionDescriptorDatabase(Client(server.address, None).channel)
    services = set(db.get_services())
    assert {"privtext.v1.Datasets", "privtext.v1.Generation", "grpc.health.v1.Health"} <= services
    assert db.FindFileContainingSymbol("privtext.v1.Generation").name.endswith("generation.proto")
    from grpc_requests import Client as GenericClient  # knows nothing of privtext: reflection only

    generic = GenericClient.get_by_endpoint(server.address)
    ds = acme.upload("generic", corpus(12))
    budget = generic.request("privtext.v1.Datasets", "GetBudget", {"id": ds.id}, metadata=list(acme.md))
    assert budget["epsilon_cap"] == 8.0 and budget.get("entries", []) == []
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10).read().decode()
    for name in ("privtext_tokens_total", "privtext_records_total", "privtext_epsilon_spent", "privtext_active_groups",
                 "privtext_queue_depth", "privtext_request_seconds_bucket"):
        assert name in body
    assert 'method="GetBudget"' in body or 'method="UploadDataset"' in body


def test_delete_erases_records_and_keeps_the_ledger(acme):
    ds = acme.upload("to-delete", corpus(12))
    acme.generate(ds.id, records=1, max_tokens=2, epsilon=0.5)
    job = acme.generation.SubmitJob(request(ds.id, records=1, max_tokens=2, epsilon=0.5), metadata=acme.md)
    list(acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id), metadata=acme.md, timeout=120))
    acme.datasets.DeleteDataset(datasets_pb2.DeleteDatasetRequest(id=ds.id), metadata=acme.md)
    with pytest.raises(grpc.RpcError) as e:
        acme.generate(ds.id)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(acme.budget(ds.id).entries) == 3  # what was spent stays visible
    assert list(acme.generation.StreamJobResults(generation_pb2.StreamJobResultsRequest(id=job.id), metadata=acme.md)) == []


# ---------------------------------------------------------------------------------------------
# issue 22: bounded requests, paged budgets, abandoned uploads, one server per port and directory


@pytest.mark.parametrize(
    "name",
    ["nul\x00name", "two\nlines", "tab\tname"],
    ids=["nul", "newline", "tab"],
)
def test_a_name_with_control_characters_is_refused(acme, name):
    with pytest.raises(grpc.RpcError) as e:
        acme.upload(name, corpus(4))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec.name must be free of control characters" in e.value.details()


def test_bad_requests_are_refused_before_anything_is_charged(acme):
    ds = acme.upload("nothing-charged", corpus(), label_field="label")
    gate = generation_pb2.MechanismSettings(partitions=4, gate=generation_pb2.GateSettings(epsilon=1e308))
    cases = [
        ({"stop": [""]}, "stop[0]"),
        ({"epsilon": 5e-324}, "epsilon"),
        ({"settings": gate}, "settings.gate.epsilon"),
        ({"labels": ["x" * 32_000]}, "labels[0]"),  # used to cost 18 s and GBs of memory
        ({"stop": ["s"] * 17}, "stop"),
    ]
    for kw, field in cases:
        with pytest.raises(grpc.RpcError) as e:
            acme.generate(ds.id, **kw)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, e.value.details())
        assert e.value.details().startswith(f"{field} must be ") and len(e.value.details()) < 300
    b = acme.budget(ds.id)
    assert b.spent == 0 and b.entries_total == 0 and list(b.entries) == []  # not even the DP count


def test_a_huge_id_is_refused_and_never_echoed(acme):
    big = "ds_" + "x" * 60_000  # under the fixture's 64 KiB message limit
    for call in (lambda: acme.budget(big),
                 lambda: acme.datasets.GetDataset(datasets_pb2.GetDatasetRequest(id=big), metadata=acme.md),
                 lambda: acme.generate(big)):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_id_chars" in e.value.details()
        assert len(e.value.details()) < 300
    with pytest.raises(grpc.RpcError) as e:  # job ids reach the store: its NOT_FOUND quotes 64 characters at most
        acme.generation.GetJob(generation_pb2.GetJobRequest(id="job_" + "y" * 60_000), metadata=acme.md)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and len(e.value.details()) < 300


def test_budget_lists_the_most_recent_entries_and_counts_them_all(server, acme):
    from mechanisms import PrivacyEvent

    ds = acme.upload("long-ledger", corpus(12), epsilon_cap=100.0)
    store = server.server.state.store  # the server's own store: as if 130 requests had been charged
    huge = "released label histogram " + "[" + ", ".join(f'"{"z" * 2000}{i}"' for i in range(1000)) + "]"
    for i in range(130):
        store.reserve("acme", ds.id, f"{i} {huge}", [PrivacyEvent("zcdp", 1e-4, 8, "em selection")])
    b = acme.budget(ds.id)
    limit = server.server.settings.budget_entries
    assert b.entries_total == 130 and len(b.entries) == limit == 100
    assert [e.label.split()[0] for e in b.entries] == [str(i) for i in range(30, 130)]  # the most recent, oldest first
    assert all(len(e.label) <= 200 and "sha256:" in e.label for e in b.entries)
    assert b.ByteSize() < 64 * 1024  # a 2 MB label per entry once made this exceed gRPC's 4 MiB
    assert b.spent == pytest.approx(store.ledger("acme", ds.id).spent_epsilon(), rel=1e-12)  # every entry counted


def _slow_upload(name: str, rows: list[dict], stall: float):
    """An upload whose client sends half its records, then stalls for `stall` seconds."""
    data = [json.dumps(r).encode() + b"\n" for r in rows]
    yield datasets_pb2.UploadRequest(spec=datasets_pb2.DatasetSpec(name=name, text_field="text", epsilon_cap=8.0, delta=1e-3, format="jsonl"))
    yield datasets_pb2.UploadRequest(chunk=b"".join(data[: len(data) // 2]))
    time.sleep(stall)
    yield datasets_pb2.UploadRequest(chunk=b"".join(data[len(data) // 2:]))


def test_an_upload_cut_by_its_deadline_leaves_nothing(acme):
    rows = corpus(20)
    with pytest.raises(grpc.RpcError) as e:
        acme.datasets.UploadDataset(_slow_upload("cut-short", rows, stall=4.0), metadata=acme.md, timeout=1.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(3.5)  # the server has seen the end of the stream and done whatever it does with it
    names = [d.name for d in acme.datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), metadata=acme.md).datasets]
    assert "cut-short" not in names  # no truncated dataset
    ds = acme.upload("cut-short", rows)  # a retry with the same name is not ALREADY_EXISTS
    assert ds.records == 20


def test_a_cancelled_upload_leaves_nothing(acme):
    call = acme.datasets.UploadDataset.future(_slow_upload("cancelled", corpus(20), stall=3.0), metadata=acme.md, timeout=60)
    time.sleep(1.0)
    call.cancel()
    time.sleep(3.0)
    names = [d.name for d in acme.datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), metadata=acme.md).datasets]
    assert "cancelled" not in names
    assert acme.upload("cancelled", corpus(20)).records == 20


def test_a_second_server_on_the_same_port_or_directory_is_refused(server, tmp_path, engine):
    from service.api.server import Server, StartupError

    first = server.server.settings
    same_dir = first.model_copy(update={"port": 0})
    with pytest.raises(StartupError, match=r"data_dir must be used by one server at a time, .* in use by another privtext server"):
        server.run(Server(same_dir, engine).start())
    same_port = first.model_copy(update={"port": server.server.port, "data_dir": tmp_path / "other"})
    with pytest.raises(StartupError, match=f"port must be free to bind on 127.0.0.1, got {server.server.port}"):
        server.run(Server(same_port, engine).start())
    # the refused servers gave back what they took: the first still serves, the other directory is free
    assert Client(server.address, None).channel is not None
    acme = Client(server.address, "pt_test_acme_key")
    assert acme.datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), metadata=acme.md) is not None
    from service.store.lock import DataDirLock

    DataDirLock(tmp_path / "other").release()
