"""gaussian: the Gaussian noisy argmax (Tang et al. 2024, ICLR).

Each private row's softmax(z_i / tau) on the public top-k is summed over the group (an absent
row adds nothing), N(0, sigma^2) is added to every candidate, and the argmax is emitted.
Registered in mechanisms.registry as "gaussian".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .config import DecodingConfig
from .costs import row_change_factor
from .ops import Coins, group_sums, noise, softmax
from .registry import Batch, Calibration, Mechanism, Neighbours, PlotStyle


def aggregate_gaussian_sum(zs: np.ndarray, valid_rows: np.ndarray, sizes: np.ndarray, cfg: DecodingConfig) -> np.ndarray:
    """Summed probability vectors for the Gaussian noisy argmax (Tang et al. 2024, ICLR).

    Each row's softmax(z_i / tau) is restricted to the public top-k and renormalised; the group
    sums them (absent rows add nothing). Adjacency: add/remove one unit = one row. L2
    sensitivity <= 1 (a probability vector). Adding N(0, sigma^2) per coordinate and taking the
    argmax is rho = 1/(2 sigma^2) per token. Returns the sum (noise is added by the caller).
    """
    p = softmax(zs / cfg.temperature, valid_rows)
    return group_sums(p, sizes)


class Gaussian(Mechanism):
    name = "gaussian"
    summary = "Gaussian noisy argmax of summed probability vectors (Tang et al. 2024)"
    calibration = Calibration("noise_multiplier", "larger", "noise multiplier (sigma)")
    sensitivity_norm = "L2"
    style = PlotStyle("#2ca02c", "^")
    audit_claim = "gaussian-dp"

    # candidates: the public top-k (Mechanism's default)

    def choose(self, batch: Batch, cfg: DecodingConfig, rng: Coins) -> np.ndarray:
        """argmax over the candidates of the summed probability vectors (aggregate_gaussian_sum)
        plus N(0, sigma^2) on every candidate."""
        summed = aggregate_gaussian_sum(batch.zs, batch.valid_rows, batch.sizes, cfg)
        noisy = summed + noise(rng, batch.valid, "normal", cfg.noise_multiplier)
        return np.where(batch.valid, noisy, -np.inf).argmax(axis=1)

    def sensitivity(self, cfg: DecodingConfig) -> float:
        """L2 sensitivity of the summed probability vectors: ||p_i||_2 <= ||p_i||_1 = 1.
        Few-shot: ||p_i - p_i'||_2 <= sqrt(2)."""
        f = row_change_factor(cfg)
        return math.sqrt(f)

    def rho_selection(self, cfg: DecodingConfig) -> float:
        """zCDP of selecting one private token.

        The Gaussian mechanism with L2 sensitivity D and noise sigma is D^2/(2 sigma^2)-zCDP
        (Bun & Steinke 2016, Prop. 1.6); argmax is post-processing (Tang et al. 2024).
        """
        d = self.sensitivity(cfg)
        return d * d / (2.0 * cfg.noise_multiplier**2)

    def selection_event(self, cfg: DecodingConfig, rho: float) -> tuple[str, float, str]:
        """A GaussianDpEvent of noise multiplier sigma / (L2 sensitivity), so that the
        accountant composes the Gaussian mechanism itself (rho = 1/(2 (sigma/D)^2))."""
        return "gaussian", cfg.noise_multiplier / self.sensitivity(cfg), "gaussian noisy argmax"

    def solve(self, cfg: DecodingConfig, rho: float) -> float:
        """rho_sel = f/(2 sigma^2)  =>  sigma = sqrt(f / (2 rho_sel))."""
        f = row_change_factor(cfg)
        return math.sqrt(f / (2.0 * rho))

    def crafted_row(self, cfg: DecodingConfig, public: Sequence[float]) -> tuple[float, ...]:
        """A point mass on token 0 (probability vector (1, 0, ...): the full L2 shift of 1)."""
        tau = cfg.temperature
        return (30.0 * tau, *([-30.0 * tau] * (len(public) - 1)))

    def audit_neighbours(self, cfg: DecodingConfig, low_prob: float = 0.1) -> Neighbours:
        """(public, D rows, D' rows) for the noisy argmax over two candidates (low_prob unused).

        The crafted row is a point mass on token 0 (probability vector (1, 0): the full L2 shift
        of 1); one background row with probabilities (1/4, 3/4) centres the decision, so that
        P_D(0) = Phi(1/(2 s)) and P_D'(0) = Phi(-1/(2 s)), s = sigma sqrt 2: the largest
        total-variation distance a shift of 1 can make between two binary argmax outcomes.
        (The argmax of two candidates reveals the shift only through their difference, so its
        true mu is 1/sqrt(2) of the claimed one at best: the audit report's tightness.)
        """
        tau = cfg.temperature
        public = (0.0, 0.0)
        background = ((tau * math.log(0.25), tau * math.log(0.75)),)
        return Neighbours(public, background, self.crafted_row(cfg, public))

    def claimed_bound(self, cfg: DecodingConfig) -> float:
        """mu = D / sigma: the noisy argmax is post-processing of a Gaussian mechanism with L2
        sensitivity D and noise sigma, i.e. mu-Gaussian DP: for every event E and eps >= 0,
        P_D(E) <= e^eps P_D'(E) + delta_mu(eps) (tight profile, Balle & Wang 2018), and
        rho = mu^2 / 2. Its per-token epsilon is stated at a per-token delta."""
        return self.sensitivity(cfg) / cfg.noise_multiplier


MECHANISM = Gaussian()
