"""The DP-trained baseline of `privtext eval` (Kurakin et al. 2023, "Harnessing large-language
models to generate private synthetic text"): the downstream classifier trained WITH differential
privacy directly on the real private train part, at the same epsilon as the synthetic cells.

A synthetic set is worth making where a classifier trained on it beats this row: otherwise the
data owner could release the DP-trained classifier itself. The training is IBM's diffprivlib
LogisticRegression (objective perturbation, Chaudhuri et al. 2011; pure epsilon-DP, no delta),
one-vs-rest with epsilon split over the classes by the library.

What keeps the guarantee (each a public choice, none read off the private rows):
- features from a public map: MiniLM embeddings (the synthetic cells' own features; unit norm),
  or word 1-2-grams hashed into HASH_FEATURES bins with sublinear term frequency and L2 norm. The
  synthetic cells' TF-IDF fits its vocabulary and IDF to its training texts; on private rows that
  fit would itself be a release, so the DP row hashes instead (same n-grams, no IDF);
- the data-norm bound DATA_NORM is a declared constant and every feature row is clipped to it
  before training (diffprivlib would otherwise compute it from the data and warn of a leak);
- the labels are the dataset's declared ones.

diffprivlib 0.6.6 (the latest release) predates scikit-learn 1.8/1.9, which removed
`sklearn.tree._tree.DOUBLE/DTYPE` (imported by diffprivlib's forest module at package import) and
LogisticRegression's `multi_class` argument (passed by diffprivlib's constructor). `dp_classifier`
adapts those two points only, and only where the installed scikit-learn lacks them; the fit, the
noise and the budget accounting are diffprivlib's own.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from .scores import LR_C, majority_predictions

DATA_NORM = 1.0  # public bound on every feature row's L2 norm (rows are clipped to it)
HASH_FEATURES = 2**10  # hashed n-gram bins of the DP row's text features (public; the noise grows with the dimension)


def clip_rows(x: np.ndarray, bound: float = DATA_NORM) -> np.ndarray:
    """Each row scaled down to L2 norm <= bound (rows inside it are kept as they are)."""
    if not (bound > 0 and np.isfinite(bound)):
        raise ValueError(f"bound must be a finite number > 0, got {bound!r}")
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, bound / np.maximum(norms, 1e-300))


def hashed_features(texts: Sequence[str]) -> np.ndarray:
    """Word 1-2-grams hashed into HASH_FEATURES bins, sublinear tf (1 + log tf), L2-normalised:
    a map fixed in advance, fitted to nothing (dense (n, HASH_FEATURES) float64)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    counts = HashingVectorizer(ngram_range=(1, 2), n_features=HASH_FEATURES, alternate_sign=False, norm=None).transform(list(texts))
    counts.data = 1.0 + np.log(counts.data)
    x = counts.toarray()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), 0.0)


@lru_cache(maxsize=1)
def _classifier_class():
    """diffprivlib's LogisticRegression, adapted to a scikit-learn >= 1.8 where needed (see the
    module docstring): the two names its import needs, and a constructor without multi_class."""
    import sklearn.tree._tree as sk_tree
    from sklearn import linear_model

    for name, value in (("DOUBLE", np.float64), ("DTYPE", np.float32)):  # the values they always held
        if not hasattr(sk_tree, name):
            setattr(sk_tree, name, value)
    from diffprivlib.accountant import BudgetAccountant
    from diffprivlib.models import LogisticRegression

    if "multi_class" in inspect.signature(linear_model.LogisticRegression.__init__).parameters:
        return LogisticRegression

    class Adapted(LogisticRegression):
        """diffprivlib's constructor less the multi_class argument scikit-learn >= 1.8 refuses;
        its fit is one-vs-rest whatever multi_class says."""

        def __init__(self, *, epsilon=1.0, data_norm=None, tol=1e-4, C=1.0, fit_intercept=True, max_iter=100, verbose=0,
                     warm_start=False, n_jobs=None, random_state=None, accountant=None):
            linear_model.LogisticRegression.__init__(self, tol=tol, C=C, fit_intercept=fit_intercept, random_state=random_state,
                                                     solver="lbfgs", max_iter=max_iter, verbose=verbose, warm_start=warm_start,
                                                     n_jobs=n_jobs)
            self.multi_class = "ovr"
            self.epsilon, self.data_norm = epsilon, data_norm
            self.classes_ = None
            self.accountant = BudgetAccountant.load_default(accountant)

    return Adapted


def dp_classifier(epsilon: float, seed: int):
    """An unfitted diffprivlib LogisticRegression at epsilon (pure), with the public data norm,
    the non-private classifiers' C, and its own budget accountant capped at epsilon: the library
    refuses a fit that would spend more."""
    import warnings

    if not (epsilon > 0 and np.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number > 0 (the DP-trained row has no epsilon = inf), got {epsilon!r}")
    cls = _classifier_class()  # first: it makes diffprivlib importable on this scikit-learn
    from diffprivlib.accountant import BudgetAccountant
    return cls(epsilon=float(epsilon), data_norm=DATA_NORM, C=LR_C, max_iter=1000, random_state=seed,
               accountant=BudgetAccountant(epsilon=float(epsilon), delta=0.0))


def dp_predict(train_x: np.ndarray, train_labels: Sequence[str], test_x: np.ndarray, epsilon: float, seed: int) -> list[str]:
    """Fit the DP classifier on (clipped) private features and predict the test part. A train
    part with one label predicts it everywhere (labels are declared, and a single one leaves
    nothing to learn)."""
    import warnings

    if len(set(train_labels)) < 2:
        return majority_predictions(train_labels, len(test_x))
    clf = dp_classifier(epsilon, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        clf.fit(clip_rows(train_x), list(train_labels))
    return list(clf.predict(clip_rows(test_x)))
