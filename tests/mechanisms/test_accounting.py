"""Accounting: tight conversion vs dp-accounting and the classic bound; ledger invariants
(opacus-style property tests); calibration hits its target."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms import (
    DecodingConfig,
    GateConfig,
    Ledger,
    LedgerEntry,
    PrivacyEvent,
    calibrate,
    epsilon_from_rho,
    epsilon_of,
    generation_events,
    loose_epsilon_from_rho,
    rho_from_epsilon,
    rho_per_token,
)

RHOS = [1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0, 5.0]
DELTAS = [1e-3, 1e-6, 1e-9]


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("delta", DELTAS)
def test_tight_conversion_against_dp_accounting_and_classic_bound(rho, delta):
    tight = epsilon_from_rho(rho, delta)
    # dp-accounting with its own default orders: a grid search of the same bound, never below
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.ZCDpEvent(rho))
    theirs = acc.get_epsilon(delta)
    assert tight <= theirs + 1e-9
    assert theirs <= tight * 1.05  # same bound, coarser grid
    # our accountant (dense orders) is within 0.1% and never below the continuous optimum
    ours = epsilon_of([PrivacyEvent("zcdp", rho)], delta)
    assert tight - 1e-9 <= ours <= tight * 1.001
    assert tight < loose_epsilon_from_rho(rho, delta)


def test_tight_conversion_hand_value():
    """rho = 0.5, delta = 1e-5, checked by brute force over alpha on a fine grid."""
    alphas = np.linspace(1.0001, 100, 2_000_000)
    brute = np.min(0.5 * alphas + (np.log(1e5) + (alphas - 1) * np.log1p(-1 / alphas) - np.log(alphas)) / (alphas - 1))
    assert epsilon_from_rho(0.5, 1e-5) == pytest.approx(brute, abs=1e-6)


def test_gaussian_event_equals_its_zcdp():
    sigma = 3.0
    assert epsilon_of([PrivacyEvent("gaussian", sigma, 10)], 1e-6) == pytest.approx(
        epsilon_of([PrivacyEvent("zcdp", 10 / (2 * sigma**2))], 1e-6), rel=1e-9
    )


@pytest.mark.parametrize("eps", [0.5, 1.0, 3.0, 10.0])
def test_rho_from_epsilon_inverts(eps):
    rho = rho_from_epsilon(eps, 1e-6)
    assert epsilon_of([PrivacyEvent("zcdp", rho)], 1e-6) <= eps
    assert epsilon_of([PrivacyEvent("zcdp", rho * 1.0001)], 1e-6) > eps


@pytest.mark.parametrize(
    "cfg",
    [
        DecodingConfig(mechanism="em", partitions=8),
        DecodingConfig(mechanism="amin", partitions=16, temperature=2.0),
        DecodingConfig(mechanism="gaussian"),
        DecodingConfig(mechanism="em", units_per_row=2),
        DecodingConfig(mechanism="gaussian", units_per_row=2),
        DecodingConfig(mechanism="em", gate=GateConfig(epsilon=0.01, max_private_tokens=20)),
    ],
)
@pytest.mark.parametrize("eps,tokens,rounds", [(3.0, 64, 1), (1.0, 32, 5), (10.0, 128, 2)])
def test_calibrate_spends_exactly_the_target(cfg, eps, tokens, rounds):
    solved = calibrate(cfg, eps, 1e-6, tokens, rounds)
    spent = epsilon_of(generation_events(solved, tokens, rounds), 1e-6)
    assert spent <= eps
    assert spent == pytest.approx(eps, rel=1e-6)
    # it solved the right knob, from the closed form
    n = rounds * (min(tokens, cfg.gate.max_private_tokens) if cfg.gate else tokens)
    assert n * rho_per_token(solved) == pytest.approx(rho_from_epsilon(eps, 1e-6), rel=1e-6)


def test_calibrate_few_shot_costs_more():
    """Same epsilon, few-shot layout: clip halves (rho x4 at equal clip); sigma grows sqrt(2)."""
    em1 = calibrate(DecodingConfig(mechanism="em"), 3.0, 1e-6, 64)
    em2 = calibrate(DecodingConfig(mechanism="em", units_per_row=2), 3.0, 1e-6, 64)
    assert em2.clip == pytest.approx(em1.clip / 2, rel=1e-6)
    g1 = calibrate(DecodingConfig(mechanism="gaussian"), 3.0, 1e-6, 64)
    g2 = calibrate(DecodingConfig(mechanism="gaussian", units_per_row=2), 3.0, 1e-6, 64)
    assert g2.noise_multiplier == pytest.approx(g1.noise_multiplier * math.sqrt(2), rel=1e-6)


def test_calibrate_refuses_when_gate_alone_exceeds():
    with pytest.raises(ValueError, match="gate alone"):
        calibrate(DecodingConfig(gate=GateConfig(epsilon=5.0)), 1.0, 1e-6, 64)


@pytest.mark.parametrize("kwargs,field", [({"epsilon": 0}, "epsilon"), ({"epsilon": -1}, "epsilon"), ({"delta": 0}, "delta"), ({"delta": 1.0}, "delta"), ({"max_tokens": 0}, "max_tokens")])
def test_calibrate_bad_inputs(kwargs, field):
    args = {"epsilon": 3.0, "delta": 1e-6, "max_tokens": 64} | kwargs
    with pytest.raises(ValueError, match=f"^{field} must be"):
        calibrate(DecodingConfig(), **args)


events = st.lists(
    st.one_of(
        st.builds(PrivacyEvent, st.just("zcdp"), st.floats(0, 0.5), st.integers(0, 50)),
        st.builds(PrivacyEvent, st.just("gaussian"), st.floats(0.5, 100), st.integers(0, 50)),
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None)
@given(events, events)
def test_ledger_epsilon_is_monotone_in_events_added(first, more):
    ledger = Ledger(1e9, 1e-6, (LedgerEntry("a", tuple(first)),))
    bigger = Ledger(1e9, 1e-6, (*ledger.entries, LedgerEntry("b", tuple(more))))
    assert bigger.spent_epsilon() >= ledger.spent_epsilon() - 1e-12


@settings(max_examples=60, deadline=None)
@given(events)
def test_ledger_json_roundtrip_is_lossless(evs):
    ledger = Ledger(7.25, 1e-7, (LedgerEntry("job 1: x", tuple(evs)), LedgerEntry("count", ())))
    again = Ledger.from_json(ledger.to_json())
    assert again == ledger
    assert again.spent_epsilon() == ledger.spent_epsilon()


def test_ledger_refuses_to_exceed_cap_and_remaining_is_consistent():
    ledger = Ledger(3.0, 1e-6)
    assert ledger.spent_epsilon() == 0.0
    assert ledger.remaining_epsilon() == pytest.approx(3.0, rel=1e-6)
    half = LedgerEntry("half", (PrivacyEvent("zcdp", ledger.remaining_rho() / 2),))
    ledger = ledger.charge(half)
    remaining = ledger.remaining_rho()
    assert ledger.fits([PrivacyEvent("zcdp", remaining)])
    assert not ledger.fits([PrivacyEvent("zcdp", remaining * 1.001)])
    with pytest.raises(ValueError, match="cap 3"):
        ledger.charge(LedgerEntry("too much", (PrivacyEvent("zcdp", remaining * 1.01),)))
    assert len(ledger.entries) == 1  # refused charges leave no trace


def test_ledger_bad_values():
    with pytest.raises(ValueError, match="^epsilon must be"):
        Ledger(0.0, 1e-6)
    with pytest.raises(ValueError, match="^delta must be"):
        Ledger(1.0, 2.0)
    with pytest.raises(ValueError, match="^event.parameter"):
        PrivacyEvent("gaussian", 0.0)
