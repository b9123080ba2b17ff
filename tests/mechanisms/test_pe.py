"""mechanisms/pe.py: Private Evolution's DP nearest-neighbour histogram and its plan.

Each known mistake of PE implementations has a test here: class counts from the raw data,
several votes of one unit (in one bin or several), duplicated records counted as several
voters, epsilon computed for another number of iterations than run, and a crash when the noise
wipes out every count. The last test estimates the released histograms' privacy loss on a pair
of neighbouring vote sets by Monte Carlo and checks it against the analytic Gaussian curve and
the plan's (epsilon, delta).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mechanisms import epsilon_of
from mechanisms.accounting import PrivacyEvent
from mechanisms.pe import (
    HistogramReleases,
    PeBudgetExceeded,
    PlanOverrun,
    apply_threshold,
    choose_parents,
    gaussian_counts,
    noisy_histogram,
    plan_pe,
    rank,
    unit_votes,
    vote_histogram,
    vote_vectors,
)

DIM = 16


def _unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    x = rng.normal(size=(n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# The plan: sigma <-> epsilon, T events


@pytest.mark.parametrize("iterations,epsilon,delta,count_noise", [(1, 1.0, 1e-5, None), (4, 3.0, 1e-6, None), (10, 8.0, 1e-4, 10.0),
                                                                   (3, 0.5, 1e-3, 20.0)])
def test_sigma_from_epsilon_and_back(iterations, epsilon, delta, count_noise):
    kw = dict(units=1000, records=10, iterations=iterations, threshold=2.0, delta=delta,
              units_source="dp-count" if count_noise else "declared-public", count_noise=count_noise)
    p = plan_pe(**kw, epsilon=epsilon)
    assert p.epsilon <= epsilon and p.epsilon == pytest.approx(epsilon, rel=1e-6)
    back = plan_pe(**kw, sigma=p.sigma)  # epsilon from sigma
    assert back.epsilon == p.epsilon and back.events == p.events
    assert plan_pe(**kw, sigma=p.sigma, epsilon=epsilon).sigma == p.sigma  # fits its own budget
    with pytest.raises(PeBudgetExceeded, match="What fits: min sigma"):
        plan_pe(**kw, sigma=p.sigma * (1 - 1e-6), epsilon=epsilon)  # a hair less noise: over the budget, refused
    assert p.rho_per_iteration == pytest.approx(1 / (2 * p.sigma**2))


def test_the_plan_lists_t_gaussian_events_before_iteration_one():
    p = plan_pe(units=5000, records=50, iterations=6, threshold=3.0, delta=1e-6, epsilon=4.0, units_source="dp-count", count_noise=10.0)
    hist = p.histogram_events
    assert len(hist) == 6 == p.iterations
    assert all(e.kind == "gaussian" and e.parameter == p.sigma and e.count == 1 for e in hist)
    assert [e.note.split(":")[0] for e in hist] == [f"PE iteration {t} of 6" for t in range(1, 7)]
    assert p.events[0] == PrivacyEvent("gaussian", 10.0, 1, p.events[0].note) and "unit count" in p.events[0].note
    assert p.epsilon == epsilon_of(p.events, 1e-6)
    assert p.rho_total == pytest.approx(6 / (2 * p.sigma**2) + 1 / (2 * 10.0**2))
    d = p.to_dict()
    assert d["method"] == "pe" and d["sensitivity"] == 1.0 and len(d["events"]) == 7


def test_epsilon_is_for_the_iterations_run():
    """Mistake: epsilon computed for fewer iterations than run. The plan's epsilon grows with T
    at a fixed sigma, and HistogramReleases hands out exactly the plan's T releases."""
    at = {t: plan_pe(units=100, records=4, iterations=t, threshold=0.0, delta=1e-3, sigma=3.0).epsilon for t in (1, 2, 5)}
    assert at[1] < at[2] < at[5]
    p = plan_pe(units=100, records=4, iterations=3, threshold=0.0, delta=1e-3, epsilon=2.0)
    releases = HistogramReleases(p)
    rng = np.random.default_rng(0)
    for _ in range(3):
        releases.release(np.array([5, 0, 1]), rng)
    assert releases.released == 3
    with pytest.raises(PlanOverrun, match="charged 3"):
        releases.release(np.array([5, 0, 1]), rng)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"iterations": 0}, "iterations must be an integer >= 1"),
        ({"threshold": -1.0}, "threshold must be a finite number >= 0"),
        ({"threshold": math.inf}, "threshold must be"),
        ({"delta": 0.5}, "delta must be in"),  # > 1/units
        ({"epsilon": None}, "epsilon must be given"),
        ({"epsilon": None, "sigma": 0.0}, "sigma must be a finite number > 0"),
        ({"count_noise": 5.0}, "count_noise needs units_source"),
        ({"count_noise": 2.0, "units_source": "dp-count"}, "leaves nothing for the histograms"),  # the count alone is over
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    args = dict(units=100, records=4, iterations=2, threshold=1.0, delta=1e-3, epsilon=1.0) | kwargs
    with pytest.raises(ValueError, match=message):
        plan_pe(**args)


