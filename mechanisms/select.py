"""Choosing one private token per group from its rows' next-token logits.

The engine calls `select_tokens` once per decoding step for every active group in the batch;
`select_token` is the same code for one group. Inputs are the raw logits of the private rows
(no temperature, no processors, no model-config top-p/top-k) and of each group's public row.

Rules the code enforces (docs/privacy/analysis.md):
- the candidate set comes from the public row's logits only;
- averages divide by the public N (`cfg.partitions`), never by the number of rows present;
- nothing here returns or stores a per-row quantity: only the chosen token ids.

The mechanism itself (its candidate rule, aggregation and selection) is looked up in
mechanisms.registry by `cfg.mechanism`; each states its adjacency, sensitivity and cost in its
own module (mechanisms/em.py, amin.py, gaussian.py). What every mechanism shares stays here:
input checks, non-finite rows as absent, the gathering of candidate logits, the per-group
random streams (mechanisms.ops) and the public-token gate, which composes with any mechanism.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .amin import aggregate_amin
from .config import DecodingConfig, require
from .costs import gate_delta
from .em import aggregate_em
from .gaussian import aggregate_gaussian_sum
from .ops import Coins, group_sums, laplace, pick, sample, softmax
from .registry import Batch, get

__all__ = [  # the aggregations are re-exported: tests and audits import them from here
    "Coins", "GroupState", "aggregate_amin", "aggregate_em", "aggregate_gaussian_sum", "candidate_sets",
    "drop_non_finite_rows", "gate_distance", "select_token", "select_tokens",
]


@dataclass
class GroupState:
    """Per-group state a mechanism keeps across steps; private, it never leaves the process.

    private_tokens / public_tokens count what the group has emitted; `halted` turns true when a
    gated group has used its cap of private tokens (the engine must end the group then).
    """

    private_tokens: int = 0
    public_tokens: int = 0
    halted: bool = False
    noisy_threshold: float | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------------
# Input checking


def _check_inputs(private_logits: np.ndarray, group_sizes: np.ndarray, public_logits: np.ndarray) -> None:
    require(public_logits.ndim == 2, "public_logits", "a 2-D array (groups, vocab)", public_logits.shape)
    g, v = public_logits.shape
    require(v >= 1, "public_logits", "a non-empty vocabulary", public_logits.shape)
    require(private_logits.ndim == 2, "private_logits", "a 2-D array (rows, vocab)", private_logits.shape)
    require(private_logits.shape[1] == v, "private_logits", f"of vocabulary size {v} (as public_logits)", private_logits.shape)
    require(group_sizes.ndim == 1 and group_sizes.shape[0] == g, "group_sizes", f"a 1-D array of {g} counts", group_sizes.shape)
    require(bool(np.all(group_sizes >= 0)), "group_sizes", "non-negative", group_sizes)
    require(int(group_sizes.sum()) == private_logits.shape[0], "group_sizes", f"summing to {private_logits.shape[0]} rows", int(group_sizes.sum()))
    # The public row is public: a non-finite one may fail the step. A private row may not
    # (one unit would decide the job's outcome): drop_non_finite_rows treats it as absent.
    if public_logits.size and not np.isfinite(public_logits.sum()):
        raise ValueError("public_logits must be finite (no NaN or infinity)")


def drop_non_finite_rows(private_logits: np.ndarray, group_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Private rows with a NaN or infinite logit, treated as absent (removed; sizes adjusted).

    An absent row is exactly what the add/remove analysis already covers (the average divides
    by the public N and an absent row contributes the public row's logits), so one unit whose
    prompt drives the model to a non-finite logit changes its own row only, never the step's
    outcome. One pass per row: a sum is finite iff every term is (logits are far below float max).
    """
    if not private_logits.size:
        return private_logits, group_sizes
    finite = np.isfinite(private_logits.sum(axis=1))
    if finite.all():
        return private_logits, group_sizes
    row_group = np.repeat(np.arange(group_sizes.shape[0]), group_sizes)
    kept = np.bincount(row_group[finite], minlength=group_sizes.shape[0]).astype(np.int64)
    return private_logits[finite], kept


# ---------------------------------------------------------------------------------------------
# Candidate sets: public logits only


