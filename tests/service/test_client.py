"""`privtext client`: the pure parts (request building, output shapes, error text, chunking,
resume) directly, then the commands end to end against an in-process fake gRPC server."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from concurrent import futures

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from service import client
from service.api.gen.privtext.v1 import datasets_pb2, datasets_pb2_grpc, generation_pb2, generation_pb2_grpc

GEN = ["generate", "--dataset", "ds1", "--max-tokens", "48"]


def parse(*argv: str) -> argparse.Namespace:
    """Parse as `privtext client ...` would, with the parser cli.build_parser() wires in."""
    parser = argparse.ArgumentParser(prog="privtext")
    client.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["client", *argv])


# --- parse_label_counts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("spam=2,ham=3", {"spam": 2, "ham": 3}),
        (" spam = 2 , ham=0", {"spam": 2, "ham": 0}),
        ("a=b=1", {"a=b": 1}),  # the count is after the last '='
    ],
)
def test_parse_label_counts(text, expected):
    assert client.parse_label_counts(text) == expected


@pytest.mark.parametrize("text", ["spam", "spam=", "=2", "spam=-1", "spam=two", "spam=1.5", "spam=2,", "", "spam=1,spam=2"])
def test_parse_label_counts_rejects_and_names_the_flag(text):
    with pytest.raises(ValueError, match="--label-counts"):
        client.parse_label_counts(text)


# --- build_generate_request -----------------------------------------------------------------------


def test_minimal_request_leaves_every_optional_field_unset():
    req = client.build_generate_request(parse(*GEN, "--records", "20", "--epsilon", "2"))
    assert (req.dataset_id, req.records, req.max_tokens) == ("ds1", 20, 48)
    assert req.WhichOneof("budget") == "epsilon" and req.epsilon == 2.0
    assert not req.HasField("settings") and not req.HasField("seed")
    assert req.mechanism == generation_pb2.MECHANISM_UNSPECIFIED
    assert req.pii_policy == generation_pb2.PII_POLICY_REDACT
    assert not req.label_counts and not req.labels and not req.stop


def test_full_request_sets_every_field():
    req = client.build_generate_request(parse(
        *GEN, "--records", "5", "--preset", "medium", "--mechanism", "gaussian", "--partitions", "16",
        "--temperature", "0.7", "--top-k", "32", "--units-per-row", "2", "--gate-threshold", "0.3",
        "--gate-epsilon", "0.4", "--gate-max-private", "12", "--labels", "spam, ham", "--pii", "report",
        "--seed", "7", "--stop", "\n\n", "END", "--stop", "###"))
    assert req.WhichOneof("budget") == "preset" and req.preset == "medium"
    assert req.mechanism == generation_pb2.MECHANISM_GAUSSIAN
    assert req.pii_policy == generation_pb2.PII_POLICY_REPORT
    assert req.HasField("seed") and req.seed == 7
    assert list(req.labels) == ["spam", "ham"] and list(req.stop) == ["\n\n", "END", "###"]
    s = req.settings
    assert (s.partitions, s.top_k, s.units_per_row) == (16, 32, 2) and s.temperature == pytest.approx(0.7)
    assert (s.gate.threshold, s.gate.epsilon, s.gate.max_private) == (0.3, 0.4, 12)


@pytest.mark.parametrize(
    "extra,settings_set,gate_set",
    [
        (["--top-k", "0"], {"top_k"}, set()),  # 0 = whole vocabulary: set, not dropped as falsy
        (["--temperature", "1.5", "--partitions", "4"], {"temperature", "partitions"}, set()),
        (["--gate-epsilon", "0.2"], {"gate"}, {"epsilon"}),  # any gate flag enables the gate
        (["--gate-threshold", "0.25", "--gate-max-private", "8"], {"gate"}, {"threshold", "max_private"}),
    ],
)
def test_only_given_settings_are_present(extra, settings_set, gate_set):
    req = client.build_generate_request(parse(*GEN, "--records", "1", "--epsilon", "1", *extra))
    assert req.HasField("settings")
    assert {f.name for f, _ in req.settings.ListFields()} == settings_set
    assert {f.name for f, _ in req.settings.gate.ListFields()} == gate_set


@pytest.mark.parametrize("seed", ["0", "-3"])
def test_seed_zero_and_negative_are_sent(seed):
    req = client.build_generate_request(parse(*GEN, "--records", "1", "--epsilon", "1", "--seed", seed))
    assert req.HasField("seed") and req.seed == int(seed)


def test_label_counts_make_records_optional():
    req = client.build_generate_request(parse(*GEN, "--epsilon", "1", "--label-counts", "spam=2,ham=3"))
    assert dict(req.label_counts) == {"spam": 2, "ham": 3} and req.records == 0


@pytest.mark.parametrize(
    "extra,flag",
    [
        (["--epsilon", "1"], "--records"),
        (["--epsilon", "1", "--label-counts", "spam=x"], "--label-counts"),
        (["--records", "3", "--epsilon", "1", "--labels", "a,,b"], "--labels"),
    ],
)
def test_bad_request_input_names_the_flag(extra, flag):
    with pytest.raises(ValueError, match=flag):
        client.build_generate_request(parse(*GEN, *extra))


@pytest.mark.parametrize(
    "extra",
    [
        ["--records", "1"],  # neither --epsilon nor --preset
        ["--records", "1", "--epsilon", "1", "--preset", "low"],
        ["--records", "1", "--epsilon", "1", "--labels", "a", "--label-counts", "a=1"],
        ["--records", "1", "--epsilon", "1", "--mechanism", "laplace"],
    ],
)
def test_parser_rejects_conflicting_or_missing_choices(extra):
    with pytest.raises(SystemExit) as e:
        parse(*GEN, *extra)
    assert e.value.code == 2


def test_jobs_submit_takes_the_same_request_args():
    a = client.build_generate_request(parse(*GEN, "--records", "4", "--epsilon", "1", "--top-k", "8"))
    b = client.build_generate_request(parse("jobs", "submit", *GEN[1:], "--records", "4", "--epsilon", "1", "--top-k", "8"))
    assert a == b


# --- output shapes --------------------------------------------------------------------------------


def _finding(entity: str, n: int) -> generation_pb2.PiiFinding:
    return generation_pb2.PiiFinding(entity_type=entity, count=n)


@pytest.mark.parametrize(
    "rec,expected",
    [
        (generation_pb2.SyntheticRecord(index=3, text="hi", tokens=2, finish_reason="stop"),
         {"index": 3, "text": "hi", "tokens": 2, "finish_reason": "stop"}),
        (generation_pb2.SyntheticRecord(index=0, text="call <PERSON>", label="spam", tokens=9, finish_reason="length",
                                        findings=[_finding("PERSON", 1), _finding("PHONE_NUMBER", 2), _finding("PERSON", 1)]),
         {"index": 0, "text": "call <PERSON>", "label": "spam", "tokens": 9, "finish_reason": "length",
          "pii": {"PERSON": 2, "PHONE_NUMBER": 2}}),
    ],
)
def test_record_to_json(rec, expected):
    out = client.record_to_json(rec)
    assert out == expected
    assert json.loads(json.dumps(out)) == expected


def test_write_records_one_flushed_json_line_each():
    recs = [generation_pb2.SyntheticRecord(index=i, text=f"t{i} é", tokens=i + 1, finish_reason="stop") for i in range(3)]
    out = io.StringIO()
    assert client.write_records(recs, out) == (3, 6)
    lines = out.getvalue().splitlines()
    assert [json.loads(x) for x in lines] == [client.record_to_json(r) for r in recs]
    assert "é" in lines[0]  # UTF-8 text kept readable, not \u-escaped


BUDGET = datasets_pb2.Budget(epsilon_cap=8, spent=2.5, remaining=5.5, delta=1e-6, entries=[
    datasets_pb2.LedgerEntry(label="job j-1", epsilon=1.5, events=[datasets_pb2.Event(kind="zcdp", parameter=0.1, count=1)]),
    datasets_pb2.LedgerEntry(label="reservation j-22", epsilon=1.25),
])


def test_format_budget_table():
    lines = client.format_budget(BUDGET).splitlines()
    assert lines[:4] == ["epsilon cap  8.0000", "spent        2.5000", "remaining    5.5000", "delta        1e-06"]
    assert lines[5:] == ["label             epsilon", "job j-1           1.5000", "reservation j-22  1.2500"]


def test_format_budget_without_entries():
    text = client.format_budget(datasets_pb2.Budget(epsilon_cap=1, remaining=1, delta=1e-5))
    assert "spent        0.0000" in text and text.endswith("ledger       (empty)")


def test_budget_json_shape():
    d = json.loads(json.dumps(client.budget_to_json(BUDGET)))
    assert d == {"epsilon_cap": 8.0, "spent": 2.5, "remaining": 5.5, "delta": 1e-6,
                 "entries": [{"label": "job j-1", "epsilon": 1.5}, {"label": "reservation j-22", "epsilon": 1.25}]}


def test_message_to_dict_keeps_zeros_and_int64_numbers():
    d = client.message_to_dict(datasets_pb2.Dataset(id="d", name="n", records=120))
    assert d["records"] == 120 and d["epsilon_cap"] == 0 and d["units_source"] == ""


# --- describe_rpc_error ---------------------------------------------------------------------------


class FakeCall(grpc.RpcError, grpc.Call):
    """What a failed stub call raises, minus the network: code, details, trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, *detail_msgs, status_code: int | None = None):
        self._code, self._details, self._md = code, details, ()
        if detail_msgs:
            st = status_pb2.Status(code=code.value[0] if status_code is None else status_code, message=details)
            for m in detail_msgs:
                st.details.add().Pack(m)
            self._md = (("grpc-status-details-bin", st.SerializeToString()),)

    def code(self): return self._code
    def details(self): return self._details
    def trailing_metadata(self): return self._md
    def initial_metadata(self): return ()
    def is_active(self): return False
    def time_remaining(self): return None
    def cancel(self): return False
    def add_callback(self, callback): return False


