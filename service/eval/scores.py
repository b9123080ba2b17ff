"""The numbers of `privtext eval`: pure functions of texts, labels and embeddings.

Downstream accuracy answers "can I train on it"; the Frechet distance between embedding
clouds answers "does it look like the real thing"; distinct-n and lengths catch the usual
failure of small models (repetition, truncation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

LR_C = 10.0  # every logistic regression's inverse regularisation (the DP-trained row's too: dptrain.py)


def accuracy(predicted: Sequence[str], true: Sequence[str]) -> dict[str, float]:
    """Plain accuracy and balanced accuracy (mean recall over the true labels).

    Balanced accuracy is the headline: the synthetic sets are label-balanced by request while
    real test sets are not (SMS is 87% ham), so plain accuracy rewards always saying "ham"."""
    if not len(true):
        raise ValueError("true is empty")
    p, t = np.asarray(predicted), np.asarray(true)
    recalls = [float(np.mean(p[t == lab] == lab)) for lab in np.unique(t)]
    return {"accuracy": float(np.mean(p == t)), "balanced_accuracy": float(np.mean(recalls))}


def majority_predictions(train_labels: Sequence[str], n: int) -> list[str]:
    """The floor: always the most common training label."""
    return [Counter(train_labels).most_common(1)[0][0]] * n


def tfidf_predict(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str]) -> list[str]:
    """Word 1-2-gram TF-IDF + logistic regression, trained on `train`, predicting `test`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if len(set(train_labels)) < 2:
        return majority_predictions(train_labels, len(test_texts))
    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=2000, C=LR_C))
    clf.fit(list(train_texts), list(train_labels))
    return list(clf.predict(list(test_texts)))


def embedding_predict(train_x: np.ndarray, train_labels: Sequence[str], test_x: np.ndarray) -> list[str]:
    """Logistic regression on (MiniLM) sentence embeddings."""
    from sklearn.linear_model import LogisticRegression

    if len(set(train_labels)) < 2:
        return majority_predictions(train_labels, len(test_x))
    return list(LogisticRegression(max_iter=2000, C=LR_C).fit(train_x, list(train_labels)).predict(test_x))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two embedding clouds (as FID / FED):
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). 0 for identical clouds."""
    from scipy import linalg

    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 embeddings on each side, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    covmean = np.real(covmean)  # numerical noise gives tiny imaginary parts
    return float(max(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2.0 * covmean), 0.0))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams / all word n-grams over the corpus (Li et al. 2016); 0 if none."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        words = t.lower().split()
        grams.extend(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    """Words per text: mean, median, 10th and 90th percentile."""
    words = np.array([len(t.split()) for t in texts], dtype=float)
    if not len(words):
        return {"mean": 0.0, "median": 0.0, "p10": 0.0, "p90": 0.0}
    return {"mean": float(words.mean()), "median": float(np.median(words)), "p10": float(np.percentile(words, 10)), "p90": float(np.percentile(words, 90))}
