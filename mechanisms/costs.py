"""Sensitivities and per-token zCDP costs: the one place where each formula lives.

Adjacency everywhere: add or remove one privacy unit (with all its records).

Default layout (one unit per row, in M public row slots per group): adding or removing a unit
adds or removes exactly one row (its own, or the one it shares a slot with, which then keeps
none: mechanisms.partition.build_groups), and an absent row contributes exactly what the
average assumes for it (the public row for em, 0 for amin, nothing for gaussian). Few-shot layout (units_per_row > 1): a removed unit *changes* its row,
so the shift doubles: per coordinate 2C/N (rho x4) for em/amin, sqrt(2) in L2 (rho x2) for
gaussian. See docs/privacy/analysis.md, "Units, rows, groups".
"""

from __future__ import annotations

import math

from .config import DecodingConfig


def row_change_factor(cfg: DecodingConfig) -> int:
    """1 when a unit's removal removes its row, 2 when it can change a row (few-shot layout)."""
    return 1 if cfg.units_per_row == 1 else 2


def sensitivity(cfg: DecodingConfig) -> float:
    """Sensitivity of the quantity each mechanism privatises, under add/remove one unit.

    em, amin: L-infinity sensitivity of the clipped average, per coordinate.
      em   averages z_pub + clip(z_i - z_pub, -C, C) over N rows (absent = z_pub): adding or
           removing row i moves every coordinate by clip(...)/N, at most C/N.
      amin averages clip(z_i - max z_i + c, -c, c) over N rows (absent = 0): at most c/N.
    gaussian: L2 sensitivity of the summed probability vectors: ||p_i||_2 <= ||p_i||_1 = 1.
      Few-shot: ||p_i - p_i'||_2 <= sqrt(2).
    """
    f = row_change_factor(cfg)
    if cfg.mechanism in ("em", "amin"):
        return f * cfg.clip / cfg.partitions
    return math.sqrt(f)


def rho_selection(cfg: DecodingConfig) -> float:
    """zCDP of selecting one private token.

    em, amin: sampling exp(u/tau) where every utility u(y) moves by at most D = sensitivity
      is 2D/tau-bounded-range (Durfee & Rogers 2019: the log-ratio over outputs spans at most
      max(u-u')/tau - min(u-u')/tau), and eps0-bounded-range is eps0^2/8-zCDP (Cesar & Rogers
      2021). So rho = (2D/tau)^2 / 8 = (1/2) (D/tau)^2 = (1/2) (C/(N tau))^2 in the default
      layout (InvisibleInk, Vinod, Pillutla & Thakurta 2025; Amin et al. 2024 with C = c).
    gaussian: the Gaussian mechanism with L2 sensitivity D and noise sigma is D^2/(2 sigma^2)
      -zCDP (Bun & Steinke 2016, Prop. 1.6); argmax is post-processing (Tang et al. 2024).
    """
    d = sensitivity(cfg)
    if cfg.mechanism in ("em", "amin"):
        return 0.5 * (d / cfg.temperature) ** 2
    return d * d / (2.0 * cfg.noise_multiplier**2)


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
