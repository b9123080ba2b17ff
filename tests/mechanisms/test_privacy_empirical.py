"""Seeded Monte-Carlo audits of ONE call of `select_tokens` between neighbouring inputs.

The estimator (draws, Clopper-Pearson loss bounds) and the crafted inputs live in
service.audit.tokens, which `privtext audit` runs too; the tables and assertions live here.

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

import numpy as np
import pytest
from scipy import stats

import mechanisms.select as select_mod
from mechanisms import DecodingConfig, GateConfig
from service.audit.tokens import (  # the one home of the estimator and the crafted inputs
    EXTREME,
    GATE_PUBLIC,
    GATE_ROW,
    Case,
    amin_background,
    clear_draw_cache,
    draw,
    draw_gated,
    exact,
    exact_above,
    fits,
    gaussian_delta,
    log_ratio_bounds,
    profile_excess,
)

ALPHA = 1e-3  # family-wise error of each test's confidence statement
DRAWS = 40_000  # per neighbouring input (em, amin)
GAUSS_DRAWS = 80_000
GATE_DRAWS = 60_000


# ---------------------------------------------------------------------------------------------
# em and amin: bounded range eps0 = 2C/(N tau)

_AMIN_BG = amin_background

CASES = [
    Case("em", 1.0, 2, 0.5, (1.0, 0.0, 0.0, 0.0), (), None, 11),
    Case("em", 2.0, 4, 0.5, (0.5, 0.0, 0.2, -0.3), ((1.0, 0.0, 0.0, 0.0), (1.5, -1.0, 0.5, 0.0)), 4, 21),
    Case("em", 3.0, 8, 0.5, (0.75, 0, 0, 0, 0, 0), ((2.0, 0, 0, 0, 0, 0),) * 4, 6, 31),
    Case("em", 2.0, 4, 0.5, (1.0, 0.5, 0.0, -0.5, -1.0), ((0.0, 1.0, 0.5, 0.0, 0.0),), 3, 91, top_k_plus=False),  # the public top-3
    Case("amin", 2.0, 4, 0.5, (0.0, 0.0, 0.0, 0.0), _AMIN_BG(2.0, 4, 2), None, 41),
    Case("amin", 1.0, 5, 0.25, (0.3, -1.0, 2.0, 0.0), _AMIN_BG(1.0, 4, 3), 4, 51),
    Case("amin", 1.5, 6, 0.5, (0.0, 0.0, 0.0, 0.0, 0.0, 0.0), _AMIN_BG(1.5, 6, 4), None, 61),
]
IDS = [f"{c.mechanism}-C{c.clip}-N{c.partitions}-tau{c.tau}-V{c.v}{'' if c.top_k_plus else '-topk'}" for c in CASES]


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

# (sigma, rows favouring token 1 present in both D and D'); V = 2, top_k = 2: binary output
GAUSS = [(1.0, 0, 101), (2.0, 0, 111), (1.5, 2, 121)]
GAUSS_IDS = [f"sigma{s}-bg{b}" for s, b, _ in GAUSS]


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


def _gate_cfg(n: int = 8, eps: float = 1.0, threshold: float = 0.9) -> DecodingConfig:
    return DecodingConfig(mechanism="em", partitions=n, temperature=1.0, clip=2.0, top_k=None,
                          gate=GateConfig(threshold=threshold, epsilon=eps, max_private_tokens=4))


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
    clear_draw_cache()  # the cache must not serve draws of the unpatched mechanism
    d, dp = _gate_counts(cfg, 221)
    clear_draw_cache()
    lcb, _ = log_ratio_bounds(above(d), above(dp), GATE_DRAWS)
    assert lcb > eps / 4, f"halved gate noise not detected: lcb {lcb:.3f} vs eps/4 {eps / 4}"
