"""What the client returns: small frozen dataclasses, made from the API's messages by their
`from_message`, so applications never handle protobuf. An empty proto string (no label, no
error) is None here. Timestamps keep the server's nanoseconds (`*_ns`, like os.stat's
st_mtime_ns) beside a datetime view.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from enum import StrEnum


def _or_none(text: str) -> str | None:
    return text or None


def _ns(msg, name: str) -> int | None:
    """A Timestamp field's nanoseconds since the epoch; None when the server left it unset."""
    return getattr(msg, name).ToNanoseconds() if msg.HasField(name) else None


def _datetime(ns: int | None) -> datetime.datetime | None:
    if ns is None:
        return None
    return datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC).replace(microsecond=ns % 1_000_000_000 // 1000)


@dataclass(frozen=True)
class Record:
    """One synthetic record, as released by the DP mechanism. `pii`: entity type -> how often the
    PII filter found it (before redaction under the default policy); empty when none."""

    index: int
    text: str
    tokens: int
    finish_reason: str  # "stop", "length" or "budget" (the gate's max_private)
    label: str | None = None
    pii: dict[str, int] = field(default_factory=dict, hash=False)

    @classmethod
    def from_message(cls, msg) -> Record:
        pii: dict[str, int] = {}
        for f in msg.findings:
            pii[f.entity_type] = pii.get(f.entity_type, 0) + f.count
        return cls(index=msg.index, text=msg.text, tokens=msg.tokens, finish_reason=msg.finish_reason,
                   label=_or_none(msg.label), pii=pii)


@dataclass(frozen=True)
class Dataset:
    """An uploaded dataset's public metadata (never its text). `units_source`: "declared" (a
    public unit count was given) or "private" (counted from the data, with DP)."""

    id: str
    name: str
    text_field: str
    label_field: str | None
    unit_field: str | None
    epsilon_cap: float
    delta: float
    records: int
    units_source: str
    created_at_ns: int | None = None

    @property
    def created_at(self) -> datetime.datetime | None:
        return _datetime(self.created_at_ns)

    @classmethod
    def from_message(cls, msg) -> Dataset:
        f = msg.fields
        return cls(id=msg.id, name=msg.name, text_field=f.text_field, label_field=_or_none(f.label_field),
                   unit_field=_or_none(f.unit_field), epsilon_cap=msg.epsilon_cap, delta=msg.delta, records=msg.records,
                   units_source=msg.units_source, created_at_ns=_ns(msg, "created_at"))


@dataclass(frozen=True)
class LedgerEntry:
    """One charge to a dataset's budget (usually one request or job), its epsilon on its own."""

    label: str
    epsilon: float
    created_at_ns: int | None = None

    @property
    def created_at(self) -> datetime.datetime | None:
        return _datetime(self.created_at_ns)


@dataclass(frozen=True)
class Budget:
    """A dataset's privacy budget at its delta. Composition is sub-additive, so `spent +
    remaining` can exceed `epsilon_cap`: `remaining` is what one more request could spend on its
    own. `entries` are the most recent of `entries_total`, oldest first."""

    epsilon_cap: float
    spent: float
    remaining: float
    delta: float
    entries: tuple[LedgerEntry, ...] = ()
    entries_total: int = 0

    @classmethod
    def from_message(cls, msg) -> Budget:
        entries = tuple(LedgerEntry(e.label, e.epsilon, _ns(e, "created_at")) for e in msg.entries)
        return cls(epsilon_cap=msg.epsilon_cap, spent=msg.spent, remaining=msg.remaining, delta=msg.delta,
                   entries=entries, entries_total=msg.entries_total)


class JobState(StrEnum):
    """QUEUED -> RUNNING -> SUCCEEDED, FAILED or CANCELLED (the proto's JobState, unprefixed)."""

    UNSPECIFIED = "UNSPECIFIED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class Job:
    """An asynchronous generation job. Its reservation is charged from submission on, whatever
    becomes of it (`epsilon_spent == epsilon_reserved`). `error` is set when it FAILED; `message`
    is the server's account of its outcome."""

    id: str
    dataset_id: str
    state: JobState
    records_done: int
    records_total: int
    epsilon_reserved: float
    epsilon_spent: float
    error: str | None = None
    message: str | None = None
    created_at_ns: int | None = None
    updated_at_ns: int | None = None

    @property
    def done(self) -> bool:
        """True once the job has ended (succeeded, failed or cancelled): its state will not change."""
        return self.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @property
    def created_at(self) -> datetime.datetime | None:
        return _datetime(self.created_at_ns)

    @property
    def updated_at(self) -> datetime.datetime | None:
        return _datetime(self.updated_at_ns)

    @classmethod
    def from_message(cls, msg) -> Job:
        from ..api.gen.privtext.v1 import generation_pb2

        name = generation_pb2.JobState.Name(msg.state).removeprefix("JOB_STATE_")
        return cls(id=msg.id, dataset_id=msg.dataset_id, state=JobState(name), records_done=msg.records_done,
                   records_total=msg.records_total, epsilon_reserved=msg.epsilon_reserved, epsilon_spent=msg.epsilon_spent,
                   error=_or_none(msg.error), message=_or_none(msg.message), created_at_ns=_ns(msg, "created_at"),
                   updated_at_ns=_ns(msg, "updated_at"))