QUOTA = error_details_pb2.QuotaFailure(violations=[
    error_details_pb2.QuotaFailure.Violation(subject="dataset ds1", description="remaining epsilon 0.5 < requested 2"),
    error_details_pb2.QuotaFailure.Violation(subject="caller alice", description="3 running jobs"),
])
BAD = error_details_pb2.BadRequest(field_violations=[
    error_details_pb2.BadRequest.FieldViolation(field="settings.temperature", description="must be > 0"),
])


@pytest.mark.parametrize(
    "call,expected",
    [
        (FakeCall(grpc.StatusCode.NOT_FOUND, "no dataset ds9"), ["error: NOT_FOUND: no dataset ds9"]),
        (FakeCall(grpc.StatusCode.RESOURCE_EXHAUSTED, "budget", QUOTA),
         ["error: RESOURCE_EXHAUSTED: budget", "  quota: dataset ds1: remaining epsilon 0.5 < requested 2",
          "  quota: caller alice: 3 running jobs"]),
        (FakeCall(grpc.StatusCode.INVALID_ARGUMENT, "bad settings", BAD, QUOTA),
         ["error: INVALID_ARGUMENT: bad settings", "  field: settings.temperature: must be > 0",
          "  quota: dataset ds1: remaining epsilon 0.5 < requested 2", "  quota: caller alice: 3 running jobs"]),
        # details whose code disagrees with the call's are not trusted (rpc_status.from_call refuses them)
        (FakeCall(grpc.StatusCode.UNAVAILABLE, "down", QUOTA, status_code=code_pb2.RESOURCE_EXHAUSTED),
         ["error: UNAVAILABLE: down"]),
    ],
)
def test_describe_rpc_error(call, expected):
    assert client.describe_rpc_error(call).splitlines() == expected


