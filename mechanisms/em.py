"""em: InvisibleInk difference clipping (Vinod, Pillutla & Thakurta 2025).

Each private row's logits are clipped to within +-C of the public row's, averaged over the
public N (an absent row counts as the public row), and one token is sampled at temperature tau
over the public top-k+ (or the public top-k). Registered in mechanisms.registry as "em".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .config import DecodingConfig
from .ops import Coins, group_sums, public_top_k, sample
from .clipped_exponential import ClippedExponential
from .registry import Batch, Neighbours, PlotStyle


def aggregate_em(zs: np.ndarray, zp: np.ndarray, sizes: np.ndarray, row_group: np.ndarray, cfg: DecodingConfig) -> np.ndarray:
    """InvisibleInk difference clipping (Vinod, Pillutla & Thakurta 2025).

    Row i becomes z_pub + clip(z_i - z_pub, -C, C); the group average divides by the public N
    and an absent row counts as z_pub, so avg = z_pub + sum_i clip(z_i - z_pub, -C, C) / N.
    Adjacency: add/remove one unit = one row. Sensitivity: C/N per coordinate. Sampling
    softmax(avg / tau) is 2C/(N tau)-bounded-range: rho = (1/2) (C/(N tau))^2 per token.
    Returns avg / tau.
    """
    d = np.clip(zs - zp[row_group], -cfg.clip, cfg.clip)
    return (zp + group_sums(d, sizes) / cfg.partitions) / cfg.temperature


def top_k_plus(public_logits: np.ndarray, k: int, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """top-k+ (InvisibleInk): every token whose public logit is within 2C of the public k-th
    largest; a token further down cannot overtake the k-th after clipping to +-C. Padded
    (ids (G, S), valid (G, S)), each group's members in ascending id order. k < V."""
    g, v = public_logits.shape
    kth = np.partition(public_logits, v - k, axis=1)[:, v - k]
    member = public_logits >= (kth - 2.0 * clip)[:, None]
    sizes = member.sum(axis=1)
    width = int(sizes.max())
    ids = np.zeros((g, width), dtype=np.int64)
    valid = np.arange(width)[None, :] < sizes[:, None]
    ids[valid] = np.nonzero(member)[1]  # row-major: each group's members in ascending id order
    return ids, valid


class Em(ClippedExponential):
    name = "em"
    summary = "exponential mechanism over difference-clipped averaged logits (InvisibleInk)"
    style = PlotStyle("#1f77b4", "o")

    def candidates(self, public_logits: np.ndarray, cfg: DecodingConfig) -> tuple[np.ndarray, np.ndarray]:
        """top_k_plus True (the default): top-k+ (InvisibleInk), every token whose public logit
        is within 2C of the public k-th largest; a token further down cannot overtake the k-th
        after clipping to +-C. top_k_plus False: the public top-k, as amin and gaussian.
        top_k None or >= vocab: the whole vocabulary."""
        k = cfg.top_k
        if k is None or k >= public_logits.shape[1] or not cfg.top_k_plus:
            return public_top_k(public_logits, k)
        return top_k_plus(public_logits, k, cfg.clip)

    def candidates_note(self, cfg: DecodingConfig) -> str:
        return "+ (within 2C of the k-th)" if cfg.top_k_plus else ""

    def choose(self, batch: Batch, cfg: DecodingConfig, rng: Coins) -> np.ndarray:
        """softmax(avg / tau) over the candidates (aggregate_em), one Gumbel-max draw per group."""
        return sample(aggregate_em(batch.zs, batch.zp, batch.sizes, batch.row_group, cfg), batch.valid, rng)

    def crafted_row(self, cfg: DecodingConfig, public: Sequence[float]) -> tuple[float, ...]:
        """The extreme row: after clipping it sits at +C on token 0 and -C on token 1
        (z_pub + clip(z - z_pub): +C, -C, 0, ...)."""
        c, z = cfg.clip, np.asarray(public, dtype=float)
        return tuple((z + np.r_[10 * c, -10 * c, np.zeros(len(z) - 2)]).tolist())

    def audit_neighbours(self, cfg: DecodingConfig, low_prob: float = 0.1) -> Neighbours:
        """Binary (V = 2) neighbours near the bounded-range worst case.

        The crafted row moves token 0 by +D and token 1 by -D (D = C/N, scores / tau); the
        public row carries the log-odds that make token 0 unlikely under D' (probability
        low_prob; absent rows count as the public row, so no background rows are needed), so
        that D's token-0 probability rises by nearly the whole range:
        log P_D(0) - log P_D'(0) -> eps0 as low_prob -> 0. low_prob trades tightness for the
        variance of the estimate.
        """
        log_odds = math.log((1 - low_prob) / low_prob)  # score of token 1 minus token 0 under D'
        public = (0.0, cfg.temperature * log_odds)
        return Neighbours(public, (), self.crafted_row(cfg, public))


MECHANISM = Em()
