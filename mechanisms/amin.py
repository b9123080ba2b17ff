"""amin: max-shift clipping (Amin et al. 2024, private prediction for synthetic text).

Each private row's logits are shifted so that its maximum sits at c, clipped to [-c, c],
averaged over the public N (an absent row counts as 0), and one token is sampled at temperature
tau over the public top-k. Registered in mechanisms.registry as "amin".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .config import DecodingConfig
from .ops import Coins, group_sums, sample
from .clipped_exponential import ClippedExponential
from .registry import Batch, Neighbours, PlotStyle


def aggregate_amin(zs: np.ndarray, row_max: np.ndarray, sizes: np.ndarray, cfg: DecodingConfig) -> np.ndarray:
    """Max-shift clipping (Amin et al. 2024, private prediction for synthetic text).

    Row i becomes clip(z_i - max(z_i) + c, -c, c) (max over the whole vocabulary); averaged over
    the public N with absent rows = 0. Adjacency: add/remove one unit = one row. Sensitivity:
    c/N per coordinate. Sampling at tau: rho = (1/2) (c/(N tau))^2 per token.
    Returns avg / tau.
    """
    c = cfg.clip
    shifted = np.clip(zs - row_max[:, None] + c, -c, c)
    return group_sums(shifted, sizes) / cfg.partitions / cfg.temperature


class Amin(ClippedExponential):
    name = "amin"
    summary = "exponential mechanism over max-shift-clipped averaged logits (Amin et al. 2024)"
    style = PlotStyle("#ff7f0e", "s")

    # candidates: the public top-k (Mechanism's default)

    def choose(self, batch: Batch, cfg: DecodingConfig, rng: Coins) -> np.ndarray:
        """softmax(avg / tau) over the candidates (aggregate_amin; each row shifted by its max
        over the whole vocabulary), one Gumbel-max draw per group."""
        row_max = batch.private_logits.max(axis=1).astype(np.float64)
        return sample(aggregate_amin(batch.zs, row_max, batch.sizes, cfg), batch.valid, rng)

    def crafted_row(self, cfg: DecodingConfig, public: Sequence[float]) -> tuple[float, ...]:
        """The extreme row: after the shift and clip it sits at +c on token 0 and -c on token 1
        (shifted: c, -c, 0, ...)."""
        c = cfg.clip
        return tuple(np.r_[10.0, -10.0, np.full(len(public) - 2, 10.0 - c)].tolist())

    def audit_neighbours(self, cfg: DecodingConfig, low_prob: float = 0.1) -> Neighbours:
        """Binary (V = 2) neighbours near the bounded-range worst case.

        The crafted row moves token 0 by +D and token 1 by -D (D = c/N, scores / tau); the
        background makes token 0 unlikely under D' (probability low_prob), so that D's token-0
        probability rises by nearly the whole range: log P_D(0) - log P_D'(0) -> eps0 as
        low_prob -> 0. Absent rows count as 0, so the log-odds come from background rows
        shifting to (c - d_j, c), with sum d_j = L N tau (L the log-odds), each d_j <= 2c.
        """
        log_odds = math.log((1 - low_prob) / low_prob)  # score of token 1 minus token 0 under D'
        c, n, tau = cfg.clip, cfg.partitions, cfg.temperature
        total = log_odds * n * tau
        m = max(1, math.ceil(total / (2 * c) - 1e-12))
        d = total / m  # <= 2c
        public = (0.0, 0.0)
        background = tuple((10.0 - d, 10.0) for _ in range(m))  # shifted: (c - d, c)
        return Neighbours(public, background, self.crafted_row(cfg, public))


MECHANISM = Amin()
