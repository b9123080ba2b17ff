"""What a job asks for, declared once: each setting's type and limits (pydantic), its help, flag
and proto field (`declared.Setting`). `privtext generate` and `privtext plan` build their flags
from these declarations, the server reads GenerateRequest through them, and every entry point
validates with the same model. Every value is public; none may be derived from private records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mechanisms import DecodingConfig, GateConfig
from mechanisms import registry as mechanism_registry

from .declared import Setting

# The settings a DecodingConfig is made of (the planner's and the selector's input).
MECHANISM_FIELDS = (
    "mechanism", "partitions", "temperature", "top_k", "top_k_plus", "units_per_row", "gate_threshold", "gate_epsilon",
    "gate_max_private", "clip", "noise_multiplier", "row_slots",
)
# Private Evolution's settings (docs/private-evolution.md).
PE_FIELDS = ("method", "iterations", "pe_threshold", "pe_population")


def parse_label_counts(text: str) -> dict[str, int]:
    """'spam=20,ham=180' -> {'spam': 20, 'ham': 180}. The counts are public numbers, so a typo
    fails here, naming the setting, rather than being guessed at."""
    out: dict[str, int] = {}
    for part in text.split(","):
        label, sep, n = (s.strip() for s in part.rpartition("="))
        if not sep or not label or not n.isdigit():
            raise ValueError(f"label_counts must look like spam=20,ham=180 (counts >= 0), got {text!r}")
        if label in out:
            raise ValueError(f"label_counts: label {label!r} given twice")
        out[label] = int(n)
    return out


def parse_labels(text: str) -> tuple[str, ...]:
    """'spam,ham' -> ('spam', 'ham')."""
    return tuple(s.strip() for s in text.split(","))


def decoding_config(
    mechanism: str, partitions: int, temperature: float, top_k: int | None, top_k_plus: bool, units_per_row: int,
    gate_threshold: float | None, gate_epsilon: float, gate_max_private: int,
    clip: float | None = None, noise_multiplier: float | None = None, row_slots: int | None = None,
) -> DecodingConfig:
    """The DecodingConfig of flat settings; unset clip/noise keep DecodingConfig's defaults, to be
    solved from epsilon by the planner."""
    gate = None
    if gate_threshold is not None:
        gate = GateConfig(threshold=gate_threshold, epsilon=gate_epsilon, max_private_tokens=gate_max_private)
    fixed = {k: v for k, v in (("clip", clip), ("noise_multiplier", noise_multiplier)) if v is not None}
    return DecodingConfig(mechanism=mechanism, partitions=partitions, temperature=temperature, top_k=top_k, top_k_plus=top_k_plus,
                          units_per_row=units_per_row, row_slots=row_slots, gate=gate, **fixed)


class JobRequest(BaseModel):
    """What to generate and how: shared by `privtext generate`, `privtext plan` and the API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    records: Annotated[int, Setting("synthetic records wanted")] = Field(ge=1, le=1_000_000)
    max_tokens: Annotated[int, Setting("public maximum tokens per record (charged in full)")] = Field(ge=1, le=4096)
    epsilon: Annotated[float, Setting(
        "privacy budget of the job's generation (a DP unit count or label histogram is released once per dataset, "
        "charged on its own ledger entry)")] = Field(gt=0, allow_inf_nan=False)
    mechanism: Annotated[str, Setting("private token selection", choices=mechanism_registry.names)] = "em"
    partitions: Annotated[int, Setting("N, rows per group the average divides by", proto="settings.partitions")] = Field(
        default=8, ge=1, le=4096)
    temperature: Annotated[float, Setting("sampling temperature tau", proto="settings.temperature")] = Field(
        default=1.0, gt=0, allow_inf_nan=False)
    top_k: Annotated[int | None, Setting("public candidate set size; 0 = whole vocabulary", proto="settings.top_k",
                                         zero_is_none=True)] = Field(default=64, ge=1)
    top_k_plus: Annotated[bool, Setting(
        "em: widen the public top-k to every token within 2C of its k-th logit (top-k+); --no-top-k-plus keeps the public top-k",
        proto="settings.top_k_plus")] = True
    clip: Annotated[float | None, Setting(
        "fix the clip (em/amin) instead of solving it from epsilon; the job then refuses if it costs more")] = Field(
        default=None, gt=0, allow_inf_nan=False)
    noise_multiplier: Annotated[float | None, Setting("fix sigma (gaussian) instead of solving it")] = Field(
        default=None, gt=0, allow_inf_nan=False)
    units_per_row: Annotated[int, Setting("1 = one unit per row; k > 1 = few-shot layout, doubled sensitivity",
                                          proto="settings.units_per_row")] = Field(default=1, ge=1, le=64)
    row_slots: Annotated[int | None, Setting(
        "M, the public bound on a group's private rows (default: 3 x partitions); units colliding in a slot are left out",
        proto="settings.row_slots")] = Field(default=None, ge=1, le=4096)
    max_row_tokens: Annotated[int, Setting("every private row's prompt is cut to this many tokens, whatever its records",
                                           proto="settings.max_row_tokens")] = Field(default=512, ge=8, le=32768)
    gate_threshold: Annotated[float | None, Setting("enable the public-token gate with this TV-distance threshold",
                                                    proto="settings.gate.threshold")] = Field(default=None, gt=0, lt=1)
    gate_epsilon: Annotated[float, Setting("pure epsilon per above-threshold answer", proto="settings.gate.epsilon")] = Field(
        default=0.5, gt=0, allow_inf_nan=False)
    gate_max_private: Annotated[int, Setting("cap on private tokens per record with the gate",
                                             proto="settings.gate.max_private")] = Field(default=16, ge=1)
    labels: Annotated[tuple[str, ...] | None, Setting("labels to generate, comma-separated; records split by a DP histogram",
                                                      parse=parse_labels)] = None
    label_counts: Annotated[dict[str, int] | None, Setting("public records per label, e.g. spam=20,ham=180",
                                                           parse=parse_label_counts)] = None
    max_records_per_unit: Annotated[int, Setting("records of one unit shown in its row")] = Field(default=4, ge=1)
    max_record_chars: Annotated[int, Setting("characters of a record shown in a prompt")] = Field(default=500, ge=1)
    template: Annotated[str | None, Setting("prompt template: a TOML file, or a packaged one: default, sms-spam")] = None
    stop: Annotated[tuple[str, ...], Setting("record delimiter; may repeat", repeat=True)] = ()
    seed: Annotated[int | None, Setting(
        "replay: the same request, corpus and seed give the same output on this machine (the noise also depends on a local "
        "secret in PRIVTEXT_CONFIG_DIR; another request with the same seed gets independent noise)")] = None
    pii: Annotated[Literal["redact", "drop", "report", "off"], Setting(
        "PII filter on every record (presidio): redact, drop the record, report only, or off")] = "redact"
    # The generation method: private decoding (above), or Private Evolution (service/jobs/pe_job.py).
    method: Annotated[Literal["decode", "pe"], Setting(
        "decode: private decoding; pe: Private Evolution (public candidates, DP histogram of votes)")] = "decode"
    iterations: Annotated[int, Setting("pe: T, iterations, one DP histogram each, all charged", proto="pe.iterations")] = Field(default=3, ge=1, le=100)
    pe_threshold: Annotated[float, Setting("pe: H, noisy vote counts below it are zeroed", aliases=("--threshold",),
                                           proto="pe.threshold")] = Field(
        default=0.0, ge=0, allow_inf_nan=False)
    pe_population: Annotated[int, Setting("pe: candidates per label per iteration", proto="pe.population")] = Field(default=16, ge=1, le=100_000)

    @field_validator("mechanism")
    @classmethod
    def _mechanism(cls, v: str) -> str:
        mechanism_registry.get(v)  # ValueError: "mechanism must be one of em, amin, gaussian, got ..."
        return v

    @model_validator(mode="after")
    def _label_counts(self) -> JobRequest:
        if self.labels is not None and self.label_counts is not None:
            raise ValueError("give labels or label_counts, not both")
        if self.label_counts is not None:
            bad = {k: v for k, v in self.label_counts.items() if not isinstance(v, int) or v < 0}
            if bad:
                raise ValueError(f"label_counts must be integers >= 0, got {bad}")
            if sum(self.label_counts.values()) != self.records:
                raise ValueError(f"label_counts must sum to records ({self.records}), got {sum(self.label_counts.values())}")
        return self

    def wanted_labels(self) -> list[str] | None:
        """The public labels to generate, sorted; None without labels."""
        if self.label_counts:
            return sorted(self.label_counts)
        return sorted(set(self.labels)) if self.labels else None

    def decoding_config(self) -> DecodingConfig:
        return decoding_config(**{k: getattr(self, k) for k in MECHANISM_FIELDS})

    @property
    def fixed_config(self) -> bool:
        """True when the user fixed clip/noise: the cost is computed and checked, not solved."""
        return getattr(self, mechanism_registry.get(self.mechanism).calibration.parameter) is not None


