"""Messages <-> the service's own types. Validation of public request fields happens here (or
in JobRequest); every error names the field and the limit."""

from __future__ import annotations

import functools
import math
import unicodedata
from collections.abc import Iterable

import grpc
from google.protobuf import timestamp_pb2

from mechanisms import PrivacyEvent
from mechanisms.accounting import epsilon_of
from mechanisms.registry import names as mechanism_names

from ..jobs.declared import values_from_message
from ..jobs.request import JobRequest
from ..jobs.records import OutRecord
from ..store.interface import DatasetInfo, JobInfo, LedgerRow
from .errors import ApiError
from .gen.privtext.v1 import datasets_pb2, generation_pb2
from .settings import ServerSettings

POLICIES = {generation_pb2.PII_POLICY_REDACT: "redact", generation_pb2.PII_POLICY_DROP: "drop",
            generation_pb2.PII_POLICY_REPORT: "report"}
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "halted": "budget"}
GATE_THRESHOLD = 0.3  # GateSettings.threshold's default (generation.proto)
JOB_STATES = {"queued": generation_pb2.JOB_STATE_QUEUED, "running": generation_pb2.JOB_STATE_RUNNING,
              "succeeded": generation_pb2.JOB_STATE_SUCCEEDED, "failed": generation_pb2.JOB_STATE_FAILED,
              "cancelled": generation_pb2.JOB_STATE_CANCELLED}


def mechanism_name(value: int) -> str | None:
    """The registered mechanism of a Mechanism enum value, by name (MECHANISM_AMIN -> "amin";
    unset -> JobRequest's default); None for a value the proto or the registry does not know."""
    if value == generation_pb2.MECHANISM_UNSPECIFIED:
        return JobRequest.model_fields["mechanism"].default
    try:
        name = generation_pb2.Mechanism.Name(value).removeprefix("MECHANISM_").lower()
    except ValueError:
        return None
    return name if name in mechanism_names() else None


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", field)


def _require(ok: bool, field: str, limit: str, got: str) -> None:
    """The project's message, "FIELD must be LIMIT, got VALUE", as INVALID_ARGUMENT."""
    if not ok:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{field} must be {limit}, got {got}", field)


def _shown(value: str, limit: int = 40) -> str:
    """A client's string as an error quotes it: never more than `limit` characters of it."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} characters)"


def _control_char(value: str) -> str | None:
    """'U+000A at position 3' for the first control, format or separator character, else None."""
    for i, ch in enumerate(value):
        if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp"):
            return f"U+{ord(ch):04X} at position {i}"
    return None


def check_id(value: str, field: str, s: ServerSettings) -> None:
    """A dataset or job id: required and at most max_id_chars (never echoed whole)."""
    _require(bool(value), field, "set", "''")
    _require(len(value) <= s.max_id_chars, field, f"at most {s.max_id_chars} characters (max_id_chars)", f"{len(value)} characters")


def _check_epsilon(value: float, field: str, s: ServerSettings) -> None:
    _require(math.isfinite(value) and s.min_epsilon <= value <= s.max_epsilon, field,
             f"in [{s.min_epsilon:g}, {s.max_epsilon:g}] (min_epsilon, max_epsilon)", repr(value))


def _check_strings(values: Iterable[str], field: str, max_count: int, count_setting: str, max_chars: int, chars_setting: str) -> None:
    """Each string non-empty and at most max_chars; at most max_count of them."""
    values = list(values)
    _require(len(values) <= max_count, field, f"at most {max_count} strings ({count_setting})", str(len(values)))
    for i, v in enumerate(values):
        _require(v != "", f"{field}[{i}]", "a non-empty string", "''")
        _require(len(v) <= max_chars, f"{field}[{i}]", f"at most {max_chars} characters ({chars_setting})", _shown(v))


def check_request_fields(m: generation_pb2.GenerateRequest, s: ServerSettings) -> None:
    """Bounds on a GenerateRequest's free-form fields, all public settings, checked before any
    charge. Labels are not checked against the dataset: which labels the private records hold
    is private, so a request is charged for the labels it declares (see generation.proto)."""
    check_id(m.dataset_id, "dataset_id", s)
    _check_strings(m.labels, "labels", s.max_request_labels, "max_request_labels", s.max_label_chars, "max_label_chars")
    _check_strings(m.label_counts, "label_counts", s.max_request_labels, "max_request_labels", s.max_label_chars, "max_label_chars")
    _check_strings(m.stop, "stop", s.max_stop_strings, "max_stop_strings", s.max_stop_chars, "max_stop_chars")
    if m.WhichOneof("budget") == "epsilon":
        _check_epsilon(m.epsilon, "epsilon", s)
    if m.settings.HasField("gate") and m.settings.gate.HasField("epsilon"):
        _check_epsilon(m.settings.gate.epsilon, "settings.gate.epsilon", s)


def _check_name(value: str, field: str, max_chars: int, setting: str) -> None:
    _require(len(value) <= max_chars, field, f"at most {max_chars} characters ({setting})", f"{len(value)} characters")
    bad = _control_char(value)
    _require(bad is None, field, "free of control characters", bad or "")


def dataset_spec(spec: datasets_pb2.DatasetSpec, s: ServerSettings) -> None:
    """An upload's spec: name, fields, cap, delta, format, declared units, within public bounds."""
    if not spec.name.strip():
        raise _invalid("spec.name", "required")
    _check_name(spec.name, "spec.name", s.max_name_chars, "max_name_chars")
    for name in ("text_field", "label_field", "unit_field"):
        _check_name(getattr(spec, name), f"spec.{name}", s.max_field_name_chars, "max_field_name_chars")
    _check_epsilon(spec.epsilon_cap, "spec.epsilon_cap", s)
    _require(s.min_delta <= spec.delta <= s.max_delta, "spec.delta", f"in [{s.min_delta:g}, {s.max_delta:g}] (min_delta, max_delta)", repr(spec.delta))
    _require(spec.format in ("", "jsonl", "csv"), "spec.format", "jsonl or csv", _shown(spec.format))
    if spec.HasField("declared_public_units"):
        _require(spec.declared_public_units >= 1, "spec.declared_public_units", ">= 1", str(spec.declared_public_units))
    names = [n for n in (spec.text_field or "text", spec.label_field, spec.unit_field) if n]
    if len(set(names)) != len(names):
        raise _invalid("spec", f"text_field, label_field and unit_field must be distinct, got {names}")


