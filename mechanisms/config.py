"""DecodingConfig: every public setting of one private decoding run, validated on construction.

Everything here is public by definition: the values decide truncation, divisors and costs, so
none of them may be computed from private data (see docs/privacy/analysis.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .registry import NAMES

DEFAULT_SLOTS_PER_PARTITION = 3  # row_slots = 3N unless set
MECHANISMS: Sequence[str] = NAMES  # the registry's names (mechanisms.registry), read live


def require(ok: bool, field: str, limit: str, value: object) -> None:
    """Raise the project's standard ValueError: it names the field, the limit and the value."""
    if not ok:
        raise ValueError(f"{field} must be {limit}, got {value!r}")


def _finite_positive(value: float, field: str) -> None:
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
        field,
        "a finite number > 0",
        value,
    )


def _int_at_least(value: int, lo: int, field: str) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= lo, field, f"an integer >= {lo}", value)


@dataclass(frozen=True)
class GateConfig:
    """Public-token gate (sparse vector technique, Amin et al. 2024).

    Each step a noisy test asks whether the private aggregate is far from the public row's
    distribution. Below the noisy threshold the public row's token is emitted for free; above
    it a private token is selected and paid for. `max_private_tokens` (r) is fixed in advance:
    a group halts after r private tokens, and r is what the planner charges.
    """

    threshold: float = 0.3  # on the total-variation distance, in (0, 1)
    epsilon: float = 0.5  # pure epsilon of one AboveThreshold instance (one private token)
    max_private_tokens: int = 16

    def __post_init__(self) -> None:
        require(
            isinstance(self.threshold, (int, float)) and 0 < self.threshold < 1,
            "gate.threshold",
            "in (0, 1) (a total-variation distance)",
            self.threshold,
        )
        _finite_positive(self.epsilon, "gate.epsilon")
        _int_at_least(self.max_private_tokens, 1, "gate.max_private_tokens")


@dataclass(frozen=True)
class DecodingConfig:
    """Public settings of private decoding.

    mechanism: a registered name (mechanisms.registry): "em" (InvisibleInk difference clipping),
        "amin" (Amin et al. max-shift clipping) or "gaussian" (Tang et al. noisy argmax) built in.
    partitions: N, the public number of rows a group's average divides by.
    temperature: tau of the sampling softmax (em, amin) and of each row's distribution
        (gaussian, gate).
    clip: C (em) or c (amin), the clipping bound on logits.
    noise_multiplier: sigma of the Gaussian noise added to the summed probability vectors
        (gaussian); the default layout's L2 sensitivity is 1, so sigma is also the multiplier.
    top_k: size of the candidate set, chosen from the public row's logits only (None: whole
        vocabulary). em widens it to top-k+ (every token within 2C of the public k-th logit).
    top_k_plus: em only. True: the top-k+ widening above (InvisibleInk); False: em samples over
        the public top-k itself, as amin and gaussian do. Either set is public and costs the same;
        the widening grows with C (hundreds of tokens at C ~ 1, thousands at C ~ 3), which adds
        the public row's tail to every step (docs/eval/candidates).
    units_per_row: 1 (default layout, one unit per row) or k > 1 (few-shot layout: up to k
        units in each of N fixed slots; a removed unit changes a row, so sensitivity doubles).
    row_slots: default layout only: M, the public bound on a group's private rows (None: 3N).
        Each unit hashes to one of its group's M slots; a slot holding two or more units keeps
        none of them. Adding a unit then adds its own row (an empty slot) or removes exactly one
        other (the one it collides with), never both, so the sensitivity stays one row, and no
        group ever has more than M rows, whatever the data: batch admission, memory and whether a
        job fits the engine are decided by M, a public number. About exp(-n_g/M) of the units
        keep a row (72% at the default, n_g ~ N units per group).
    gate: optional public-token gate.
    """

    mechanism: str = "em"
    partitions: int = 8
    temperature: float = 1.0
    clip: float = 1.0
    noise_multiplier: float = 5.0
    top_k: int | None = 64
    top_k_plus: bool = True
    units_per_row: int = 1
    row_slots: int | None = None
    gate: GateConfig | None = None

    def __post_init__(self) -> None:
        require(self.mechanism in MECHANISMS, "mechanism", f"one of {', '.join(MECHANISMS)}", self.mechanism)
        _int_at_least(self.partitions, 1, "partitions")
        _finite_positive(self.temperature, "temperature")
        _finite_positive(self.clip, "clip")
        _finite_positive(self.noise_multiplier, "noise_multiplier")
        if self.top_k is not None:
            _int_at_least(self.top_k, 1, "top_k")
        require(isinstance(self.top_k_plus, bool), "top_k_plus", "True or False", self.top_k_plus)
        _int_at_least(self.units_per_row, 1, "units_per_row")
        if self.row_slots is not None:
            _int_at_least(self.row_slots, 1, "row_slots")
            require(self.units_per_row == 1, "row_slots", "unset with units_per_row > 1 (the few-shot layout has N slots)", self.row_slots)
        require(self.gate is None or isinstance(self.gate, GateConfig), "gate", "a GateConfig or None", self.gate)

    @property
    def max_rows(self) -> int:
        """The most private rows any group can have: M slots (default layout) or N (few-shot)."""
        if self.units_per_row > 1:
            return self.partitions
        return self.row_slots if self.row_slots is not None else DEFAULT_SLOTS_PER_PARTITION * self.partitions

    def replace(self, **changes: object) -> DecodingConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DecodingConfig:
        data = dict(data)
        gate = data.pop("gate", None)
        return cls(**data, gate=GateConfig(**gate) if gate is not None else None)
