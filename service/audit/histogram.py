"""Private Evolution's audit: a seeded Monte-Carlo estimate of the privacy loss of the plan's T
DP nearest-neighbour histograms on crafted neighbouring vote sets, next to the epsilon they claim.

The same estimator as the gaussian mechanism's per-token check (tokens.py), applied to pe's
release. Adjacency: add/remove one unit. D holds a crafted unit, D' lacks it; the background
units are in both. The histograms h(D), h(D') come from the real vote code
(mechanisms.pe.vote_histogram) on crafted embeddings, or, for a vote vector the vote code cannot
produce, are given directly; each of the T releases is mechanisms.pe.noisy_histogram with the
plan's sigma and threshold, on the same two histograms (the worst case of the adaptive loop:
the unit votes the same way every iteration).

Claim: the T releases are the Gaussian mechanism with L2 sensitivity 1, mu = sqrt(T) / sigma
Gaussian DP (what the plan's T GaussianDpEvents state), so for every event E and eps >= 0,
P_D(E) <= e^eps P_D'(E) + delta_mu(eps). Its epsilon at the plan's delta is eps_mu(delta); the
plan's accountant epsilon (RDP) is larger, and the report shows both.

What is estimated: the release is a vector per iteration, so the auditor reduces it by a fixed
post-processing, which can only lower the privacy loss (a valid lower bound): the sum over the
T releases of the projection on the direction u = (h(D) - h(D')) / |h(D) - h(D')|, which is the
likelihood-ratio statistic of two Gaussians and loses nothing for them. Events are its upper
and lower tails at fixed edges. tokens.profile_excess gives lower confidence bounds of
P_a(E) - e^eps P_b(E) on them (Clopper-Pearson, Bonferroni, both directions), mu_lower_bound the
smallest Gaussian profile above them, and the empirical epsilon is eps_{mu_lower}(delta): passed
<=> mu_lower <= mu_claimed. A unit that moves the histogram by more than L2 norm 1 (a vote in
two bins: sqrt 2) shifts the statistic by more than the claim allows, and the check fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from mechanisms.pe import PePlan, noisy_histogram, vote_histogram

from .tokens import ALPHA, AUDIT_EPS_GRID, Verdict, gaussian_delta, gaussian_epsilon, gaussian_mu_for, mu_lower_bound, profile_excess

Votes = Callable[..., np.ndarray]  # vote_histogram's signature: (record embeddings, record units, candidate embeddings) -> counts
Release = Callable[[np.ndarray, float, float, np.random.Generator], np.ndarray]  # noisy_histogram's signature
EDGES = tuple(float(x) for x in np.round(np.linspace(-4.0, 8.0, 49), 3))  # tail edges of the standardised statistic
BACKGROUND = 40  # units voting for each candidate in both D and D' (far from the threshold: no count is zeroed)
CANDIDATES = 4
DIM = 8


@dataclass(frozen=True)
class VoteCase:
    """Crafted neighbouring vote sets: the candidates' embeddings and the background units'
    records (in D and D'), the crafted unit's records (in D only). `direct` instead gives the
    crafted unit's vote vector itself, for a vote the vote code cannot make (a spread vote)."""

    name: str
    crafted_records: tuple[tuple[float, ...], ...] = ()
    direct: tuple[float, ...] | None = None

    def histograms(self, votes: Votes) -> tuple[np.ndarray, np.ndarray]:
        """(h(D), h(D')) from `votes` (default in audit_pe: the real vote_histogram)."""
        cands = np.eye(CANDIDATES, DIM)
        background = np.repeat(cands, BACKGROUND, axis=0) + 0.01  # each near its candidate, one record per unit
        units = [f"b{i}" for i in range(len(background))]
        h_dp = np.asarray(votes(background, units, cands), dtype=np.float64)
        if self.direct is not None:
            return h_dp + np.asarray(self.direct, dtype=np.float64), h_dp
        crafted = np.asarray(self.crafted_records, dtype=np.float64)
        h_d = np.asarray(votes(np.vstack([background, crafted]), units + ["crafted"] * len(crafted), cands), dtype=np.float64)
        return h_d, h_dp


def _near(j: int) -> tuple[float, ...]:
    return tuple(float(x) for x in np.eye(CANDIDATES, DIM)[j] + 0.02)


# The crafted unit of each case: records near two candidates (its one vote goes to one bin, the
# worst case of the real vote code; a vote per record would be two), and a spread vote of L2 norm 1.
CASES = (
    VoteCase("one unit, records near two candidates", crafted_records=(_near(0), _near(1))),
    VoteCase("a vote spread over two bins, L2 norm 1", direct=(math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0)),
)


def statistic(releases: np.ndarray, h_d: np.ndarray, h_dp: np.ndarray, sigma: float) -> np.ndarray:
    """(draws,) the sum over T releases (draws, T, C) of the projection on the unit direction of
    h(D) - h(D'), centred at D' and scaled by sqrt(T) sigma (N(0, 1) under D' without a threshold)."""
    diff = np.asarray(h_d, dtype=np.float64) - np.asarray(h_dp, dtype=np.float64)
    norm = np.linalg.norm(diff)
    if norm == 0:
        raise ValueError("the crafted unit changes nothing: h(D) = h(D')")
    t = releases.shape[1]
    return ((releases - h_dp) @ (diff / norm)).sum(axis=1) / (math.sqrt(t) * sigma)


def tail_counts(stat: np.ndarray, edges: Sequence[float] = EDGES) -> np.ndarray:
    """Counts of the events {stat >= e} and {stat < e} for every edge e."""
    stat = np.sort(np.asarray(stat))
    below = np.searchsorted(stat, np.asarray(edges), side="left")
    return np.concatenate([len(stat) - below, below])


def draw_releases(h: np.ndarray, plan: PePlan, draws: int, rng: np.random.Generator, release: Release = noisy_histogram) -> np.ndarray:
    """(draws, T, C): `draws` independent runs of the plan's T releases of histogram h."""
    tiled = np.tile(np.asarray(h, dtype=np.float64), (draws, 1))
    return np.stack([release(tiled, plan.sigma, plan.threshold, rng) for _ in range(plan.iterations)], axis=1)


@dataclass(frozen=True)
class HistogramAudit(Verdict):
    """pe's audit: the worst of its cases (see the module docstring for the definitions)."""

    claimed_epsilon: float  # eps at delta of mu_claimed = sqrt(T) / sigma
    empirical_epsilon: float  # lower confidence bound, the same definition
    empirical_point: float
    delta: float
    plan_epsilon: float  # the plan's accountant epsilon (dp-accounting RDP) for the same events, >= claimed
    sigma: float
    iterations: int
    threshold: float
    draws: int
    alpha: float
    mu_claimed: float
    mu_lower: float
    mu_point: float
    cases: list = field(default_factory=list)  # per case: name, mu_lower, mu_point, epsilon figures, the profile


def audit_pe(
    plan: PePlan,
    draws: int = 200_000,
    seed: int = 0,
    alpha: float = ALPHA,
    delta: float | None = None,
    claimed: float | None = None,
    votes: Votes = vote_histogram,
    release: Release = noisy_histogram,
    cases: Sequence[VoteCase] = CASES,
) -> HistogramAudit:
    """Audit the plan's T histogram releases on each crafted case; the worst case decides.

    delta: of the epsilon figures (default: the plan's). claimed: an epsilon to test against
    instead of the plan's Gaussian claim (converted to the mu whose epsilon at delta it is).
    votes, release: the mechanism under test (default the real mechanisms.pe functions; a test
    passes a deliberately broken one to check the audit's power)."""
    if not (isinstance(draws, int) and draws >= 100):
        raise ValueError(f"draws must be an integer >= 100, got {draws!r}")
    if not cases:
        raise ValueError("cases must hold at least one VoteCase")
    delta = plan.delta if delta is None else delta
    mu_claim = math.sqrt(plan.iterations) / plan.sigma  # L2 sensitivity 1
    if claimed is not None:
        mu_claim = gaussian_mu_for(claimed, delta)
    each = alpha / len(cases)  # Bonferroni over the cases too
    rows = []
    for i, case in enumerate(cases):
        h_d, h_dp = case.histograms(votes)
        rng = np.random.default_rng([seed, i])
        a = tail_counts(statistic(draw_releases(h_d, plan, draws, rng, release), h_d, h_dp, plan.sigma))
        b = tail_counts(statistic(draw_releases(h_dp, plan, draws, rng, release), h_d, h_dp, plan.sigma))
        profile = profile_excess(a, b, draws, each, AUDIT_EPS_GRID)
        mu_lo, mu_pt = mu_lower_bound(profile, 1), mu_lower_bound(profile, 2)
        rows.append({"name": case.name, "l2_change": float(np.linalg.norm(h_d - h_dp)), "mu_lower": mu_lo, "mu_point": mu_pt,
                     "empirical_epsilon": gaussian_epsilon(mu_lo, delta), "empirical_point": gaussian_epsilon(mu_pt, delta),
                     "profile": [{"eps": e, "delta_lower": lo, "delta_point": pt, "delta_claimed": gaussian_delta(e, mu_claim)}
                                 for e, lo, pt in profile]})
    worst = max(rows, key=lambda r: (r["mu_lower"], r["mu_point"]))
    return HistogramAudit(
        claimed_epsilon=gaussian_epsilon(mu_claim, delta), empirical_epsilon=worst["empirical_epsilon"],
        empirical_point=max(r["empirical_point"] for r in rows), delta=delta, plan_epsilon=plan.epsilon, sigma=plan.sigma,
        iterations=plan.iterations, threshold=plan.threshold, draws=draws, alpha=alpha, mu_claimed=mu_claim,
        mu_lower=worst["mu_lower"], mu_point=max(r["mu_point"] for r in rows), cases=rows,
    )
