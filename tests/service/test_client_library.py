"""The client library (service.client) against a real privtext server on a loopback port
(conftest's `server`): what it returns is what the server holds (checked on the generated stubs,
`acme`), streams are lazy, and every refusal arrives as its typed exception. Tiny requests:
1-2 records of 2-4 tokens."""

from __future__ import annotations

import io
import time

import pytest
from server_kit import KEYS, corpus, jsonl

import service.client as pt
from service.api.gen.privtext.v1 import datasets_pb2, generation_pb2
from service.client import cli

SMALL = {"max_tokens": 3, "epsilon": 1.0, "partitions": 4}


@pytest.fixture()
def client(server):
    with pt.Client(server.address, api_key=KEYS["acme"], timeout=120) as c:
        yield c


def test_upload_a_path_and_a_binary_file(client, acme, tmp_path):
    path = tmp_path / "sms.jsonl"
    path.write_bytes(jsonl(corpus(20)))
    sent: list[int] = []
    ds = client.upload(path, name="lib-path", label_field="label", epsilon_cap=8, delta=1e-3, on_progress=sent.append)
    assert isinstance(ds, pt.Dataset) and sum(sent) == path.stat().st_size
    assert (ds.name, ds.records, ds.text_field, ds.label_field, ds.unit_field) == ("lib-path", 20, "text", "label", None)
    assert (ds.epsilon_cap, ds.delta, ds.units_source) == (8, 1e-3, "private") and ds.created_at is not None
    held = acme.datasets.GetDataset(datasets_pb2.GetDatasetRequest(id=ds.id), metadata=acme.md, timeout=30)
    assert ds == pt.Dataset.from_message(held) == client.get_dataset(ds.id)

    f = io.BytesIO(b"text,label\nhello there,ham\nwin a prize now,spam\n")
    csv_ds = client.upload(f, name="lib-file", format="csv", declared_public_units=100, epsilon_cap=2, delta=1e-3)
    assert (csv_ds.records, csv_ds.units_source) == (2, "declared")
    assert [d.id for d in client.list_datasets()][:2] == [csv_ds.id, ds.id]  # newest first

    client.delete_dataset(csv_ds.id)
    with pytest.raises(pt.NotFound):
        client.get_dataset(csv_ds.id)


def test_generate_streams_lazily_and_the_budget_shows_the_charge(client, acme):
    ds = acme.upload("lib-gen", corpus(40))
    stream = client.generate(ds.id, records=2, **SMALL)
    assert list(acme.budget(ds.id).entries) == []  # nothing is sent before the first next()
    first = next(stream)  # a record, while the stream is still open
    assert isinstance(first, pt.Record)
    records = [first, *stream]
    assert 1 <= len(records) <= 2 and sorted(r.index for r in records) == list(range(len(records)))
    for r in records:
        assert isinstance(r.text, str) and 1 <= r.tokens <= 3 and r.finish_reason in ("stop", "length") and r.label is None

    budget = client.budget(ds.id)
    assert budget == pt.Budget.from_message(acme.budget(ds.id))
    assert [e.label.split()[0] for e in budget.entries] == ["released", "generate"]
    assert budget.entries[1].epsilon == pytest.approx(1.0, rel=1e-3) and budget.entries_total == 2
    assert budget.epsilon_cap == 8 and 1.0 < budget.spent < 8 and budget.remaining < 8


def test_generate_with_label_counts(client, acme):
    ds = acme.upload("lib-labels", corpus(40), label_field="label")
    records = list(client.generate(ds.id, label_counts={"spam": 1, "ham": 1}, **SMALL))
    assert 1 <= len(records) <= 2 and {r.label for r in records} <= {"spam", "ham"}