# --- chunking and resume --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, client.CHUNK_SIZE, 2 * client.CHUNK_SIZE + 17])
def test_upload_stream_is_spec_then_chunks_that_reassemble_the_file(size):
    data = os.urandom(size)
    spec = datasets_pb2.DatasetSpec(name="x", text_field="text", epsilon_cap=8, delta=1e-6, format="jsonl")
    seen: list[int] = []
    reqs = list(client.upload_requests(spec, io.BytesIO(data), on_chunk=seen.append))
    assert reqs[0].WhichOneof("payload") == "spec" and reqs[0].spec == spec
    assert all(r.WhichOneof("payload") == "chunk" for r in reqs[1:])
    assert all(0 < len(r.chunk) <= client.CHUNK_SIZE for r in reqs[1:])
    assert len(reqs) - 1 == -(-size // client.CHUNK_SIZE)
    assert b"".join(r.chunk for r in reqs[1:]) == data and sum(seen) == size


@pytest.mark.parametrize(
    "content,offset,kept",
    [
        (None, 0, None),
        (b"", 0, b""),
        (b'{"a":1}\n{"a":2}\n', 2, b'{"a":1}\n{"a":2}\n'),
        (b'{"a":1}\n{"a":2}\n{"a":', 2, b'{"a":1}\n{"a":2}\n'),  # torn last line cut off
        (b'{"a":', 0, b""),
    ],
)
def test_resume_offset(tmp_path, content, offset, kept):
    path = tmp_path / "out.jsonl"
    if content is not None:
        path.write_bytes(content)
    assert client.resume_offset(path) == offset
    assert (path.read_bytes() if path.exists() else None) == kept


# --- commands against a fake server ---------------------------------------------------------------


def _abort_quota(context):
    st = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="budget exhausted")
    st.details.add().Pack(QUOTA)
    context.abort_with_status(rpc_status.to_status(st))


