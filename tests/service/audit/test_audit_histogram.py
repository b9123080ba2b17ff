"""Private Evolution's audit (service.audit.histogram): it passes the real vote code and release
at several plans, and flags a unit voting in two bins, halved noise and a halved claim."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mechanisms.pe import noisy_histogram, plan_pe, vote_histogram
from service.audit.histogram import CASES, VoteCase, audit_pe, statistic, tail_counts
from service.audit.tokens import gaussian_epsilon

DRAWS = 200_000


def _plan(iterations: int, epsilon: float, delta: float = 1e-5, threshold: float = 0.0):
    return plan_pe(units=400, records=8, iterations=iterations, threshold=threshold, delta=delta, epsilon=epsilon)


PLANS = [(1, 1.0), (3, 3.0), (3, 10.0), (2, 3.0)]


@pytest.mark.parametrize(("iterations", "epsilon"), PLANS, ids=[f"T{t}-eps{e:g}" for t, e in PLANS])
def test_the_real_mechanism_passes_and_the_audit_is_tight(iterations, epsilon):
    p = _plan(iterations, epsilon)
    a = audit_pe(p, DRAWS, seed=3)
    assert a.passed, a
    assert a.mu_claimed == pytest.approx(math.sqrt(iterations) / p.sigma)
    assert a.claimed_epsilon == pytest.approx(gaussian_epsilon(a.mu_claimed, 1e-5))
    assert a.claimed_epsilon <= a.plan_epsilon + 1e-9  # the accountant's RDP epsilon is the looser of the two
    assert a.empirical_epsilon <= a.empirical_point and a.tightness >= 0.85, a  # the projection loses nothing for a Gaussian
    assert [c["l2_change"] for c in a.cases] == pytest.approx([1.0, 1.0])  # the real vote: one bin; the spread vote: norm 1


def _vote_per_record(record_embeddings, record_units, candidate_embeddings, *labels):
    """Broken votes: every record a voter (a unit with records near two candidates votes in both bins: L2 sqrt 2)."""
    return vote_histogram(record_embeddings, list(range(len(record_embeddings))), candidate_embeddings, *labels)


def _half_noise(counts, sigma, threshold, rng):
    """Broken release: noise calibrated to half the sensitivity."""
    return noisy_histogram(counts, sigma / 2, threshold, rng)


def _two_votes_in_one_bin(record_embeddings, record_units, candidate_embeddings, *labels):
    """Broken votes: the histogram counts every unit twice (sensitivity 2)."""
    return 2 * vote_histogram(record_embeddings, record_units, candidate_embeddings, *labels)


BROKEN = [
    ("a unit voting 1 into each of two bins", dict(votes=_vote_per_record)),
    ("a unit counted twice", dict(votes=_two_votes_in_one_bin)),
    ("noise halved", dict(release=_half_noise)),
]


@pytest.mark.parametrize(("iterations", "epsilon"), [(1, 1.0), (3, 3.0)], ids=["T1-eps1", "T3-eps3"])
@pytest.mark.parametrize(("what", "broken"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_mechanism_fails_the_audit(iterations, epsilon, what, broken):
    p = _plan(iterations, epsilon)
    a = audit_pe(p, DRAWS, seed=3, **broken)
    assert not a.passed, (what, a)
    assert audit_pe(p, DRAWS, seed=3).passed  # the real one, same plan, same seeds


def test_the_broken_vote_moves_the_histogram_by_sqrt_2_and_the_real_one_by_1():
    case = CASES[0]
    real_d, real_dp = case.histograms(vote_histogram)
    broken_d, broken_dp = case.histograms(_vote_per_record)
    assert np.linalg.norm(real_d - real_dp) == pytest.approx(1.0)
    assert np.linalg.norm(broken_d - broken_dp) == pytest.approx(math.sqrt(2))
    assert real_dp.tolist() == broken_dp.tolist()  # the background: one record per unit, the same either way


def test_a_halved_claim_is_flagged():
    p = _plan(3, 3.0)
    real = audit_pe(p, DRAWS, seed=3)
    assert not audit_pe(p, DRAWS, seed=3, claimed=real.claimed_epsilon / 2).passed


def test_a_threshold_only_lowers_the_loss():
    """H is post-processing: counts far above it are untouched, and the audit still passes."""
    a = audit_pe(_plan(3, 3.0, threshold=5.0), DRAWS, seed=4)
    assert a.passed and a.threshold == 5.0


@pytest.mark.parametrize(("field", "value", "message"), [
    ("draws", 10, "draws must be an integer >= 100, got 10"),
    ("cases", (), "cases must hold at least one VoteCase"),
    ("cases", (VoteCase("nothing", direct=(0.0, 0.0, 0.0, 0.0)),), "the crafted unit changes nothing"),
])
def test_bad_inputs_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        audit_pe(_plan(1, 1.0), **{"draws": 1000, field: value})


def test_statistic_is_standard_normal_under_d_prime_and_tails_count_both_sides():
    rng = np.random.default_rng(0)
    h_dp = np.array([40.0, 40.0, 40.0])
    h_d = h_dp + np.array([1.0, 0.0, 0.0])
    releases = h_dp + rng.normal(0.0, 2.0, size=(50_000, 3, 3))
    s = statistic(releases, h_d, h_dp, 2.0)
    assert s.mean() == pytest.approx(0.0, abs=0.02) and s.std() == pytest.approx(1.0, abs=0.02)
    counts = tail_counts(np.array([-1.0, 0.0, 0.5, 2.0]), edges=(0.0, 1.0))
    assert counts.tolist() == [3, 1, 1, 3]  # >= 0, >= 1, < 0, < 1
