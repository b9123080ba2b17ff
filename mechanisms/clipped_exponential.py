"""The cost shared by em and amin: an exponential mechanism over an average of clipped rows.

Both clip each private row to a band of width 2C around a point that no other row moves (em: the
public row; amin: the row's own maximum), average over the public N with an absent row fixed
(em: the public row; amin: 0), and sample softmax(avg / tau). Only the clipping differs, so the
adjacency, sensitivity, calibration and audit claim live here once.
"""

from __future__ import annotations

import math

from .config import DecodingConfig
from .costs import row_change_factor
from .registry import Calibration, Mechanism


class ClippedExponential(Mechanism):
    """A mechanism whose selection is softmax(avg / tau) over rows clipped to +-C, averaged over N."""

    calibration = Calibration("clip", "smaller", "clip (C)")
    sensitivity_norm = "per coordinate"
    audit_claim = "pure"

    def sensitivity(self, cfg: DecodingConfig) -> float:
        """L-infinity sensitivity of the clipped average, per coordinate.

        Adjacency: add/remove one unit, which changes one row. A row enters the average as a
        clipped value within +-C of a point it cannot move, and an absent row as that fixed
        point (or 0), so adding or removing it moves every coordinate by at most C/N. Few-shot
        layout (k units per row): a removed unit changes its row, so the shift doubles: 2C/N.
        """
        return row_change_factor(cfg) * cfg.clip / cfg.partitions

    def rho_selection(self, cfg: DecodingConfig) -> float:
        """zCDP of selecting one private token.

        Sampling exp(u/tau) where every utility u(y) moves by at most D = sensitivity is
        2D/tau-bounded-range (Durfee & Rogers 2019: the log-ratio over outputs spans at most
        max(u-u')/tau - min(u-u')/tau), and eps0-bounded-range is eps0^2/8-zCDP (Cesar & Rogers
        2021). So rho = (2D/tau)^2 / 8 = (1/2) (D/tau)^2 = (1/2) (C/(N tau))^2 in the default
        layout (InvisibleInk, Vinod, Pillutla & Thakurta 2025; Amin et al. 2024 with C = c).
        4x better than the generic pure-DP conversion eps0^2/2.
        """
        return 0.5 * (self.sensitivity(cfg) / cfg.temperature) ** 2

    def solve(self, cfg: DecodingConfig, rho: float) -> float:
        """rho_sel = (1/2)(f C/(N tau))^2  =>  C = N tau sqrt(2 rho_sel) / f."""
        return cfg.partitions * cfg.temperature * math.sqrt(2.0 * rho) / row_change_factor(cfg)

    def claimed_bound(self, cfg: DecodingConfig) -> float:
        """eps0 = 2D/tau: the bounded-range sampler is eps0-DP, so for every token y,
        |log P_D(y) - log P_D'(y)| <= eps0 = 2C/(N tau). (Its zCDP cost is rho = eps0^2/8.)"""
        return 2.0 * self.sensitivity(cfg) / cfg.temperature
