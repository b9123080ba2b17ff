"""Messages <-> the service's own types. Validation of public request fields happens here (or
in JobRequest); every error names the field and the limit."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2

from mechanisms.accounting import epsilon_of

from ..jobs.generate import JobRequest
from ..jobs.records import OutRecord
from ..store.interface import DatasetInfo, JobInfo, LedgerRow
from .errors import ApiError
from .gen.privtext.v1 import datasets_pb2, generation_pb2
from .settings import ServerSettings

MECHANISMS = {generation_pb2.MECHANISM_UNSPECIFIED: "em", generation_pb2.MECHANISM_EM: "em",
              generation_pb2.MECHANISM_AMIN: "amin", generation_pb2.MECHANISM_GAUSSIAN: "gaussian"}
POLICIES = {generation_pb2.PII_POLICY_REDACT: "redact", generation_pb2.PII_POLICY_DROP: "drop",
            generation_pb2.PII_POLICY_REPORT: "report"}
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "halted": "budget"}
JOB_STATES = {"queued": generation_pb2.JOB_STATE_QUEUED, "running": generation_pb2.JOB_STATE_RUNNING,
              "succeeded": generation_pb2.JOB_STATE_SUCCEEDED, "failed": generation_pb2.JOB_STATE_FAILED,
              "cancelled": generation_pb2.JOB_STATE_CANCELLED}


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field)


def timestamp(t: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def job_request(m: generation_pb2.GenerateRequest, s: ServerSettings) -> tuple[str, JobRequest]:
    """(dataset id, JobRequest) of a GenerateRequest; ApiError or pydantic's ValidationError."""
    if not m.dataset_id:
        raise _invalid("dataset_id", "required")
    records = m.records or sum(m.label_counts.values())
    if not 1 <= records <= s.max_request_records:
        raise _invalid("records", f"must be in [1, {s.max_request_records}] (max_request_records), got {records}")
    if not 1 <= m.max_tokens <= s.max_request_tokens:
        raise _invalid("max_tokens", f"must be in [1, {s.max_request_tokens}] (max_request_tokens), got {m.max_tokens}")
    which = m.WhichOneof("budget")
    if which is None:
        raise _invalid("epsilon", "set epsilon or preset")
    if which == "preset":
        if m.preset not in s.presets:
            raise _invalid("preset", f"must be one of {', '.join(sorted(s.presets))}, got {m.preset!r}")
        epsilon = s.presets[m.preset]
    else:
        epsilon = m.epsilon  # JobRequest checks it (finite, > 0)
    if m.mechanism not in MECHANISMS:
        raise _invalid("mechanism", f"unknown value {m.mechanism}")
    if m.pii_policy not in POLICIES:
        raise _invalid("pii_policy", f"unknown value {m.pii_policy}")
    st = m.settings
    fields: dict = {}
    for name, key in (("partitions", "partitions"), ("temperature", "temperature"), ("units_per_row", "units_per_row"), ("top_k_plus", "top_k_plus")):
        if st.HasField(name):
            fields[key] = getattr(st, name)
    if st.HasField("top_k"):
        fields["top_k"] = st.top_k or None  # 0: the whole vocabulary
    if st.HasField("gate"):
        g = st.gate
        fields["gate_threshold"] = g.threshold if g.HasField("threshold") else 0.3
        if g.HasField("epsilon"):
            fields["gate_epsilon"] = g.epsilon
        if g.HasField("max_private"):
            fields["gate_max_private"] = g.max_private
    req = JobRequest(
        records=records, max_tokens=m.max_tokens, epsilon=epsilon, mechanism=MECHANISMS[m.mechanism],
        label_counts=dict(m.label_counts) or None, labels=tuple(m.labels) or None, pii=POLICIES[m.pii_policy],
        seed=m.seed if m.HasField("seed") else None, stop=tuple(m.stop), **fields,
    )
    return m.dataset_id, req


def dataset(info: DatasetInfo) -> datasets_pb2.Dataset:
    return datasets_pb2.Dataset(
        id=info.id, name=info.name,
        fields=datasets_pb2.DatasetFields(text_field=info.text_field, label_field=info.label_field or "", unit_field=info.unit_field or ""),
        epsilon_cap=info.epsilon_cap, delta=info.delta, records=info.records,
        units_source="declared" if info.declared_public_units is not None else "private",
        created_at=timestamp(info.created_at),
    )


def budget(b: dict, rows: list[LedgerRow]) -> datasets_pb2.Budget:
    entries = [
        datasets_pb2.LedgerEntry(
            label=r.label, epsilon=epsilon_of(r.events, b["delta"]), created_at=timestamp(r.created_at),
            events=[datasets_pb2.Event(kind=e.kind, parameter=e.parameter, count=e.count, note=e.note) for e in r.events],
        )
        for r in rows
    ]
    return datasets_pb2.Budget(epsilon_cap=b["cap"], spent=b["spent"], remaining=max(b["remaining"], 0.0), delta=b["delta"], entries=entries)


def record(index: int, rec: OutRecord) -> generation_pb2.SyntheticRecord:
    return stored_record(index, rec.to_json(with_label=True))


def stored_record(index: int, row: dict) -> generation_pb2.SyntheticRecord:
    """A job's stored result (OutRecord.to_json) as a message."""
    return generation_pb2.SyntheticRecord(
        index=index, text=row["text"], label=row.get("label") or "", tokens=row["tokens"],
        finish_reason=FINISH.get(row["finish_reason"], row["finish_reason"]),
        findings=[generation_pb2.PiiFinding(entity_type=k, count=v) for k, v in sorted(row.get("pii", {}).items())],
    )


def job(info: JobInfo, records_total: int, epsilon_reserved: float) -> generation_pb2.Job:
    """epsilon_spent equals epsilon_reserved from submission on: a reservation is never released."""
    return generation_pb2.Job(
        id=info.id, dataset_id=info.dataset_id, state=JOB_STATES[info.state], records_done=info.results,
        records_total=records_total, epsilon_reserved=epsilon_reserved, epsilon_spent=epsilon_reserved,
        error=info.message if info.state == "failed" else "", created_at=timestamp(info.created_at), updated_at=timestamp(info.updated_at),
    )