def candidate_sets(public_logits: np.ndarray, cfg: DecodingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Token ids each group may emit, padded: (ids (G, S), valid (G, S)).

    Computed from the public row alone, so the set is public: a truncation chosen on private
    logits would give epsilon = infinity (a token's probability can drop to 0 under a neighbour).
    The rule is the mechanism's (Mechanism.candidates):
    - top_k None or >= vocab: the whole vocabulary.
    - em with top_k_plus (the default): top-k+ (InvisibleInk), every token whose public logit is
      within 2C of the public k-th largest; a token further down cannot overtake the k-th after
      clipping to +-C.
    - amin, gaussian, and em without top_k_plus: the public top-k.
    """
    return get(cfg.mechanism).candidates(public_logits, cfg)


# ---------------------------------------------------------------------------------------------
# Gathering: each private row's logits at its group's candidates (the mechanisms aggregate them)


def _gather_candidates(private_logits: np.ndarray, sizes: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(R, S) float64: each private row's logits at its group's candidate ids.

    A slice and a column take per group: about 3x faster than one fancy-indexed gather."""
    out = np.empty((private_logits.shape[0], ids.shape[1]), dtype=np.float64)
    start = 0
    for g, n in enumerate(sizes.tolist()):
        out[start : start + n] = np.take(private_logits[start : start + n], ids[g], axis=1)
        start += n
    return out


def gate_distance(zs: np.ndarray, zp: np.ndarray, valid: np.ndarray, valid_rows: np.ndarray, sizes: np.ndarray, cfg: DecodingConfig) -> np.ndarray:
    """Total-variation distance between the rows' average distribution and the public one.

    avg = (sum over present rows of p_i + (N - n) p_pub) / N, so avg - p_pub =
    sum_i (p_i - p_pub) / N; distance = (1/2) ||avg - p_pub||_1. Distributions are softmax at
    tau over the public candidate set (renormalised there). Removing or changing one row moves
    the sum by p_i - p_pub (or p_i - p_i'), of half-L1 norm <= 1: sensitivity 1/N.
    """
    pp = softmax(zp / cfg.temperature, valid)
    p = softmax(zs / cfg.temperature, valid_rows)
    rows_g = np.repeat(np.arange(sizes.shape[0]), sizes)
    diff = group_sums(p - pp[rows_g], sizes) / cfg.partitions
    return 0.5 * np.abs(diff).sum(axis=1)


# ---------------------------------------------------------------------------------------------
# Selection


def select_tokens(
    private_logits: np.ndarray,
    group_sizes: Sequence[int] | np.ndarray,
    public_logits: np.ndarray,
    cfg: DecodingConfig,
    rng: Coins,
    states: Sequence[GroupState] | None = None,
) -> np.ndarray:
    """One token id per group, for every group of a batch at once.

    private_logits: (R, V) raw next-token logits of the private rows, the rows of group g
        contiguous and in group order; group_sizes: (G,) rows per group (0 allowed); a row
        with a non-finite logit counts as absent (drop_non_finite_rows);
    public_logits: (G, V) the public row of each group;
    rng: the only randomness used: one generator per group (the service: each group's own
        stream, so no two groups ever share a draw), or one generator for all (audits, tests).
    states: per-group GroupState (needed with a gate, to keep its noisy threshold across steps;
        updated in place). Returns (G,) int64 token ids.
    """
    private_logits = np.asarray(private_logits)
    public_logits = np.asarray(public_logits)
    sizes = np.asarray(group_sizes, dtype=np.int64)
    _check_inputs(private_logits, sizes, public_logits)
    private_logits, sizes = drop_non_finite_rows(private_logits, sizes)
    g = public_logits.shape[0]
    if states is None:
        states = [GroupState() for _ in range(g)]
    require(len(states) == g, "states", f"one GroupState per group ({g})", len(states))
    require(not any(s.halted for s in states), "states", "of groups that have not halted", [i for i, s in enumerate(states) if s.halted])

    mechanism = get(cfg.mechanism)
    ids, valid = mechanism.candidates(public_logits, cfg)
    row_group = np.repeat(np.arange(g), sizes)
    zp = np.take_along_axis(public_logits, ids, axis=1).astype(np.float64)
    zs = _gather_candidates(private_logits, sizes, ids)
    valid_rows = valid[row_group]

    private = np.ones(g, dtype=bool)
    if cfg.gate is not None:
        private = _gate_above(zs, zp, valid, valid_rows, sizes, cfg, rng, states)

    choice = mechanism.choose(Batch(private_logits, sizes, row_group, ids, valid, zp, zs, valid_rows), cfg, rng)

    if not private.all():  # below the gate's threshold: the public row's own sample, free
        public = ~private
        choice = choice.copy()
        choice[public] = sample(zp[public] / cfg.temperature, valid[public], pick(rng, public))

    for s, is_private in zip(states, private):
        if is_private:
            s.private_tokens += 1
            if cfg.gate is not None and s.private_tokens >= cfg.gate.max_private_tokens:
                s.halted = True
        else:
            s.public_tokens += 1
    return ids[np.arange(g), choice].astype(np.int64)


def _gate_above(zs, zp, valid, valid_rows, sizes, cfg: DecodingConfig, rng: Coins, states: Sequence[GroupState]) -> np.ndarray:
    """AboveThreshold step for every group: True where the group must pay for a private token.

    Laplace AboveThreshold (Dwork & Roth, Alg. 1): threshold T + Lap(2 Delta/eps), drawn afresh
    after every above answer; query + Lap(4 Delta/eps). See mechanisms.costs.rho_gate.
    """
    gate = cfg.gate
    assert gate is not None
    delta = gate_delta(cfg)
    fresh = np.array([s.noisy_threshold is None for s in states])
    thresholds = laplace(rng, 2.0 * delta / gate.epsilon, fresh)
    for s, f, t in zip(states, fresh, thresholds):
        if f:
            s.noisy_threshold = gate.threshold + t
    distance = gate_distance(zs, zp, valid, valid_rows, sizes, cfg)
    noisy = distance + laplace(rng, 4.0 * delta / gate.epsilon, np.ones(len(states), dtype=bool))
    above = noisy >= np.array([s.noisy_threshold for s in states])
    for s, a in zip(states, above):
        if a:
            s.noisy_threshold = None  # a fresh instance after each above answer
    return above


def select_token(
    private_logits: np.ndarray,
    public_logits: np.ndarray,
    cfg: DecodingConfig,
    rng: np.random.Generator,
    state: GroupState | None = None,
) -> int:
    """One private token for one group: private_logits (n, V), public_logits (V,)."""
    private_logits = np.asarray(private_logits)
    public_logits = np.asarray(public_logits)
    require(public_logits.ndim == 1, "public_logits", "a 1-D array (vocab,)", public_logits.shape)
    require(private_logits.ndim == 2, "private_logits", "a 2-D array (rows, vocab)", private_logits.shape)
    states = None if state is None else [state]
    return int(select_tokens(private_logits, [private_logits.shape[0]], public_logits[None, :], cfg, rng, states)[0])
