"""privtext's Python client (docs/client.md):

    from service.client import Client

    with Client("127.0.0.1:50051", api_key=key) as c:
        ds = c.upload("sms.jsonl", name="sms", epsilon_cap=8, delta=1e-4)
        for record in c.generate(ds.id, records=2, max_tokens=16, epsilon=1):
            print(record.text)

`cli.py` is the `privtext client` command built on it. Importing this package loads neither
grpc nor pydantic (the command is registered at every `privtext` start).
"""

from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    PrivtextError,
    QuotaViolation,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .library import API_KEY_HEADER, Client, generate_request
from .models import Budget, Dataset, Job, JobState, LedgerEntry, Record

__all__ = [
    "API_KEY_HEADER", "Aborted", "AlreadyExists", "Budget", "Cancelled", "Client", "Dataset", "DeadlineExceeded",
    "FailedPrecondition", "FieldViolation", "Internal", "InvalidArgument", "Job", "JobState", "LedgerEntry", "NotFound",
    "OutOfRange", "PermissionDenied", "PrivtextError", "QuotaViolation", "Record", "ResourceExhausted", "Unauthenticated",
    "Unavailable", "generate_request",
]
