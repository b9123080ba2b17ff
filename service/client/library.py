"""`Client`: privtext's gRPC API as Python calls, for applications that stream records from their
own code (the `privtext client` command is a thin layer over it).

Calls are synchronous (grpc's blocking channel); streams are iterators that yield each record
as it arrives. Failed calls raise the typed errors of `errors.py`, bad arguments a ValueError
naming the argument before anything is sent. grpc, the generated stubs and pydantic are
imported when a Client is made or a request built: `privtext` loads this module at every start.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .errors import rpc_errors
from .models import Budget, Dataset, Job, Record

if TYPE_CHECKING:
    from ..api.gen.privtext.v1 import datasets_pb2, generation_pb2

API_KEY_HEADER = "x-api-key"
CHUNK_SIZE = 1 << 20  # bytes per UploadRequest.chunk
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
def upload_requests(spec: datasets_pb2.DatasetSpec, f: IO[bytes], size: int = CHUNK_SIZE,
                    on_chunk: Callable[[int], object] | None = None) -> Iterator[datasets_pb2.UploadRequest]:
    """The UploadDataset stream: the spec first (the server requires it), then the file's bytes
    as chunks of at most `size`, read lazily so a large file is never held in memory."""
    from ..api.gen.privtext.v1 import datasets_pb2

    yield datasets_pb2.UploadRequest(spec=spec)
    while chunk := f.read(size):
        if on_chunk:
            on_chunk(len(chunk))
        yield datasets_pb2.UploadRequest(chunk=chunk)


def generate_request(dataset_id: str, *, records: int | None = None, max_tokens: int, epsilon: float | None = None,
                     preset: str | None = None, mechanism: str | None = None, labels: Sequence[str] | None = None,
                     label_counts: Mapping[str, int] | None = None, pii: str | None = None, stop: Sequence[str] | None = None,
                     partitions: int | None = None, temperature: float | None = None, top_k: int | None = None,
                     top_k_plus: bool | None = None, units_per_row: int | None = None, row_slots: int | None = None,
                     max_row_tokens: int | None = None, gate_threshold: float | None = None, gate_epsilon: float | None = None,
                     gate_max_private: int | None = None, seed: int | None = None, method: str | None = None,
                     iterations: int | None = None, pe_threshold: float | None = None,
                     pe_population: int | None = None) -> generation_pb2.GenerateRequest:
    """The GenerateRequest of `Client.generate` and `Client.submit_job`.

    records: how many (may be left out with label_counts: their sum); max_tokens: per record,
    charged in full; exactly one of epsilon (spent by this request) and preset (a name the server
    defines); mechanism: "em" (the server's default), "amin", "gaussian" or a mechanism registered
    by name; labels (records split by a DP histogram of the dataset's labels) or label_counts
    (public counts per label); pii: "redact" (default), "drop" or "report"; stop: stop strings;
    partitions ... max_row_tokens: the mechanism's settings; gate_*: the public-token gate
    (any of them switches it on); seed: refused by the server (it draws fresh noise per request);
    method: "decode" (the default) or "pe" (Private Evolution) with iterations, pe_threshold and
    pe_population (docs/private-evolution.md).

    Only what is given is set: an argument left None stays unset, so the server applies its
    default (and no empty `gate` is sent: a present gate switches the gate on).
    """
    arguments = dict(locals())  # first: exactly the parameters above
    from ..api.gen.privtext.v1 import generation_pb2 as pb
    from .inputs import GenerateArguments, checked

    a = checked(GenerateArguments, **arguments)
    req = pb.GenerateRequest(dataset_id=a.dataset_id, records=a.records or 0, max_tokens=a.max_tokens,
                             label_counts=dict(a.label_counts or {}), stop=a.stop or ())
    if a.preset is not None:
        req.preset = a.preset
    else:
        req.epsilon = a.epsilon
    if a.mechanism:
        if f"MECHANISM_{a.mechanism.upper()}" in pb.Mechanism.keys():
            req.mechanism = pb.Mechanism.Value(f"MECHANISM_{a.mechanism.upper()}")
        else:  # a mechanism registered after the proto: sent by name
            req.mechanism_name = a.mechanism
    if a.pii:
        req.pii_policy = pb.PiiPolicy.Value(f"PII_POLICY_{a.pii.upper()}")
    if a.labels is not None:
        req.labels.extend(a.labels)
    if a.seed is not None:
        req.seed = a.seed
    if a.method is not None:
        req.method = pb.Method.Value(f"METHOD_{a.method.upper()}")
    from ..jobs.declared import set_message_values  # each setting's proto field, as declared once
    from ..jobs.request import JobRequest

    set_message_values(req, a.model_dump(), JobRequest)
    return req


def _check_id(argument: str, value: object) -> None:
    """Ids (and the address) go into proto strings, which would raise an unhelpful TypeError."""
    if not isinstance(value, str):
        raise ValueError(f"{argument}: must be a string, got {type(value).__name__}")


class Client:
    """A connection to a privtext server, e.g. `Client("127.0.0.1:50051", api_key=key)`.

    api_key: sent as `x-api-key` metadata (None for a server without tenants). tls: False for
    plaintext, True for TLS with the system's root certificates, or the PEM root certificates
    (bytes, or a path to them). timeout: the deadline in seconds of every call (a stream's
    covers the whole stream); None waits as long as it takes.

    Use it as a context manager, or call close(): closing the channel cancels any call still
    running. One Client may be shared by threads (grpc channels are thread-safe).
    """

    def __init__(self, address: str, *, api_key: str | None = None, tls: bool | bytes | str | os.PathLike = False,
                 timeout: float | None = None):
        import grpc

        from ..api.gen.privtext.v1 import datasets_pb2_grpc, generation_pb2_grpc

        _check_id("address", address)
        if api_key is not None and not isinstance(api_key, str):
            raise ValueError(f"api_key: must be a string or None, got {type(api_key).__name__}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
            raise ValueError(f"timeout: must be a number of seconds or None, got {timeout!r}")
        if tls is False:
            self._channel = grpc.insecure_channel(address)
        else:
            if tls is True:
                roots = None
            elif isinstance(tls, bytes):
                roots = tls
            elif isinstance(tls, str | os.PathLike):
                try:
                    roots = Path(tls).read_bytes()
                except OSError as e:
                    raise ValueError(f"tls: cannot read {tls}: {e.strerror}") from None
            else:
                raise ValueError(f"tls: must be False, True, PEM bytes or a path, got {type(tls).__name__}")
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=roots))
        self._datasets = datasets_pb2_grpc.DatasetsStub(self._channel)
        self._generation = generation_pb2_grpc.GenerationStub(self._channel)
        self._options = {"timeout": timeout, "metadata": ((API_KEY_HEADER, api_key),) if api_key else None}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- datasets ---------------------------------------------------------------------------------

    def upload(self, file: str | os.PathLike | IO[bytes], *, name: str, epsilon_cap: float, delta: float,
               text_field: str = "text", label_field: str | None = None, unit_field: str | None = None,
               declared_public_units: int | None = None, format: str | None = None,
               on_progress: Callable[[int], object] | None = None) -> Dataset:
        """Upload a JSONL or CSV file (a path, or a file opened in binary mode) as a new dataset.

        epsilon_cap and delta fix its budget for good. format: "jsonl" or "csv", by default from
        the file's suffix (.jsonl, .json, .csv). unit_field: the privacy unit's key (default:
        each record is a unit). declared_public_units: a public unit count, if there is one;
        otherwise the server counts units with DP. on_progress(n) is called with each chunk's
        size in bytes as it is sent. The file is streamed, never held in memory.
        """
        from ..api.gen.privtext.v1 import datasets_pb2
        from .inputs import UploadArguments, checked

        a = checked(UploadArguments, name=name, text_field=text_field, label_field=label_field, unit_field=unit_field,
                    epsilon_cap=epsilon_cap, delta=delta, declared_public_units=declared_public_units, format=format)
        if isinstance(file, io.TextIOBase):
            raise ValueError("file: open it in binary mode ('rb'): the server decodes the bytes as UTF-8")
        if not isinstance(file, str | os.PathLike) and not hasattr(file, "read"):
            raise ValueError(f"file: must be a path or a binary file object, got {type(file).__name__}")
        fmt = a.format
        if fmt is None:
            source = file if isinstance(file, str | os.PathLike) else getattr(file, "name", "")
            fmt = FORMATS.get(Path(str(source)).suffix.lower())
            if fmt is None:
                raise ValueError(f"format: cannot tell the format of {str(source)!r} from its suffix; pass format='jsonl' or 'csv'")
        spec = datasets_pb2.DatasetSpec(name=a.name, text_field=a.text_field, label_field=a.label_field or "",
                                        unit_field=a.unit_field or "", epsilon_cap=a.epsilon_cap, delta=a.delta, format=fmt)
        if a.declared_public_units is not None:
            spec.declared_public_units = a.declared_public_units
        with rpc_errors():
            if isinstance(file, str | os.PathLike):
                with open(file, "rb") as f:
                    msg = self._datasets.UploadDataset(upload_requests(spec, f, on_chunk=on_progress), **self._options)
            else:
                msg = self._datasets.UploadDataset(upload_requests(spec, file, on_chunk=on_progress), **self._options)
        return Dataset.from_message(msg)

    def get_dataset(self, dataset_id: str) -> Dataset:
        from ..api.gen.privtext.v1 import datasets_pb2

        _check_id("dataset_id", dataset_id)
        with rpc_errors():
            return Dataset.from_message(self._datasets.GetDataset(datasets_pb2.GetDatasetRequest(id=dataset_id), **self._options))

    def list_datasets(self) -> list[Dataset]:
        """The datasets this key may see, newest first."""
        from ..api.gen.privtext.v1 import datasets_pb2

        with rpc_errors():
            msg = self._datasets.ListDatasets(datasets_pb2.ListDatasetsRequest(), **self._options)
        return [Dataset.from_message(d) for d in msg.datasets]

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete a dataset, its records and its results; its ledger is kept (what was spent is
        never forgotten). FailedPrecondition while a job on it is unfinished."""
        from ..api.gen.privtext.v1 import datasets_pb2

        _check_id("dataset_id", dataset_id)
        with rpc_errors():
            self._datasets.DeleteDataset(datasets_pb2.DeleteDatasetRequest(id=dataset_id), **self._options)

    def budget(self, dataset_id: str) -> Budget:
        from ..api.gen.privtext.v1 import datasets_pb2

        _check_id("dataset_id", dataset_id)
        with rpc_errors():
            return Budget.from_message(self._datasets.GetBudget(datasets_pb2.GetBudgetRequest(id=dataset_id), **self._options))

    # --- generation -------------------------------------------------------------------------------

    def generate(self, dataset_id: str, **options) -> Iterator[Record]:
        """Generate records, yielded as each arrives (in no guaranteed index order).

        options: the keyword arguments of `generate_request` (records, max_tokens, epsilon or
        preset, ...), checked now. The call starts at the first `next()`; stopping early (break,
        close()) cancels it, but the budget it reserved stays spent: the mechanism has already
        looked at the private data. A budget refusal raises ResourceExhausted before any record.
        """
        req = generate_request(dataset_id, **options)
        return self._records(lambda: self._generation.Generate(req, **self._options))

    def submit_job(self, dataset_id: str, **options) -> Job:
        """Queue a generation job (generate's options) and return it at once; its budget is
        reserved now, and a refusal raises rather than creating a job."""
        req = generate_request(dataset_id, **options)
        with rpc_errors():
            return Job.from_message(self._generation.SubmitJob(req, **self._options))

    def get_job(self, job_id: str) -> Job:
        from ..api.gen.privtext.v1 import generation_pb2

        _check_id("job_id", job_id)
        with rpc_errors():
            return Job.from_message(self._generation.GetJob(generation_pb2.GetJobRequest(id=job_id), **self._options))

    def job_results(self, job_id: str, start: int = 0) -> Iterator[Record]:
        """A job's records from position `start` (how many were already received, to resume),
        following the job until it ends. Raises Aborted if the job failed, Cancelled if it was
        cancelled, OutOfRange for a start beyond its records."""
        from ..api.gen.privtext.v1 import generation_pb2

        _check_id("job_id", job_id)
        if isinstance(start, bool) or not isinstance(start, int):
            raise ValueError(f"start: must be an integer, got {start!r}")
        req = generation_pb2.StreamJobResultsRequest(id=job_id, offset=start)
        return self._records(lambda: self._generation.StreamJobResults(req, **self._options))

    def cancel_job(self, job_id: str) -> Job:
        """Ask a queued or running job to stop; returns its state. Its reservation stays charged."""
        from ..api.gen.privtext.v1 import generation_pb2

        _check_id("job_id", job_id)
        with rpc_errors():
            return Job.from_message(self._generation.CancelJob(generation_pb2.CancelJobRequest(id=job_id), **self._options))

    @staticmethod
    def _records(start: Callable[[], Iterator[generation_pb2.SyntheticRecord]]) -> Iterator[Record]:
        """Records of a server stream started on the first next(), cancelled when the iterator is
        closed or dropped before its end."""
        with rpc_errors():
            call = start()
            try:
                for msg in call:
                    yield Record.from_message(msg)
            finally:
                call.cancel()
