"""Every cost formula against values derived by hand (privacy-notes.md, costs.py docstrings)."""

import math

import pytest

from mechanisms import DecodingConfig, GateConfig, charged_tokens, rho_per_record, rho_per_token, sensitivity

# (config, sensitivity, rho per private token) computed by hand.
CASES = [
    # em: Delta = C/N; rho = (1/2)(C/(N tau))^2
    (DecodingConfig(mechanism="em", partitions=8, clip=0.5, temperature=1.0), 0.5 / 8, 0.5 * (0.5 / 8) ** 2),
    (DecodingConfig(mechanism="em", partitions=4, clip=2.0, temperature=0.5), 0.5, 0.5 * (2.0 / (4 * 0.5)) ** 2),
    # amin: same form with c
    (DecodingConfig(mechanism="amin", partitions=16, clip=3.0, temperature=2.0), 3.0 / 16, 0.5 * (3.0 / 32) ** 2),
    # gaussian: L2 Delta = 1; rho = 1/(2 sigma^2)
    (DecodingConfig(mechanism="gaussian", partitions=8, noise_multiplier=4.0), 1.0, 1 / 32),
    # few-shot layout: em/amin Delta doubles (rho x4), gaussian Delta sqrt(2) (rho x2)
    (DecodingConfig(mechanism="em", partitions=8, clip=0.5, units_per_row=3), 2 * 0.5 / 8, 4 * 0.5 * (0.5 / 8) ** 2),
    (DecodingConfig(mechanism="amin", partitions=8, clip=0.5, units_per_row=2), 2 * 0.5 / 8, 4 * 0.5 * (0.5 / 8) ** 2),
    (DecodingConfig(mechanism="gaussian", noise_multiplier=4.0, units_per_row=2), math.sqrt(2), 2 / 32),
    # gate adds eps^2/2 (pure eps-DP AboveThreshold -> zCDP) per private token
    (DecodingConfig(mechanism="em", partitions=8, clip=0.5, gate=GateConfig(epsilon=0.2)), 0.5 / 8, 0.5 * (0.5 / 8) ** 2 + 0.02),
]


@pytest.mark.parametrize("cfg,delta,rho", CASES)
def test_cost_formulas(cfg, delta, rho):
    assert sensitivity(cfg) == pytest.approx(delta, rel=1e-12)
    assert rho_per_token(cfg) == pytest.approx(rho, rel=1e-12)


def test_worst_case_tokens_are_charged():
    cfg = DecodingConfig(clip=0.5)
    assert charged_tokens(cfg, 64) == 64
    assert rho_per_record(cfg, 64) == pytest.approx(64 * rho_per_token(cfg))
    gated = cfg.replace(gate=GateConfig(max_private_tokens=10))
    assert charged_tokens(gated, 64) == 10  # the cap fixed in advance
    assert charged_tokens(gated, 5) == 5  # never more than max tokens


def test_em_cost_is_bounded_range_not_generic_pure_dp():
    """eps0 = 2C/(N tau) bounded range -> eps0^2/8; the generic pure-DP conversion would be eps0^2/2."""
    cfg = DecodingConfig(partitions=8, clip=1.0)
    eps0 = 2 * 1.0 / 8
    assert rho_per_token(cfg) == pytest.approx(eps0**2 / 8)