def test_jobs_round_trip(client, acme):
    ds = acme.upload("lib-jobs", corpus(40))
    job = client.submit_job(ds.id, records=2, **SMALL)
    assert isinstance(job, pt.Job) and job.dataset_id == ds.id and job.records_total == 2
    assert job.epsilon_reserved == pytest.approx(1.0, rel=1e-6)
    records = list(client.job_results(job.id))  # follows the job until it ends
    done = client.get_job(job.id)
    assert done.state == pt.JobState.SUCCEEDED and done.done and done.records_done == len(records) >= 1
    assert done == pt.Job.from_message(acme.generation.GetJob(generation_pb2.GetJobRequest(id=job.id), metadata=acme.md))
    assert list(client.job_results(job.id, start=1)) == records[1:]  # resumed after one record
    assert client.cancel_job(job.id).state == pt.JobState.SUCCEEDED  # a finished job: unchanged
    with pytest.raises(pt.OutOfRange) as e:
        list(client.job_results(job.id, start=3))
    assert e.value.code == "OUT_OF_RANGE" and "offset" in e.value.details


def test_cli_json_is_the_messages_json(client, acme):
    """`datasets get --json` and `jobs status --json`, now made from the dataclasses, print what
    protobuf's JSON of the message printed: same keys, same order, same values."""
    ds = acme.upload("lib-json", corpus(12), unit_field="label")
    msg = acme.datasets.GetDataset(datasets_pb2.GetDatasetRequest(id=ds.id), metadata=acme.md, timeout=30)
    as_json = cli.dataset_to_json(client.get_dataset(ds.id))
    assert list(as_json.items()) == list(cli.message_to_dict(msg).items())
    job = client.submit_job(ds.id, records=1, **SMALL)
    list(client.job_results(job.id))
    msg = acme.generation.GetJob(generation_pb2.GetJobRequest(id=job.id), metadata=acme.md, timeout=30)
    assert list(cli.job_to_json(client.get_job(job.id)).items()) == list(cli.message_to_dict(msg).items())


def test_a_bad_field_is_invalid_argument_naming_it(client, acme):
    ds = acme.upload("lib-bad", corpus(12))
    with pytest.raises(pt.InvalidArgument) as e:
        list(client.generate(ds.id, records=1, max_tokens=65, epsilon=1.0))  # the server's max_request_tokens is 64
    assert e.value.code == "INVALID_ARGUMENT" and e.value.fields == ("max_tokens",) and "64" in e.value.details
    assert list(acme.budget(ds.id).entries) == []


def test_over_budget_is_resource_exhausted_with_what_fits(client, acme):
    ds = acme.upload("lib-cap", corpus(40), epsilon_cap=1.0)
    for call in (lambda: list(client.generate(ds.id, records=2, max_tokens=4, epsilon=5.0, partitions=4)),
                 lambda: client.submit_job(ds.id, records=2, max_tokens=4, epsilon=5.0, partitions=4)):
        with pytest.raises(pt.ResourceExhausted) as e:
            call()
        err = e.value
        assert err.code == "RESOURCE_EXHAUSTED" and err.quota_violations[0].subject == f"datasets/{ds.id}"
        assert err.remaining_epsilon is not None and 0 <= err.remaining_epsilon <= 1.0 and err.delta == 1e-3
        assert err.fits.get("max_epsilon", 0) == pytest.approx(err.remaining_epsilon, rel=1e-3)
    assert [e.label for e in client.budget(ds.id).entries] == ["released unit count"]  # nothing generated or reserved


def test_an_epsilon_too_small_for_the_gate_is_failed_precondition(client, acme):
    ds = acme.upload("lib-gate", corpus(12))
    with pytest.raises(pt.FailedPrecondition) as e:
        client.submit_job(ds.id, records=1, max_tokens=4, epsilon=0.1, gate_epsilon=5.0, partitions=4)
    assert "gate" in e.value.details


def test_unknown_ids_are_not_found(client):
    for call in (lambda: client.get_dataset("ds_nope"), lambda: client.budget("ds_nope"), lambda: client.get_job("job_nope"),
                 lambda: client.cancel_job("job_nope"), lambda: list(client.job_results("job_nope")),
                 lambda: list(client.generate("ds_nope", records=1, **SMALL))):
        with pytest.raises(pt.NotFound) as e:
            call()
        assert e.value.code == "NOT_FOUND"


