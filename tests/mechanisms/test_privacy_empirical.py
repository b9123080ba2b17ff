"""Seeded Monte-Carlo audits of ONE call of `select_tokens` between neighbouring inputs.

Adjacency: add/remove one privacy unit = one private row (default layout). D holds the crafted
row, D' lacks it. Each group of a batch gets its own randomness, so a batch of G identical
groups is G independent draws of the mechanism on the same input.

Every claim test asserts the *lower* confidence bound of the privacy loss (the figure most
favourable to the mechanism; Clopper-Pearson, Bonferroni, family-wise ALPHA per test) is within
the claimed per-token bound, and that the crafted inputs come close to it (tightness). Every
claim has a power counterpart: the same estimator on a deliberately broken variant (a claimed
bound that is too small, a divisor set to the realised row count, one unit spanning several
rows, gate noise calibrated to a halved sensitivity) must detect a violation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest
from scipy import stats

import mechanisms.select as select_mod
from mechanisms import DecodingConfig, GateConfig, GroupState, select_tokens

ALPHA = 1e-3  # family-wise error of each test's confidence statement
DRAWS = 40_000  # per neighbouring input (em, amin)
GAUSS_DRAWS = 80_000
GATE_DRAWS = 60_000


# ---------------------------------------------------------------------------------------------
# Sampling and estimation helpers


def _rows(rows, v: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).reshape(-1, v)


@lru_cache(maxsize=None)
def _draw_cached(cfg: DecodingConfig, rows: tuple, public: tuple, n: int, seed: int, gated: bool) -> tuple:
    v = len(public)
    r = _rows(rows, v)
    priv = np.tile(r, (n, 1))
    pub = np.tile(np.asarray(public, dtype=np.float64), (n, 1))
    states = [GroupState() for _ in range(n)] if gated else None
    tokens = select_tokens(priv, [len(r)] * n, pub, cfg, np.random.default_rng(seed), states)
    counts = np.bincount(tokens, minlength=v)
    if not gated:
        return tuple(counts.tolist())
    above = np.array([s.private_tokens for s in states], dtype=bool)
    assert all(s.private_tokens + s.public_tokens == 1 for s in states)
    return tuple(np.bincount(tokens[above], minlength=v).tolist()), tuple(np.bincount(tokens[~above], minlength=v).tolist())


def draw(cfg: DecodingConfig, private_rows, public, n_draws: int, seed: int) -> np.ndarray:
    """Counts per token of n_draws independent calls (one batch of n_draws identical groups)."""
    v = len(public)
    key = tuple(map(tuple, _rows(private_rows, v).tolist()))
    return np.array(_draw_cached(cfg, key, tuple(map(float, public)), n_draws, seed, False))


def draw_gated(cfg: DecodingConfig, private_rows, public, n_draws: int, seed: int) -> np.ndarray:
    """Counts (2, V) of (above?, token) over n_draws calls, each with a fresh GroupState."""
    v = len(public)
    key = tuple(map(tuple, _rows(private_rows, v).tolist()))
    above, below = _draw_cached(cfg, key, tuple(map(float, public)), n_draws, seed, True)
    return np.array([above, below])


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
    with np.errstate(divide="ignore"):
        lcb = np.maximum(np.log(lo_a) - np.log(hi_b), np.log(lo_b) - np.log(hi_a))
        point = np.abs(np.log(counts_a) - np.log(counts_b))
    return float(max(0.0, lcb.max())), float(point.max())


def fits(counts, probs, n: int) -> float:
    """Chi-square goodness-of-fit p-value of counts against exact probabilities."""
    return float(stats.chisquare(counts, n * np.asarray(probs) / np.sum(probs)).pvalue)


def softmax(x) -> np.ndarray:
    e = np.exp(np.asarray(x, dtype=float) - np.max(x))
    return e / e.sum()


# ---------------------------------------------------------------------------------------------
# em and amin: bounded range eps0 = 2C/(N tau)


@dataclass(frozen=True)
class Case:
    mechanism: str
    clip: float
    partitions: int
    tau: float
    public: tuple
    background: tuple  # rows present in both D and D'
    top_k: int | None
    seed: int

    @property
    def cfg(self) -> DecodingConfig:
        return DecodingConfig(mechanism=self.mechanism, partitions=self.partitions, temperature=self.tau, clip=self.clip, top_k=self.top_k)

    @property
    def eps0(self) -> float:
        return 2 * self.clip / (self.partitions * self.tau)

    @property
    def v(self) -> int:
        return len(self.public)

    def crafted(self) -> np.ndarray:
        """The extreme row: after clipping it sits at +C on token 0 and -C on token 1."""
        c, z = self.clip, np.asarray(self.public, dtype=float)
        if self.mechanism == "em":  # z_pub + clip(z - z_pub): +C, -C, 0, ...
            return z + np.r_[10 * c, -10 * c, np.zeros(self.v - 2)]
        return np.r_[10.0, -10.0, np.full(self.v - 2, 10.0 - c)]  # shifted: c, -c, 0, ...

    def d_rows(self, copies: int = 1) -> np.ndarray:
        return np.vstack([_rows(self.background, self.v), *[self.crafted()] * copies])

    def dp_rows(self) -> np.ndarray:
        return _rows(self.background, self.v)


def exact(case: Case, rows: np.ndarray, divisor: float) -> np.ndarray:
    """The docstring formulas of aggregate_em / aggregate_amin, whole vocabulary as candidates."""
    c, zp = case.clip, np.asarray(case.public, dtype=float)
    if case.mechanism == "em":
        s = zp + np.clip(rows - zp, -c, c).sum(axis=0) / divisor
    else:
        s = np.clip(rows - rows.max(axis=1, keepdims=True) + c, -c, c).sum(axis=0) / divisor if len(rows) else np.zeros(case.v)
    return softmax(s / case.tau)


_AMIN_BG = lambda c, v, n: tuple(tuple([0.0] + [-c] * (v - 1)) for _ in range(n))  # noqa: E731  shifted: c, 0, 0...

CASES = [
    Case("em", 1.0, 2, 0.5, (1.0, 0.0, 0.0, 0.0), (), None, 11),
    Case("em", 2.0, 4, 0.5, (0.5, 0.0, 0.2, -0.3), ((1.0, 0.0, 0.0, 0.0), (1.5, -1.0, 0.5, 0.0)), 4, 21),
    Case("em", 3.0, 8, 0.5, (0.75, 0, 0, 0, 0, 0), ((2.0, 0, 0, 0, 0, 0),) * 4, 6, 31),
    Case("amin", 2.0, 4, 0.5, (0.0, 0.0, 0.0, 0.0), _AMIN_BG(2.0, 4, 2), None, 41),
    Case("amin", 1.0, 5, 0.25, (0.3, -1.0, 2.0, 0.0), _AMIN_BG(1.0, 4, 3), 4, 51),
    Case("amin", 1.5, 6, 0.5, (0.0, 0.0, 0.0, 0.0, 0.0, 0.0), _AMIN_BG(1.5, 6, 4), None, 61),
]
IDS = [f"{c.mechanism}-C{c.clip}-N{c.partitions}-tau{c.tau}-V{c.v}" for c in CASES]


def _counts(case: Case, d_copies: int = 1, cfg: DecodingConfig | None = None, cfg_prime: DecodingConfig | None = None):
    d = draw(cfg or case.cfg, case.d_rows(d_copies), case.public, DRAWS, case.seed)
    dp = draw(cfg_prime or case.cfg, case.dp_rows(), case.public, DRAWS, case.seed + 1)
    return d, dp


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bounded_range_log_ratio_within_eps0(case):
    """Claim: |log P_D(y) - log P_D'(y)| <= eps0 = 2C/(N tau) for every token (pure eps0-DP).

    The crafted row is near worst case: the point estimate reaches >= 0.6 eps0."""
    d, dp = _counts(case)
    lcb, point = log_ratio_bounds(d, dp, DRAWS)
    assert lcb <= case.eps0, f"privacy loss >= {lcb:.3f} > eps0 {case.eps0:.3f} with confidence 1-{ALPHA}"
    assert point >= 0.6 * case.eps0, f"crafted inputs not tight: {point:.3f} vs eps0 {case.eps0:.3f}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bounded_range_power(case):
    """Power: the estimator above flags (a) a claimed bound of eps0/2 on the same draws and (b)
    one unit spanning two rows (the eviction/few-shot layout charged at the default cost)."""
    d, dp = _counts(case)
    lcb, _ = log_ratio_bounds(d, dp, DRAWS)
    assert lcb > case.eps0 / 2, f"halved bound not detected: lcb {lcb:.3f} vs {case.eps0 / 2:.3f}"
    d2, dp = _counts(case, d_copies=2)
    lcb2, _ = log_ratio_bounds(d2, dp, DRAWS)
    assert lcb2 > case.eps0, f"doubled sensitivity not detected: lcb {lcb2:.3f} vs eps0 {case.eps0:.3f}"


@pytest.mark.parametrize("mechanism", ["em", "amin"])
def test_realised_row_count_divisor_is_detected(mechanism):
    """Power: dividing by the realised row count (1 row present of a public N = 8) instead of N
    breaks eps0; emulated by running D with partitions=1. The estimator must flag it."""
    case = Case(mechanism, 1.0, 8, 0.25, (1.0, 0.0, 0.0, 0.0), (), None, 71 if mechanism == "em" else 81)
    d, dp = _counts(case, cfg=case.cfg.replace(partitions=1))
    lcb, _ = log_ratio_bounds(d, dp, DRAWS)
    assert lcb > case.eps0, f"realised-count divisor not detected: lcb {lcb:.3f} vs eps0 {case.eps0:.3f}"
    ok, _ = _counts(case)  # the real mechanism on the same inputs stays within eps0
    assert log_ratio_bounds(ok, dp, DRAWS)[0] <= case.eps0


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_documented_formula(case):
    """The empirical distributions on D and D' match softmax(avg/tau) of the docstring formula
    with divisor N; the same goodness-of-fit rejects the divisor 'realised rows' (its power)."""
    d, dp = _counts(case)
    for counts, rows in ((d, case.d_rows()), (dp, case.dp_rows())):
        p = fits(counts, exact(case, rows, case.partitions), DRAWS)
        assert p > ALPHA / 2, f"empirical distribution deviates from the documented formula (p={p:.2g})"
    assert len(case.d_rows()) != case.partitions
    p_wrong = fits(d, exact(case, case.d_rows(), len(case.d_rows())), DRAWS)
    assert p_wrong < 1e-6, "goodness of fit cannot tell divisor N from the realised row count"


# ---------------------------------------------------------------------------------------------
# gaussian noisy argmax: privacy profile of a Gaussian mechanism with mu = L2 sensitivity / sigma


def gaussian_delta(eps: float, mu: float) -> float:
    """Tight privacy profile of the Gaussian mechanism (Balle & Wang 2018)."""
    return float(stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2))


EPS_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)


def profile_excess(counts_a, counts_b, n: int, alpha: float = ALPHA) -> list[tuple[float, float, float]]:
    """For each eps: (eps, lower confidence bound, point estimate) of
    max over events E = {y} and both directions of P_a(E) - e^eps P_b(E)."""
    counts_a, counts_b = np.ravel(counts_a), np.ravel(counts_b)
    each = alpha / (2 * counts_a.size)
    lo_a, hi_a = cp_interval(counts_a, n, each)
    lo_b, hi_b = cp_interval(counts_b, n, each)
    pa, pb = counts_a / n, counts_b / n
    out = []
    for eps in EPS_GRID:
        k = math.exp(eps)
        lcb = max((lo_a - k * hi_b).max(), (lo_b - k * hi_a).max())
        point = max((pa - k * pb).max(), (pb - k * pa).max())
        out.append((eps, float(lcb), float(point)))
    return out


# (sigma, rows favouring token 1 present in both D and D'); V = 2, top_k = 2: binary output
GAUSS = [(1.0, 0, 101), (2.0, 0, 111), (1.5, 2, 121)]
GAUSS_IDS = [f"sigma{s}-bg{b}" for s, b, _ in GAUSS]
EXTREME = (30.0, -30.0)


def _gauss_counts(sigma: float, n_bg: int, seed: int, copies: int = 1):
    cfg = DecodingConfig(mechanism="gaussian", noise_multiplier=sigma, top_k=2, partitions=4)
    bg = [(-30.0, 30.0)] * n_bg
    public = (0.0, 0.0)
    d = draw(cfg, bg + [EXTREME] * copies, public, GAUSS_DRAWS, seed)
    dp = draw(cfg, bg if bg else np.zeros((0, 2)), public, GAUSS_DRAWS, seed + 1)
    return d, dp


@pytest.mark.parametrize("sigma,n_bg,seed", GAUSS, ids=GAUSS_IDS)
def test_gaussian_within_privacy_profile(sigma, n_bg, seed):
    """Claim: argmax of (sum of probability vectors + N(0, sigma^2)) is post-processing of a
    Gaussian mechanism with L2 sensitivity 1, so for every event and eps,
    P_D(E) <= e^eps P_D'(E) + delta_mu(eps) with mu = 1/sigma, both directions. The binary
    output reaches >= 0.5 of the claimed total-variation delta_mu(0) (tightness)."""
    d, dp = _gauss_counts(sigma, n_bg, seed)
    mu = 1.0 / sigma
    rows = profile_excess(d, dp, GAUSS_DRAWS)
    for eps, lcb, _ in rows:
        assert lcb <= gaussian_delta(eps, mu), f"eps={eps}: excess >= {lcb:.4f} > delta {gaussian_delta(eps, mu):.4f}"
    tv = rows[0][2]
    assert tv >= 0.5 * gaussian_delta(0.0, mu), f"not tight: TV {tv:.4f} vs delta(0) {gaussian_delta(0.0, mu):.4f}"
    # Implementation matches its formula: P(token 0) = Phi((s0 - s1) / (sigma sqrt 2)).
    for counts, diff in ((d, 1 - n_bg), (dp, -n_bg)):
        p0 = stats.norm.cdf(diff / (sigma * math.sqrt(2)))
        assert fits(counts, [p0, 1 - p0], GAUSS_DRAWS) > ALPHA / 2


@pytest.mark.parametrize("sigma,n_bg,seed", GAUSS, ids=GAUSS_IDS)
def test_gaussian_power(sigma, n_bg, seed):
    """Power: the same estimator flags (a) a claimed mu = 0.5/sigma (the binary output's true
    mu is 1/(sqrt(2) sigma)) and (b) one unit spanning two rows (L2 shift 2) against mu = 1/sigma."""
    d, dp = _gauss_counts(sigma, n_bg, seed)
    assert any(lcb > gaussian_delta(eps, 0.5 / sigma) for eps, lcb, _ in profile_excess(d, dp, GAUSS_DRAWS))
    d2, dp = _gauss_counts(sigma, n_bg, seed, copies=2)
    assert any(lcb > gaussian_delta(eps, 1.0 / sigma) for eps, lcb, _ in profile_excess(d2, dp, GAUSS_DRAWS))


# ---------------------------------------------------------------------------------------------
# public-token gate: one step of Laplace AboveThreshold with a fresh GroupState

GATE_PUBLIC = (3.0, 0.0, 0.0, 0.0)
GATE_ROW = (-20.0, 20.0, -20.0, -20.0)  # a point mass on a token the public row finds unlikely


def _gate_cfg(n: int = 8, eps: float = 1.0, threshold: float = 0.9) -> DecodingConfig:
    return DecodingConfig(mechanism="em", partitions=n, temperature=1.0, clip=2.0, top_k=None,
                          gate=GateConfig(threshold=threshold, epsilon=eps, max_private_tokens=4))


def laplace_diff_survival(t: float, a: float, b: float) -> float:
    """P(A - B >= t) for independent A ~ Lap(a), B ~ Lap(b), a != b."""
    s = (a * a * math.exp(-abs(t) / a) - b * b * math.exp(-abs(t) / b)) / (2 * (a * a - b * b))
    return s if t >= 0 else 1.0 - s


def exact_above(cfg: DecodingConfig, n_rows: int) -> float:
    """P(above) = P(q + Lap(4D/eps) >= T + Lap(2D/eps)), q = (1/2)|sum_i (p_i - p_pub)| / N."""
    g, d = cfg.gate, 1.0 / cfg.partitions
    pp, pr = softmax(np.asarray(GATE_PUBLIC) / cfg.temperature), softmax(np.asarray(GATE_ROW) / cfg.temperature)
    q = 0.5 * np.abs(n_rows * (pr - pp)).sum() / cfg.partitions
    return laplace_diff_survival(g.threshold - q, 4 * d / g.epsilon, 2 * d / g.epsilon)


def _gate_counts(cfg: DecodingConfig, seed: int, copies: int = 1):
    d = draw_gated(cfg, [GATE_ROW] * copies, GATE_PUBLIC, GATE_DRAWS, seed)
    dp = draw_gated(cfg, np.zeros((0, 4)), GATE_PUBLIC, GATE_DRAWS, seed + 1)
    return d, dp


def test_gate_decision_within_epsilon():
    """Claim: the above/below answer of one AboveThreshold step is gate.epsilon-DP. With one query
    and a fresh threshold it is in fact eps/4-DP (A - B is log-concave with tail rate eps/(4D),
    so its log-survival is eps/(4D)-Lipschitz): assert the LCB is within eps/4 <= eps, that the
    crafted input reaches >= eps/8, and that P(above) matches the exact Laplace formula.
    The joint output (decision, token) stays within gate.epsilon + eps0 of the selection."""
    cfg = _gate_cfg()
    eps = cfg.gate.epsilon
    d, dp = _gate_counts(cfg, 201)
    above = lambda c: np.array([c[0].sum(), c[1].sum()])  # noqa: E731
    lcb, point = log_ratio_bounds(above(d), above(dp), GATE_DRAWS)
    assert lcb <= eps / 4 <= eps, f"gate decision loss >= {lcb:.3f} > eps/4 = {eps / 4}"
    assert point >= eps / 8, f"crafted input not tight: {point:.3f}"
    for counts, n_rows in ((d, 1), (dp, 0)):
        p = exact_above(cfg, n_rows)
        assert fits(above(counts), [p, 1 - p], GATE_DRAWS) > ALPHA / 2
    eps0 = 2 * cfg.clip / (cfg.partitions * cfg.temperature)
    lcb_joint, _ = log_ratio_bounds(d, dp, GATE_DRAWS)
    assert lcb_joint <= eps + eps0


def test_gate_power(monkeypatch):
    """Power: (a) one unit spanning all N rows (distance moves by ~1, not 1/N) breaks the claimed
    gate.epsilon and is flagged; (b) noise calibrated to half the true sensitivity (gate_delta
    patched to 1/(2N)) breaks the tight single-step bound eps/4 and is flagged."""
    cfg = _gate_cfg()
    eps = cfg.gate.epsilon
    above = lambda c: np.array([c[0].sum(), c[1].sum()])  # noqa: E731
    d, dp = _gate_counts(cfg, 211, copies=cfg.partitions)
    lcb, _ = log_ratio_bounds(above(d), above(dp), GATE_DRAWS)
    assert lcb > eps, f"unit spanning N rows not detected: lcb {lcb:.3f} vs eps {eps}"

    monkeypatch.setattr(select_mod, "gate_delta", lambda c: 0.5 / c.partitions)
    _draw_cached.cache_clear()  # the cache must not serve draws of the unpatched mechanism
    d, dp = _gate_counts(cfg, 221)
    _draw_cached.cache_clear()
    lcb, _ = log_ratio_bounds(above(d), above(dp), GATE_DRAWS)
    assert lcb > eps / 4, f"halved gate noise not detected: lcb {lcb:.3f} vs eps/4 {eps / 4}"
