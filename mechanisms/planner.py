"""The planner: from public inputs to rounds, groups, a solved config and the worst-case cost.

A plan is made, and charged, before the first token is released. It uses only public inputs:
a unit count that is declared public or was released by a DP count, the number of records
wanted, the maximum tokens per record, the mechanism's settings, and the target (epsilon,
delta). Rounds compose sequentially; groups inside a round hold disjoint units and compose in
parallel.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .accounting import (
    Ledger,
    PrivacyEvent,
    largest_rho_within,
    calibrate,
    epsilon_of,
    generation_events,
)
from .config import DecodingConfig, require
from .costs import charged_tokens, rho_per_record, rho_per_token, sensitivity
from .counts import count_event
from .partition import group_count, rounds_needed

UnitsSource = Literal["declared-public", "dp-count"]


class BudgetExceeded(ValueError):
    """The plan does not fit the dataset's remaining budget. Says by how much and what fits."""

    def __init__(self, plan: Plan, ledger: Ledger, fits: dict):
        self.plan, self.ledger, self.fits = plan, ledger, fits
        after = ledger.epsilon_with(plan.events)
        parts = [f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}" for k, v in fits.items()]
        super().__init__(
            f"plan needs epsilon {after:.4g} in total on this dataset, over its cap {ledger.epsilon_cap:g} "
            f"(delta {ledger.delta:g}; spent {ledger.spent_epsilon():.4g}, over by {after - ledger.epsilon_cap:.4g}). "
            f"What fits: {'; '.join(parts) if parts else 'nothing: the budget is spent'}"
        )


@dataclass(frozen=True)
class Plan:
    config: DecodingConfig
    delta: float
    units: int
    units_source: UnitsSource
    groups_per_round: int
    rounds: int
    records: int
    max_tokens: int
    charged_tokens_per_record: int
    rho_per_token: float
    rho_per_record: float
    rho_total: float
    epsilon: float  # this plan's own events, at delta, by the accountant
    events: tuple[PrivacyEvent, ...]
    ledger_epsilon_after: float | None = None
    strata: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> units, records, groups, rounds

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        d["events"] = [e.to_dict() for e in self.events]
        d["mechanism"] = self.config.mechanism
        d["partitions"] = self.config.partitions
        d["sensitivity"] = sensitivity(self.config)
        return d


def plan(
    *,
    units: int,
    records: int,
    max_tokens: int,
    delta: float,
    epsilon: float | None = None,
    config: DecodingConfig | None = None,
    units_source: UnitsSource = "declared-public",
    count_noise: float | None = None,
    ledger: Ledger | None = None,
    strata: Mapping[str, tuple[int, int]] | None = None,
) -> Plan:
    """Plan a generation job.

    units: the public unit count (declared public by the uploader, or already released by a
      DP count). count_noise: if set, this job also pays for releasing that DP count (its
      event joins the plan's events; a dataset pays for its count once).
    epsilon: target for the whole plan (the config's clip or noise is solved to meet it); if
      None, `config` is used as given and its cost computed.
    ledger: if given, the plan must fit its remaining budget, or BudgetExceeded says what fits.
    strata: label-conditioned generation, {label: (public unit count, records wanted)}. Each
      unit belongs to one label, so labels hold disjoint units and compose in parallel: the
      plan charges the largest number of rounds over labels. units and records must be the
      sums. count_noise then stands for the DP label histogram (one release for all labels).
    """
    cfg = config or DecodingConfig()
    require(isinstance(records, int) and records >= 1, "records", "an integer >= 1", records)
    require(isinstance(max_tokens, int) and max_tokens >= 1, "max_tokens", "an integer >= 1", max_tokens)
    require(units_source in ("declared-public", "dp-count"), "units_source", "declared-public or dp-count", units_source)
    require(isinstance(units, int) and units >= 1, "units", "an integer >= 1", units)
    require(isinstance(delta, (int, float)) and 0 < delta <= 1.0 / units, "delta", f"in (0, 1/units] = (0, {1.0 / units:.3g}]", delta)
    if count_noise is not None and units_source != "dp-count":
        raise ValueError("count_noise needs units_source='dp-count' (a declared-public count costs nothing)")

    detail: dict[str, dict[str, int]] = {}
    if strata:
        require(sum(n for n, _ in strata.values()) == units, "units", "the sum of the strata's unit counts", units)
        require(sum(m for _, m in strata.values()) == records, "records", "the sum of the strata's records", records)
        for label, (n, m) in sorted(strata.items()):
            require(isinstance(m, int) and m >= 0, f"records[{label}]", "an integer >= 0", m)
            g = group_count(n, cfg.partitions, cfg.units_per_row)
            detail[label] = {"units": n, "records": m, "groups": g, "rounds": rounds_needed(m, g) if m else 0}
        groups = sum(d["groups"] for d in detail.values())
        rounds = max(d["rounds"] for d in detail.values())
    else:
        groups = group_count(units, cfg.partitions, cfg.units_per_row)
        rounds = rounds_needed(records, groups)
    what = "label histogram" if strata else "unit count"
    other = (count_event(count_noise, what),) if count_noise is not None else ()
    if epsilon is not None:
        cfg = calibrate(cfg, epsilon, delta, max_tokens, rounds, other)
    events = (*other, *generation_events(cfg, max_tokens, rounds))
    result = Plan(
        config=cfg,
        delta=delta,
        units=units,
        units_source=units_source,
        groups_per_round=groups,
        rounds=rounds,
        records=records,
        max_tokens=max_tokens,
        charged_tokens_per_record=charged_tokens(cfg, max_tokens),
        rho_per_token=rho_per_token(cfg),
        rho_per_record=rho_per_record(cfg, max_tokens),
        rho_total=sum(e.rho for e in events),
        epsilon=epsilon_of(events, delta),
        events=events,
        strata=detail,
    )
    if ledger is None:
        return result
    require(math.isclose(ledger.delta, delta), "delta", f"the dataset's delta {ledger.delta:g}", delta)
    result = dataclasses.replace(result, ledger_epsilon_after=ledger.epsilon_with(events))
    if result.ledger_epsilon_after > ledger.epsilon_cap:
        raise BudgetExceeded(result, ledger, what_fits(result, ledger, other))
    return result


def what_fits(p: Plan, ledger: Ledger, other: Sequence[PrivacyEvent] = ()) -> dict:
    """With the plan's config unchanged: the most records (at its max tokens), the most tokens
    (at its records), and the largest epsilon a new job could still spend on this ledger."""
    base = [*ledger.events, *other]
    fits: dict = {}

    def ok(rounds: int, tokens: int) -> bool:
        return epsilon_of([*base, *generation_events(p.config, tokens, rounds)], ledger.delta) <= ledger.epsilon_cap

    lo, hi = 0, p.rounds  # largest rounds that fit, by bisection (cost is monotone)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid, p.max_tokens) else (lo, mid - 1)
    if lo >= 1:
        fits["max_records"] = min(p.records, lo * p.groups_per_round)
    lo, hi = 0, p.max_tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if mid >= 1 and ok(p.rounds, mid) else (lo, mid - 1)
    if lo >= 1:
        fits["max_tokens"] = lo
    rho = largest_rho_within(ledger.epsilon_cap, ledger.delta, base)
    max_epsilon = epsilon_of([PrivacyEvent("zcdp", rho)], ledger.delta) if rho > 0 else 0.0
    if max_epsilon >= 1e-4:  # below that, nothing useful fits
        fits["max_epsilon"] = max_epsilon
    return fits
