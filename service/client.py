"""`privtext client`: the command-line client of the privtext gRPC service.

Records go to stdout (or --out) as JSON lines and ids are the last stdout line, so the commands
compose in scripts; everything meant for people goes to stderr. grpc and the generated stubs are
imported inside the functions that use them: `build_parser()` registers these subcommands on every
`privtext` start, and the `service` extra (grpcio) may not be installed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

    from .api.gen.privtext.v1 import datasets_pb2, generation_pb2

API_KEY_HEADER = "x-api-key"
CHUNK_SIZE = 1 << 20  # bytes per UploadRequest.chunk
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_label_counts(text: str) -> dict[str, int]:
    """'spam=2,ham=3' -> {'spam': 2, 'ham': 3}. The counts are sent as public numbers, so a typo
    fails here (ValueError naming the flag) rather than being guessed at."""
    out: dict[str, int] = {}
    for part in text.split(","):
        label, sep, n = (s.strip() for s in part.rpartition("="))
        if not sep or not label or not n.isdigit():
            raise ValueError(f"--label-counts must look like spam=2,ham=3 (counts >= 0), got {text!r}")
        if label in out:
            raise ValueError(f"--label-counts: label {label!r} given twice")
        out[label] = int(n)
    return out


def upload_requests(spec: datasets_pb2.DatasetSpec, f: IO[bytes], size: int = CHUNK_SIZE,
                    on_chunk: Callable[[int], object] | None = None) -> Iterator[datasets_pb2.UploadRequest]:
    """The UploadDataset stream: the spec first (the server requires it), then the file's bytes
    as chunks of at most `size`, read lazily so a large file is never held in memory."""
    from .api.gen.privtext.v1 import datasets_pb2

    yield datasets_pb2.UploadRequest(spec=spec)
    while chunk := f.read(size):
        if on_chunk:
            on_chunk(len(chunk))
        yield datasets_pb2.UploadRequest(chunk=chunk)


def build_generate_request(ns: argparse.Namespace) -> generation_pb2.GenerateRequest:
    """A GenerateRequest holding only what the user gave: optional fields left out stay unset
    (HasField false) so the server applies its defaults, and no empty `settings` or `gate` is
    sent (a present gate switches the gate on)."""
    from .api.gen.privtext.v1 import generation_pb2 as pb

    label_counts = parse_label_counts(ns.label_counts) if ns.label_counts is not None else {}
    if ns.records is None and not label_counts:
        raise ValueError("--records is required unless --label-counts is given")
    req = pb.GenerateRequest(dataset_id=ns.dataset, records=ns.records or 0, max_tokens=ns.max_tokens,
                             label_counts=label_counts, stop=ns.stop or ())
    if ns.preset is not None:
        req.preset = ns.preset
    else:
        req.epsilon = ns.epsilon
    if ns.mechanism:
        if f"MECHANISM_{ns.mechanism.upper()}" in pb.Mechanism.keys():
            req.mechanism = pb.Mechanism.Value(f"MECHANISM_{ns.mechanism.upper()}")
        else:  # a mechanism registered after the proto: sent by name
            req.mechanism_name = ns.mechanism
    if ns.pii:
        req.pii_policy = pb.PiiPolicy.Value(f"PII_POLICY_{ns.pii.upper()}")
    if ns.labels is not None:
        labels = [s.strip() for s in ns.labels.split(",")]
        if not all(labels):
            raise ValueError(f"--labels must be comma-separated non-empty labels, got {ns.labels!r}")
        req.labels.extend(labels)
    if ns.seed is not None:
        req.seed = ns.seed
    for field in ("partitions", "temperature", "top_k", "top_k_plus", "units_per_row", "row_slots", "max_row_tokens"):
        if getattr(ns, field) is not None:
            setattr(req.settings, field, getattr(ns, field))
    for field in ("threshold", "epsilon", "max_private"):
        if getattr(ns, f"gate_{field}") is not None:
            setattr(req.settings.gate, field, getattr(ns, f"gate_{field}"))
    return req


def record_to_json(rec: generation_pb2.SyntheticRecord) -> dict:
    """One output line; `label` and `pii` only when there are any, so plain output stays lean."""
    out: dict = {"index": rec.index, "text": rec.text}
    if rec.label:
        out["label"] = rec.label
    out |= {"tokens": rec.tokens, "finish_reason": rec.finish_reason}
    pii: dict[str, int] = {}
    for f in rec.findings:
        pii[f.entity_type] = pii.get(f.entity_type, 0) + f.count
    return out | ({"pii": pii} if pii else {})


def message_to_dict(msg) -> dict:
    """Proto -> JSON-ready dict: proto field names, zero values kept, int64 as numbers."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                         unquote_int64_if_possible=True)


