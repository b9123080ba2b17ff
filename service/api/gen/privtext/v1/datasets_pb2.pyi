import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UploadRequest(_message.Message):
    __slots__ = ("spec", "record", "chunk")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec: DatasetSpec
    record: Record
    chunk: bytes
    def __init__(self, spec: _Optional[_Union[DatasetSpec, _Mapping]] = ..., record: _Optional[_Union[Record, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class DatasetSpec(_message.Message):
    __slots__ = ("name", "text_field", "label_field", "unit_field", "epsilon_cap", "delta", "declared_public_units", "format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_FIELD_NUMBER: _ClassVar[int]
    EPSILON_CAP_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DECLARED_PUBLIC_UNITS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    text_field: str
    label_field: str
    unit_field: str
    epsilon_cap: float
    delta: float
    declared_public_units: int
    format: str
    def __init__(self, name: _Optional[str] = ..., text_field: _Optional[str] = ..., label_field: _Optional[str] = ..., unit_field: _Optional[str] = ..., epsilon_cap: _Optional[float] = ..., delta: _Optional[float] = ..., declared_public_units: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("text", "label", "unit")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    text: str
    label: str
    unit: str
    def __init__(self, text: _Optional[str] = ..., label: _Optional[str] = ..., unit: _Optional[str] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "name", "fields", "epsilon_cap", "delta", "records", "units_source", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_CAP_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    UNITS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    fields: DatasetFields
    epsilon_cap: float
    delta: float
    records: int
    units_source: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., fields: _Optional[_Union[DatasetFields, _Mapping]] = ..., epsilon_cap: _Optional[float] = ..., delta: _Optional[float] = ..., records: _Optional[int] = ..., units_source: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DatasetFields(_message.Message):
    __slots__ = ("text_field", "label_field", "unit_field")
    TEXT_FIELD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_FIELD_NUMBER: _ClassVar[int]
    text_field: str
    label_field: str
    unit_field: str
    def __init__(self, text_field: _Optional[str] = ..., label_field: _Optional[str] = ..., unit_field: _Optional[str] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("epsilon_cap", "spent", "remaining", "delta", "entries", "entries_total")
    EPSILON_CAP_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    epsilon_cap: float
    spent: float
    remaining: float
    delta: float
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    entries_total: int
    def __init__(self, epsilon_cap: _Optional[float] = ..., spent: _Optional[float] = ..., remaining: _Optional[float] = ..., delta: _Optional[float] = ..., entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., entries_total: _Optional[int] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("label", "epsilon", "events", "created_at")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    label: str
    epsilon: float
    events: _containers.RepeatedCompositeFieldContainer[Event]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, label: _Optional[str] = ..., epsilon: _Optional[float] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "parameter", "count", "note")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    parameter: float
    count: int
    note: str
    def __init__(self, kind: _Optional[str] = ..., parameter: _Optional[float] = ..., count: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...