def test_another_tenants_dataset_is_not_found(server, acme):
    ds = acme.upload("lib-acme-only", corpus(12))
    with pt.Client(server.address, api_key=KEYS["globex"]) as globex:
        with pytest.raises(pt.NotFound):
            globex.budget(ds.id)


@pytest.mark.parametrize("key", [None, "pt_wrong_key"])
def test_a_missing_or_wrong_key_is_unauthenticated(server, key):
    with pt.Client(server.address, api_key=key) as c:
        with pytest.raises(pt.Unauthenticated) as e:
            c.list_datasets()
    assert str(e.value) == "UNAUTHENTICATED: missing or unknown API key (metadata 'x-api-key')"


class SlowFile(io.RawIOBase):
    """A file whose first read takes longer than the client's timeout."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        time.sleep(3)
        return 0


def test_transport_errors(server):
    with pt.Client(server.address, api_key=KEYS["acme"], timeout=0.5) as c:
        with pytest.raises(pt.DeadlineExceeded):
            c.upload(SlowFile(), name="lib-slow", format="jsonl", epsilon_cap=1, delta=1e-3)
    with pt.Client("127.0.0.1:1", timeout=10) as c:  # nothing listens there
        with pytest.raises(pt.Unavailable):
            c.list_datasets()


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda c: c.generate("ds", records="2", max_tokens=3, epsilon=1.0), "records"),
        (lambda c: c.generate("ds", records=1, max_tokens=3, epsilon=1.0, preset="low"), "epsilon and preset"),
        (lambda c: c.generate("ds", records=1, max_tokens=3), "epsilon and preset"),
        (lambda c: c.generate("ds", max_tokens=3, epsilon=1.0), "records"),
        (lambda c: c.generate("ds", records=1, max_tokens=3, epsilon=1.0, labels=["a"], label_counts={"a": 1}), "label_counts"),
        (lambda c: c.generate("ds", records=1, max_tokens=3, epsilon=1.0, labels="spam"), "labels"),
        (lambda c: c.generate("ds", records=1, max_tokens=3, epsilon=1.0, pii="hide"), "pii"),
        (lambda c: c.submit_job("ds", records=2**31, max_tokens=3, epsilon=1.0), "records"),
        (lambda c: c.upload(io.BytesIO(b"{}"), name="x", epsilon_cap=1, delta=1e-3), "format"),
        (lambda c: c.upload(io.StringIO("{}"), name="x", epsilon_cap=1, delta=1e-3, format="jsonl"), "file"),
        (lambda c: c.upload(io.BytesIO(b"{}"), name="x", epsilon_cap="1", delta=1e-3, format="jsonl"), "epsilon_cap"),
        (lambda c: c.get_job(7), "job_id"),
        (lambda c: c.job_results("job", start=1.5), "start"),
    ],
)
def test_bad_arguments_are_value_errors_naming_them_before_any_call(call, argument):
    with pt.Client("127.0.0.1:1") as c:  # nothing listens there: a call that reached the network would fail otherwise
        with pytest.raises(ValueError, match=argument):
            call(c)


def test_an_unknown_option_is_a_type_error_naming_it():
    with pt.Client("127.0.0.1:1") as c:
        with pytest.raises(TypeError, match="partition"):
            c.submit_job("ds", records=1, max_tokens=3, epsilon=1.0, partition=4)


def test_closing_a_stream_early_cancels_it(client, acme):
    ds = acme.upload("lib-close", corpus(40))
    stream = client.generate(ds.id, records=2, **SMALL)
    assert isinstance(next(stream), pt.Record)
    stream.close()  # the call is cancelled; the budget it reserved stays spent
    assert [e.label.split()[0] for e in client.budget(ds.id).entries] == ["released", "generate"]
    assert client.list_datasets()  # the channel is still usable