def budget_to_json(b: datasets_pb2.Budget) -> dict:
    """The `budget --json` object: the totals and the ledger's (label, epsilon) pairs."""
    return {"epsilon_cap": b.epsilon_cap, "spent": b.spent, "remaining": b.remaining, "delta": b.delta,
            "entries": [{"label": e.label, "epsilon": e.epsilon} for e in b.entries]}


def format_budget(b: datasets_pb2.Budget) -> str:
    """The budget as people read it: the totals, then the ledger as a two-column table."""
    lines = [f"epsilon cap  {b.epsilon_cap:.4f}", f"spent        {b.spent:.4f}",
             f"remaining    {b.remaining:.4f}", f"delta        {b.delta:g}"]
    if not b.entries:
        return "\n".join([*lines, "ledger       (empty)"])
    width = max(len("label"), *(len(e.label) for e in b.entries))
    return "\n".join([*lines, "", f"{'label':<{width}}  epsilon", *(f"{e.label:<{width}}  {e.epsilon:.4f}" for e in b.entries)])


def describe_rpc_error(err: grpc.RpcError) -> str:
    """`error: CODE: details`, then the rich status' quota and field violations, which say what to
    change (which budget ran out, which field is wrong) better than the message alone."""
    from google.rpc import error_details_pb2 as ed
    from grpc_status import rpc_status

    code = err.code() if hasattr(err, "code") else None
    lines = [f"error: {code.name if code else 'UNKNOWN'}: {err.details() if code else err}"]
    try:
        status = rpc_status.from_call(err) if code else None
    except ValueError:  # details whose code or message disagree with the call's: not trusted
        status = None
    for detail in status.details if status else ():
        if detail.Is(ed.QuotaFailure.DESCRIPTOR):
            (qf := ed.QuotaFailure()).ParseFromString(detail.value)
            lines += [f"  quota: {v.subject}: {v.description}" for v in qf.violations]
        elif detail.Is(ed.BadRequest.DESCRIPTOR):
            (br := ed.BadRequest()).ParseFromString(detail.value)
            lines += [f"  field: {v.field}: {v.description}" for v in br.field_violations]
    return "\n".join(lines)


def resume_offset(path: Path) -> int:
    """Complete JSONL lines already in `path` (0 if absent). A torn last line left by an interrupted
    write is cut off, so appending the resumed stream keeps one record per line."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with path.open("r+b") as f:
            f.truncate(keep)
    return data.count(b"\n", 0, keep)


def write_records(records: Iterable[generation_pb2.SyntheticRecord], out: IO[str], total: int | None = None) -> tuple[int, int]:
    """Write each record as a JSON line as it arrives, flushed, so an interrupted stream keeps
    what it got; returns (records, tokens)."""
    n = tokens = 0
    bar = _progress(total, "rec")
    try:
        for rec in records:
            out.write(json.dumps(record_to_json(rec), ensure_ascii=False) + "\n")
            out.flush()
            n, tokens = n + 1, tokens + rec.tokens
            bar.update(1)
    finally:
        bar.close()
    return n, tokens


def _progress(total: int | None, unit: str, **kw):
    """A tqdm bar on stderr when stderr is a terminal (and tqdm is installed), else a no-op bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        return SimpleNamespace(update=lambda n=1: None, close=lambda: None)
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(), **kw)