class GenerateSpec(JobRequest):
    """A `privtext generate` job: a request plus the corpus file, its fields and the outputs."""

    input: Annotated[Path, Setting("the private corpus: .jsonl or .csv")]
    text_field: Annotated[str, Setting("the records' text field")] = "text"
    label_field: Annotated[str | None, Setting("generate label-conditioned records (labels must be declared)")] = None
    unit_field: Annotated[str | None, Setting("privacy unit key (e.g. user_id); default: each record is a unit")] = None
    delta: Annotated[float, Setting("must be <= 1/units")] = Field(gt=0, lt=1)
    local_ledger: Annotated[bool, Setting(
        "charge the run to the corpus's local ledger and refuse what its cap cannot pay; --no-local-ledger: this run's "
        "report alone states its epsilon")] = True
    epsilon_cap: Annotated[float | None, Setting(
        "this corpus's total budget across runs, fixed at its first run (default: 10); runs are charged to a ledger per "
        "corpus file in PRIVTEXT_DATA_DIR (default ~/.local/share/privtext)")] = Field(default=None, gt=0, allow_inf_nan=False)
    public_count: Annotated[int | None, Setting(
        "declare the unit count public (else a DP count is released and charged)")] = Field(default=None, ge=1)
    count_noise: Annotated[float, Setting("sigma of the DP unit count / label histogram")] = Field(default=10.0, gt=0)
    engine: Annotated[str, Setting("auto or transformers")] = "auto"
    model: Annotated[str | None, Setting("a local Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct)")] = None
    batch_rows: Annotated[int, Setting("rows decoded at once")] = Field(default=160, ge=2)
    out: Annotated[Path, Setting("synthetic records, JSONL (written as they finish)")]
    report: Annotated[Path | None, Setting("job report, JSON")] = None

    @model_validator(mode="after")
    def _labels(self) -> GenerateSpec:
        if (self.labels or self.label_counts) and not self.label_field:
            raise ValueError("labels and label_counts need label_field")
        if self.label_field and not (self.labels or self.label_counts):
            raise ValueError(
                "label_field needs the labels declared (they are public): label_counts (records per label, "
                "e.g. spam=20,ham=180) or labels (records split by a DP histogram)"
            )
        if self.public_count is not None and self.label_field:
            raise ValueError("public_count is for unlabelled corpora; with labels, per-label counts come from a DP histogram")
        return self