class FakeDatasets(datasets_pb2_grpc.DatasetsServicer):
    def __init__(self, seen):
        self.seen = seen

    def UploadDataset(self, request_iterator, context):
        self.seen["metadata"] = dict(context.invocation_metadata())
        self.seen["upload"] = list(request_iterator)
        spec = self.seen["upload"][0].spec
        return datasets_pb2.Dataset(id="ds-new", name=spec.name, records=2, epsilon_cap=spec.epsilon_cap,
                                    delta=spec.delta, units_source="private")

    def GetBudget(self, request, context):
        self.seen["metadata"] = dict(context.invocation_metadata())
        if request.id == "poor":
            _abort_quota(context)
        return BUDGET


class FakeGeneration(generation_pb2_grpc.GenerationServicer):
    RECORDS = [generation_pb2.SyntheticRecord(index=i, text=f"r{i}", tokens=3, finish_reason="stop") for i in range(5)]

    def __init__(self, seen):
        self.seen = seen

    def Generate(self, request, context):
        self.seen["generate"] = request
        yield from self.RECORDS[: request.records]

    def SubmitJob(self, request, context):
        self.seen["submit"] = request
        return generation_pb2.Job(id="job-7", dataset_id=request.dataset_id, state=generation_pb2.JOB_STATE_QUEUED,
                                  records_total=request.records, epsilon_reserved=request.epsilon)

    def StreamJobResults(self, request, context):
        self.seen["results"] = request
        yield from self.RECORDS[request.offset:]


@pytest.fixture(scope="module")
def server():
    seen: dict = {}
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    datasets_pb2_grpc.add_DatasetsServicer_to_server(FakeDatasets(seen), srv)
    generation_pb2_grpc.add_GenerationServicer_to_server(FakeGeneration(seen), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", seen
    srv.stop(None)


def run(server, *argv: str) -> int:
    address, seen = server
    seen.clear()
    ns = parse(*argv, "--server", address, "--timeout", "10")
    return ns.func(ns)


def test_upload_streams_the_file_and_prints_the_id_last(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRIVTEXT_API_KEY", "k-123")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # with the progress bar
    data = b"text,label\n" + b"".join(b"message %d,ham\n" % i for i in range(200_000))
    (path := tmp_path / "corpus.csv").write_bytes(data)
    code = run(server, "upload", "--name", "sms", "--epsilon-cap", "8", "--delta", "1e-6",
               "--declared-public-units", "5000", "--label-field", "label", str(path))
    assert code == 0
    reqs = server[1]["upload"]
    spec = reqs[0].spec
    assert (spec.name, spec.format, spec.text_field, spec.label_field, spec.unit_field) == ("sms", "csv", "text", "label", "")
    assert spec.HasField("declared_public_units") and spec.declared_public_units == 5000
    assert len(reqs) > 2 and b"".join(r.chunk for r in reqs[1:]) == data
    assert server[1]["metadata"][client.API_KEY_HEADER] == "k-123"
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "ds-new" and "uploaded 'sms': 2 records" in err
    assert "100%" in err and "B/s" in err  # the byte-scaled bar was drawn on stderr


def test_upload_without_declared_units_leaves_it_unset(server, tmp_path, monkeypatch):
    monkeypatch.delenv("PRIVTEXT_API_KEY", raising=False)
    (path := tmp_path / "c.json").write_text('{"text": "a"}\n')
    assert run(server, "upload", "--name", "n", "--epsilon-cap", "1", "--delta", "1e-6", str(path)) == 0
    assert not server[1]["upload"][0].spec.HasField("declared_public_units")
    assert server[1]["upload"][0].spec.format == "jsonl"
    assert client.API_KEY_HEADER not in server[1]["metadata"]


@pytest.mark.parametrize(
    "name,extra,flag",
    [("missing.jsonl", [], "FILE"), ("corpus.txt", [], "--format")],
)
def test_upload_bad_local_input_exits_2(server, tmp_path, capsys, name, extra, flag):
    if name != "missing.jsonl":
        (tmp_path / name).write_text("x\n")
    code = run(server, "upload", "--name", "n", "--epsilon-cap", "1", "--delta", "1e-6", *extra, str(tmp_path / name))
    assert code == 2 and "upload" not in server[1]
    assert flag in capsys.readouterr().err


def test_generate_writes_jsonl_to_out(server, tmp_path, capsys):
    out = tmp_path / "syn.jsonl"
    assert run(server, *GEN, "--records", "3", "--epsilon", "2", "--out", str(out)) == 0
    assert server[1]["generate"] == client.build_generate_request(parse(*GEN, "--records", "3", "--epsilon", "2"))
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"index": i, "text": f"r{i}", "tokens": 3, "finish_reason": "stop"} for i in range(3)]
    assert "3 records, 9 tokens in" in capsys.readouterr().err


