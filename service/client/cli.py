"""`privtext client`: the command-line client of the privtext gRPC service, a thin layer over
the library (`library.Client`): every command makes its calls through it.

Records go to stdout (or --out) as JSON lines and ids are the last stdout line, so the commands
compose in scripts; everything meant for people goes to stderr. grpc, protobuf and pydantic are
imported only when a command runs: `build_parser()` registers these subcommands on every
`privtext` start, and the `service` extra (grpcio) may not be installed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import IO, TYPE_CHECKING

from .errors import PrivtextError, error_from_rpc
# CHUNK_SIZE and upload_requests are not used here: they stay importable from this module, where
# the single-module service.client had them.
from .library import CHUNK_SIZE, FORMATS, Client, generate_request, upload_requests  # noqa: F401
from .models import Budget, Dataset, Job, JobState, Record

if TYPE_CHECKING:
    import grpc

    from ..api.gen.privtext.v1 import generation_pb2


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


def request_options(ns: argparse.Namespace) -> dict:
    """The keyword arguments of Client.generate / submit_job for the request flags; a flag left
    out stays None, so the server applies its default. Mistakes are named by flag here."""
    label_counts = parse_label_counts(ns.label_counts) if ns.label_counts is not None else None
    if ns.records is None and not label_counts:
        raise ValueError("--records is required unless --label-counts is given")
    labels = None
    if ns.labels is not None:
        labels = [s.strip() for s in ns.labels.split(",")]
        if not all(labels):
            raise ValueError(f"--labels must be comma-separated non-empty labels, got {ns.labels!r}")
    from ..jobs.declared import proto_paths
    from ..jobs.request import JobRequest

    names = ("records", "max_tokens", "epsilon", "preset", "mechanism", "stop", "seed", "method", *proto_paths(JobRequest))
    return {n: getattr(ns, n) for n in names} | {"label_counts": label_counts, "labels": labels, "pii": ns.pii}


def build_generate_request(ns: argparse.Namespace) -> generation_pb2.GenerateRequest:
    """The GenerateRequest `generate` and `jobs submit` send for these flags."""
    return generate_request(ns.dataset, **request_options(ns))


def record_to_json(rec: Record) -> dict:
    """One output line; `label` and `pii` only when there are any, so plain output stays lean.
    A SyntheticRecord message (from code on the generated stubs) is converted first."""
    if not isinstance(rec, Record):
        rec = Record.from_message(rec)
    out: dict = {"index": rec.index, "text": rec.text}
    if rec.label:
        out["label"] = rec.label
    out |= {"tokens": rec.tokens, "finish_reason": rec.finish_reason}
    return out | ({"pii": dict(rec.pii)} if rec.pii else {})


def message_to_dict(msg) -> dict:
    """Proto -> JSON-ready dict: proto field names, zero values kept, int64 as numbers (the JSON
    that dataset_to_json and job_to_json reproduce from the library's dataclasses)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                         unquote_int64_if_possible=True)


def _json_object(fields: list[tuple[str, object, bool]]) -> dict:
    """(name, value, is_zero) in field order -> the object in protobuf's JSON order: the fields
    holding a value first, then the zero ones, each in field order (what `--json` always printed)."""
    return {name: value for name, value, _ in sorted(fields, key=lambda f: f[2])}


def _zero(value: object) -> bool:
    return value in ("", 0) and not isinstance(value, bool)


def _timestamp(ns: int) -> str:
    """RFC 3339, as protobuf's JSON writes a Timestamp (0, 3, 6 or 9 fractional digits)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts.ToJsonString()


def _scalars(obj, names: Iterable[str]) -> list[tuple[str, object, bool]]:
    """(name, value, is_zero) of plain fields; None (the dataclasses' "absent") is the proto's ""."""
    out = []
    for name in names:
        value = getattr(obj, name)
        value = "" if value is None else value
        out.append((name, value, _zero(value)))
    return out


def _timestamps(obj, names: Iterable[str]) -> list[tuple[str, object, bool]]:
    return [(n, _timestamp(getattr(obj, f"{n}_ns")), False) for n in names if getattr(obj, f"{n}_ns") is not None]


def dataset_to_json(ds: Dataset) -> dict:
    """The `datasets get --json` object (the Dataset message's JSON)."""
    fields = _json_object(_scalars(ds, ("text_field", "label_field", "unit_field")))
    return _json_object(_scalars(ds, ("id", "name")) + [("fields", fields, False)]
                        + _scalars(ds, ("epsilon_cap", "delta", "records", "units_source")) + _timestamps(ds, ("created_at",)))


def job_to_json(job: Job) -> dict:
    """The `jobs status --json` object (the Job message's JSON: state as JOB_STATE_<STATE>)."""
    state = [("state", f"JOB_STATE_{job.state}", job.state == JobState.UNSPECIFIED)]
    return _json_object(_scalars(job, ("id", "dataset_id")) + state
                        + _scalars(job, ("records_done", "records_total", "epsilon_reserved", "epsilon_spent", "error"))
                        + _timestamps(job, ("created_at", "updated_at")) + _scalars(job, ("message",)))


def budget_to_json(b: Budget) -> dict:
    """The `budget --json` object: the totals and the ledger's (label, epsilon) pairs."""
    return {"epsilon_cap": b.epsilon_cap, "spent": b.spent, "remaining": b.remaining, "delta": b.delta,
            "entries": [{"label": e.label, "epsilon": e.epsilon} for e in b.entries]}


def format_budget(b: Budget) -> str:
    """The budget as people read it: the totals, then the ledger as a two-column table."""
    lines = [f"epsilon cap  {b.epsilon_cap:.4f}", f"spent        {b.spent:.4f}",
             f"remaining    {b.remaining:.4f}", f"delta        {b.delta:g}"]
    if not b.entries:
        return "\n".join([*lines, "ledger       (empty)"])
    width = max(len("label"), *(len(e.label) for e in b.entries))
    return "\n".join([*lines, "", f"{'label':<{width}}  epsilon", *(f"{e.label:<{width}}  {e.epsilon:.4f}" for e in b.entries)])


def describe_rpc_error(err: PrivtextError | grpc.RpcError) -> str:
    """`error: CODE: details`, then the rich status' field and quota violations, which say what
    to change (which field is wrong, which budget ran out) better than the message alone."""
    e = err if isinstance(err, PrivtextError) else error_from_rpc(err)
    lines = [f"error: {e.code}: {e.details}"]
    lines += [f"  field: {v.field}: {v.description}" for v in e.field_violations]
    lines += [f"  quota: {v.subject}: {v.description}" for v in e.quota_violations]
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


def write_records(records: Iterable[Record], out: IO[str], total: int | None = None) -> tuple[int, int]:
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


def connect(ns: argparse.Namespace) -> Client:
    """The Client of the connection flags: --server, --tls-ca, --timeout and $PRIVTEXT_API_KEY."""
    tls: bool | bytes = False
    if ns.tls_ca:
        try:
            tls = Path(ns.tls_ca).read_bytes()
        except OSError as e:
            raise ValueError(f"--tls-ca: cannot read {ns.tls_ca}: {e.strerror}") from None
    return Client(ns.server, api_key=os.environ.get("PRIVTEXT_API_KEY") or None, tls=tls, timeout=ns.timeout)


def _command(fn: Callable[[argparse.Namespace, Client], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command with a connected Client: refusals -> exit 1, bad local input -> exit 2, Ctrl-C -> 130."""

    @functools.wraps(fn)
    def run(ns: argparse.Namespace) -> int:
        try:
            with connect(ns) as client:
                return fn(ns, client)
        except PrivtextError as err:
            _say(describe_rpc_error(err))
            return 1
        except ValueError as e:
            _say(f"privtext: error: {e}")
            return 2
        except KeyboardInterrupt:  # closing the channel cancels the call; records so far are kept
            return 130

    return run


def _printed(call: Callable[[argparse.Namespace, Client], object], render: Callable[[object, bool], str]) -> Callable[[argparse.Namespace], int]:
    """A command printing render(call's result, --json)."""

    @_command
    def cmd(ns: argparse.Namespace, client: Client) -> int:
        print(render(call(ns, client), getattr(ns, "json", False)))
        return 0

    return cmd


def format_job(job: Job) -> str:
    """A job's state and progress, one field a line."""
    lines = [f"job      {job.id}", f"dataset  {job.dataset_id}", f"state    {job.state}",
             f"records  {job.records_done}/{job.records_total}",
             f"epsilon  {job.epsilon_spent:g} spent of {job.epsilon_reserved:g} reserved"]
    return "\n".join(lines + ([f"error    {job.error}"] if job.error else []))


def _format_dataset(ds: Dataset) -> str:
    return "\n".join(f"{k:<13}{v}" for k, v in dataset_to_json(ds).items())


def _delete(ns: argparse.Namespace, client: Client) -> str:
    client.delete_dataset(ns.id)
    return ns.id


cmd_datasets_list = _printed(lambda ns, c: c.list_datasets(), lambda ds, as_json: json.dumps(
    {"datasets": [dataset_to_json(d) for d in ds]}, indent=2) if as_json else "\n".join(
    f"{d.id}  {d.name}  records={d.records}  epsilon_cap={d.epsilon_cap:g}  delta={d.delta:g}" for d in ds))
cmd_datasets_get = _printed(lambda ns, c: c.get_dataset(ns.id),
                            lambda d, as_json: json.dumps(dataset_to_json(d), indent=2) if as_json else _format_dataset(d))
cmd_datasets_delete = _printed(_delete, lambda id_, _: f"deleted {id_}")
cmd_budget = _printed(lambda ns, c: c.budget(ns.id), lambda b, as_json: json.dumps(budget_to_json(b)) if as_json else format_budget(b))
cmd_jobs_status = _printed(lambda ns, c: c.get_job(ns.id),
                           lambda j, as_json: json.dumps(job_to_json(j), indent=2) if as_json else format_job(j))
cmd_jobs_cancel = _printed(lambda ns, c: c.cancel_job(ns.id), lambda j, _: f"job {j.id}: {j.state}")


def _stream_to(records: Iterable[Record], out: Path | None, append: bool, total: int | None) -> int:
    t0 = time.perf_counter()
    if out is None:
        n, tokens = write_records(records, sys.stdout, total)
    else:
        with out.open("a" if append else "w", encoding="utf-8") as f:
            n, tokens = write_records(records, f, total)
    _say(f"{n} records, {tokens} tokens in {time.perf_counter() - t0:.1f} s" + (f" -> {out}" if out else ""))
    return 0


@_command
def cmd_upload(ns: argparse.Namespace, client: Client) -> int:
    path = Path(ns.file)
    if not path.is_file():
        raise ValueError(f"FILE: no such file: {path}")
    fmt = ns.format or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"--format: cannot tell the format of {path.name!r} from its suffix; pass --format jsonl or csv")
    bar = _progress(path.stat().st_size, "B", unit_scale=True, unit_divisor=1024)
    try:
        ds = client.upload(path, name=ns.name, text_field=ns.text_field, label_field=ns.label_field or None,
                           unit_field=ns.unit_field or None, epsilon_cap=ns.epsilon_cap, delta=ns.delta,
                           declared_public_units=ns.declared_public_units, format=fmt, on_progress=bar.update)
    finally:
        bar.close()
    _say(f"uploaded {ds.name!r}: {ds.records} records, epsilon cap {ds.epsilon_cap:g}, delta {ds.delta:g}, units {ds.units_source}")
    print(ds.id)
    return 0


@_command
def cmd_generate(ns: argparse.Namespace, client: Client) -> int:
    options = request_options(ns)
    records = client.generate(ns.dataset, **options)
    return _stream_to(records, ns.out, False, ns.records or sum((options["label_counts"] or {}).values()))


@_command
def cmd_jobs_submit(ns: argparse.Namespace, client: Client) -> int:
    job = client.submit_job(ns.dataset, **request_options(ns))
    _say(f"submitted: {job.records_total} records, epsilon reserved {job.epsilon_reserved:g}")
    print(job.id)
    return 0


@_command
def cmd_jobs_results(ns: argparse.Namespace, client: Client) -> int:
    resume = ns.out is not None and ns.offset is None
    offset = resume_offset(ns.out) if resume else (ns.offset or 0)
    if offset and resume:
        _say(f"resuming after the {offset} records already in {ns.out}")
    return _stream_to(client.job_results(ns.id, start=offset), ns.out, resume, None)


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
    p.add_argument("--seed", type=int, default=None, help="refused by the server (every request draws fresh noise)")
    from ..jobs.declared import add_arguments, proto_paths
    from ..jobs.request import JobRequest

    # the settings the request carries, flags and help from their one declaration (service/jobs/request.py)
    add_arguments(p, JobRequest, ("method", *proto_paths(JobRequest)), unset=True)
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
