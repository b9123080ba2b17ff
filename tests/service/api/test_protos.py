"""The privtext.v1 wire contract: generated stubs are current, importable, round-trip, carry
no per-row/logit fields, and work over a real gRPC channel."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2

from service.api.gen.privtext.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "gen-protos"


def gen_protos(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120
    )


# --- scripts/gen-protos -------------------------------------------------------------------------


def test_check_passes_on_committed_stubs():
    r = gen_protos("--check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_fails_when_a_proto_changes(tmp_path):
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos)
    proto = protos / "privtext/v1/generation.proto"
    text = proto.read_text()
    marker = "// Generates DP synthetic records from a dataset."
    assert marker in text
    proto.write_text(text.replace(marker, marker + " Changed."))
    r = gen_protos("--check", "--protos", protos)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Changed." in r.stdout  # the diff is shown
    assert "out of date" in r.stderr


def test_check_fails_on_stale_extra_file(tmp_path):
    out = tmp_path / "gen"
    assert gen_protos("--out", out).returncode == 0
    assert gen_protos("--check", "--out", out).returncode == 0
    (out / "privtext/v1/removed_pb2.py").write_text("# stale\n")
    r = gen_protos("--check", "--out", out)
    assert r.returncode == 1 and "removed_pb2.py" in r.stdout


def test_generation_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert gen_protos("--out", a).returncode == 0
    assert gen_protos("--out", b).returncode == 0
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    # imports were rewritten to the package path
    grpc_code = (a / "privtext/v1/generation_pb2_grpc.py").read_text()
    assert "from service.api.gen.privtext.v1 import generation_pb2" in grpc_code
    assert "from privtext." not in grpc_code


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    r = gen_protos("--out", tmp_path)
    assert r.returncode != 0 and (tmp_path / "mine.txt").exists()


# --- messages -----------------------------------------------------------------------------------


def _roundtrip(msg):
    back = type(msg).FromString(msg.SerializeToString())
    assert back == msg
    return back


def test_package_and_services():
    assert datasets_pb2.DESCRIPTOR.package == "privtext.v1"
    assert generation_pb2.DESCRIPTOR.package == "privtext.v1"
    assert set(datasets_pb2.DESCRIPTOR.services_by_name["Datasets"].methods_by_name) == {
        "UploadDataset", "GetDataset", "ListDatasets", "DeleteDataset", "GetBudget",
    }
    gen = generation_pb2.DESCRIPTOR.services_by_name["Generation"].methods_by_name
    assert set(gen) == {"Generate", "SubmitJob", "GetJob", "StreamJobResults", "CancelJob", "SelectCandidates"}
    assert gen["Generate"].server_streaming and not gen["Generate"].client_streaming
    assert gen["StreamJobResults"].server_streaming
    upload = datasets_pb2.DESCRIPTOR.services_by_name["Datasets"].methods_by_name["UploadDataset"]
    assert upload.client_streaming and not upload.server_streaming


def test_dataset_messages_roundtrip():
    ts = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5)
    spec = datasets_pb2.DatasetSpec(
        name="reviews", text_field="text", label_field="stars", unit_field="user",
        epsilon_cap=8.0, delta=1e-6, declared_public_units=1000, format="jsonl",
    )
    for req in (
        datasets_pb2.UploadRequest(spec=spec),
        datasets_pb2.UploadRequest(record=datasets_pb2.Record(text="hi", label="5", unit="u1")),
        datasets_pb2.UploadRequest(chunk=b'{"text": "a"}\n{"te'),
    ):
        back = _roundtrip(req)
        assert back.WhichOneof("payload") == req.WhichOneof("payload")
    assert _roundtrip(datasets_pb2.UploadRequest(spec=spec)).spec.HasField("declared_public_units")
    assert not datasets_pb2.DatasetSpec().HasField("declared_public_units")

    ds = datasets_pb2.Dataset(
        id="d1", name="reviews", epsilon_cap=8.0, delta=1e-6, records=12, units_source="declared",
        fields=datasets_pb2.DatasetFields(text_field="text", label_field="stars", unit_field="user"),
        created_at=ts,
    )
    _roundtrip(ds)
    _roundtrip(datasets_pb2.ListDatasetsResponse(datasets=[ds, ds]))
    _roundtrip(datasets_pb2.DeleteDatasetResponse(id="d1"))
    budget = datasets_pb2.Budget(
        epsilon_cap=8.0, spent=1.5, remaining=6.5, delta=1e-6,
        entries=[datasets_pb2.LedgerEntry(
            label="job j1", epsilon=1.5, created_at=ts,
            events=[datasets_pb2.Event(kind="zcdp", parameter=0.01, count=300, note="em selection")],
        )],
    )
    assert _roundtrip(budget).entries[0].events[0].count == 300


def test_generation_messages_roundtrip():
    req = generation_pb2.GenerateRequest(
        dataset_id="d1", records=20, max_tokens=64, epsilon=2.0,
        mechanism=generation_pb2.MECHANISM_GAUSSIAN,
        settings=generation_pb2.MechanismSettings(
            partitions=16, temperature=0.8, top_k=0, units_per_row=2,
            gate=generation_pb2.GateSettings(threshold=0.3, epsilon=0.5, max_private=8),
        ),
        label_counts={"spam": 5, "ham": 15}, pii_policy=generation_pb2.PII_POLICY_DROP,
        seed=7, stop=["\n\n"],
    )
    back = _roundtrip(req)
    assert back.WhichOneof("budget") == "epsilon"
    assert back.settings.HasField("top_k") and back.settings.top_k == 0  # 0 = whole vocabulary
    assert dict(back.label_counts) == {"spam": 5, "ham": 15}
    preset = _roundtrip(generation_pb2.GenerateRequest(dataset_id="d1", preset="low", labels=["a", "b"]))
    assert preset.WhichOneof("budget") == "preset"
    # defaults: the zero values are the safe / documented ones
    empty = generation_pb2.GenerateRequest()
    assert empty.pii_policy == generation_pb2.PII_POLICY_REDACT
    assert empty.mechanism == generation_pb2.MECHANISM_UNSPECIFIED
    assert not empty.HasField("seed") and not empty.settings.HasField("partitions")

    rec = generation_pb2.SyntheticRecord(
        index=3, text="hello <PERSON>", label="spam", tokens=4, finish_reason="stop",
        findings=[generation_pb2.PiiFinding(entity_type="PERSON", count=1)],
    )
    _roundtrip(rec)
    ts = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    job = generation_pb2.Job(
        id="j1", dataset_id="d1", state=generation_pb2.JOB_STATE_RUNNING, records_done=3,
        records_total=20, epsilon_reserved=2.0, epsilon_spent=2.0, error="", created_at=ts, updated_at=ts,
    )
    _roundtrip(job)
    _roundtrip(generation_pb2.StreamJobResultsRequest(id="j1", offset=3))
    assert [generation_pb2.JobState.Name(v) for v in generation_pb2.JobState.values()] == [
        "JOB_STATE_UNSPECIFIED", "JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
    ]


def _all_field_names(desc, seen=None) -> list[str]:
    """Field names of a message and every message type reachable from it."""
    seen = set() if seen is None else seen
    if desc.full_name in seen:
        return []
    seen.add(desc.full_name)
    names = []
    for f in desc.fields:
        names.append(f.name)
        if f.message_type is not None:
            names += _all_field_names(f.message_type, seen)
    return names


@pytest.mark.parametrize("message", ["SyntheticRecord", "Job", "GenerateRequest"])
def test_no_logit_or_probability_fields(message):
    # Logits, log-probs and per-row outputs come from single private rows: no DP guarantee.
    names = _all_field_names(generation_pb2.DESCRIPTOR.message_types_by_name[message])
    assert names
    bad = [n for n in names if any(w in n.lower() for w in ("logit", "logprob", "prob"))]
    assert not bad


# --- a real gRPC server -------------------------------------------------------------------------


class _Generation(generation_pb2_grpc.GenerationServicer):
    def __init__(self) -> None:
        self.requests: list[generation_pb2.GenerateRequest] = []

    async def Generate(self, request, context):
        self.requests.append(request)
        for i in range(2):
            yield generation_pb2.SyntheticRecord(
                index=i, text=f"record {i}", label="spam", tokens=2, finish_reason="stop",
            )


async def _serve_and_stream():
    server = grpc.aio.server()
    servicer = _Generation()
    generation_pb2_grpc.add_GenerationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            req = generation_pb2.GenerateRequest(dataset_id="d1", records=2, max_tokens=8, epsilon=1.0)
            got = [r async for r in stub.Generate(req, timeout=5)]
            # an unimplemented method answers UNIMPLEMENTED, not a hang
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetJob(generation_pb2.GetJobRequest(id="j1"), timeout=5)
            return got, servicer.requests, err.value.code()
    finally:
        await server.stop(grace=None)


def test_generate_streams_over_real_grpc():
    got, requests, code = asyncio.run(asyncio.wait_for(_serve_and_stream(), timeout=10))
    assert [(r.index, r.text) for r in got] == [(0, "record 0"), (1, "record 1")]
    assert requests[0].dataset_id == "d1" and requests[0].epsilon == 1.0
    assert code == grpc.StatusCode.UNIMPLEMENTED
