"""Exceptions to gRPC status codes, with google.rpc details where a client can act on them.

One table: every servicer goes through `abort_for`. Messages of expected errors are written
for callers (they name the field and the limit, or what is left of the budget); anything
unexpected becomes INTERNAL with a generic message, because an engine's message may name a
group's shape and the API never forwards it.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from pydantic import ValidationError

from mechanisms import BudgetExceeded
from mechanisms.accounting import CalibrationError

from ..generation.corpus import CorpusError
from ..store.interface import BudgetExhausted, Conflict, NotFound, describe_internal, store_unreachable

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a servicer raises on purpose, with its status code."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def _status(code: grpc.StatusCode, message: str, *details) -> status_pb2.Status:
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)


def quota_failure(subject: str, description: str) -> error_details_pb2.QuotaFailure:
    return error_details_pb2.QuotaFailure(violations=[error_details_pb2.QuotaFailure.Violation(subject=subject, description=description)])


def bad_request(violations: list[tuple[str, str]]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
    ])


def status_for(e: BaseException, subject: str = "") -> status_pb2.Status:
    """The rich status for an exception (the table)."""
    if isinstance(e, ApiError):
        details = (bad_request([(e.field, e.message)]),) if e.field and e.code == grpc.StatusCode.INVALID_ARGUMENT else ()
        return _status(e.code, e.message, *details)
    if isinstance(e, BudgetExhausted):
        d = f"epsilon remaining {e.remaining_epsilon:.6g}" + (f" at delta {e.delta:g}" if e.delta else "") + f"; this request needs {e.needed_epsilon:.6g}"
        return _status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), quota_failure(subject, d))
    if isinstance(e, BudgetExceeded):
        left = e.ledger.remaining_epsilon()
        d = f"epsilon remaining {left:.6g} at delta {e.ledger.delta:g}; what fits: " + "; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in e.fits.items())
        return _status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), quota_failure(subject, d))
    if isinstance(e, NotFound):
        return _status(grpc.StatusCode.NOT_FOUND, str(e))
    if isinstance(e, Conflict):
        return _status(grpc.StatusCode.ALREADY_EXISTS if "named" in str(e) else grpc.StatusCode.FAILED_PRECONDITION, str(e))
    if isinstance(e, CalibrationError):
        return _status(grpc.StatusCode.FAILED_PRECONDITION, str(e))
    if isinstance(e, ValidationError):
        violations = [(".".join(str(p) for p in err["loc"]) or "request", err["msg"]) for err in e.errors()]
        text = "; ".join(f"{f}: {m}" for f, m in violations)
        return _status(grpc.StatusCode.INVALID_ARGUMENT, text, bad_request(violations))
    if isinstance(e, (ValueError, CorpusError)):
        return _status(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    if store_unreachable(e):  # nothing was charged or released: another server may take it
        log.error("store unreachable: %s", describe_internal(e))
        return _status(grpc.StatusCode.UNAVAILABLE, "the store is unreachable; try again, or another server")
    log.error("internal error: %s", describe_internal(e))
    return _status(grpc.StatusCode.INTERNAL, "internal error; the server log has the error type")


async def abort_for(context: grpc.aio.ServicerContext, e: BaseException, subject: str = "") -> None:
    await context.abort_with_status(rpc_status.to_status(status_for(e, subject)))