# ---------------------------------------------------------------------------------------------
# Votes: one unit, one vote


@pytest.fixture()
def population():
    """Twelve public candidates in two labels, and 40 background units of 1 to 3 records."""
    rng = np.random.default_rng(7)
    cands = _unit(rng, 12)
    cand_labels = ["a"] * 6 + ["b"] * 6
    emb, units, labels = [], [], []
    for u in range(40):
        k = 1 + u % 3
        emb.append(_unit(rng, k))
        units += [f"bg{u}"] * k
        labels += ["a" if u % 2 else "b"] * k
    return np.vstack(emb), units, labels, cands, cand_labels


def _adversaries(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, list[str]]]:
    one = _unit(rng)
    return {
        "50 records": (_unit(rng, 50), ["a"] * 50),
        "one record duplicated 50 times": (np.repeat(one, 50, axis=0), ["a"] * 50),
        "records across labels": (_unit(rng, 50), ["a"] * 20 + ["b"] * 30),
        "records across labels, tied": (_unit(rng, 50), ["b", "a"] * 25),
        "a label with no candidate among its records": (_unit(rng, 50), ["zzz"] * 10 + ["a"] * 40),
    }


@pytest.mark.parametrize("case", list(_adversaries(np.random.default_rng(0))))
def test_an_adversarial_unit_moves_the_histogram_by_exactly_one_vote(population, case):
    """Mistakes: several votes of one unit (in one bin or in several), duplicated records as
    several voters. Adding the unit moves exactly one bin by exactly 1 (L2 norm 1), and no other
    unit's vote."""
    emb, units, labels, cands, cand_labels = population
    x, x_labels = _adversaries(np.random.default_rng(0))[case]
    with_u = (np.vstack([emb, x]), units + ["adv"] * len(x), labels + x_labels)
    h = vote_histogram(emb, units, cands, labels, cand_labels)
    h_u = vote_histogram(*with_u[:2], cands, with_u[2], cand_labels)
    diff = (h_u - h).astype(float)
    assert np.linalg.norm(diff) == 1.0 and np.count_nonzero(diff) == 1 and diff.max() == 1.0
    keys, votes = unit_votes(*with_u[:2], cands, with_u[2], cand_labels)
    vectors = vote_vectors(votes, len(cands))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)  # every unit: one vote, norm 1
    assert np.array_equal(vectors.sum(axis=0), h_u)
    _, before = unit_votes(emb, units, cands, labels, cand_labels)
    assert np.array_equal(votes[: len(before)], before)  # nobody else's vote moved
    majority = max(sorted(set(x_labels)), key=x_labels.count)
    assert cand_labels[votes[keys.index("adv")]] == majority  # the unit's majority label (ties: the smallest)


def test_duplicated_records_of_one_unit_are_one_voter():
    rng = np.random.default_rng(3)
    cands = _unit(rng, 5)
    rec = _unit(rng)
    h = vote_histogram(np.repeat(rec, 7, axis=0), ["u"] * 7, cands)
    assert h.sum() == 1
    # the same seven records as seven units would be seven voters: keys decide, not records
    assert vote_histogram(np.repeat(rec, 7, axis=0), [f"u{i}" for i in range(7)], cands).sum() == 7


def test_the_bins_are_the_public_candidates_never_the_datas_labels():
    """Mistake: class counts from the raw data. The histogram has one bin per public candidate;
    a label that only the data has adds no bin and its units vote for nothing."""
    rng = np.random.default_rng(4)
    cands = _unit(rng, 4)
    emb = _unit(rng, 30)
    labels = ["a"] * 10 + ["secret-label"] * 20
    h = vote_histogram(emb, [f"u{i}" for i in range(30)], cands, labels, ["a", "a", "b", "b"])
    assert h.shape == (4,) and h.sum() == 10 and h[2:].sum() == 0
    _, votes = unit_votes(emb, [f"u{i}" for i in range(30)], cands, labels, ["a", "a", "b", "b"])
    assert np.all(votes[10:] == -1)


def test_degenerate_units_vote_for_nothing():
    rng = np.random.default_rng(5)
    cands = _unit(rng, 3)
    v = _unit(rng)
    emb = np.vstack([v, -v, np.full((1, DIM), np.nan), _unit(rng)])
    keys, votes = unit_votes(emb, ["cancel", "cancel", "nan", "ok"], cands)
    assert keys == ["cancel", "nan", "ok"] and votes[0] == -1 and votes[1] == -1 and votes[2] >= 0
    with pytest.raises(ValueError, match="labels must be given for both"):
        unit_votes(emb, ["a"] * 4, cands, ["x"] * 4, None)


def test_nearest_is_by_cosine():
    cands = np.eye(3, DIM) * np.array([[1.0], [10.0], [0.1]])  # lengths differ; directions decide
    rec = np.zeros((1, DIM))
    rec[0, 2] = 1.0
    assert vote_histogram(rec, ["u"], cands).tolist() == [0, 0, 1]


