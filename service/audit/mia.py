"""Membership inference from the synthetic text alone, and its AUC.

The attacker sees only the synthetic records and the public model. For each canary (inserted
or held out) the score is how much the synthetic records make its secret more likely:

    score = log P(secret | context, prefix) - log P(secret | prefix)

under the public model, where context = the `k` synthetic records most similar to the
canary's prefix (cosine similarity of character 3-gram counts, lowercase), one per line. A
secret that leaked, even partly, into records that resemble its prefix raises the score.

The membership AUC is the probability that an inserted canary scores above a held-out one
(Mann-Whitney, ties count one half): 0.5 is no signal, 1 is perfect membership inference. Its
confidence interval is a stratified percentile bootstrap (inserted and held-out canaries
resampled separately), seeded; `auc_ci_hanley_mcneil` is the normal-approximation alternative.

Under (eps, delta)-DP for one unit, any test's true-positive rate at false-positive rate x is at
most min(1, e^eps x + delta, 1 - e^-eps (1 - delta - x)) (Kairouz, Oh & Viswanath 2015), so
the AUC of canaries inserted once is at most the area under that curve (`dp_auc_bound`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np


# ---------------------------------------------------------------------------------------------
# AUC and its confidence interval


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(a positive scores above a negative) + P(tie) / 2."""
    p = np.asarray(positive, dtype=float)[:, None]
    n = np.asarray(negative, dtype=float)[None, :]
    if p.size == 0 or n.size == 0:
        raise ValueError("auc needs at least one positive and one negative score")
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def auc_ci_bootstrap(positive: Sequence[float], negative: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Stratified percentile-bootstrap interval of the AUC (positives and negatives resampled
    separately, with replacement)."""
    p, n = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    rng = np.random.default_rng(seed)
    pi = rng.integers(0, p.size, size=(resamples, p.size))
    ni = rng.integers(0, n.size, size=(resamples, n.size))
    ps, ns = p[pi][:, :, None], n[ni][:, None, :]
    stats = ((ps > ns).sum(axis=(1, 2)) + 0.5 * (ps == ns).sum(axis=(1, 2))) / (p.size * n.size)
    a = (1 - level) / 2
    lo, hi = np.quantile(stats, [a, 1 - a])
    return float(lo), float(hi)


def auc_ci_hanley_mcneil(value: float, n_pos: int, n_neg: int, level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation interval with the Hanley & McNeil (1982) standard error, clipped to [0, 1]."""
    from statistics import NormalDist

    q1, q2 = value / (2 - value), 2 * value * value / (1 + value)
    var = (value * (1 - value) + (n_pos - 1) * (q1 - value * value) + (n_neg - 1) * (q2 - value * value)) / (n_pos * n_neg)
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, value - z * se), min(1.0, value + z * se)


def dp_auc_bound(epsilon: float, delta: float) -> float:
    """Largest AUC any membership test can reach against one (epsilon, delta)-DP unit: the area
    under min(1, e^eps x + delta, 1 - e^-eps (1 - delta - x)), exact (the curve is piecewise
    linear; the trapezoid rule on its breakpoints integrates it exactly)."""
    e, d = math.exp(epsilon), delta

    def tpr(x: float) -> float:
        return min(1.0, e * x + d, 1 - (1 - d - x) / e)

    cuts = {0.0, 1.0, (1 - d) / e, 1 - d}
    if epsilon > 0:
        cuts.add((1 - d) * (1 - 1 / e) / (e - 1 / e))
    xs = sorted(x for x in cuts if 0.0 <= x <= 1.0)
    return float(sum((tpr(a) + tpr(b)) / 2 * (b - a) for a, b in zip(xs, xs[1:])))


# ---------------------------------------------------------------------------------------------
# Context selection


def _grams(text: str, n: int = 3) -> Counter[str]:
    t = f" {' '.join(text.lower().split())} "
    return Counter(t[i : i + n] for i in range(max(len(t) - n + 1, 0)))


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(v * b.get(k, 0) for k, v in a.items())
    na, nb = math.sqrt(sum(v * v for v in a.values())), math.sqrt(sum(v * v for v in b.values()))
    return dot / (na * nb) if na and nb else 0.0


def most_similar(query: str, records: Sequence[str], k: int) -> list[int]:
    """Indices of the k records most similar to query (3-gram cosine; ties by index)."""
    q = _grams(query)
    sims = [(-_cosine(q, _grams(r)), i) for i, r in enumerate(records)]
    return [i for _, i in sorted(sims)[:k]]


# ---------------------------------------------------------------------------------------------
# Scoring with the public model

LogLik = Callable[[str, str], float]  # (context text, continuation) -> log P(continuation | context)


class LMScorer:
    """log P(continuation | context) under a causal LM (the public model), one sequence at a
    time (no padding). The continuation is tokenized on its own, so both conditions of a
    canary score the same token ids.

    threads: torch CPU threads while scoring (restored after each call). One by default: these
    forwards are short, and on a shared 2-core machine two threads ran 7 to 20 times slower
    than one (OpenMP threads waiting on each other when another process holds a core)."""

    def __init__(self, model, tokenizer, threads: int | None = 1):
        self.model, self.tokenizer, self.threads = model, tokenizer, threads

    @classmethod
    def from_engine(cls, engine) -> LMScorer:
        """The engine's own model when it exposes one (transformers), else the same weights
        loaded from its model folder."""
        model, tok = getattr(engine, "model", None), getattr(engine, "tokenizer", None)
        if model is None or tok is None or not hasattr(model, "forward"):
            from ..engine.model_files import load_model_and_tokenizer

            model, tok = load_model_and_tokenizer(engine.model_path)
        return cls(model, tok)

    def __call__(self, context: str, continuation: str) -> float:
        import torch

        ctx = self.tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
        cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if not ctx:  # the first token needs something to be predicted from
            bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
            ctx = [bos]
        ids = torch.tensor([ctx + cont], device=self.model.device)
        before = torch.get_num_threads()
        if self.threads is not None and self.model.device.type == "cpu":
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float()
        finally:
            torch.set_num_threads(before)
        logp = torch.log_softmax(logits[len(ctx) - 1 : -1], dim=-1)
        target = torch.tensor(cont, device=logp.device)
        return float(logp.gather(1, target[:, None]).sum())


def mia_score(prefix: str, secret: str, records: Sequence[str], loglik: LogLik, k: int = 4) -> float:
    """log P(secret | k most similar records, prefix) - log P(secret | prefix)."""
    continuation = " " + secret
    base = loglik(prefix, continuation)
    if not records:
        return 0.0
    context = "\n".join(records[i].replace("\n", " ") for i in most_similar(prefix, records, k))
    return loglik(context + "\n" + prefix, continuation) - base
