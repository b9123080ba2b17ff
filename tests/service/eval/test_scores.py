"""The eval's numbers on inputs whose answers are known (table-driven)."""

from __future__ import annotations

import numpy as np
import pytest

from service.eval import scores


@pytest.mark.parametrize(
    "predicted, true, acc, balanced",
    [
        (["a", "a", "a", "a"], ["a", "a", "a", "b"], 0.75, 0.5),  # always the majority: balanced 1/K
        (["a", "b", "a", "b"], ["a", "b", "a", "b"], 1.0, 1.0),
        (["b", "a", "b", "a"], ["a", "b", "a", "b"], 0.0, 0.0),
        (["a", "b", "b", "b"], ["a", "a", "b", "b"], 0.75, 0.75),
        (["x", "x", "x"], ["a", "b", "c"], 0.0, 0.0),  # a label never seen in test counts as wrong
    ],
)
def test_accuracy(predicted, true, acc, balanced):
    got = scores.accuracy(predicted, true)
    assert got["accuracy"] == pytest.approx(acc)
    assert got["balanced_accuracy"] == pytest.approx(balanced)


def test_accuracy_refuses_empty():
    with pytest.raises(ValueError, match="empty"):
        scores.accuracy([], [])


@pytest.mark.parametrize(
    "texts, n, expected",
    [
        (["a b c d"], 1, 1.0),
        (["a a a a"], 1, 0.25),
        (["a b", "a b"], 2, 0.5),
        (["A b", "a B"], 1, 0.5),  # case-folded
        (["one"], 2, 0.0),  # no bigram at all
        ([], 1, 0.0),
    ],
)
def test_distinct_n(texts, n, expected):
    assert scores.distinct_n(texts, n) == pytest.approx(expected)


def test_length_stats():
    s = scores.length_stats(["a", "a b", "a b c", "a b c d"])
    assert s["mean"] == pytest.approx(2.5) and s["median"] == pytest.approx(2.5)
    assert s["p10"] < s["median"] < s["p90"]
    assert scores.length_stats([])["mean"] == 0.0


def test_frechet_zero_for_identical_and_grows_with_shift():
    x = np.random.default_rng(0).normal(size=(400, 8))
    assert scores.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean shifted by d in every coordinate: distance = 8 d^2 exactly.
    assert scores.frechet_distance(x, x + 0.5) == pytest.approx(8 * 0.25, rel=1e-6)
    assert scores.frechet_distance(x, x + 1.0) > scores.frechet_distance(x, x + 0.5)
    # Doubling: the means differ by mu, and Tr(S + 4S - 2 * 2S) = Tr(S).
    expected = np.sum(x.mean(0) ** 2) + np.trace(np.cov(x, rowvar=False))
    assert scores.frechet_distance(x, 2 * x) == pytest.approx(expected, rel=1e-6)


def test_frechet_needs_two_points():
    with pytest.raises(ValueError, match="at least 2"):
        scores.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


def test_classifiers_learn_a_separable_task_and_fall_back_on_one_class():
    train = ["free prize call now", "win cash prize now", "see you at lunch", "lunch with mum later"] * 3
    labels = ["spam", "spam", "ham", "ham"] * 3
    test = ["call now to win a prize", "lunch later with you"]
    assert scores.tfidf_predict(train, labels, test) == ["spam", "ham"]
    assert scores.tfidf_predict(["x", "y"], ["ham", "ham"], test) == ["ham", "ham"]
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert scores.embedding_predict(x, ["a", "a", "b", "b"], np.array([[0.95, 0.0], [0.0, 0.8]])) == ["a", "b"]
    assert scores.embedding_predict(x, ["a"] * 4, x[:2]) == ["a", "a"]
