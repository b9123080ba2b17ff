import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_DECODE: _ClassVar[Method]
    METHOD_PE: _ClassVar[Method]

class Mechanism(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MECHANISM_UNSPECIFIED: _ClassVar[Mechanism]
    MECHANISM_EM: _ClassVar[Mechanism]
    MECHANISM_AMIN: _ClassVar[Mechanism]
    MECHANISM_GAUSSIAN: _ClassVar[Mechanism]

class PiiPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PII_POLICY_REDACT: _ClassVar[PiiPolicy]
    PII_POLICY_DROP: _ClassVar[PiiPolicy]
    PII_POLICY_REPORT: _ClassVar[PiiPolicy]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
METHOD_UNSPECIFIED: Method
METHOD_DECODE: Method
METHOD_PE: Method
MECHANISM_UNSPECIFIED: Mechanism
MECHANISM_EM: Mechanism
MECHANISM_AMIN: Mechanism
MECHANISM_GAUSSIAN: Mechanism
PII_POLICY_REDACT: PiiPolicy
PII_POLICY_DROP: PiiPolicy
PII_POLICY_REPORT: PiiPolicy
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class PeSettings(_message.Message):
    __slots__ = ("iterations", "threshold", "population", "sigma")
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    POPULATION_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    iterations: int
    threshold: float
    population: int
    sigma: float
    def __init__(self, iterations: _Optional[int] = ..., threshold: _Optional[float] = ..., population: _Optional[int] = ..., sigma: _Optional[float] = ...) -> None: ...

class GateSettings(_message.Message):
    __slots__ = ("threshold", "epsilon", "max_private")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    MAX_PRIVATE_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    epsilon: float
    max_private: int
    def __init__(self, threshold: _Optional[float] = ..., epsilon: _Optional[float] = ..., max_private: _Optional[int] = ...) -> None: ...

class MechanismSettings(_message.Message):
    __slots__ = ("partitions", "temperature", "top_k", "units_per_row", "gate", "top_k_plus", "row_slots", "max_row_tokens")
    PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    UNITS_PER_ROW_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_PLUS_FIELD_NUMBER: _ClassVar[int]
    ROW_SLOTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    partitions: int
    temperature: float
    top_k: int
    units_per_row: int
    gate: GateSettings
    top_k_plus: bool
    row_slots: int
    max_row_tokens: int
    def __init__(self, partitions: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., units_per_row: _Optional[int] = ..., gate: _Optional[_Union[GateSettings, _Mapping]] = ..., top_k_plus: _Optional[bool] = ..., row_slots: _Optional[int] = ..., max_row_tokens: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("dataset_id", "records", "max_tokens", "epsilon", "preset", "mechanism", "settings", "label_counts", "labels", "pii_policy", "seed", "stop", "mechanism_name", "method", "pe")
    class LabelCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    LABEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PII_POLICY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PE_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    records: int
    max_tokens: int
    epsilon: float
    preset: str
    mechanism: Mechanism
    settings: MechanismSettings
    label_counts: _containers.ScalarMap[str, int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    pii_policy: PiiPolicy
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    mechanism_name: str
    method: Method
    pe: PeSettings
    def __init__(self, dataset_id: _Optional[str] = ..., records: _Optional[int] = ..., max_tokens: _Optional[int] = ..., epsilon: _Optional[float] = ..., preset: _Optional[str] = ..., mechanism: _Optional[_Union[Mechanism, str]] = ..., settings: _Optional[_Union[MechanismSettings, _Mapping]] = ..., label_counts: _Optional[_Mapping[str, int]] = ..., labels: _Optional[_Iterable[str]] = ..., pii_policy: _Optional[_Union[PiiPolicy, str]] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., mechanism_name: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., pe: _Optional[_Union[PeSettings, _Mapping]] = ...) -> None: ...

class PiiFinding(_message.Message):
    __slots__ = ("entity_type", "count")
    ENTITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    entity_type: str
    count: int
    def __init__(self, entity_type: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class SyntheticRecord(_message.Message):
    __slots__ = ("index", "text", "label", "tokens", "finish_reason", "findings")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    label: str
    tokens: int
    finish_reason: str
    findings: _containers.RepeatedCompositeFieldContainer[PiiFinding]
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., label: _Optional[str] = ..., tokens: _Optional[int] = ..., finish_reason: _Optional[str] = ..., findings: _Optional[_Iterable[_Union[PiiFinding, _Mapping]]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "dataset_id", "state", "records_done", "records_total", "epsilon_reserved", "epsilon_spent", "error", "created_at", "updated_at", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_DONE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EPSILON_RESERVED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    dataset_id: str
    state: JobState
    records_done: int
    records_total: int
    epsilon_reserved: float
    epsilon_spent: float
    error: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., records_done: _Optional[int] = ..., records_total: _Optional[int] = ..., epsilon_reserved: _Optional[float] = ..., epsilon_spent: _Optional[float] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class StreamJobResultsRequest(_message.Message):
    __slots__ = ("id", "offset")
    ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    id: str
    offset: int
    def __init__(self, id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class SelectCandidatesRequest(_message.Message):
    __slots__ = ("dataset_id", "candidates", "candidate_labels", "epsilon", "sigma", "threshold", "top")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_LABELS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    candidates: _containers.RepeatedScalarFieldContainer[str]
    candidate_labels: _containers.RepeatedScalarFieldContainer[str]
    epsilon: float
    sigma: float
    threshold: float
    top: int
    def __init__(self, dataset_id: _Optional[str] = ..., candidates: _Optional[_Iterable[str]] = ..., candidate_labels: _Optional[_Iterable[str]] = ..., epsilon: _Optional[float] = ..., sigma: _Optional[float] = ..., threshold: _Optional[float] = ..., top: _Optional[int] = ...) -> None: ...

class SelectedCandidate(_message.Message):
    __slots__ = ("index", "text", "label", "noisy_count")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NOISY_COUNT_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    label: str
    noisy_count: float
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., label: _Optional[str] = ..., noisy_count: _Optional[float] = ...) -> None: ...

class SelectCandidatesResponse(_message.Message):
    __slots__ = ("selected", "epsilon", "sigma", "fallback")
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    selected: _containers.RepeatedCompositeFieldContainer[SelectedCandidate]
    epsilon: float
    sigma: float
    fallback: bool
    def __init__(self, selected: _Optional[_Iterable[_Union[SelectedCandidate, _Mapping]]] = ..., epsilon: _Optional[float] = ..., sigma: _Optional[float] = ..., fallback: _Optional[bool] = ...) -> None: ...
