"""`privtext client`: the pure parts (request building, output shapes, error text, chunking,
resume) directly, then the commands end to end: `python -m service.cli client ...` in a subprocess,
as users run it, against a real privtext server on a loopback port (conftest's `server`), with
what the command printed checked against what the server holds."""

from __future__ import annotations

import argparse
import csv
import datetime
import fcntl
import io
import ipaddress
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from server_kit import KEYS, Client, InProcess, corpus, jsonl

from service.client import cli as client
from service.api.auth import hash_key
from service.api.gen.privtext.v1 import datasets_pb2, generation_pb2

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
        (["--no-top-k-plus"], {"top_k_plus"}, set()),  # False: set, not dropped as falsy
        (["--top-k-plus"], {"top_k_plus"}, set()),
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


# --- commands end to end against the real server ----------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
WRONG_KEY = "pt_wrong_key"


def cli(address: str, *argv: str, key: str | None = KEYS["acme"], timeout: float = 120, stderr=None):
    """`privtext client ARGV --server ADDRESS` as a user runs it, with `key` as PRIVTEXT_API_KEY
    (None: unset). The connection variables of the calling shell are not inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("PRIVTEXT_API_KEY", "PRIVTEXT_SERVER", "PRIVTEXT_TLS_CA")}
    if key is not None:
        env["PRIVTEXT_API_KEY"] = key
    cmd = [sys.executable, "-m", "service.cli", "client", *argv, "--server", address, "--timeout", str(timeout)]
    if stderr is not None:  # a terminal (pty) for the progress bar: the caller reads it
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout + 60)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


GRPC_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")  # gRPC C-core's own log lines


def failed(p: subprocess.CompletedProcess, code: int = 1) -> list[str]:
    """The stderr lines of a command that exited with `code` and printed no records or ids, less
    the log lines gRPC's C core writes itself (a failed TLS handshake is logged there too)."""
    assert p.returncode == code, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.stdout == ""
    return [x for x in p.stderr.splitlines() if not GRPC_LOG.match(x)]


def last_line(p: subprocess.CompletedProcess) -> str:
    return ok(p).stdout.splitlines()[-1]


def dataset_ids(c: Client) -> list[str]:
    return [d.id for d in c.datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), metadata=c.md, timeout=30).datasets]


def get_job(c: Client, job_id: str) -> generation_pb2.Job:
    return c.generation.GetJob(generation_pb2.GetJobRequest(id=job_id), metadata=c.md, timeout=30)


