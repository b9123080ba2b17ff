"""Sensitivities and per-token zCDP costs: what the planner and the accountant charge.

Each mechanism's own formulas (sensitivity, rho per token, and their derivations) live in its
module, mechanisms/em.py, amin.py, gaussian.py, behind mechanisms.registry; the functions here
dispatch to the registry by cfg.mechanism and add what every mechanism shares: the layout's
row-change factor, the public-token gate, the worst-case token count.

Adjacency everywhere: add or remove one privacy unit (with all its records).

Default layout (one unit per row, in M public row slots per group): adding or removing a unit
adds or removes exactly one row (its own, or the one it shares a slot with, which then keeps
none: mechanisms.partition.build_groups), and an absent row contributes exactly what the
average assumes for it (the public row for em, 0 for amin, nothing for gaussian). Few-shot
layout (units_per_row > 1): a removed unit *changes* its row, so the shift doubles: per
coordinate 2C/N (rho x4) for em/amin, sqrt(2) in L2 (rho x2) for gaussian. See
docs/privacy/analysis.md, "Units, rows, groups".
"""

from __future__ import annotations

from .config import DecodingConfig
from .registry import get


def row_change_factor(cfg: DecodingConfig) -> int:
    """1 when a unit's removal removes its row, 2 when it can change a row (few-shot layout)."""
    return 1 if cfg.units_per_row == 1 else 2


def sensitivity(cfg: DecodingConfig) -> float:
    """Sensitivity of the quantity each mechanism privatises, under add/remove one unit.

    The registered mechanism's `sensitivity` (derivations in its module's docstrings):
      em, amin: L-infinity sensitivity of the clipped average, per coordinate (C/N, c/N);
      gaussian: L2 sensitivity of the summed probability vectors (1).
    Times the layout's factor (row_change_factor) in every case.
    """
    return get(cfg.mechanism).sensitivity(cfg)


def rho_selection(cfg: DecodingConfig) -> float:
    """zCDP of selecting one private token: the registered mechanism's `rho_selection`.

    em, amin: bounded range, (1/2)(D/tau)^2; gaussian: D^2/(2 sigma^2) (derivations in
    mechanisms/em.py, amin.py, gaussian.py).
    """
    return get(cfg.mechanism).rho_selection(cfg)


def rho_gate(cfg: DecodingConfig) -> float:
    """zCDP of one above-threshold answer of the public-token gate (0 without a gate).

    The gate is AboveThreshold with Laplace noise (Dwork & Roth 2014, Alg. 1 / Thm 3.23):
    threshold noise Lap(2 Delta/eps), query noise Lap(4 Delta/eps); one instance, run until its
    first above-threshold answer, is eps-DP whatever the number of below answers. The query is
    the total-variation distance between the average of the rows' distributions (absent rows =
    the public distribution, divided by the public N) and the public distribution; one row's
    removal *or change* moves the summed difference by a vector of half-L1 norm at most 1, so
    Delta = 1/N in both layouts. Pure eps-DP implies eps^2/2-zCDP (Bun & Steinke 2016, Prop. 1.4).
    Note: privacy-notes.md sketches a Gaussian-noise SVT; we use the Laplace version because its
    analysis is textbook and needs no further assumption.
    """
    if cfg.gate is None:
        return 0.0
    return 0.5 * cfg.gate.epsilon**2


def gate_delta(cfg: DecodingConfig) -> float:
    """Sensitivity of the gate's distance query (see rho_gate)."""
    return 1.0 / cfg.partitions


def rho_per_token(cfg: DecodingConfig) -> float:
    """zCDP charged for one private token: the selection plus, with a gate, its SVT answer."""
    return rho_selection(cfg) + rho_gate(cfg)


def charged_tokens(cfg: DecodingConfig, max_tokens: int) -> int:
    """Private tokens charged per record: the declared worst case, never the realised count.

    Without a gate every token is private: max_tokens. With a gate, the cap r fixed in advance
    (a group halts at its r-th private token), but never more than max_tokens.
    """
    if cfg.gate is None:
        return max_tokens
    return min(cfg.gate.max_private_tokens, max_tokens)


def rho_per_record(cfg: DecodingConfig, max_tokens: int) -> float:
    """zCDP of one group decoding one record of at most max_tokens tokens (T-fold composition)."""
    return charged_tokens(cfg, max_tokens) * rho_per_token(cfg)
