"""DP counts: the public unit count that decides G, and label histograms.

Adjacency: add/remove one unit. A unit count has sensitivity 1; a histogram in which every
unit falls in exactly one bin has L2 sensitivity 1 (one bin moves by 1). Gaussian noise with
standard deviation sigma is then 1/(2 sigma^2)-zCDP (Bun & Steinke 2016), recorded as a
GaussianDpEvent(sigma) in the ledger. Released values are rounded and clamped at 0, which is
post-processing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .accounting import PrivacyEvent
from .config import require


def count_event(noise_multiplier: float, what: str = "unit count") -> PrivacyEvent:
    return PrivacyEvent("gaussian", noise_multiplier, 1, f"DP {what} (Gaussian, sensitivity 1)")


def dp_count(true_count: int, noise_multiplier: float, rng: np.random.Generator) -> int:
    """true_count + N(0, sigma^2), rounded, clamped at 0. Charge count_event(sigma) for it."""
    require(isinstance(true_count, int) and true_count >= 0, "true_count", "an integer >= 0", true_count)
    require(math.isfinite(noise_multiplier) and noise_multiplier > 0, "count_noise", "a finite number > 0", noise_multiplier)
    return max(0, int(round(true_count + rng.normal(0.0, noise_multiplier))))


def dp_histogram(counts: Mapping[str, int], noise_multiplier: float, rng: np.random.Generator) -> dict[str, int]:
    """Per-label unit counts with Gaussian noise on every bin (labels are public: the caller
    passes every label it may ask for, with 0 for empty ones). Each unit must fall in exactly
    one bin; charge count_event(sigma, "label histogram") once for the whole histogram."""
    require(math.isfinite(noise_multiplier) and noise_multiplier > 0, "count_noise", "a finite number > 0", noise_multiplier)
    labels = sorted(counts)
    noise = rng.normal(0.0, noise_multiplier, size=len(labels))
    return {lab: max(0, int(round(counts[lab] + z))) for lab, z in zip(labels, noise)}
