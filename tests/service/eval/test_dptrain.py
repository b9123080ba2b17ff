"""The DP-trained baseline (service.eval.dptrain): public features clipped to a declared norm,
diffprivlib's classifier at the cell's epsilon, no privacy-leak warning, and a budget it keeps."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from service.data.packaged import load, split
from service.eval import dptrain, scores

pytest.importorskip("sklearn")


@pytest.mark.parametrize(("row", "expected"), [
    ([0.0, 0.0], [0.0, 0.0]),  # nothing to scale
    ([0.3, 0.4], [0.3, 0.4]),  # norm 0.5: inside the bound, kept
    ([0.6, 0.8], [0.6, 0.8]),  # exactly on it
    ([3.0, 4.0], [0.6, 0.8]),  # norm 5: scaled down to 1, same direction
    ([-30.0, 40.0], [-0.6, 0.8]),
])
def test_rows_are_clipped_to_the_public_norm(row, expected):
    assert dptrain.clip_rows(np.array([row])).tolist()[0] == pytest.approx(expected)


@pytest.mark.parametrize("bound", [0.0, -1.0, math.inf, math.nan])
def test_a_bad_bound_is_named(bound):
    with pytest.raises(ValueError, match="bound must be a finite number > 0"):
        dptrain.clip_rows(np.ones((1, 2)), bound)


def test_hashed_features_are_fitted_to_nothing():
    """A text's features do not depend on the other texts (no vocabulary, no IDF), and rows have unit norm."""
    texts = ["free prize call now", "see you at lunch", "call me later", ""]
    together = dptrain.hashed_features(texts)
    alone = np.vstack([dptrain.hashed_features([t]) for t in texts])
    assert np.array_equal(together, alone) and together.shape == (4, dptrain.HASH_FEATURES)
    assert np.linalg.norm(together[:3], axis=1) == pytest.approx([1.0] * 3) and not together[3].any()


@pytest.fixture(scope="module")
def sms():
    """300 real SMS train rows and 200 test rows, with their MiniLM embeddings."""
    from service.eval.embed import embed

    train, test = split(load("sms-spam"), 0.2, 0)
    train, test = train[:300], test[:200]
    return (embed([r["text"] for r in train]), [r["label"] for r in train], embed([r["text"] for r in test]), [r["label"] for r in test])


def test_no_privacy_leak_warning_and_the_check_can_see_one(sms):
    """With the declared norm diffprivlib has nothing to compute from the data; without it, it warns."""
    train_x, train_y, _, _ = sms
    dptrain.dp_classifier(1.0, 0)  # makes diffprivlib importable on this scikit-learn
    from diffprivlib.utils import PrivacyLeakWarning

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dptrain.dp_classifier(1.0, 0).fit(dptrain.clip_rows(train_x), train_y)
    assert not [w for w in seen if issubclass(w.category, PrivacyLeakWarning)]
    leaky = dptrain.dp_classifier(1.0, 0)
    leaky.data_norm = None  # the mistake the module avoids: the bound read off the private rows
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        leaky.fit(train_x, train_y)
    assert [w for w in seen if issubclass(w.category, PrivacyLeakWarning)]


def test_accuracy_follows_epsilon_on_real_embeddings(sms):
    train_x, train_y, test_x, test_y = sms
    loose = scores.accuracy(dptrain.dp_predict(train_x, train_y, test_x, 1e4, seed=0), test_y)["balanced_accuracy"]
    tight = [scores.accuracy(dptrain.dp_predict(train_x, train_y, test_x, 0.01, seed=s), test_y)["balanced_accuracy"] for s in range(3)]
    assert loose > 0.8  # little noise: close to the non-private classifier on 300 rows
    assert max(tight) < loose - 0.1  # at epsilon 0.01 the noise swamps 300 rows


def test_the_library_keeps_the_budget_of_one_fit(sms):
    """Each classifier carries an accountant capped at its epsilon: a second fit would spend more, and is refused."""
    from diffprivlib.utils import BudgetError

    train_x, train_y, _, _ = sms
    clf = dptrain.dp_classifier(2.0, 0)
    clf.fit(dptrain.clip_rows(train_x), train_y)
    assert clf.accountant.spent_budget == [(2.0, 0.0)]
    with pytest.raises(BudgetError):
        clf.fit(dptrain.clip_rows(train_x), train_y)


@pytest.mark.parametrize("epsilon", [0.0, math.inf])
def test_epsilon_must_be_finite_and_positive(epsilon):
    with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
        dptrain.dp_classifier(epsilon, 0)
