"""Membership-inference AUC, its confidence intervals, the DP bound, and the model score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.audit.mia import auc, auc_ci_bootstrap, auc_ci_hanley_mcneil, dp_auc_bound, mia_score, most_similar

AUC_CASES = [
    # (positives, negatives, AUC)
    ([3, 4, 5], [0, 1, 2], 1.0),  # perfect separation
    ([0, 1, 2], [3, 4, 5], 0.0),  # perfectly reversed
    ([1, 1, 1], [1, 1, 1], 0.5),  # identical: every pair a tie
    ([1, 2], [0, 1.5], 0.75),  # 3 of 4 pairs
    ([1, 2], [1, 3], 0.375),  # (0.5 + 0 + 1 + 0) / 4
    ([0.2, 0.7, 0.9, 0.4], [0.1, 0.3, 0.5, 0.6, 0.8], 12 / 20),
]


@pytest.mark.parametrize("pos,neg,want", AUC_CASES)
def test_auc_known_cases(pos, neg, want):
    assert auc(pos, neg) == pytest.approx(want)


def test_auc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        pos, neg = rng.normal(0.5, 1, 17).round(1), rng.normal(0, 1, 23).round(1)  # rounding makes ties
        want = roc_auc_score([1] * 17 + [0] * 23, np.r_[pos, neg])
        assert auc(pos, neg) == pytest.approx(want)


def test_auc_needs_both_classes():
    with pytest.raises(ValueError):
        auc([], [1.0])


@pytest.mark.parametrize("pos,neg,want", AUC_CASES)
def test_cis_contain_the_point_estimate(pos, neg, want):
    lo, hi = auc_ci_bootstrap(pos, neg, resamples=500, seed=1)
    assert 0.0 <= lo <= want <= hi <= 1.0
    lo, hi = auc_ci_hanley_mcneil(want, len(pos), len(neg))
    assert 0.0 <= lo <= want <= hi <= 1.0


def test_ci_of_perfect_separation_is_degenerate_and_identical_scores_give_half():
    assert auc_ci_bootstrap([3, 4, 5], [0, 1, 2], resamples=200) == (1.0, 1.0)
    assert auc_ci_hanley_mcneil(1.0, 3, 3) == (1.0, 1.0)
    assert auc_ci_bootstrap([1, 1], [1, 1], resamples=200) == (0.5, 0.5)


def test_hanley_mcneil_half_width_at_chance():
    """A = 0.5, 12 vs 12: Q1 = Q2 = 1/3, SE^2 = (1/4 + 22 (1/3 - 1/4)) / 144."""
    se = math.sqrt((0.25 + 22 * (1 / 3 - 0.25)) / 144)
    lo, hi = auc_ci_hanley_mcneil(0.5, 12, 12)
    assert hi - 0.5 == pytest.approx(1.959964 * se, rel=1e-5) and 0.5 - lo == pytest.approx(1.959964 * se, rel=1e-5)


def test_bootstrap_ci_covers_chance_under_the_null():
    """Scores of inserted and held-out canaries from one distribution (what DP should give):
    the 95% CI reaches 0.5 in most of 200 seeded trials, and its width shrinks with n."""
    rng = np.random.default_rng(7)
    hits, widths = 0, []
    for t in range(200):
        pos, neg = rng.normal(size=12), rng.normal(size=12)
        lo, hi = auc_ci_bootstrap(pos, neg, resamples=400, seed=t)
        hits += lo <= 0.5 <= hi
        widths.append(hi - lo)
    assert hits >= 180, hits
    lo, hi = auc_ci_bootstrap(rng.normal(size=200), rng.normal(size=200), resamples=400)
    assert hi - lo < 0.5 * np.mean(widths)


def test_bootstrap_ci_excludes_chance_under_a_strong_signal():
    rng = np.random.default_rng(8)
    lo, _ = auc_ci_bootstrap(rng.normal(2.0, 1, 12), rng.normal(0, 1, 12), resamples=1000)
    assert lo > 0.5


@pytest.mark.parametrize("eps", [0.0, 0.5, 1.0, 3.0])
def test_dp_auc_bound_pure(eps):
    """With delta = 0 the bound is e^eps / (1 + e^eps) (area under the DP-allowed ROC)."""
    assert dp_auc_bound(eps, 0.0) == pytest.approx(math.exp(eps) / (1 + math.exp(eps)), abs=1e-6)


def test_dp_auc_bound_grows_with_delta_and_reaches_one():
    assert dp_auc_bound(1.0, 0.1) > dp_auc_bound(1.0, 0.0)
    assert dp_auc_bound(30.0, 0.0) == pytest.approx(1.0, abs=1e-6)


def test_most_similar_finds_records_sharing_the_prefix():
    records = ["Free entry to win a prize, txt WIN now", "the alarm code for the house is broken again", "see u at 8 lol"]
    assert most_similar("Mum the alarm code for the house is", records, 1) == [1]
    assert sorted(most_similar("anything", records, 5)) == [0, 1, 2]


def test_mia_score_with_the_public_model(engine):
    """Real model: a context holding the secret makes it far likelier (a large positive score);
    unrelated synthetic SMS barely move it; no records score 0."""
    from service.audit.mia import LMScorer

    scorer = LMScorer.from_engine(engine)
    prefix, secret = "Hi hun, the code for the storage unit is", "4091 7263 5512"
    leaked = mia_score(prefix, secret, ["storage unit code is 4091 7263 5512 xx", "see u later"], scorer, k=2)
    unrelated = mia_score(prefix, secret, ["Ok lar... Joking wif u oni...", "see u later"], scorer, k=2)
    assert leaked > 10.0, leaked
    assert abs(unrelated) < leaked / 3, (unrelated, leaked)
    assert mia_score(prefix, secret, [], scorer) == 0.0
    assert scorer(prefix, " " + secret) < -15.0  # twelve random digits: high perplexity
