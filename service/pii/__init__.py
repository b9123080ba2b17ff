"""PII filtering of generated records (post-processing: no budget spent, no guarantee by itself)."""

from service.pii.filter import (
    DEFAULT_ENTITIES,
    POLICIES,
    FilteredRecord,
    PiiFilter,
    PiiFinding,
    Policy,
    get_filter,
)

__all__ = [
    "DEFAULT_ENTITIES",
    "POLICIES",
    "FilteredRecord",
    "PiiFilter",
    "PiiFinding",
    "Policy",
    "get_filter",
]