def timestamp(t: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def job_request(m: generation_pb2.GenerateRequest, s: ServerSettings) -> tuple[str, JobRequest]:
    """(dataset id, JobRequest) of a GenerateRequest; ApiError or pydantic's ValidationError."""
    check_request_fields(m, s)
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
    if m.mechanism_name:
        if m.mechanism_name not in mechanism_names():
            raise _invalid("mechanism_name", f"must be one of {', '.join(mechanism_names())}, got {m.mechanism_name[:64]!r}")
        mechanism = m.mechanism_name
    else:
        mechanism = mechanism_name(m.mechanism)
    if mechanism is None:
        raise _invalid("mechanism", f"unknown value {m.mechanism}")
    if m.pii_policy not in POLICIES:
        raise _invalid("pii_policy", f"unknown value {m.pii_policy}")
    fields = values_from_message(m, JobRequest)  # the declared settings the client set (service/jobs/request.py)
    if m.settings.HasField("gate") and "gate_threshold" not in fields:
        fields["gate_threshold"] = GATE_THRESHOLD  # a gate without a threshold: the proto's default
    req = JobRequest(
        records=records, max_tokens=m.max_tokens, epsilon=epsilon, mechanism=mechanism,
        label_counts=dict(m.label_counts) or None, labels=tuple(m.labels) or None, pii=POLICIES[m.pii_policy],
        seed=m.seed if m.HasField("seed") else None, stop=tuple(m.stop), **(fields | method_fields(m, s)),
    )
    return m.dataset_id, req


METHODS = {generation_pb2.METHOD_UNSPECIFIED: "decode", generation_pb2.METHOD_DECODE: "decode", generation_pb2.METHOD_PE: "pe"}


def method_fields(m: generation_pb2.GenerateRequest, s: ServerSettings) -> dict:
    """JobRequest's method and Private Evolution fields of a GenerateRequest, within the server's
    public bounds. `pe` without METHOD_PE is refused, never silently ignored."""
    _require(m.method in METHODS, "method", "METHOD_DECODE or METHOD_PE", str(m.method))
    if METHODS[m.method] == "decode":
        _require(not m.HasField("pe"), "pe", "unset unless method is METHOD_PE", "pe settings with METHOD_DECODE")
        return {"method": "decode"}
    pe, out = m.pe, {"method": "pe"}  # pe unset: every field at its default
    iterations = pe.iterations if pe.HasField("iterations") else JobRequest.model_fields["iterations"].default
    _require(1 <= iterations <= s.max_pe_iterations, "pe.iterations", f"in [1, {s.max_pe_iterations}] (max_pe_iterations)", str(iterations))
    population = pe.population if pe.HasField("population") else JobRequest.model_fields["pe_population"].default
    _require(1 <= population <= s.max_pe_population, "pe.population", f"in [1, {s.max_pe_population}] (max_pe_population)", str(population))
    out.update(iterations=iterations, pe_population=population)
    if pe.HasField("threshold"):
        _require(math.isfinite(pe.threshold) and pe.threshold >= 0, "pe.threshold", "a finite number >= 0", repr(pe.threshold))
        out["pe_threshold"] = pe.threshold
    if pe.HasField("sigma"):
        _require(math.isfinite(pe.sigma) and pe.sigma > 0, "pe.sigma", "a finite number > 0", repr(pe.sigma))
        out["noise_multiplier"] = pe.sigma
    return out


def dataset(info: DatasetInfo) -> datasets_pb2.Dataset:
    return datasets_pb2.Dataset(
        id=info.id, name=info.name,
        fields=datasets_pb2.DatasetFields(text_field=info.text_field, label_field=info.label_field or "", unit_field=info.unit_field or ""),
        epsilon_cap=info.epsilon_cap, delta=info.delta, records=info.records,
        units_source="declared" if info.declared_public_units is not None else "private",
        created_at=timestamp(info.created_at),
    )


@functools.lru_cache(maxsize=4096)
def _entry_epsilon(events: tuple[PrivacyEvent, ...], delta: float) -> float:
    """An entry's own epsilon; requests of one shape charge the same events, so it is cached."""
    return epsilon_of(events, delta)


def budget(b: dict) -> datasets_pb2.Budget:
    """A store budget (with its recent_entries) as a message: the most recent entries only,
    entries_total counting them all."""
    rows: list[LedgerRow] = b["recent_entries"]
    entries = [
        datasets_pb2.LedgerEntry(
            label=r.label, epsilon=_entry_epsilon(tuple(r.events), b["delta"]), created_at=timestamp(r.created_at),
            events=[datasets_pb2.Event(kind=e.kind, parameter=e.parameter, count=e.count, note=e.note) for e in r.events],
        )
        for r in rows
    ]
    return datasets_pb2.Budget(epsilon_cap=b["cap"], spent=b["spent"], remaining=max(b["remaining"], 0.0), delta=b["delta"],
                               entries=entries, entries_total=b["entries"])


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
        error=info.message if info.state == "failed" else "", message=info.message,
        created_at=timestamp(info.created_at), updated_at=timestamp(info.updated_at),
    )