def test_generate_bad_label_counts_exit_2_without_a_call(server, capsys):
    assert run(server, *GEN, "--epsilon", "2", "--label-counts", "spam:2") == 2
    assert "generate" not in server[1] and "--label-counts" in capsys.readouterr().err


def test_jobs_submit_prints_the_job_id_last(server, capsys):
    assert run(server, "jobs", "submit", *GEN[1:], "--records", "4", "--epsilon", "1.5") == 0
    assert server[1]["submit"].records == 4
    assert capsys.readouterr().out.splitlines()[-1] == "job-7"


def test_jobs_results_resume_from_the_lines_in_out(server, tmp_path):
    out = tmp_path / "job.jsonl"
    out.write_text('{"index": 0}\n{"index": 1}\n{"ind')
    assert run(server, "jobs", "results", "job-7", "--out", str(out)) == 0
    assert server[1]["results"].offset == 2
    assert [json.loads(x)["index"] for x in out.read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_jobs_results_explicit_offset_overwrites_out(server, tmp_path, capsys):
    out = tmp_path / "job.jsonl"
    out.write_text("old\n")
    assert run(server, "jobs", "results", "job-7", "--offset", "3", "--out", str(out)) == 0
    assert server[1]["results"].offset == 3
    assert [json.loads(x)["index"] for x in out.read_text().splitlines()] == [3, 4]


def test_budget_json_and_table(server, capsys):
    assert run(server, "budget", "--dataset", "ds1", "--json") == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == client.budget_to_json(BUDGET)
    assert run(server, "budget", "--dataset", "ds1") == 0
    assert capsys.readouterr().out.strip() == client.format_budget(BUDGET)


def test_rpc_error_with_quota_failure_exits_1(server, capsys):
    assert run(server, "budget", "--dataset", "poor") == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: RESOURCE_EXHAUSTED: budget exhausted",
        "  quota: dataset ds1: remaining epsilon 0.5 < requested 2",
        "  quota: caller alice: 3 running jobs",
    ]


def test_unimplemented_rpc_exits_1(server, capsys):
    assert run(server, "datasets", "list") == 1
    assert capsys.readouterr().err.startswith("error: UNIMPLEMENTED: ")


def test_tls_ca_unreadable_exits_2(server, tmp_path, capsys):
    assert run(server, "datasets", "list", "--tls-ca", str(tmp_path / "none.pem")) == 2
    assert "--tls-ca" in capsys.readouterr().err


def test_tls_ca_makes_a_secure_channel_with_those_roots(server, tmp_path, monkeypatch):
    (ca := tmp_path / "ca.pem").write_bytes(b"PEM BYTES")
    made = {}

    def fake_secure_channel(target, credentials):
        made["target"] = target
        return grpc.insecure_channel(target)  # the fake server speaks plaintext

    monkeypatch.setattr(grpc, "ssl_channel_credentials", lambda root_certificates: made.setdefault("roots", root_certificates))
    monkeypatch.setattr(grpc, "secure_channel", fake_secure_channel)
    assert run(server, "budget", "--dataset", "ds1", "--tls-ca", str(ca)) == 0
    assert made == {"roots": b"PEM BYTES", "target": server[0]}
