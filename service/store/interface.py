"""The durable store behind the service: datasets, the privacy ledger, released counts, jobs.

One interface (`Store`), several backends (SQLite now, PostgreSQL later). Rules every backend
keeps:
- tenants are isolated: another tenant's (or a deleted) dataset is `NotFound`, never a
  permission error, so existence is not revealed;
- private records and the partition secret are encrypted at rest;
- a reservation is checked against the cap and inserted in one serialized transaction, and is
  never released (a cancelled job's tokens were still computed on private data);
- deleting a dataset erases its records and secret but keeps its ledger and a tombstone;
- every event is zCDP, so the ledger composes by adding rho: a backend keeps the dataset's
  composed rho beside its ledger, updated with each reservation, and reads budgets from it
  (one row, whatever the ledger's length).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from mechanisms import Ledger, PrivacyEvent
from mechanisms.accounting import epsilon_of, largest_rho_within
from mechanisms.config import require

from .crypto import DecryptionError

# A ledger label is stored and returned by GetBudget: bounded so that no request (a histogram
# over many long labels) can make a budget response grow without limit.
MAX_LABEL_CHARS = 200
ID_ECHO_CHARS = 64  # an id echoed in an error message is cut to this many characters

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
UNFINISHED_JOB_STATES: tuple[str, ...] = ("queued", "running")


def bounded_label(label: str) -> str:
    """label itself if it is short enough, else its start and a hash of the whole (so two long
    labels with the same start stay distinct), MAX_LABEL_CHARS characters in all."""
    if len(label) <= MAX_LABEL_CHARS:
        return label
    suffix = "…[sha256:" + hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:16] + "]"
    return label[: MAX_LABEL_CHARS - len(suffix)] + suffix


def echo_id(value: str) -> str:
    """An id as error messages quote it: repr'd, and cut to ID_ECHO_CHARS characters, so a huge
    id sent by a client is never echoed back whole."""
    if len(value) <= ID_ECHO_CHARS:
        return repr(value)
    return repr(value[:ID_ECHO_CHARS]) + f"… ({len(value)} characters)"


# -------------------------------------------------------------------------------------------
# Shared by the backends: one validation, one encoding and one budget arithmetic, so that a
# dataset's budget reads the same whichever database holds it.

TERMINAL_JOB_STATES: tuple[str, ...] = tuple(s for s in JOB_STATES if s not in UNFINISHED_JOB_STATES)


def require_nonempty_str(value: object, field: str) -> None:
    require(isinstance(value, str) and value != "", field, "a non-empty string", value)


def check_events(label: str, events: Sequence[PrivacyEvent]) -> tuple[PrivacyEvent, ...]:
    """A reservation's label and events, validated; the events as a tuple."""
    require_nonempty_str(label, "label")
    events = tuple(events)
    for i, e in enumerate(events):
        require(isinstance(e, PrivacyEvent), f"events[{i}]", "a PrivacyEvent", type(e).__name__)
    return events


def events_to_json(events: Sequence[PrivacyEvent]) -> str:
    return json.dumps([e.to_dict() for e in events])


def events_from_json(text: str) -> tuple[PrivacyEvent, ...]:
    return tuple(PrivacyEvent.from_dict(d) for d in json.loads(text))


def events_rho(events: Iterable[PrivacyEvent]) -> float:
    """The composed rho of one entry's events (every event is zCDP: rho adds)."""
    return sum(e.rho for e in events)


@functools.lru_cache(maxsize=4096)
def rho_cap(epsilon_cap: float, delta: float) -> float:
    """The largest total rho whose accountant epsilon at delta stays within the cap."""
    return largest_rho_within(epsilon_cap, delta)


@functools.lru_cache(maxsize=4096)
def epsilon_of_rho(rho: float, delta: float) -> float:
    return epsilon_of([PrivacyEvent("zcdp", rho)], delta)


def remaining_epsilon(epsilon_cap: float, delta: float, rho_spent: float) -> float:
    """Epsilon of the largest new release that fits: the cap's rho minus the spent rho."""
    left = rho_cap(epsilon_cap, delta) - rho_spent
    return epsilon_of_rho(left, delta) if left > 0 else 0.0


def clean_record(r: object, i: int) -> dict:
    """Record i of an upload as stored: text, label and unit, validated."""
    require(isinstance(r, dict), f"records[{i}]", "a dict with text, label, unit", type(r).__name__)
    text = r.get("text")
    require(isinstance(text, str), f"records[{i}].text", "a string", text)
    out = {"text": text}
    for k in ("label", "unit"):
        v = r.get(k)
        require(v is None or (isinstance(v, (str, int)) and not isinstance(v, bool)), f"records[{i}].{k}", "a string, an integer or None", v)
        out[k] = v
    return out


class StoreError(Exception):
    """Base of the store's errors."""


class NotFound(StoreError):
    """No such object for this tenant (it may not exist, be deleted, or belong to another)."""


class Conflict(StoreError):
    """The request contradicts what is stored (duplicate name, different result at a seq...)."""


class BudgetExhausted(StoreError):
    """A reservation would take the dataset's ledger over its epsilon cap."""

    def __init__(self, remaining_epsilon: float, needed_epsilon: float, delta: float | None = None) -> None:
        self.remaining_epsilon = remaining_epsilon
        self.needed_epsilon = needed_epsilon
        self.delta = delta
        at = f" at delta {delta:g}" if delta is not None else ""
        super().__init__(
            f"privacy budget exhausted: the request needs epsilon {needed_epsilon:.4g}{at} "
            f"but only {remaining_epsilon:.4g} remains"
        )


