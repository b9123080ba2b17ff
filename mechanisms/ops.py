"""Batched array operations shared by `select.py` and the mechanisms (`em.py`, `amin.py`, ...).

Group sums over contiguous rows, softmax over a candidate mask, the public top-k, and the
per-group random draws. Every draw goes through `noise`, `laplace`, `pick` and `sample`, so the
rule below holds for every mechanism: with one generator per group (the service), group g draws
exactly its own number of values from its own stream, whatever the groups beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import require

Coins = np.random.Generator | Sequence[np.random.Generator]


def group_sums(x: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    """Sum the rows of x (R, S) within each group; rows of a group are contiguous."""
    out = np.zeros((group_sizes.shape[0], x.shape[1]), dtype=x.dtype)
    nonempty = group_sizes > 0
    if x.shape[0]:
        starts = np.concatenate(([0], np.cumsum(group_sizes)[:-1]))
        out[nonempty] = np.add.reduceat(x, starts[nonempty], axis=0)
    return out


def softmax(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    x = np.where(valid, x, -np.inf)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def public_top_k(public_logits: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids (G, S), valid (G, S)): the public top-k of each group, ids ascending; the whole
    vocabulary when k is None or >= V. Public logits only, so the set is public."""
    g, v = public_logits.shape
    if k is None or k >= v:
        ids = np.broadcast_to(np.arange(v), (g, v))
        return ids, np.ones((g, v), dtype=bool)
    ids = np.argpartition(-public_logits, k - 1, axis=1)[:, :k]
    return np.sort(ids, axis=1), np.ones((g, k), dtype=bool)


def noise(rng: Coins, valid: np.ndarray, draw: str, scale: float = 1.0) -> np.ndarray:
    """(G, S) noise of one kind ("gumbel", "normal") on the valid columns, 0 elsewhere.

    With one generator per group, group g draws exactly its own number of valid columns from
    its own stream, so the coins a group uses depend on nothing but that group (not on which
    groups share the batch, nor on their candidate-set widths): a job gives the same records
    whatever its batching, and no draw is ever shared between groups."""
    g, s = valid.shape
    if isinstance(rng, np.random.Generator):
        z = rng.gumbel(size=(g, s)) if draw == "gumbel" else rng.normal(0.0, scale, size=(g, s))
        return np.where(valid, z, 0.0)
    require(len(rng) == g, "rng", f"one generator per group ({g})", len(rng))
    out = np.zeros((g, s))
    for i, (r, row) in enumerate(zip(rng, valid)):
        n = int(row.sum())
        z = r.gumbel(size=n) if draw == "gumbel" else r.normal(0.0, scale, size=n)
        out[i, np.flatnonzero(row)] = z
    return out


def laplace(rng: Coins, scale: float, which: np.ndarray) -> np.ndarray:
    """(G,) Laplace draws for the groups in `which` (others 0), each from its own stream."""
    if isinstance(rng, np.random.Generator):
        return np.where(which, rng.laplace(0.0, scale, size=which.shape), 0.0)
    return np.array([r.laplace(0.0, scale) if w else 0.0 for r, w in zip(rng, which)])


def pick(rng: Coins, which: np.ndarray) -> Coins:
    """The generators of the groups in `which` (a single shared generator stays itself)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return [r for r, w in zip(rng, which) if w]


def sample(scores: np.ndarray, valid: np.ndarray, rng: Coins) -> np.ndarray:
    """One draw per group from softmax(scores) over valid columns (Gumbel-max: exact)."""
    noisy = np.where(valid, scores + noise(rng, valid, "gumbel"), -np.inf)
    return noisy.argmax(axis=1)
