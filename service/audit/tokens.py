"""Per-token audit: a seeded Monte-Carlo estimate of the privacy loss of ONE selection step on
crafted neighbouring logits, next to the per-token epsilon the mechanism claims.

This module is the one home of the estimator; tests/mechanisms/test_privacy_empirical.py
imports its draws, bounds and crafted inputs from here.

Adjacency: add/remove one privacy unit = one private row (default layout, units_per_row = 1).
D holds a crafted row, D' lacks it; every other row (the "background") is in both. A batch of
n identical groups is n independent calls of `select_token` on the same input (each group gets
its own randomness), so `draw` makes n calls of the mechanism in one `select_tokens` call.

What each mechanism claims per private token (mechanisms.costs states the sensitivity D; the
registry says which claim, Mechanism.audit_claim, and crafts the neighbours,
Mechanism.audit_neighbours):
- em, amin ("pure"): pure epsilon. Sampling exp(u / tau) where every utility moves by at most D is
  eps0 = 2 D / tau bounded-range, hence eps0-DP: for every token y,
  |log P_D(y) - log P_D'(y)| <= eps0 = 2 C / (N tau). (Its zCDP cost is rho = eps0^2 / 8.)
- gaussian ("gaussian-dp"): no pure epsilon. The noisy argmax is post-processing of a Gaussian mechanism with
  L2 sensitivity D and noise sigma: mu = D / sigma Gaussian DP, i.e. for every event E and
  eps >= 0, P_D(E) <= e^eps P_D'(E) + delta_mu(eps) (tight profile, Balle & Wang 2018), and
  rho = mu^2 / 2. Its "per-token epsilon" is stated at a per-token delta: eps_mu(delta), the
  smallest eps with delta_mu(eps) <= delta.

What is estimated (every figure is a lower confidence bound at level 1 - alpha: the figure
most favourable to the mechanism; Clopper-Pearson intervals of each outcome's probability,
Bonferroni over outcomes and both inputs):
- em, amin: the largest |log P_D(y) - log P_D'(y)| over tokens y (lower bound and point
  estimate). Passed: lower bound <= eps0.
- gaussian: for each eps on a grid, the largest P_a(E) - e^eps P_b(E) over events E = {y} and
  both directions (a lower bound of the mechanism's delta(eps)); from these, mu_lower = the
  smallest mu whose Gaussian profile lies above every lower bound (the true mu of any Gaussian
  profile the mechanism satisfies is >= mu_lower with confidence 1 - alpha), and the empirical
  per-token epsilon eps_{mu_lower}(delta) at the same per-token delta as the claim. Since
  eps_mu(delta) grows with mu, passed <=> mu_lower <= mu_claimed <=> empirical <= claimed.

The crafted inputs are near worst case for the default layout: the crafted row sits at the
clipping bounds (+D on one token, -D on another) with the background making that token
unlikely under D' (em, amin), or it is a point mass and the background centres the binary
decision (gaussian; the argmax of two candidates reveals the shift only through their
difference, so its true mu is 1/sqrt(2) of the claimed one at best: the report's tightness).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

from mechanisms import DecodingConfig, GroupState, select_tokens
from mechanisms.costs import rho_selection
from mechanisms.registry import get, mechanisms

ALPHA = 1e-3  # family-wise error of each confidence statement
EPS_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
AUDIT_EPS_GRID = tuple(float(x) for x in np.round(np.linspace(0.0, 2.0, 41), 3))

Select = Callable[..., np.ndarray]  # select_tokens' signature


# ---------------------------------------------------------------------------------------------
# Draws


def _rows(rows, v: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, v)


@lru_cache(maxsize=None)
def _draw_cached(cfg: DecodingConfig, rows: tuple, public: tuple, n: int, seed: int, gated: bool, select: Select = select_tokens) -> tuple:
    v = len(public)
    r = _rows(rows, v)
    priv = np.tile(r, (n, 1))
    pub = np.tile(np.asarray(public, dtype=np.float64), (n, 1))
    states = [GroupState() for _ in range(n)] if gated else None
    tokens = select(priv, [len(r)] * n, pub, cfg, np.random.default_rng(seed), states)
    counts = np.bincount(tokens, minlength=v)
    if not gated:
        return tuple(counts.tolist())
    above = np.array([s.private_tokens for s in states], dtype=bool)
    assert all(s.private_tokens + s.public_tokens == 1 for s in states)
    return tuple(np.bincount(tokens[above], minlength=v).tolist()), tuple(np.bincount(tokens[~above], minlength=v).tolist())


def clear_draw_cache() -> None:
    """Forget cached draws (needed after patching the mechanism under test)."""
    _draw_cached.cache_clear()


def draw(cfg: DecodingConfig, private_rows, public, n_draws: int, seed: int, select: Select = select_tokens) -> np.ndarray:
    """Counts per token of n_draws independent calls (one batch of n_draws identical groups).

    select: the mechanism under test (default mechanisms.select_tokens; a test passes a
    deliberately broken one to check the audit's power). Draws are cached per argument set."""
    v = len(public)
    key = tuple(map(tuple, _rows(private_rows, v).tolist()))
    return np.array(_draw_cached(cfg, key, tuple(map(float, public)), n_draws, seed, False, select))


def draw_gated(cfg: DecodingConfig, private_rows, public, n_draws: int, seed: int) -> np.ndarray:
    """Counts (2, V) of (above?, token) over n_draws calls, each with a fresh GroupState."""
    v = len(public)
    key = tuple(map(tuple, _rows(private_rows, v).tolist()))
    above, below = _draw_cached(cfg, key, tuple(map(float, public)), n_draws, seed, True)
    return np.array([above, below])


# ---------------------------------------------------------------------------------------------
# Estimation


def cp_interval(k, n, alpha):
    """Two-sided Clopper-Pearson interval (coverage 1 - alpha) of a binomial proportion."""
    k = np.asarray(k, dtype=float)
    lo = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
    hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    return np.nan_to_num(lo), np.nan_to_num(hi, nan=1.0)


def log_ratio_bounds(counts_a, counts_b, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """(lower confidence bound, point estimate) of max over outcomes of |log P_a - log P_b|.

    Bonferroni over the 2 x (outcomes) intervals: with probability >= 1 - alpha every interval
    holds, and then the true max |log ratio| is >= the returned lower bound."""
    counts_a, counts_b = np.ravel(counts_a), np.ravel(counts_b)
    each = alpha / (2 * counts_a.size)
    lo_a, hi_a = cp_interval(counts_a, n, each)
    lo_b, hi_b = cp_interval(counts_b, n, each)
    with np.errstate(divide="ignore", invalid="ignore"):
        lcb = np.maximum(np.log(lo_a) - np.log(hi_b), np.log(lo_b) - np.log(hi_a))
        point = np.abs(np.log(counts_a) - np.log(counts_b))
    seen = (counts_a + counts_b) > 0  # an outcome drawn under neither (outside the candidates) says nothing
    return float(max(0.0, lcb.max())), float(point[seen].max()) if seen.any() else 0.0


def fits(counts, probs, n: int) -> float:
    """Chi-square goodness-of-fit p-value of counts against exact probabilities; 0 when an
    outcome of probability 0 (outside the candidate set) was drawn."""
    counts, probs = np.asarray(counts), np.asarray(probs, dtype=float)
    possible = probs > 0
    if counts[~possible].any():
        return 0.0
    return float(stats.chisquare(counts[possible], n * probs[possible] / probs.sum()).pvalue)


def softmax(x) -> np.ndarray:
    e = np.exp(np.asarray(x, dtype=float) - np.max(x))
    return e / e.sum()


def gaussian_delta(eps: float, mu: float) -> float:
    """Tight privacy profile of the Gaussian mechanism (Balle & Wang 2018)."""
    return float(stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest eps >= 0 with delta_mu(eps) <= delta (0 when mu = 0 or delta_mu(0) <= delta)."""
    if mu <= 0 or gaussian_delta(0.0, mu) <= delta:
        return 0.0
    hi = 1.0
    while gaussian_delta(hi, mu) > delta:
        hi *= 2
    return float(optimize.brentq(lambda e: gaussian_delta(e, mu) - delta, 0.0, hi, xtol=1e-10))


def profile_excess(counts_a, counts_b, n: int, alpha: float = ALPHA, eps_grid: Sequence[float] = EPS_GRID) -> list[tuple[float, float, float]]:
    """For each eps: (eps, lower confidence bound, point estimate) of
    max over events E = {y} and both directions of P_a(E) - e^eps P_b(E)."""
    counts_a, counts_b = np.ravel(counts_a), np.ravel(counts_b)
    each = alpha / (2 * counts_a.size)
    lo_a, hi_a = cp_interval(counts_a, n, each)
    lo_b, hi_b = cp_interval(counts_b, n, each)
    pa, pb = counts_a / n, counts_b / n
    out = []
    for eps in eps_grid:
        k = math.exp(eps)
        lcb = max((lo_a - k * hi_b).max(), (lo_b - k * hi_a).max())
        point = max((pa - k * pb).max(), (pb - k * pa).max())
        out.append((float(eps), float(lcb), float(point)))
    return out


def gaussian_mu_for(eps: float, delta: float) -> float:
    """The mu whose Gaussian profile passes through (eps, delta): delta_mu(eps) = delta (0 if
    delta <= 0). delta_mu(eps) increases with mu."""
    if delta <= 0:
        return 0.0
    if delta >= 1:
        return math.inf
    hi = 1.0
    while gaussian_delta(eps, hi) < delta:
        hi *= 2
        if hi > 1e3:
            return math.inf
    return float(optimize.brentq(lambda m: gaussian_delta(eps, m) - delta, 1e-12, hi, xtol=1e-12))


def mu_lower_bound(profile: Sequence[tuple[float, float, float]], which: int = 1) -> float:
    """The smallest mu whose Gaussian profile is >= every estimated delta(eps) of `profile`
    (which = 1: the lower confidence bounds; 2: the point estimates)."""
    return max([0.0, *(gaussian_mu_for(row[0], row[which]) for row in profile)])


# ---------------------------------------------------------------------------------------------
# Crafted neighbouring inputs


@dataclass(frozen=True)
class Case:
    """em / amin neighbours: D = background + one crafted row, D' = background."""

    mechanism: str
    clip: float
    partitions: int
    tau: float
    public: tuple
    background: tuple  # rows present in both D and D'
    top_k: int | None
    seed: int
    top_k_plus: bool = True

    @property
    def cfg(self) -> DecodingConfig:
        return DecodingConfig(mechanism=self.mechanism, partitions=self.partitions, temperature=self.tau, clip=self.clip, top_k=self.top_k,
                              top_k_plus=self.top_k_plus)

    @property
    def eps0(self) -> float:
        return 2 * self.clip / (self.partitions * self.tau)

    @property
    def v(self) -> int:
        return len(self.public)

    def crafted(self) -> np.ndarray:
        """The extreme row: after clipping it sits at +C on token 0 and -C on token 1
        (the mechanism's Mechanism.crafted_row against this public row)."""
        return np.asarray(get(self.mechanism).crafted_row(self.cfg, self.public), dtype=float)

    def d_rows(self, copies: int = 1) -> np.ndarray:
        return np.vstack([_rows(self.background, self.v), *[self.crafted()] * copies])

    def dp_rows(self) -> np.ndarray:
        return _rows(self.background, self.v)


def exact(case: Case, rows: np.ndarray, divisor: float) -> np.ndarray:
    """The docstring formulas of aggregate_em / aggregate_amin, sampled over the candidate set
    that candidate_sets' docstring states (written out here again, independently)."""
    c, zp = case.clip, np.asarray(case.public, dtype=float)
    if case.mechanism == "em":
        s = zp + np.clip(rows - zp, -c, c).sum(axis=0) / divisor
    else:
        s = np.clip(rows - rows.max(axis=1, keepdims=True) + c, -c, c).sum(axis=0) / divisor if len(rows) else np.zeros(case.v)
    keep = np.ones(case.v, dtype=bool)
    if case.top_k is not None and case.top_k < case.v:
        kth = np.sort(zp)[-case.top_k]
        keep = zp >= (kth - 2 * c if case.mechanism == "em" and case.top_k_plus else kth)
    p = np.where(keep, softmax(np.where(keep, s / case.tau, -np.inf)), 0.0)
    return p


def amin_background(c: float, v: int, n: int) -> tuple:
    """n amin rows that shift to (c, 0, 0, ...): token 0 favoured, present in both D and D'."""
    return tuple(tuple([0.0] + [-c] * (v - 1)) for _ in range(n))


def worst_case(cfg: DecodingConfig, low_prob: float = 0.1, seed: int = 0) -> Case:
    """Binary (V = 2) neighbours near the bounded-range worst case, for a mechanism whose claim is
    pure epsilon (em, amin): its Mechanism.audit_neighbours as a Case.

    The crafted row moves token 0 by +D and token 1 by -D (D = C/N, scores / tau); the
    background makes token 0 unlikely under D' (probability low_prob), so that D's token-0
    probability rises by nearly the whole range: log P_D(0) - log P_D'(0) -> eps0 as
    low_prob -> 0. low_prob trades tightness for the variance of the estimate.
    """
    m = get(cfg.mechanism)
    if m.audit_claim != "pure":
        pure = [x.name for x in mechanisms() if x.audit_claim == "pure"]
        raise ValueError(f"mechanism must be one with a pure-epsilon claim ({', '.join(pure)}), got {cfg.mechanism!r}")
    n = m.audit_neighbours(cfg, low_prob)
    return Case(cfg.mechanism, cfg.clip, cfg.partitions, cfg.temperature, n.public, n.background, None, seed)


EXTREME = (30.0, -30.0)  # gaussian: a point mass on token 0 (tau = 1)

GATE_PUBLIC = (3.0, 0.0, 0.0, 0.0)
GATE_ROW = (-20.0, 20.0, -20.0, -20.0)  # a point mass on a token the public row finds unlikely


def laplace_diff_survival(t: float, a: float, b: float) -> float:
    """P(A - B >= t) for independent A ~ Lap(a), B ~ Lap(b), a != b."""
    s = (a * a * math.exp(-abs(t) / a) - b * b * math.exp(-abs(t) / b)) / (2 * (a * a - b * b))
    return s if t >= 0 else 1.0 - s


def exact_above(cfg: DecodingConfig, n_rows: int) -> float:
    """P(above) of one gate step on n_rows GATE_ROW rows against GATE_PUBLIC:
    P(q + Lap(4D/eps) >= T + Lap(2D/eps)), q = (1/2)|sum_i (p_i - p_pub)| / N."""
    g, d = cfg.gate, 1.0 / cfg.partitions
    pp, pr = softmax(np.asarray(GATE_PUBLIC) / cfg.temperature), softmax(np.asarray(GATE_ROW) / cfg.temperature)
    q = 0.5 * np.abs(n_rows * (pr - pp)).sum() / cfg.partitions
    return laplace_diff_survival(g.threshold - q, 4 * d / g.epsilon, 2 * d / g.epsilon)


# ---------------------------------------------------------------------------------------------
# The audit of one mechanism


class Verdict:
    """The verdict of an audit result with claimed_epsilon, empirical_epsilon (a lower
    confidence bound) and empirical_point fields: every audit passes or fails by the same rule."""

    claimed_epsilon: float
    empirical_epsilon: float
    empirical_point: float

    @property
    def passed(self) -> bool:
        return self.empirical_epsilon <= self.claimed_epsilon

    @property
    def tightness(self) -> float:
        """Point estimate over the claim: how close the crafted inputs come to it."""
        return self.empirical_point / self.claimed_epsilon if self.claimed_epsilon > 0 else math.inf

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "tightness": self.tightness}


@dataclass(frozen=True)
class TokenAudit(Verdict):
    """One mechanism's per-token audit (see the module docstring for the definitions)."""

    mechanism: str
    claim: str  # "pure" (em, amin) or "gaussian-dp" (gaussian)
    claimed_epsilon: float
    empirical_epsilon: float  # lower confidence bound, same definition as the claim
    empirical_point: float  # point estimate
    delta: float  # per-token delta of both figures (0 for pure)
    rho_claimed: float  # mechanisms.costs.rho_selection of the config
    draws: int  # calls of the mechanism per neighbouring input
    alpha: float
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def claimed_epsilon(cfg: DecodingConfig, delta: float) -> float:
    """The per-token epsilon the mechanism claims (Mechanism.claimed_bound): eps0 = 2D/tau for a
    pure claim (em, amin), or the epsilon at `delta` of the Gaussian mechanism with mu = D/sigma
    for a gaussian-dp claim (gaussian)."""
    m = get(cfg.mechanism)
    if m.audit_claim == "pure":
        return m.claimed_bound(cfg)
    return gaussian_epsilon(m.claimed_bound(cfg), delta)


def audit_token(
    cfg: DecodingConfig,
    draws: int = 100_000,
    seed: int = 0,
    alpha: float = ALPHA,
    delta: float = 1e-5,
    claimed: float | None = None,
    select: Select = select_tokens,
    low_prob: float = 0.1,
) -> TokenAudit:
    """Audit one selection step of cfg's mechanism on its crafted worst-case neighbours.

    claimed: the per-token epsilon to test against (default: what the mechanism claims, see
    `claimed_epsilon`); for a gaussian-dp claim it is converted to the mu whose epsilon at
    `delta` it is. select: the mechanism (default mechanisms.select_tokens). delta: the
    per-token delta of the gaussian-dp figures (ignored by pure claims: em, amin). Default layout only:
    cfg.units_per_row must be 1 and cfg.gate None (the gate has its own tests).
    """
    if cfg.units_per_row != 1 or cfg.gate is not None:
        raise ValueError("the per-token audit covers the default layout without a gate (units_per_row=1, gate=None)")
    cfg = cfg.replace(top_k=None)  # candidates: the crafted input's whole (2-token) vocabulary
    rho = rho_selection(cfg)
    m = get(cfg.mechanism)
    if m.audit_claim == "pure":
        case = worst_case(cfg, low_prob, seed)
        d = draw(cfg, case.d_rows(), case.public, draws, seed, select)
        dp = draw(cfg, case.dp_rows(), case.public, draws, seed + 1, select)
        lcb, point = log_ratio_bounds(d, dp, draws, alpha)
        claim = claimed_epsilon(cfg, 0.0) if claimed is None else claimed
        return TokenAudit(cfg.mechanism, "pure", claim, lcb, point, 0.0, rho, draws, alpha, cfg.to_dict(),
                          {"low_prob": low_prob, "counts_d": d.tolist(), "counts_d_prime": dp.tolist()})
    n = m.audit_neighbours(cfg, low_prob)
    d = draw(cfg, n.d_rows, n.public, draws, seed, select)
    dp = draw(cfg, n.dp_rows, n.public, draws, seed + 1, select)
    profile = profile_excess(d, dp, draws, alpha, AUDIT_EPS_GRID)
    mu_lo, mu_point = mu_lower_bound(profile, 1), mu_lower_bound(profile, 2)
    mu_claim = m.claimed_bound(cfg)
    if claimed is not None:  # the mu whose epsilon at delta is the given claim
        mu_claim = gaussian_mu_for(claimed, delta)
    claim = gaussian_epsilon(mu_claim, delta)
    return TokenAudit(cfg.mechanism, "gaussian-dp", claim, gaussian_epsilon(mu_lo, delta), gaussian_epsilon(mu_point, delta), delta,
                      rho, draws, alpha, cfg.to_dict(),
                      {"mu_claimed": mu_claim, "mu_lower": mu_lo, "mu_point": mu_point, "counts_d": d.tolist(),
                       "counts_d_prime": dp.tolist(),
                       "profile": [{"eps": e, "delta_lower": lo, "delta_point": pt, "delta_claimed": gaussian_delta(e, mu_claim)}
                                   for e, lo, pt in profile]})