def released(server, dataset_id: str) -> int:
    """Records the server says it released for a dataset (its Prometheus counter)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10).read().decode()
    found = re.search(rf'^privtext_records_total\{{dataset="{re.escape(dataset_id)}"\}} (\S+)$', body, re.M)
    return int(float(found.group(1))) if found else 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def assert_records(recs: list[dict], max_tokens: int, most: int) -> None:
    """Records as the client writes them: indexes 0.., the four fields, tokens within the request."""
    assert 1 <= len(recs) <= most
    assert [r["index"] for r in recs] == list(range(len(recs)))
    for r in recs:
        assert {"index", "text", "tokens", "finish_reason"} <= r.keys() <= {"index", "text", "label", "tokens", "finish_reason", "pii"}
        assert isinstance(r["text"], str) and 1 <= r["tokens"] <= max_tokens and r["finish_reason"] in ("stop", "length")


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label"])
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_upload_prints_the_id_of_a_dataset_the_server_holds(server, acme, tmp_path, fmt):
    rows = corpus(40)  # texts with commas and quotes: the CSV writer quotes them, the server reads them back
    path = tmp_path / f"sms.{fmt}"
    if fmt == "jsonl":
        path.write_bytes(jsonl(rows))
        extra = []
    else:
        write_csv(path, rows)
        extra = ["--declared-public-units", "5000"]
    p = ok(cli(server.address, "upload", str(path), "--name", f"sms-{fmt}", "--label-field", "label",
               "--epsilon-cap", "8", "--delta", "1e-3", *extra))
    ds_id = last_line(p)
    ds = acme.datasets.GetDataset(datasets_pb2.GetDatasetRequest(id=ds_id), metadata=acme.md, timeout=30)
    assert (ds.id, ds.name, ds.records) == (ds_id, f"sms-{fmt}", 40)
    assert (ds.fields.text_field, ds.fields.label_field, ds.epsilon_cap, ds.delta) == ("text", "label", 8, 1e-3)
    assert ds.units_source == ("declared" if extra else "private")  # --declared-public-units sent only when given
    assert f"uploaded 'sms-{fmt}': 40 records, epsilon cap 8, delta 0.001, units {ds.units_source}" in p.stderr


def test_upload_draws_a_byte_progress_bar_on_a_terminal(server, acme, tmp_path):
    (path := tmp_path / "sms.jsonl").write_bytes(jsonl(corpus(20)))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    try:
        proc = cli(server.address, "upload", str(path), "--name", "tty", "--epsilon-cap", "8", "--delta", "1e-3", stderr=slave)
        os.close(slave)
        slave = None
        err = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        out = proc.stdout.read()
        assert proc.wait(120) == 0, err.decode(errors="replace")
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    text = err.decode(errors="replace")
    assert "100%" in text and "B/s" in text and "uploaded 'tty': 20 records" in text
    assert acme.datasets.GetDataset(datasets_pb2.GetDatasetRequest(id=out.splitlines()[-1]), metadata=acme.md).records == 20


@pytest.mark.parametrize("name,flag", [("missing.jsonl", "FILE"), ("corpus.txt", "--format")])
def test_upload_bad_local_input_exits_2_and_creates_nothing(server, acme, tmp_path, name, flag):
    if name != "missing.jsonl":
        (tmp_path / name).write_bytes(jsonl(corpus(3)))
    before = dataset_ids(acme)
    err = failed(cli(server.address, "upload", str(tmp_path / name), "--name", "n", "--epsilon-cap", "1", "--delta", "1e-3"), 2)
    assert err[-1].startswith("privtext: error: ") and flag in err[-1]
    assert dataset_ids(acme) == before


def test_generate_writes_records_and_the_budget_shows_the_charge(server, acme, tmp_path):
    ds = acme.upload("gen", corpus(40))
    out = tmp_path / "out.jsonl"
    p = ok(cli(server.address, "generate", "--dataset", ds.id, "--records", "2", "--max-tokens", "6", "--epsilon", "1",
               "--partitions", "4", "--out", str(out)))
    assert p.stdout == ""  # records went to --out
    recs = read_jsonl(out)
    assert_records(recs, max_tokens=6, most=2)
    assert len(recs) == released(server, ds.id)  # every record the server sent is in the file
    assert f"{len(recs)} records, {sum(r['tokens'] for r in recs)} tokens in " in p.stderr and str(out) in p.stderr

    b = json.loads(last_line(cli(server.address, "budget", "--dataset", ds.id, "--json")))
    assert b == client.budget_to_json(acme.budget(ds.id))  # the JSON is the server's budget
    labels = [e["label"] for e in b["entries"]]
    assert labels[0] == "released unit count" and len(labels) == 2 and labels[1].startswith("generate ")
    assert b["entries"][1]["epsilon"] == pytest.approx(1.0, rel=1e-3)
    assert b["epsilon_cap"] == 8 and 1.0 < b["spent"] < b["epsilon_cap"] and b["remaining"] < 8

    table = ok(cli(server.address, "budget", "--dataset", ds.id)).stdout.rstrip("\n")
    assert table == client.format_budget(acme.budget(ds.id))
    assert any(line.startswith(labels[1] + " ") for line in table.splitlines())


def test_generate_to_stdout_with_label_counts(server, acme):
    ds = acme.upload("labelled", corpus(40), label_field="label")
    p = ok(cli(server.address, "generate", "--dataset", ds.id, "--label-counts", "spam=1,ham=1", "--max-tokens", "4",
               "--epsilon", "1", "--partitions", "4"))
    recs = [json.loads(x) for x in p.stdout.splitlines()]  # nothing but records on stdout
    assert_records(recs, max_tokens=4, most=2)
    assert len(recs) == released(server, ds.id)
    assert sorted(r["label"] for r in recs) in (["ham"], ["spam"], ["ham", "spam"])
    assert [e.label.split()[0] for e in acme.budget(ds.id).entries] == ["released", "generate"]


def test_exhausted_budget_exits_1_with_the_quota_and_writes_no_record(server, acme, tmp_path):
    ds = acme.upload("small-cap", corpus(40), epsilon_cap=1.0)
    out = tmp_path / "out.jsonl"
    err = failed(cli(server.address, "generate", "--dataset", ds.id, "--records", "2", "--max-tokens", "6", "--epsilon", "5",
                     "--partitions", "4", "--out", str(out)))
    assert err[0].startswith("error: RESOURCE_EXHAUSTED: ")
    assert len(err) >= 2 and all(x.startswith("  quota: ") for x in err[1:])  # the quota lines follow the error line
    assert any(x.startswith(f"  quota: datasets/{ds.id}: ") and "epsilon remaining" in x for x in err)
    assert out.read_text() == ""  # opened, nothing written
    assert [e.label for e in acme.budget(ds.id).entries] == ["released unit count"]  # no generate entry


def test_invalid_request_exits_1_naming_the_field(server, acme):
    ds = acme.upload("bad-request", corpus(12))
    err = failed(cli(server.address, "generate", "--dataset", ds.id, "--records", "1", "--max-tokens", "65", "--epsilon", "1"))
    assert err[0].startswith("error: INVALID_ARGUMENT: max_tokens: ") and "64" in err[0]
    assert err[1:] == [f"  field: max_tokens: {err[0].removeprefix('error: INVALID_ARGUMENT: ')}"]
    assert list(acme.budget(ds.id).entries) == []


def test_bad_label_counts_exit_2_before_any_call(server, acme):
    ds = acme.upload("bad-local", corpus(12))
    err = failed(cli(server.address, "generate", "--dataset", ds.id, "--max-tokens", "4", "--epsilon", "1",
                     "--label-counts", "spam:2"), 2)
    assert err[-1].startswith("privtext: error: --label-counts")
    assert list(acme.budget(ds.id).entries) == []  # nothing reached the server


@pytest.mark.parametrize("key", [None, WRONG_KEY])
def test_missing_or_wrong_key_exits_1_unauthenticated(server, acme, key):
    ds = acme.upload(f"keyed-{key}", corpus(12))
    for argv in (["datasets", "list"], ["budget", "--dataset", ds.id],
                 ["generate", "--dataset", ds.id, "--records", "1", "--max-tokens", "2", "--epsilon", "1"]):
        err = failed(cli(server.address, *argv, key=key))
        assert err == ["error: UNAUTHENTICATED: missing or unknown API key (metadata 'x-api-key')"], argv
    assert list(acme.budget(ds.id).entries) == []


def test_another_tenants_dataset_is_not_found(server, acme, globex):
    ds = acme.upload("acme-only", corpus(12))
    for argv in (["datasets", "get", ds.id], ["budget", "--dataset", ds.id], ["datasets", "delete", ds.id]):
        err = failed(cli(server.address, *argv, key=KEYS["globex"]))
        assert err[0].startswith("error: NOT_FOUND: "), argv
    assert ds.id not in ok(cli(server.address, "datasets", "list", key=KEYS["globex"])).stdout
    assert ds.id in dataset_ids(acme)  # globex's delete did nothing


def test_jobs_submit_results_status_and_resume(server, acme, tmp_path):
    ds = acme.upload("jobs", corpus(40))
    p = ok(cli(server.address, "jobs", "submit", "--dataset", ds.id, "--records", "3", "--max-tokens", "5", "--epsilon", "1",
               "--partitions", "4"))
    job_id = last_line(p)
    assert "submitted: 3 records, epsilon reserved 1" in p.stderr

    out = tmp_path / "r.jsonl"
    p = ok(cli(server.address, "jobs", "results", job_id, "--out", str(out)))  # follows the job until it is done
    recs = read_jsonl(out)
    job = get_job(acme, job_id)
    assert job.state == generation_pb2.JOB_STATE_SUCCEEDED and job.records_done == len(recs)
    assert_records(recs, max_tokens=5, most=3)
    assert f"{len(recs)} records, " in p.stderr

    status = json.loads(ok(cli(server.address, "jobs", "status", job_id, "--json")).stdout)
    assert (status["id"], status["dataset_id"], status["state"]) == (job_id, ds.id, "JOB_STATE_SUCCEEDED")
    assert (status["records_done"], status["records_total"]) == (len(recs), 3)
    text = ok(cli(server.address, "jobs", "status", job_id)).stdout.splitlines()
    assert "state    SUCCEEDED" in text and f"records  {len(recs)}/3" in text

    # an interrupted --out (one line and a torn one) resumes after its complete lines
    full = out.read_text(encoding="utf-8")
    out.write_text(full.splitlines(keepends=True)[0] + '{"index": 1, "te', encoding="utf-8")
    p = ok(cli(server.address, "jobs", "results", job_id, "--out", str(out)))
    assert "resuming after the 1 records already in" in p.stderr and out.read_text(encoding="utf-8") == full
    # --offset to stdout skips that many
    p = ok(cli(server.address, "jobs", "results", job_id, "--offset", "1"))
    assert [json.loads(x) for x in p.stdout.splitlines()] == recs[1:]


def test_jobs_cancel_a_long_job(server, acme):
    ds = acme.upload("long-job", corpus(40))
    job_id = last_line(cli(server.address, "jobs", "submit", "--dataset", ds.id, "--records", "30", "--max-tokens", "60",
                           "--epsilon", "1", "--partitions", "4"))
    assert ok(cli(server.address, "jobs", "cancel", job_id)).stdout.splitlines() == [f"job {job_id}: CANCELLED"]
    assert get_job(acme, job_id).state == generation_pb2.JOB_STATE_CANCELLED
    assert "state    CANCELLED" in ok(cli(server.address, "jobs", "status", job_id)).stdout.splitlines()
    err = failed(cli(server.address, "jobs", "results", job_id))
    assert err == [f"error: CANCELLED: job {job_id} was cancelled"]
    # its groups leave the engine at their next step (after a prefill that may take a while on a CPU)
    deadline = time.time() + 120
    while server.server.state.scheduler.active_groups > 0 and time.time() < deadline:
        time.sleep(0.1)
    assert server.server.state.scheduler.active_groups == 0
    job = get_job(acme, job_id)
    assert job.state == generation_pb2.JOB_STATE_CANCELLED and job.records_done < 30


def test_datasets_list_get_delete(server, acme):
    ds = acme.upload("listed", corpus(12))
    listing = ok(cli(server.address, "datasets", "list")).stdout.splitlines()
    assert f"{ds.id}  listed  records=12  epsilon_cap=8  delta=0.001" in listing
    as_json = json.loads(ok(cli(server.address, "datasets", "list", "--json")).stdout)
    assert ds.id in [d["id"] for d in as_json["datasets"]] and len(as_json["datasets"]) == len(listing)

    got = json.loads(ok(cli(server.address, "datasets", "get", ds.id, "--json")).stdout)
    assert (got["id"], got["name"], got["records"], got["units_source"]) == (ds.id, "listed", 12, "private")
    assert got["fields"] == {"text_field": "text", "label_field": "", "unit_field": ""}
    text = ok(cli(server.address, "datasets", "get", ds.id)).stdout.splitlines()
    assert f"{'id':<13}{ds.id}" in text and f"{'name':<13}listed" in text and f"{'records':<13}12" in text

    assert ok(cli(server.address, "datasets", "delete", ds.id)).stdout.splitlines() == [f"deleted {ds.id}"]
    assert ds.id not in dataset_ids(acme)
    for argv in (["datasets", "get", ds.id], ["datasets", "delete", ds.id]):
        err = failed(cli(server.address, *argv))
        assert err[0].startswith("error: NOT_FOUND: "), argv
    assert ds.id not in ok(cli(server.address, "datasets", "list")).stdout


# --- TLS: a second real server with a self-signed certificate ---------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) for 127.0.0.1, the certificate its own root."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privtext test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (cert_path := directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (key_path := directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(engine, tmp_path_factory):
    from service.api.settings import ServerSettings

    root = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(root)
    settings = ServerSettings(port=0, data_dir=root / "data", config_dir=root / "config",
                              api_keys={t: [hash_key(k)] for t, k in KEYS.items()}, tls_cert=cert, tls_key=key, batch_rows=8)
    s = InProcess(settings, engine)
    s.cert = cert
    yield s
    s.stop()


def test_tls_ca_reaches_a_tls_server(tls_server, tmp_path):
    (path := tmp_path / "c.jsonl").write_bytes(jsonl(corpus(5)))
    ds_id = last_line(cli(tls_server.address, "upload", str(path), "--name", "over-tls", "--epsilon-cap", "1", "--delta", "1e-3",
                          "--tls-ca", str(tls_server.cert)))
    listing = ok(cli(tls_server.address, "datasets", "list", "--tls-ca", str(tls_server.cert))).stdout.splitlines()
    assert listing == [f"{ds_id}  over-tls  records=5  epsilon_cap=1  delta=0.001"]
    # plaintext to the TLS port, and TLS with roots that do not sign its certificate, do not connect
    err = failed(cli(tls_server.address, "datasets", "list", timeout=10))
    assert err[0].startswith("error: UNAVAILABLE: ")
    other, _ = self_signed(tmp_path)
    err = failed(cli(tls_server.address, "datasets", "list", "--tls-ca", str(other), timeout=10))
    assert err[0].startswith("error: UNAVAILABLE: ")


def test_tls_ca_unreadable_exits_2(tls_server, tmp_path):
    err = failed(cli(tls_server.address, "datasets", "list", "--tls-ca", str(tmp_path / "none.pem")), 2)
    assert err == [f"privtext: error: --tls-ca: cannot read {tmp_path / 'none.pem'}: No such file or directory"]
