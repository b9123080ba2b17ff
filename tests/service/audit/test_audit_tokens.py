"""The per-token audit (service.audit.tokens): it passes the real mechanisms and flags broken
ones, a too-small claim, and layouts it does not cover."""

from __future__ import annotations

import numpy as np
import pytest

from mechanisms import DecodingConfig, GateConfig, select_tokens
from mechanisms.costs import rho_selection
from service.audit.tokens import (
    audit_token,
    claimed_epsilon,
    gaussian_delta,
    gaussian_epsilon,
    gaussian_mu_for,
    mu_lower_bound,
    profile_excess,
)

DRAWS = 100_000
REAL = [
    DecodingConfig(mechanism="em", partitions=4, clip=2.0, temperature=1.0),  # eps0 = 1
    DecodingConfig(mechanism="em", partitions=8, clip=0.95, temperature=1.0),  # ~ the audit's planned config
    DecodingConfig(mechanism="amin", partitions=4, clip=2.0, temperature=1.0),
    DecodingConfig(mechanism="amin", partitions=5, clip=1.0, temperature=0.5),
    DecodingConfig(mechanism="gaussian", partitions=8, noise_multiplier=1.0),
    DecodingConfig(mechanism="gaussian", partitions=8, noise_multiplier=2.0),
]
IDS = [f"{c.mechanism}-N{c.partitions}-C{c.clip}-tau{c.temperature}-sigma{c.noise_multiplier}" for c in REAL]


@pytest.mark.parametrize("cfg", REAL, ids=IDS)
def test_real_mechanisms_pass_and_crafted_inputs_are_tight(cfg):
    a = audit_token(cfg, DRAWS, seed=5)
    assert a.passed, a
    assert a.empirical_epsilon <= a.empirical_point
    # tightness: em/amin reach ~0.89 eps0 in expectation; the binary gaussian argmax ~0.7 of mu
    assert a.tightness >= (0.75 if a.claim == "pure" else 0.4), a.tightness
    assert a.rho_claimed == pytest.approx(rho_selection(cfg))


@pytest.mark.parametrize("cfg", REAL, ids=IDS)
def test_halved_claim_is_flagged(cfg):
    """The same draws against half the claimed per-token epsilon must fail (power)."""
    draws = 4 * DRAWS if claimed_epsilon(cfg, 1e-5) < 0.3 else DRAWS  # a small eps0 needs a finer estimate
    a = audit_token(cfg, draws, seed=5, claimed=claimed_epsilon(cfg, 1e-5) / 2)
    assert not a.passed, a


def _realised_divisor(priv, sizes, pub, cfg, rng, states=None):
    """Broken em: divides by the rows present instead of the public N."""
    return select_tokens(priv, sizes, pub, cfg.replace(partitions=max(int(sizes[0]), 1)), rng, states)


def _double_clip(priv, sizes, pub, cfg, rng, states=None):
    """Broken amin/em: clips at 2C while claiming C."""
    return select_tokens(priv, sizes, pub, cfg.replace(clip=2 * cfg.clip), rng, states)


def _half_noise(priv, sizes, pub, cfg, rng, states=None):
    """Broken gaussian: noise calibrated to half the sensitivity."""
    return select_tokens(priv, sizes, pub, cfg.replace(noise_multiplier=cfg.noise_multiplier / 2), rng, states)


BROKEN = [
    (DecodingConfig(mechanism="em", partitions=8, clip=0.95), _realised_divisor),
    (DecodingConfig(mechanism="em", partitions=4, clip=1.0), _double_clip),
    (DecodingConfig(mechanism="amin", partitions=8, clip=1.0), _double_clip),
    (DecodingConfig(mechanism="gaussian", partitions=8, noise_multiplier=1.0), _half_noise),
    (DecodingConfig(mechanism="gaussian", partitions=8, noise_multiplier=2.0), _half_noise),
]


@pytest.mark.parametrize("cfg,broken", BROKEN, ids=[f"{c.mechanism}-{b.__name__}" for c, b in BROKEN])
def test_broken_mechanism_is_flagged(cfg, broken):
    a = audit_token(cfg, DRAWS, seed=9, select=broken)
    assert not a.passed, a
    assert audit_token(cfg, DRAWS, seed=9).passed  # the real one on the same inputs and seeds


@pytest.mark.parametrize("cfg", [DecodingConfig(units_per_row=2), DecodingConfig(gate=GateConfig())])
def test_other_layouts_are_refused(cfg):
    with pytest.raises(ValueError):
        audit_token(cfg, 100)


def test_claimed_epsilon_definitions():
    em = DecodingConfig(mechanism="amin", partitions=8, clip=0.5, temperature=0.5)
    assert claimed_epsilon(em, 1e-5) == pytest.approx(2 * 0.5 / (8 * 0.5))
    assert rho_selection(em) == pytest.approx(claimed_epsilon(em, 0) ** 2 / 8)
    g = DecodingConfig(mechanism="gaussian", noise_multiplier=4.0)
    eps = claimed_epsilon(g, 1e-5)
    assert gaussian_delta(eps, 0.25) == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.parametrize("mu,delta", [(0.1, 1e-5), (0.5, 1e-3), (1.0, 1e-6), (2.0, 0.05)])
def test_gaussian_epsilon_and_mu_invert_each_other(mu, delta):
    eps = gaussian_epsilon(mu, delta)
    assert eps > 0 and gaussian_delta(eps, mu) == pytest.approx(delta, rel=1e-6)
    assert gaussian_mu_for(eps, delta) == pytest.approx(mu, rel=1e-6)
    assert gaussian_epsilon(0.5 * mu, delta) < eps


def test_mu_lower_bound_recovers_an_exact_profile():
    mu = 0.7
    profile = [(e, gaussian_delta(e, mu), gaussian_delta(e, mu)) for e in (0.0, 0.5, 1.0)]
    assert mu_lower_bound(profile) == pytest.approx(mu, rel=1e-6)
    assert mu_lower_bound([(0.0, 0.0, 0.0)]) == 0.0


def test_profile_excess_of_identical_counts_is_not_positive():
    c = np.array([500, 500])
    rows = profile_excess(c, c, 1000, 1e-3, (0.0, 1.0))
    assert rows[0][1] < 0 and rows[0][2] == pytest.approx(0.0, abs=1e-12)  # eps = 0: no excess
    assert rows[1][2] < 0  # eps = 1: P_a - e P_b < 0 for equal probabilities