def _channel(ns: argparse.Namespace) -> grpc.Channel:
    import grpc

    if not ns.tls_ca:
        return grpc.insecure_channel(ns.server)
    try:
        ca = Path(ns.tls_ca).read_bytes()
    except OSError as e:
        raise ValueError(f"--tls-ca: cannot read {ns.tls_ca}: {e.strerror}") from None
    return grpc.secure_channel(ns.server, grpc.ssl_channel_credentials(root_certificates=ca))


def call_options(ns: argparse.Namespace) -> dict:
    """Keyword arguments of every stub call: the --timeout deadline and the API key metadata."""
    key = os.environ.get("PRIVTEXT_API_KEY")
    return {"timeout": ns.timeout, "metadata": ((API_KEY_HEADER, key),) if key else None}


def _rpc(fn: Callable[[argparse.Namespace, grpc.Channel, dict], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command on an open channel: RPC failures -> exit 1, bad local input -> exit 2, Ctrl-C -> 130."""

    @functools.wraps(fn)
    def run(ns: argparse.Namespace) -> int:
        import grpc

        try:
            with _channel(ns) as channel:
                return fn(ns, channel, call_options(ns))
        except grpc.RpcError as err:
            _say(describe_rpc_error(err))
            return 1
        except ValueError as e:
            _say(f"privtext: error: {e}")
            return 2
        except KeyboardInterrupt:  # closing the channel cancels the call; records so far are kept
            return 130

    return run


def _stub(channel: grpc.Channel, service: str):
    """(message module, stub) of the `datasets` or the `generation` service."""
    from .api.gen.privtext.v1 import datasets_pb2, datasets_pb2_grpc, generation_pb2, generation_pb2_grpc

    if service == "datasets":
        return datasets_pb2, datasets_pb2_grpc.DatasetsStub(channel)
    return generation_pb2, generation_pb2_grpc.GenerationStub(channel)


def _show(service: str, method: str, render: Callable[[object, bool], str]) -> Callable[[argparse.Namespace], int]:
    """A command making one unary call (on the `id` argument when `<method>Request` has an id
    field) that prints render(response, --json)."""

    @_rpc
    def cmd(ns: argparse.Namespace, channel: grpc.Channel, opts: dict) -> int:
        pb, stub = _stub(channel, service)
        cls = getattr(pb, f"{method}Request")
        req = cls(id=ns.id) if "id" in cls.DESCRIPTOR.fields_by_name else cls()
        print(render(getattr(stub, method)(req, **opts), getattr(ns, "json", False)))
        return 0

    return cmd


def _state(job: generation_pb2.Job) -> str:
    from .api.gen.privtext.v1 import generation_pb2

    return generation_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")


def format_job(job: generation_pb2.Job) -> str:
    """A job's state and progress, one field a line."""
    lines = [f"job      {job.id}", f"dataset  {job.dataset_id}", f"state    {_state(job)}",
             f"records  {job.records_done}/{job.records_total}",
             f"epsilon  {job.epsilon_spent:g} spent of {job.epsilon_reserved:g} reserved"]
    return "\n".join(lines + ([f"error    {job.error}"] if job.error else []))


def _as_json_or(text: Callable[[object], str]) -> Callable[[object, bool], str]:
    return lambda msg, as_json: json.dumps(message_to_dict(msg), indent=2) if as_json else text(msg)


cmd_datasets_list = _show("datasets", "ListDatasets", _as_json_or(lambda r: "\n".join(
    f"{d.id}  {d.name}  records={d.records}  epsilon_cap={d.epsilon_cap:g}  delta={d.delta:g}" for d in r.datasets)))
cmd_datasets_get = _show("datasets", "GetDataset", _as_json_or(lambda d: "\n".join(f"{k:<13}{v}" for k, v in message_to_dict(d).items())))
cmd_datasets_delete = _show("datasets", "DeleteDataset", lambda r, _: f"deleted {r.id}")
cmd_budget = _show("datasets", "GetBudget", lambda b, as_json: json.dumps(budget_to_json(b)) if as_json else format_budget(b))
cmd_jobs_status = _show("generation", "GetJob", _as_json_or(format_job))
cmd_jobs_cancel = _show("generation", "CancelJob", lambda j, _: f"job {j.id}: {_state(j)}")


def _stream_to(records: Iterable, out: Path | None, append: bool, total: int | None) -> int:
    t0 = time.perf_counter()
    if out is None:
        n, tokens = write_records(records, sys.stdout, total)
    else:
        with out.open("a" if append else "w", encoding="utf-8") as f:
            n, tokens = write_records(records, f, total)
    _say(f"{n} records, {tokens} tokens in {time.perf_counter() - t0:.1f} s" + (f" -> {out}" if out else ""))
    return 0


@_rpc
def cmd_upload(ns: argparse.Namespace, channel: grpc.Channel, opts: dict) -> int:
    path = Path(ns.file)
    if not path.is_file():
        raise ValueError(f"FILE: no such file: {path}")
    fmt = ns.format or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"--format: cannot tell the format of {path.name!r} from its suffix; pass --format jsonl or csv")
    pb, stub = _stub(channel, "datasets")
    spec = pb.DatasetSpec(name=ns.name, text_field=ns.text_field, label_field=ns.label_field or "",
                          unit_field=ns.unit_field or "", epsilon_cap=ns.epsilon_cap, delta=ns.delta, format=fmt)
    if ns.declared_public_units is not None:
        spec.declared_public_units = ns.declared_public_units
    bar = _progress(path.stat().st_size, "B", unit_scale=True, unit_divisor=1024)
    try:
        with path.open("rb") as f:
            ds = stub.UploadDataset(upload_requests(spec, f, on_chunk=bar.update), **opts)
    finally:
        bar.close()
    _say(f"uploaded {ds.name!r}: {ds.records} records, epsilon cap {ds.epsilon_cap:g}, delta {ds.delta:g}, units {ds.units_source}")
    print(ds.id)
    return 0


@_rpc
def cmd_generate(ns: argparse.Namespace, channel: grpc.Channel, opts: dict) -> int:
    req = build_generate_request(ns)
    _, stub = _stub(channel, "generation")
    return _stream_to(stub.Generate(req, **opts), ns.out, False, req.records or sum(req.label_counts.values()))


@_rpc
def cmd_jobs_submit(ns: argparse.Namespace, channel: grpc.Channel, opts: dict) -> int:
    req = build_generate_request(ns)
    _, stub = _stub(channel, "generation")
    job = stub.SubmitJob(req, **opts)
    _say(f"submitted: {job.records_total} records, epsilon reserved {job.epsilon_reserved:g}")
    print(job.id)
    return 0


@_rpc
def cmd_jobs_results(ns: argparse.Namespace, channel: grpc.Channel, opts: dict) -> int:
    pb, stub = _stub(channel, "generation")
    resume = ns.out is not None and ns.offset is None
    offset = resume_offset(ns.out) if resume else (ns.offset or 0)
    if offset and resume:
        _say(f"resuming after the {offset} records already in {ns.out}")
    stream = stub.StreamJobResults(pb.StreamJobResultsRequest(id=ns.id, offset=offset), **opts)
    return _stream_to(stream, ns.out, resume, None)


def _request_args(p: argparse.ArgumentParser) -> None:
    """Arguments of a GenerateRequest; None means 'leave the field unset' (the server's default)."""
    p.add_argument("--dataset", required=True, help="dataset id")
    p.add_argument("--records", type=int, default=None, help="records to generate (optional with --label-counts)")
    p.add_argument("--max-tokens", type=int, required=True, help="maximum tokens per record (charged in full)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epsilon", type=float, help="epsilon this request spends")
    budget.add_argument("--preset", help="a budget preset defined by the server, e.g. low, medium, high")
    from mechanisms.registry import names as mechanism_names

    p.add_argument("--mechanism", choices=mechanism_names(), default=None, help="default: the server's (em)")
    for flag, kind in (("--partitions", int), ("--temperature", float), ("--top-k", int), ("--units-per-row", int),
                       ("--row-slots", int), ("--max-row-tokens", int),
                       ("--gate-threshold", float), ("--gate-epsilon", float), ("--gate-max-private", int), ("--seed", int)):
        p.add_argument(flag, type=kind, default=None)
    p.add_argument("--top-k-plus", action=argparse.BooleanOptionalAction, default=None,
                   help="em: widen the public top-k to top-k+ (server default) or not (--no-top-k-plus)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--label-counts", default=None, help="public records per label, e.g. spam=2,ham=3")
    labels.add_argument("--labels", default=None, help="labels, comma-separated; records split by a DP histogram")
    p.add_argument("--pii", choices=("redact", "drop", "report"), default=None, help="PII policy (server default: redact)")
    p.add_argument("--stop", nargs="+", action="extend", default=None, metavar="STR", help="stop strings")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `client` and its subcommands on the top-level subparsers object."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--server", default=os.environ.get("PRIVTEXT_SERVER", "127.0.0.1:50051"),
                      help="HOST:PORT (default: $PRIVTEXT_SERVER, else 127.0.0.1:50051)")
    conn.add_argument("--tls-ca", default=os.environ.get("PRIVTEXT_TLS_CA"), metavar="PATH",
                      help="PEM root certificates; given = TLS (default: $PRIVTEXT_TLS_CA, else plaintext)")
    conn.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="deadline of the call")
    csub = sub.add_parser("client", help="talk to a privtext server over gRPC").add_subparsers(dest="client", required=True)

    def leaf(parent, name: str, func: Callable[[argparse.Namespace], int], help: str, *args: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[conn], help=help)
        p.set_defaults(func=func)
        for a in args:  # positional ids and --json flags
            p.add_argument(a, **({"action": "store_true"} if a == "--json" else {}))
        return p

    p = leaf(csub, "upload", cmd_upload, "upload a private JSONL or CSV file as a new dataset; prints its id")
    p.add_argument("file", metavar="FILE", help="the private corpus: .jsonl, .json (JSON lines) or .csv")
    p.add_argument("--name", required=True)
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default=None)
    p.add_argument("--unit-field", default=None, help="privacy unit key; default: each record is a unit")
    p.add_argument("--epsilon-cap", type=float, required=True, help="total epsilon the dataset may ever spend")
    p.add_argument("--delta", type=float, required=True)
    p.add_argument("--declared-public-units", type=int, default=None, help="a public unit count, if there is one")
    p.add_argument("--format", choices=("jsonl", "csv"), default=None, help="default: from the file suffix")

    d = csub.add_parser("datasets", help="list, inspect and delete datasets").add_subparsers(dest="datasets", required=True)
    leaf(d, "list", cmd_datasets_list, "list datasets", "--json")
    leaf(d, "get", cmd_datasets_get, "one dataset's metadata", "id", "--json")
    leaf(d, "delete", cmd_datasets_delete, "delete a dataset and its records", "id")
    leaf(csub, "budget", cmd_budget, "a dataset's privacy budget and ledger", "--json").add_argument(
        "--dataset", dest="id", required=True, help="dataset id")
    _request_args(p := leaf(csub, "generate", cmd_generate, "generate records, streamed as JSON lines"))
    p.add_argument("--out", type=Path, default=None, help="JSONL file (default: stdout)")

    j = csub.add_parser("jobs", help="asynchronous generation jobs").add_subparsers(dest="jobs", required=True)
    _request_args(leaf(j, "submit", cmd_jobs_submit, "queue a generation job; prints its id"))
    leaf(j, "status", cmd_jobs_status, "a job's state and progress", "id", "--json")
    p = leaf(j, "results", cmd_jobs_results, "stream a job's records as JSON lines", "id")
    p.add_argument("--offset", type=int, default=None, help="skip this many records (--out is then overwritten)")
    p.add_argument("--out", type=Path, default=None, help="JSONL file; if it exists and no --offset, resumed (appended)")
    leaf(j, "cancel", cmd_jobs_cancel, "cancel a queued or running job", "id")
