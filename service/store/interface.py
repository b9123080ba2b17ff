"""The durable store behind the service: datasets, the privacy ledger, released counts, jobs.

One interface (`Store`), several backends (SQLite now, PostgreSQL later). Rules every backend
keeps:
- tenants are isolated: another tenant's (or a deleted) dataset is `NotFound`, never a
  permission error, so existence is not revealed;
- private records and the partition secret are encrypted at rest;
- a reservation is checked against the cap and inserted in one serialized transaction, and is
  never released (a cancelled job's tokens were still computed on private data);
- deleting a dataset erases its records and secret but keeps its ledger and a tombstone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from mechanisms import Ledger, PrivacyEvent

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
UNFINISHED_JOB_STATES: tuple[str, ...] = ("queued", "running")


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
    ) -> DatasetInfo: ...
    def get_dataset(self, tenant: str, dataset_id: str) -> DatasetInfo: ...
    def list_datasets(self, tenant: str) -> list[DatasetInfo]: ...
    def delete_dataset(self, tenant: str, dataset_id: str) -> None: ...
    def read_records(self, tenant: str, dataset_id: str) -> list[dict]: ...
    def partition_secret(self, tenant: str, dataset_id: str) -> bytes: ...

    # ledger
    def reserve(self, tenant: str, dataset_id: str, label: str, events: Sequence[PrivacyEvent]) -> LedgerRow: ...
    def ledger_rows(self, tenant: str, dataset_id: str) -> list[LedgerRow]: ...
    def ledger(self, tenant: str, dataset_id: str) -> Ledger: ...
    def budget(self, tenant: str, dataset_id: str) -> dict: ...

    # released counts
    def released_count(self, tenant: str, dataset_id: str, kind: str) -> ReleasedCount | None: ...
    def save_released_count(
        self, tenant: str, dataset_id: str, kind: str, value: Any, events: Sequence[PrivacyEvent] = ()
    ) -> ReleasedCount: ...

    # jobs
    def create_job(self, tenant: str, dataset_id: str, request_json: str, ledger_id: int | None = None) -> str: ...
    def update_job(self, job_id: str, state: str, progress: float | None = None, message: str | None = None) -> JobInfo: ...
    def append_result(self, job_id: str, seq: int, record_json: str) -> bool: ...
    def results(self, job_id: str, offset: int = 0, limit: int | None = None, tenant: str | None = None) -> list[str]: ...
    def get_job(self, job_id: str, tenant: str | None = None) -> JobInfo: ...
    def list_unfinished_jobs(self) -> list[JobInfo]: ...
    def mark_group_started(self, job_id: str, group_id: int) -> None: ...
    def started_groups(self, job_id: str) -> set[int]: ...
