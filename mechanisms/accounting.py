"""Privacy accounting: immutable events, a ledger derived from them, and calibration.

As in dp-accounting, events are immutable descriptions of what was released; the epsilon of a
set of events is computed by dp-accounting's RdpAccountant (never by a home-made composition).
Every event privtext charges is zCDP: `ZCDpEvent(rho)` for em/amin/gate and
`GaussianDpEvent(sigma/Delta)` for the Gaussian noisy argmax and the DP counts (rho =
1/(2 sigma^2) after scaling; each mechanism names its event, Mechanism.selection_event), so
their RDP curves are all linear in the order alpha and the accountant's epsilon is the
(eps, delta) conversion of the summed rho, evaluated on a finite grid of orders.
`epsilon_from_rho` gives the exact continuous optimum of that conversion; the accountant's
figure is never below it (tests check both directions).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import dp_accounting
import numpy as np
from dp_accounting import rdp

from .config import DecodingConfig, require
from .costs import charged_tokens, rho_gate, rho_per_token
from .registry import get

# Dense RDP orders: the conversion's optimal alpha is 1 + O(sqrt(ln(1/delta)/rho)), which for
# the budgets we serve lies between ~1.5 and ~10^4; this grid keeps the accountant within 0.1%
# of the continuous optimum there.
ORDERS: tuple[float, ...] = tuple(
    float(a)
    for a in np.unique(
        np.concatenate([np.linspace(1.01, 4.0, 300), np.linspace(4.0, 64.0, 600), np.geomspace(64.0, 1e6, 400)])
    )
)


def _check_delta(delta: float) -> None:
    require(isinstance(delta, (int, float)) and 0 < delta < 1, "delta", "in (0, 1)", delta)


def _check_epsilon(epsilon: float) -> None:
    require(
        isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0, "epsilon", "a finite number > 0", epsilon
    )


def _cks_epsilon(rho: float, delta: float, alpha: np.ndarray) -> np.ndarray:
    """Canonne, Kamath & Steinke 2020, Prop. 12, for rho-zCDP at order alpha > 1."""
    return rho * alpha + (np.log(1.0 / delta) + (alpha - 1.0) * np.log1p(-1.0 / alpha) - np.log(alpha)) / (alpha - 1.0)


def epsilon_from_rho(rho: float, delta: float) -> float:
    """Tight (epsilon, delta) of rho-zCDP: min over alpha > 1 of the CKS 2020 bound.

    eps = rho*alpha + (ln(1/delta) + (alpha-1) ln(1-1/alpha) - ln(alpha)) / (alpha-1).
    It gives 30-50% more tokens than the classic eps = rho + 2 sqrt(rho ln(1/delta)).
    """
    require(isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 0, "rho", "a finite number >= 0", rho)
    _check_delta(delta)
    if rho == 0:
        return 0.0
    # The bound is smooth and unimodal in log(alpha - 1): coarse grid, then golden-section.
    logs = np.linspace(-12.0, 16.0, 2000)
    vals = _cks_epsilon(rho, delta, 1.0 + np.exp(logs))
    i = int(np.argmin(vals))
    lo, hi = logs[max(i - 1, 0)], logs[min(i + 1, len(logs) - 1)]
    f = lambda t: float(_cks_epsilon(rho, delta, np.array(1.0 + math.exp(t))))  # noqa: E731
    phi = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(80):
        a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
        if f(a) < f(b):
            hi = b
        else:
            lo = a
    return max(0.0, min(f((lo + hi) / 2.0), float(vals[i])))


def loose_epsilon_from_rho(rho: float, delta: float) -> float:
    """The classic conversion eps = rho + 2 sqrt(rho ln(1/delta)) (Bun & Steinke 2016)."""
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class PrivacyEvent:
    """One release, immutable. kind "zcdp": `parameter` is rho. kind "gaussian": `parameter` is
    the noise multiplier (sigma / L2 sensitivity). `count`: the release is repeated that often
    (sequential composition)."""

    kind: Literal["zcdp", "gaussian"]
    parameter: float
    count: int = 1
    note: str = ""

    def __post_init__(self) -> None:
        require(self.kind in ("zcdp", "gaussian"), "event.kind", "zcdp or gaussian", self.kind)
        require(
            isinstance(self.parameter, (int, float)) and math.isfinite(self.parameter) and self.parameter >= 0
            and (self.kind == "zcdp" or self.parameter > 0),
            "event.parameter", "a finite number (> 0 for gaussian, >= 0 for zcdp)", self.parameter,
        )
        require(isinstance(self.count, int) and self.count >= 0, "event.count", "an integer >= 0", self.count)

    @property
    def rho(self) -> float:
        """Total zCDP of the event (both kinds are zCDP)."""
        one = self.parameter if self.kind == "zcdp" else 1.0 / (2.0 * self.parameter**2)
        return self.count * one

    def dp_event(self) -> dp_accounting.DpEvent:
        one = dp_accounting.ZCDpEvent(self.parameter) if self.kind == "zcdp" else dp_accounting.GaussianDpEvent(self.parameter)
        return dp_accounting.SelfComposedDpEvent(one, self.count)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "parameter": self.parameter, "count": self.count, "note": self.note}

    @classmethod
    def from_dict(cls, d: dict) -> PrivacyEvent:
        return cls(kind=d["kind"], parameter=float(d["parameter"]), count=int(d["count"]), note=d.get("note", ""))


def epsilon_of(events: Iterable[PrivacyEvent], delta: float) -> float:
    """Epsilon at delta of the sequential composition of events (dp-accounting RdpAccountant)."""
    _check_delta(delta)
    events = [e for e in events if e.count > 0 and e.rho > 0]
    if not events:
        return 0.0
    acc = rdp.RdpAccountant(orders=ORDERS)
    acc.compose(dp_accounting.ComposedDpEvent([e.dp_event() for e in events]))
    return float(acc.get_epsilon(delta))


def largest_rho_within(epsilon: float, delta: float, base: Sequence[PrivacyEvent] = ()) -> float:
    """Largest extra rho such that base + ZCDp(rho) stays within epsilon (0 if none fits)."""
    if epsilon_of(base, delta) > epsilon:
        return 0.0
    lo, hi = 0.0, max(epsilon, 1.0)
    while epsilon_of([*base, PrivacyEvent("zcdp", hi)], delta) <= epsilon:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if epsilon_of([*base, PrivacyEvent("zcdp", mid)], delta) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return lo


def rho_from_epsilon(epsilon: float, delta: float) -> float:
    """Largest total rho whose accountant epsilon at delta is <= epsilon."""
    _check_epsilon(epsilon)
    _check_delta(delta)
    return largest_rho_within(epsilon, delta)


# ---------------------------------------------------------------------------------------------
# Mechanism charges and calibration


def generation_events(cfg: DecodingConfig, max_tokens: int, rounds: int = 1) -> tuple[PrivacyEvent, ...]:
    """Events charged for `rounds` sequential rounds of records of at most max_tokens tokens.

    Groups in a round hold disjoint units, so a round costs what one record costs (parallel
    composition); rounds compose sequentially. Charged: the declared worst case.
    """
    require(isinstance(max_tokens, int) and max_tokens >= 1, "max_tokens", "an integer >= 1", max_tokens)
    require(isinstance(rounds, int) and rounds >= 0, "rounds", "an integer >= 0", rounds)
    n = rounds * charged_tokens(cfg, max_tokens)
    kind, parameter, what = get(cfg.mechanism).selection_event(cfg, rho_per_token(cfg) - rho_gate(cfg))
    events = [PrivacyEvent(kind, parameter, n, f"{what}, {n} private tokens")]
    if cfg.gate is not None:
        events.append(PrivacyEvent("zcdp", rho_gate(cfg), n, f"public-token gate (SVT), {n} above-threshold answers"))
    return tuple(events)


class CalibrationError(ValueError):
    """The requested epsilon cannot pay for the requested tokens with these settings."""


def calibrate(
    cfg: DecodingConfig,
    epsilon: float,
    delta: float,
    max_tokens: int,
    rounds: int = 1,
    other_events: Sequence[PrivacyEvent] = (),
) -> DecodingConfig:
    """cfg with the mechanism's calibration parameter (Mechanism.calibration: clip for em and
    amin, noise_multiplier for gaussian) solved so that `rounds` rounds of max_tokens tokens,
    composed with other_events, cost at most (epsilon, delta).

    The per-token selection budget rho_sel = rho_total / n - rho_gate is turned into the
    parameter by the mechanism's closed form (Mechanism.solve; em/amin: C = N tau sqrt(2 rho_sel)
    / f, gaussian: sigma = sqrt(f / (2 rho_sel))). The solution is checked against the
    accountant before it is returned, nudged in the more private direction if needed.
    """
    _check_epsilon(epsilon)
    _check_delta(delta)
    require(isinstance(max_tokens, int) and max_tokens >= 1, "max_tokens", "an integer >= 1", max_tokens)
    require(isinstance(rounds, int) and rounds >= 1, "rounds", "an integer >= 1", rounds)
    n = rounds * charged_tokens(cfg, max_tokens)
    rho_total = largest_rho_within(epsilon, delta, other_events)
    rho_sel = rho_total / n - rho_gate(cfg)
    if rho_sel <= 0:
        raise CalibrationError(
            f"epsilon {epsilon} at delta {delta} cannot cover {n} private tokens: the gate alone costs "
            f"rho {rho_gate(cfg) * n:.4g} of the {rho_total:.4g} available; lower gate.epsilon or max tokens"
        )
    mechanism = get(cfg.mechanism)
    param = mechanism.calibration.parameter
    solved = cfg.replace(**{param: mechanism.solve(cfg, rho_sel)})
    # Floating point can put the solution a hair over; move it one part in 10^9 (down for a clip,
    # up for a noise multiplier) until it fits.
    nudge = (1 - 1e-9) if mechanism.calibration.more_private == "smaller" else (1 + 1e-9)
    for _ in range(8):
        if epsilon_of([*other_events, *generation_events(solved, max_tokens, rounds)], delta) <= epsilon:
            return solved
        solved = solved.replace(**{param: getattr(solved, param) * nudge})
    raise AssertionError("calibration did not converge")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Ledger


@dataclass(frozen=True)
class LedgerEntry:
    """What one job (or one DP count) charged: a label and its events."""

    label: str
    events: tuple[PrivacyEvent, ...]

    def to_dict(self) -> dict:
        return {"label": self.label, "events": [e.to_dict() for e in self.events]}

    @classmethod
    def from_dict(cls, d: dict) -> LedgerEntry:
        return cls(label=d["label"], events=tuple(PrivacyEvent.from_dict(e) for e in d["events"]))


@dataclass(frozen=True)
class Ledger:
    """A dataset's privacy budget: a cap (epsilon_cap at delta) and the entries charged to it.

    Immutable: `charge` returns a new ledger. The spent epsilon is always derived from the
    events by the accountant, never stored. `remaining_epsilon` is the epsilon (at delta) of the
    largest new zCDP release that still fits under the cap when composed with what was spent.
    """

    epsilon_cap: float
    delta: float
    entries: tuple[LedgerEntry, ...] = field(default=())

    def __post_init__(self) -> None:
        _check_epsilon(self.epsilon_cap)
        _check_delta(self.delta)

    @property
    def events(self) -> tuple[PrivacyEvent, ...]:
        return tuple(e for entry in self.entries for e in entry.events)

    def spent_epsilon(self) -> float:
        return epsilon_of(self.events, self.delta)

    def remaining_rho(self) -> float:
        return largest_rho_within(self.epsilon_cap, self.delta, self.events)

    def remaining_epsilon(self) -> float:
        return epsilon_of([PrivacyEvent("zcdp", self.remaining_rho())], self.delta)

    def fits(self, events: Iterable[PrivacyEvent]) -> bool:
        return epsilon_of([*self.events, *events], self.delta) <= self.epsilon_cap

    def epsilon_with(self, events: Iterable[PrivacyEvent]) -> float:
        return epsilon_of([*self.events, *events], self.delta)

    def charge(self, entry: LedgerEntry) -> Ledger:
        """A new ledger with entry added; ValueError if it would exceed the cap."""
        after = self.epsilon_with(entry.events)
        if after > self.epsilon_cap:
            raise ValueError(
                f"charging {entry.label!r} would spend epsilon {after:.4g} of the cap {self.epsilon_cap:g} "
                f"(delta {self.delta:g}); remaining {self.remaining_epsilon():.4g}"
            )
        return Ledger(self.epsilon_cap, self.delta, (*self.entries, entry))

    def to_json(self) -> str:
        return json.dumps(
            {"epsilon_cap": self.epsilon_cap, "delta": self.delta, "entries": [e.to_dict() for e in self.entries]}
        )

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        d = json.loads(text)
        return cls(d["epsilon_cap"], d["delta"], tuple(LedgerEntry.from_dict(e) for e in d["entries"]))