# ---------------------------------------------------------------------------------------------
# The release and what follows it


def test_threshold_zeroes_low_and_negative_counts():
    assert apply_threshold(np.array([-3.0, 0.5, 2.0, 7.5]), 2.0).tolist() == [0.0, 0.0, 2.0, 7.5]
    assert apply_threshold(np.array([-3.0, 0.5]), 0.0).tolist() == [0.0, 0.5]


def test_noise_that_wipes_out_every_count_does_not_crash():
    """Every noisy count under H: survivors and the final ranking fall back to the previous
    population's order (public), and say so."""
    rng = np.random.default_rng(0)
    noisy = noisy_histogram(np.array([3, 1, 0, 5]), sigma=1.0, threshold=1e9, rng=rng)
    assert noisy.tolist() == [0.0] * 4
    parents, fell_back = choose_parents(noisy, 6, rng)
    assert fell_back and parents.tolist() == [0, 1, 2, 3, 0, 1]
    order, fell_back = rank(noisy, 3)
    assert fell_back and order.tolist() == [0, 1, 2]
    p = plan_pe(units=100, records=2, iterations=2, threshold=1e9, delta=1e-3, epsilon=1.0)
    releases = HistogramReleases(p)
    assert releases.release(np.array([3, 1]), rng).tolist() == [0.0, 0.0]


def test_survivors_follow_the_released_counts():
    rng = np.random.default_rng(1)
    parents, fell_back = choose_parents(np.array([0.0, 9.0, 1.0, 0.0]), 10_000, rng)
    assert not fell_back and set(parents.tolist()) <= {1, 2}
    assert np.mean(parents == 1) == pytest.approx(0.9, abs=0.02)
    assert rank(np.array([1.0, 5.0, 5.0, 0.0]), 3)[0].tolist() == [1, 2, 0]  # ties: population order


# ---------------------------------------------------------------------------------------------
# Empirical privacy loss of the T released histograms


def _gaussian_delta(eps: float, mu: float) -> float:
    """Tight privacy profile of a Gaussian mechanism of sensitivity/sigma mu (Balle & Wang 2018)."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2.0))  # noqa: E731
    return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)


def _delta_hat(c: np.ndarray, c_prime: np.ndarray, sigma: float, iterations: int, eps: float, draws: int, seed: int) -> tuple[float, float]:
    """Monte Carlo of delta(eps) = E_D[(1 - e^(eps - L))_+] for the T histograms the mechanism
    releases on D (counts c) against D' (counts c_prime); L = log p_D(y) / p_D'(y), summed over
    the T releases. Returns (estimate, its standard error)."""
    rng = np.random.default_rng(seed)
    loss = np.zeros(draws)
    for _ in range(iterations):
        y = gaussian_counts(c, sigma, rng, draws=draws)  # the mechanism's own noise, draws x C
        loss += (((y - c_prime) ** 2).sum(axis=1) - ((y - c) ** 2).sum(axis=1)) / (2 * sigma**2)
    terms = np.maximum(0.0, 1.0 - np.exp(eps - loss))
    return float(terms.mean()), float(terms.std() / math.sqrt(draws))


def test_empirical_privacy_loss_within_the_claimed_epsilon():
    """Neighbouring vote sets D (counts c) and D' (one unit fewer: one bin down by 1). The Monte
    Carlo delta at the plan's epsilon matches the analytic Gaussian curve for mu = sqrt(T)/sigma
    and stays under the plan's delta. Power: a unit counted twice (one bin by 2) or voting in two
    bins (L2 sqrt 2) goes over it, so the estimate can see the mistakes it guards against."""
    iterations, delta = 3, 1e-2
    p = plan_pe(units=100, records=4, iterations=iterations, threshold=0.0, delta=delta, epsilon=1.0)
    c = np.array([12.0, 3.0, 0.0, 7.0, 1.0, 0.0, 25.0, 2.0])
    mu = math.sqrt(iterations) / p.sigma
    draws = 200_000
    for eps in (0.0, 0.5, p.epsilon):
        est, se = _delta_hat(c, c - np.eye(8)[6], p.sigma, iterations, eps, draws, seed=11)
        assert est == pytest.approx(_gaussian_delta(eps, mu), abs=5 * se + 1e-4)
    est, se = _delta_hat(c, c - np.eye(8)[6], p.sigma, iterations, p.epsilon, draws, seed=12)
    assert est + 5 * se <= delta, f"delta at the plan's epsilon {est:.4g} (+5 se) over the claimed {delta}"
    for c_prime in (c - 2 * np.eye(8)[6], c - np.eye(8)[6] - np.eye(8)[0]):
        bad, se = _delta_hat(c, c_prime, p.sigma, iterations, p.epsilon, draws, seed=13)
        assert bad - 5 * se > delta, f"a unit with two votes not detected: {bad:.4g} vs {delta}"
