"""The client's exceptions: one class per gRPC status the server uses, made from a grpc.RpcError
in one place (`error_from_rpc`), so applications catch `NotFound` or `ResourceExhausted` rather
than compare status codes. grpc is imported only when an error is converted: this module is
loaded at every `privtext` start, where the `service` extra may be missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """A `google.rpc.BadRequest` entry: which request field is wrong, and why."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """A `google.rpc.QuotaFailure` entry: which budget ran out (`datasets/<id>`), and what is left."""

    subject: str
    description: str


class PrivtextError(Exception):
    """A call the server refused or could not complete. `code` is the gRPC status code's name
    (e.g. "NOT_FOUND"), `details` the server's message; the violations are the rich status
    details, which say what to change better than the message alone."""

    def __init__(self, code: str, details: str, field_violations: tuple[FieldViolation, ...] = (),
                 quota_violations: tuple[QuotaViolation, ...] = ()):
        super().__init__(code, details, field_violations, quota_violations)  # all of them: it pickles
        self.code, self.details = code, details
        self.field_violations, self.quota_violations = field_violations, quota_violations

    def __str__(self) -> str:
        return f"{self.code}: {self.details}"


class InvalidArgument(PrivtextError):
    """A request or record the server refuses; `fields` names the request fields at fault."""

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(v.field for v in self.field_violations)


class NotFound(PrivtextError):
    """No such dataset or job, or another tenant's (the server does not tell them apart)."""


class AlreadyExists(PrivtextError):
    """A dataset name already taken."""


class Unauthenticated(PrivtextError):
    """A missing or unknown API key."""


class PermissionDenied(PrivtextError):
    """A key the server knows but that may not make this call."""


_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|nan)"


class ResourceExhausted(PrivtextError):
    """The dataset's epsilon budget cannot cover the request; refused before any record, nothing
    charged. What the quota details state is parsed: `remaining_epsilon` (what one more request
    could spend, at `delta`), `needed_epsilon` and `fits` (e.g. {"max_tokens": 5,
    "max_epsilon": 7.511}: the largest settings that would fit); None or empty when not given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        text = " ".join(v.description for v in self.quota_violations)

        def number(pattern: str) -> float | None:
            m = re.search(pattern + " " + _NUMBER, text)
            return float(m.group(1)) if m else None

        self.remaining_epsilon = number("epsilon remaining")
        self.delta = number(r"epsilon remaining \S+ at delta")
        self.needed_epsilon = number("this request needs")
        fits: dict[str, int | float] = {}
        if m := re.search(r"what fits: (.*)", text):
            for part in m.group(1).split(";"):
                if pair := re.fullmatch(r"\s*(\w+) " + _NUMBER + r"\s*", part):
                    value = pair.group(2)
                    fits[pair.group(1)] = int(value) if value.lstrip("+-").isdigit() else float(value)
        self.fits = fits


class FailedPrecondition(PrivtextError):
    """A request the dataset's state or the mechanism's calibration cannot meet (e.g. an epsilon
    too small for max_tokens, or deleting a dataset with unfinished jobs)."""


class Aborted(PrivtextError):
    """The job whose results were asked for failed."""


class OutOfRange(PrivtextError):
    """A results offset beyond the job's records."""


class Cancelled(PrivtextError):
    """The call or the job was cancelled."""


class DeadlineExceeded(PrivtextError):
    """The client's timeout passed before the call ended."""


class Unavailable(PrivtextError):
    """The server cannot be reached (or not over this transport), or its store cannot; retryable."""


class Internal(PrivtextError):
    """An unexpected server error; its message is generic by design, the server log has the type."""


ERRORS: dict[str, type[PrivtextError]] = {
    "INVALID_ARGUMENT": InvalidArgument, "NOT_FOUND": NotFound, "ALREADY_EXISTS": AlreadyExists,
    "UNAUTHENTICATED": Unauthenticated, "PERMISSION_DENIED": PermissionDenied, "RESOURCE_EXHAUSTED": ResourceExhausted,
    "FAILED_PRECONDITION": FailedPrecondition, "ABORTED": Aborted, "OUT_OF_RANGE": OutOfRange, "CANCELLED": Cancelled,
    "DEADLINE_EXCEEDED": DeadlineExceeded, "UNAVAILABLE": Unavailable, "INTERNAL": Internal,
}


def error_from_rpc(err: Exception) -> PrivtextError:
    """The typed error of a failed call: the class of its status code (PrivtextError for a code
    without one), with the BadRequest and QuotaFailure details. Details whose code or message
    disagree with the call's are dropped, not trusted."""
    from google.rpc import error_details_pb2 as ed
    from grpc_status import rpc_status

    code = err.code() if hasattr(err, "code") else None
    if code is None:  # an RpcError that is not a finished call
        return PrivtextError("UNKNOWN", str(err))
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        status = None
    fields: list[FieldViolation] = []
    quotas: list[QuotaViolation] = []
    for detail in status.details if status else ():
        if detail.Is(ed.QuotaFailure.DESCRIPTOR):
            (qf := ed.QuotaFailure()).ParseFromString(detail.value)
            quotas += [QuotaViolation(v.subject, v.description) for v in qf.violations]
        elif detail.Is(ed.BadRequest.DESCRIPTOR):
            (br := ed.BadRequest()).ParseFromString(detail.value)
            fields += [FieldViolation(v.field, v.description) for v in br.field_violations]
    return ERRORS.get(code.name, PrivtextError)(code.name, err.details() or "", tuple(fields), tuple(quotas))


@contextmanager
def rpc_errors() -> Iterator[None]:
    """Raise the typed error for any grpc.RpcError inside the block (the one place they are mapped)."""
    import grpc

    try:
        yield
    except grpc.RpcError as err:
        raise error_from_rpc(err) from err
