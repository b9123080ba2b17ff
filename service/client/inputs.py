"""The client's arguments, checked before anything is sent: types, what the wire can carry
(int32/int64 ranges) and how the arguments combine, each error naming the argument. Values
against limits (max_tokens, the epsilon bounds, label lengths) are the server's to check: they
are its settings, and its INVALID_ARGUMENT names the field. Imported lazily by the library, so
`privtext` starts without loading pydantic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

Int32 = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
Float = Annotated[float, Field(strict=True)]  # an int is accepted, a str or a bool is not

M = TypeVar("M", bound=BaseModel)


class Arguments(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class UploadArguments(Arguments):
    name: StrictStr
    text_field: StrictStr = "text"
    label_field: StrictStr | None = None
    unit_field: StrictStr | None = None
    epsilon_cap: Float
    delta: Float
    declared_public_units: Int64 | None = None
    format: Literal["jsonl", "csv"] | None = None


class GenerateArguments(Arguments):
    dataset_id: StrictStr
    records: Int32 | None = None
    max_tokens: Int32
    epsilon: Float | None = None
    preset: StrictStr | None = None
    mechanism: StrictStr | None = None
    labels: Sequence[StrictStr] | None = None
    label_counts: Mapping[StrictStr, Int32] | None = None
    pii: Literal["redact", "drop", "report"] | None = None
    stop: Sequence[StrictStr] | None = None
    partitions: Int32 | None = None
    temperature: Float | None = None
    top_k: Int32 | None = None
    top_k_plus: StrictBool | None = None
    units_per_row: Int32 | None = None
    row_slots: Int32 | None = None
    max_row_tokens: Int32 | None = None
    gate_threshold: Float | None = None
    gate_epsilon: Float | None = None
    gate_max_private: Int32 | None = None
    seed: Int64 | None = None
    method: Literal["decode", "pe"] | None = None
    iterations: Int32 | None = None
    pe_threshold: Float | None = None
    pe_population: Int32 | None = None

    @model_validator(mode="after")
    def _combined(self) -> GenerateArguments:
        if (self.epsilon is None) == (self.preset is None):
            raise ValueError("give exactly one of epsilon and preset")
        if self.labels is not None and self.label_counts is not None:
            raise ValueError("give labels or label_counts, not both")
        if self.records is None and not self.label_counts:
            raise ValueError("records is required unless label_counts is given")
        return self


def checked(model: type[M], **arguments) -> M:
    """`model(**arguments)`, or a ValueError whose one line names each wrong argument."""
    try:
        return model(**arguments)
    except ValidationError as e:
        problems: dict[str, str] = {}  # one line per argument (a union reports each of its branches)
        for err in e.errors():
            name = ".".join(str(x) for x in err["loc"])
            message = "unexpected argument" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            if name and err["type"] not in ("extra_forbidden", "missing"):
                message += f", got {_shown(err['input'])}"
            problems.setdefault(name, f"{name}: {message}" if name else message)
        raise ValueError("; ".join(problems.values())) from None


def _shown(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