@dataclass(frozen=True)
class DatasetInfo:
    id: str
    tenant: str
    name: str
    text_field: str
    label_field: str | None
    unit_field: str | None
    epsilon_cap: float
    delta: float
    declared_public_units: int | None
    records: int
    created_at: float


@dataclass(frozen=True)
class LedgerRow:
    id: int
    dataset_id: str
    label: str
    events: tuple[PrivacyEvent, ...]
    state: Literal["reserved"]
    created_at: float


@dataclass(frozen=True)
class ReleasedCount:
    """A DP count (or label histogram) released once per dataset and reused afterwards.

    charged: True when its events went to the ledger (ledger_id), False when the value is a
    count the uploader declared public."""

    dataset_id: str
    kind: str
    value: Any
    charged: bool
    ledger_id: int | None
    created_at: float


@dataclass(frozen=True)
class JobInfo:
    id: str
    tenant: str
    dataset_id: str
    request_json: str
    state: str
    progress: float
    message: str
    results: int
    created_at: float
    updated_at: float
    ledger_id: int | None = None  # the reservation that paid for the job
    nonce: bytes | None = field(default=None, repr=False)  # its randomness nonce (None: a job from before nonces)


@runtime_checkable
class Store(Protocol):
    # datasets
    def create_dataset(
        self,
        tenant: str,
        name: str,
        *,
        text_field: str,
        label_field: str | None,
        unit_field: str | None,
        epsilon_cap: float,
        delta: float,
        declared_public_units: int | None,
        records: Iterable[dict],
        abandoned: Callable[[], bool] | None = None,
    ) -> DatasetInfo: ...
    def get_dataset(self, tenant: str, dataset_id: str) -> DatasetInfo: ...
    def list_datasets(self, tenant: str) -> list[DatasetInfo]: ...
    def delete_dataset(self, tenant: str, dataset_id: str) -> None: ...
    def read_records(self, tenant: str, dataset_id: str) -> list[dict]: ...
    def partition_secret(self, tenant: str, dataset_id: str) -> bytes: ...

    # ledger
    def reserve(self, tenant: str, dataset_id: str, label: str, events: Sequence[PrivacyEvent]) -> LedgerRow: ...
    def ledger_rows(self, tenant: str, dataset_id: str) -> list[LedgerRow]: ...
    def ledger_row(self, tenant: str, dataset_id: str, ledger_id: int) -> LedgerRow: ...
    def ledger(self, tenant: str, dataset_id: str) -> Ledger: ...
    def composed_ledger(self, tenant: str, dataset_id: str) -> Ledger: ...
    def budget(self, tenant: str, dataset_id: str, recent: int = 0) -> dict: ...

    # released counts
    def released_count(self, tenant: str, dataset_id: str, kind: str) -> ReleasedCount | None: ...
    def save_released_count(
        self, tenant: str, dataset_id: str, kind: str, value: Any, events: Sequence[PrivacyEvent] = ()
    ) -> ReleasedCount: ...

    # jobs
    def create_job(self, tenant: str, dataset_id: str, request_json: str, ledger_id: int | None = None,
                   nonce: bytes | None = None) -> str: ...
    def update_job(self, job_id: str, state: str, progress: float | None = None, message: str | None = None) -> JobInfo: ...
    def append_result(self, job_id: str, seq: int, record_json: str) -> bool: ...
    def results(self, job_id: str, offset: int = 0, limit: int | None = None, tenant: str | None = None) -> list[str]: ...
    def get_job(self, job_id: str, tenant: str | None = None) -> JobInfo: ...
    def list_unfinished_jobs(self) -> list[JobInfo]: ...
    def claim_job(self, job_id: str, owner: str, ttl_s: float) -> bool: ...
    def renew_leases(self, owner: str, job_ids: Sequence[str], ttl_s: float) -> set[str]: ...
    def mark_group_started(self, job_id: str, group_id: int) -> bool: ...
    def ping(self) -> None: ...  # raises if the database cannot be reached (health checks)
    def started_groups(self, job_id: str) -> set[int]: ...


# Their messages are the database's or the store's own (table, constraint, file, "database is
# locked"), never a record, label or unit key: an operator needs them to act.
_TOLD = (sqlite3.Error, StoreError, DecryptionError, OSError)


def _told_types() -> tuple[type, ...]:
    """_TOLD, and psycopg's errors once the PostgreSQL store has loaded psycopg."""
    pg = sys.modules.get("psycopg")
    return (*_TOLD, pg.Error) if pg is not None else _TOLD


def _message(x: BaseException) -> str:
    """Its message; for a PostgreSQL error only the first line (the primary message): the
    DETAIL lines below it may quote a row's values (a key, a failing row)."""
    text = str(x)
    return text.split("\n", 1)[0] if type(x).__module__.startswith("psycopg") else text


def describe_internal(e: BaseException) -> str:
    """What the log says of an unexpected error: its type, and for a store or database error
    (or one caused by such an error) that error's message too. Other messages are left out:
    an engine's may name a group's shape."""
    told_types = _told_types()
    told = next((x for x in _chain(e) if isinstance(x, told_types)), None)
    if told is None:
        return type(e).__name__
    if told is e:
        return f"{type(e).__name__}: {_message(e)}"
    return f"{type(e).__name__}, caused by {type(told).__name__}: {_message(told)}"


def store_unreachable(e: BaseException) -> bool:
    """True when e (or its cause) says the database cannot be reached (a PostgreSQL connection
    lost or refused): the request may be retried elsewhere (gRPC UNAVAILABLE), nothing of it ran."""
    pg = sys.modules.get("psycopg")
    return pg is not None and any(isinstance(x, pg.OperationalError) for x in _chain(e))


def _chain(e: BaseException | None):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__
