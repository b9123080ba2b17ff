"""Private Evolution: the DP nearest-neighbour histogram, its cost, and its plan.

Private Evolution (PE; Lin et al. 2024, "Differentially Private Synthetic Data via Foundation
Model APIs"; Aug-PE for text, Xie et al. 2024) never shows a private record to the model. The
model writes candidates from public prompts; the private units only *vote*, each for the
candidate nearest to it, and the votes are released as a Gaussian-noised histogram that picks
which candidates survive and are varied into the next population. This module holds the math:
the votes, the noisy histogram, the choice of survivors, and the plan (sigma <-> epsilon over
T iterations). The population loop, the embeddings and the prompts live in
service/generation/pe.py.

Adjacency: add or remove one privacy unit (with all its records), as for private decoding.

Derivation
----------
Candidates. At iteration t the candidates S_t (texts, their embeddings and their labels) are
public: S_1 is written by the public model from public prompts alone, and S_{t+1} is written
from S_t and the histogram released at t, i.e. it is post-processing of earlier releases.

Votes. Unit u has records r_1..r_k (k >= 1) with embeddings e_i (MiniLM, unit norm) and
labels. Its label l(u) is the majority label of its records (ties: the smallest label; the same
rule the corpus reader applies), and its embedding is the mean of its records of that label,
m(u) = (1/k_l) sum_i e_i. It votes for exactly one candidate:

    v(u) = onehot(argmax_{j : label_j = l(u)} <m(u), c_j> / |c_j|)        (cosine; |m(u)| > 0)

and for none if m(u) is zero or not finite, or if no candidate has its label. So v(u) is 0
or a standard basis vector: ||v(u)||_2 <= 1, whatever k, however many of its records are
duplicates, and however its records spread over labels (one vote, never one per record). The
histogram is h(D) = sum_{u in D} v(u). v(u) depends on u's own records and on public S_t only,
so adding unit u to D changes no other unit's vote: h(D + u) - h(D) = v(u), and

    Delta_2 = max ||h(D + u) - h(D)||_2 = 1.

Labels: the label set and the records and candidates per label are public (declared by the
user, or released by the DP label histogram of mechanisms/counts.py). Every unit sits in one
label's bins, so the histogram over all labels together still has Delta_2 = 1: one release per
iteration, whatever the number of labels. Counting candidates or records per label from the raw
data would be a release outside the accounting; nothing here reads a per-label count.

Release. h + N(0, sigma^2 I) is the Gaussian mechanism with L2 sensitivity 1: rho = 1/(2
sigma^2)-zCDP (Bun & Steinke 2016, Prop. 1.6), recorded as PrivacyEvent("gaussian", sigma), the
GaussianDpEvent(sigma) of dp-accounting, as the DP counts of mechanisms/counts.py are.
Zeroing counts below the public threshold H, normalising, sampling the survivors and ranking
the last population are post-processing (free).

Composition. T iterations release T histograms, each on candidates that depend on the earlier
releases: adaptive sequential composition of zCDP, rho_total = T / (2 sigma^2). The plan lists
the T events before iteration 1 and epsilon is the accountant's (dp-accounting RDP) for exactly
those events (plus the DP unit count or label histogram when this job releases it). Solving
sigma from epsilon: rho* = the largest rho the accountant allows within (epsilon, delta) next to
the other events, sigma = sqrt(T / (2 rho*)), checked against the accountant.

Mistakes this module refuses (each has a test in tests/mechanisms/test_pe.py):
- class counts from the raw data: the bins are the public candidates; units whose label has no
  candidate vote for nothing;
- several votes of one unit, in one bin or in several (sensitivity above 1): one vote per unit;
- duplicated records of one unit counted as several voters: votes are per unit, not per record;
- epsilon computed for another number of iterations than run: HistogramReleases hands out the
  plan's T releases and refuses a T+1-th;
- noise wiping out every count: the survivors fall back to the previous population's order (a
  public choice), reported as a fallback, never an exception.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .accounting import CalibrationError, Ledger, PrivacyEvent, epsilon_of, largest_rho_within
from .config import require
from .counts import count_event

UnitsSource = Literal["declared-public", "dp-count"]
SENSITIVITY = 1.0  # L2, add/remove one unit: one vote


# ---------------------------------------------------------------------------------------------
# Votes


def _label_key(label: Hashable) -> tuple[str, str]:
    return (type(label).__name__, str(label))


def unit_votes(
    record_embeddings: np.ndarray,
    record_units: Sequence[Hashable],
    candidate_embeddings: np.ndarray,
    record_labels: Sequence[Hashable] | None = None,
    candidate_labels: Sequence[Hashable] | None = None,
    chunk: int = 4096,
) -> tuple[list[Hashable], np.ndarray]:
    """Each unit's vote: (unit keys in first-seen order, candidate index per unit or -1).

    record_embeddings: (n_records, d), one row per record; record_units: the unit key of each
    record (several records of one unit, duplicates included, make one voter). Labels: both or
    neither; a unit's label is its records' majority label (ties: the smallest) and only its
    records of that label are averaged. A unit votes for the candidate of its label with the
    largest cosine to its mean embedding, or for none (-1: zero or non-finite mean, or no
    candidate of its label).
    """
    emb = np.asarray(record_embeddings, dtype=np.float64)
    cand = np.asarray(candidate_embeddings, dtype=np.float64)
    require(emb.ndim == 2, "record_embeddings", "a 2-d array (records, dim)", emb.shape)
    require(cand.ndim == 2 and cand.shape[1] == emb.shape[1], "candidate_embeddings", f"a 2-d array (candidates, {emb.shape[1]})", cand.shape)
    require(len(record_units) == len(emb), "record_units", f"one key per record ({len(emb)})", len(record_units))
    require((record_labels is None) == (candidate_labels is None), "labels", "given for both records and candidates, or neither", "one")
    if record_labels is not None:
        require(len(record_labels) == len(emb), "record_labels", f"one label per record ({len(emb)})", len(record_labels))
        require(len(candidate_labels) == len(cand), "candidate_labels", f"one label per candidate ({len(cand)})", len(candidate_labels))

    index: dict[Hashable, int] = {}
    inv = np.fromiter((index.setdefault(u, len(index)) for u in record_units), dtype=np.int64, count=len(emb))
    units = list(index)
    n = len(units)
    votes = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(cand) == 0:
        return units, votes

    # The unit's label (majority of its records', ties to the smallest) and the records kept.
    if record_labels is None:
        unit_label: list[Hashable] = [None] * n
        keep = np.ones(len(emb), dtype=bool)
        cand_label: list[Hashable] = [None] * len(cand)
    else:
        tallies: list[Counter] = [Counter() for _ in range(n)]
        for i, lab in zip(inv.tolist(), record_labels):
            tallies[i][lab] += 1
        unit_label = [min(c, key=lambda lab: (-c[lab], _label_key(lab))) for c in tallies]
        keep = np.fromiter((lab == unit_label[i] for i, lab in zip(inv.tolist(), record_labels)), dtype=bool, count=len(emb))
        cand_label = list(candidate_labels)

    sums = np.zeros((n, emb.shape[1]))
    np.add.at(sums, inv[keep], emb[keep])
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(sums, axis=1)
        ok = np.isfinite(norms) & (norms > 0)  # the mean's direction is the sum's: cosine ignores the 1/k
    mean = np.where(ok[:, None], sums / np.where(ok, norms, 1.0)[:, None], 0.0)

    c_norm = np.linalg.norm(cand, axis=1)
    c_ok = np.isfinite(c_norm) & (c_norm > 0)
    cand = np.where(c_ok[:, None], cand / np.where(c_ok, c_norm, 1.0)[:, None], 0.0)  # a degenerate candidate: cosine 0

    by_label: dict[tuple[str, str], list[int]] = {}
    for j, lab in enumerate(cand_label):
        by_label.setdefault(_label_key(lab), []).append(j)
    for key, cols in by_label.items():
        rows = np.array([i for i in range(n) if ok[i] and _label_key(unit_label[i]) == key], dtype=np.int64)
        cols_a = np.array(cols, dtype=np.int64)
        for s in range(0, len(rows), chunk):
            part = rows[s : s + chunk]
            sims = mean[part] @ cand[cols_a].T
            votes[part] = cols_a[np.argmax(sims, axis=1)]  # ties: the first candidate (public order)
    return units, votes


def vote_vectors(votes: np.ndarray, candidates: int) -> np.ndarray:
    """(units, candidates) 0/1 matrix: each unit's contribution to the histogram (a row of zeros
    or one standard basis vector)."""
    votes = np.asarray(votes, dtype=np.int64)
    out = np.zeros((len(votes), candidates))
    has = votes >= 0
    out[np.nonzero(has)[0], votes[has]] = 1.0
    return out


def vote_histogram(
    record_embeddings: np.ndarray,
    record_units: Sequence[Hashable],
    candidate_embeddings: np.ndarray,
    record_labels: Sequence[Hashable] | None = None,
    candidate_labels: Sequence[Hashable] | None = None,
) -> np.ndarray:
    """h(D): votes per candidate (int64, one per voting unit). Private: only ever the input of
    noisy_histogram / HistogramReleases."""
    _, votes = unit_votes(record_embeddings, record_units, candidate_embeddings, record_labels, candidate_labels)
    return np.bincount(votes[votes >= 0], minlength=len(candidate_embeddings)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The release


def _check_sigma(sigma: float) -> None:
    require(isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and math.isfinite(sigma) and sigma > 0,
            "sigma", "a finite number > 0", sigma)


def _check_threshold(threshold: float) -> None:
    require(isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold) and threshold >= 0,
            "threshold", "a finite number >= 0", threshold)


def gaussian_counts(counts: np.ndarray, sigma: float, rng: np.random.Generator, draws: int | None = None) -> np.ndarray:
    """counts + N(0, sigma^2) on every bin: (C,), or (draws, C) independent releases."""
    _check_sigma(sigma)
    counts = np.asarray(counts, dtype=np.float64)
    shape = counts.shape if draws is None else (draws, *counts.shape)
    return counts + rng.normal(0.0, sigma, size=shape)


def apply_threshold(noisy: np.ndarray, threshold: float) -> np.ndarray:
    """Counts below the public threshold H set to 0 (post-processing)."""
    _check_threshold(threshold)
    noisy = np.asarray(noisy, dtype=np.float64)
    return np.where(noisy >= threshold, noisy, 0.0) if threshold > 0 else np.maximum(noisy, 0.0)


def noisy_histogram(counts: np.ndarray, sigma: float, threshold: float, rng: np.random.Generator) -> np.ndarray:
    """The DP release of one iteration: Gaussian noise on every count, then counts below H (and
    any negative count) zeroed. Charge one histogram event (sigma) for it."""
    return apply_threshold(gaussian_counts(counts, sigma, rng), threshold)


def choose_parents(noisy: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """k survivors, sampled with replacement in proportion to the released counts (Lin et al.'s
    PE). When noise and the threshold left every count at 0: the previous population's first k,
    in its order (cycled), and True (the fallback, to report). Post-processing only."""
    require(isinstance(k, int) and k >= 0, "k", "an integer >= 0", k)
    noisy = np.asarray(noisy, dtype=np.float64)
    require(noisy.ndim == 1 and len(noisy) >= 1 and np.all(np.isfinite(noisy)) and np.all(noisy >= 0),
            "noisy", "a non-empty vector of finite released counts >= 0", noisy.shape)
    total = noisy.sum()
    if total <= 0:
        return np.arange(k) % len(noisy), True
    return rng.choice(len(noisy), size=k, replace=True, p=noisy / total), False


def rank(noisy: np.ndarray, k: int) -> tuple[np.ndarray, bool]:
    """The k candidates with the largest released counts (ties, and every count 0: the
    population's order), and whether every count was 0 (the fallback). Post-processing only."""
    require(isinstance(k, int) and k >= 0, "k", "an integer >= 0", k)
    noisy = np.asarray(noisy, dtype=np.float64)
    require(noisy.ndim == 1 and k <= len(noisy), "k", f"at most the {len(noisy)} candidates", k)
    return np.argsort(-noisy, kind="stable")[:k], bool(noisy.sum() <= 0)


# ---------------------------------------------------------------------------------------------
# The plan


def histogram_event(sigma: float, iteration: int, iterations: int) -> PrivacyEvent:
    return PrivacyEvent("gaussian", sigma, 1, f"PE iteration {iteration} of {iterations}: DP nearest-neighbour histogram "
                                              f"(Gaussian, L2 sensitivity 1)")


def histogram_events(sigma: float, iterations: int) -> tuple[PrivacyEvent, ...]:
    """The T events of T iterations, one each, listed before iteration 1."""
    _check_sigma(sigma)
    require(isinstance(iterations, int) and iterations >= 1, "iterations", "an integer >= 1", iterations)
    return tuple(histogram_event(sigma, t, iterations) for t in range(1, iterations + 1))


@dataclass(frozen=True)
class PePlan:
    """A PE job's privacy plan, fixed before iteration 1: sigma of every histogram, T, H, and
    the events (T histograms, plus the DP unit count or label histogram if this job releases
    one) whose accountant epsilon is `epsilon`."""

    sigma: float
    iterations: int
    threshold: float
    epsilon: float
    delta: float
    units: int
    units_source: UnitsSource
    records: int
    events: tuple[PrivacyEvent, ...]
    rho_per_iteration: float
    rho_total: float
    ledger_epsilon_after: float | None = None

    @property
    def histogram_events(self) -> tuple[PrivacyEvent, ...]:
        return tuple(e for e in self.events if e.note.startswith("PE iteration"))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["events"] = [e.to_dict() for e in self.events]
        d["method"] = "pe"
        d["sensitivity"] = SENSITIVITY
        return d


def _solve_sigma(iterations: int, epsilon: float, delta: float, other: Sequence[PrivacyEvent]) -> float:
    """The smallest sigma (to one part in 10^9) whose T histograms, next to `other`, stay within
    (epsilon, delta): rho* = largest_rho_within(...), sigma = sqrt(T / (2 rho*))."""
    rho = largest_rho_within(epsilon, delta, other)
    if rho <= 0:
        raise CalibrationError(f"epsilon {epsilon} at delta {delta} leaves nothing for the histograms: the other events "
                               f"(a DP count) spend {epsilon_of(other, delta):.4g} already")
    sigma = math.sqrt(iterations / (2.0 * rho))
    for _ in range(16):  # floating point can put the solution a hair over; widen by 1e-9 until it fits
        if epsilon_of([*other, *histogram_events(sigma, iterations)], delta) <= epsilon:
            return sigma
        sigma *= 1 + 1e-9
    raise AssertionError("calibration did not converge")  # pragma: no cover


class PeBudgetExceeded(ValueError):
    """The PE plan costs more than its budget; says by how much and what fits."""

    def __init__(self, plan: PePlan, cap: float, spent: float, fits: dict):
        self.plan, self.fits = plan, fits
        parts = "; ".join(f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                          for k, v in fits.items())
        total = plan.epsilon if plan.ledger_epsilon_after is None else plan.ledger_epsilon_after
        where = "the budget" if plan.ledger_epsilon_after is None else f"the ledger's cap (spent {spent:.4g})"
        super().__init__(f"plan needs epsilon {total:.4g} in total, over {where} of {cap:g} at delta {plan.delta:g}, by "
                         f"{total - cap:.4g}. What fits: {parts or 'nothing: the budget is spent'}")


def _what_fits(iterations: int, sigma: float, cap: float, delta: float, base: Sequence[PrivacyEvent]) -> dict:
    fits: dict = {}
    rho = largest_rho_within(cap, delta, base)
    if rho <= 0:
        return fits
    fits["min_sigma"] = math.sqrt(iterations / (2.0 * rho)) * (1 + 1e-9)
    most = int(math.floor(rho * 2.0 * sigma * sigma * (1 + 1e-12)))
    while most >= 1 and epsilon_of([*base, *histogram_events(sigma, most)], delta) > cap:
        most -= 1
    if most >= 1:
        fits["max_iterations"] = most
    fits["max_epsilon"] = epsilon_of([PrivacyEvent("zcdp", rho)], delta)
    return fits


def plan_pe(
    units: int,
    records: int,
    iterations: int,
    threshold: float,
    delta: float,
    epsilon: float | None = None,
    sigma: float | None = None,
    *,
    units_source: UnitsSource = "declared-public",
    count_noise: float | None = None,
    count_what: str = "unit count",
    ledger: Ledger | None = None,
) -> PePlan:
    """Plan a PE job: T = iterations Gaussian histograms of noise sigma, threshold H.

    epsilon only: sigma solved so that the plan spends (at most, within 1e-9) epsilon.
    sigma only: epsilon computed from it. Both: epsilon computed from sigma and refused
    (PeBudgetExceeded) if it is over epsilon. units: the public unit count (declared, or
    released by a DP count; delta must be <= 1/units). count_noise: this job also releases that
    DP count (or label histogram, count_what), one more Gaussian event. ledger: the plan must
    also fit what the ledger has left.
    """
    require(isinstance(units, int) and not isinstance(units, bool) and units >= 1, "units", "an integer >= 1", units)
    require(isinstance(records, int) and not isinstance(records, bool) and records >= 1, "records", "an integer >= 1", records)
    require(isinstance(iterations, int) and not isinstance(iterations, bool) and iterations >= 1, "iterations", "an integer >= 1", iterations)
    _check_threshold(threshold)
    require(isinstance(delta, (int, float)) and 0 < delta <= 1.0 / units, "delta", f"in (0, 1/units] = (0, {1.0 / units:.3g}]", delta)
    require(units_source in ("declared-public", "dp-count"), "units_source", "declared-public or dp-count", units_source)
    if count_noise is not None and units_source != "dp-count":
        raise ValueError("count_noise needs units_source='dp-count' (a declared-public count costs nothing)")
    require(epsilon is not None or sigma is not None, "epsilon", "given (or sigma)", None)
    if epsilon is not None:
        require(isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0, "epsilon", "a finite number > 0", epsilon)
    other = (count_event(count_noise, count_what),) if count_noise is not None else ()
    solved = sigma is None
    if solved:
        sigma = _solve_sigma(iterations, epsilon, delta, other)
    _check_sigma(sigma)
    events = (*other, *histogram_events(sigma, iterations))
    p = PePlan(
        sigma=float(sigma), iterations=iterations, threshold=float(threshold), epsilon=epsilon_of(events, delta), delta=delta,
        units=units, units_source=units_source, records=records, events=events, rho_per_iteration=1.0 / (2.0 * sigma * sigma),
        rho_total=sum(e.rho for e in events),
    )
    if not solved and epsilon is not None and p.epsilon > epsilon:
        raise PeBudgetExceeded(p, epsilon, 0.0, _what_fits(iterations, sigma, epsilon, delta, other))
    if ledger is None:
        return p
    require(math.isclose(ledger.delta, delta), "delta", f"the ledger's delta {ledger.delta:g}", delta)
    p = dataclasses.replace(p, ledger_epsilon_after=ledger.epsilon_with(events))
    if p.ledger_epsilon_after > ledger.epsilon_cap:
        raise PeBudgetExceeded(p, ledger.epsilon_cap, ledger.spent_epsilon(),
                               _what_fits(iterations, sigma, ledger.epsilon_cap, delta, [*ledger.events, *other]))
    return p


class PlanOverrun(RuntimeError):
    """A histogram beyond the plan's T was asked for: it was never charged."""


class HistogramReleases:
    """The plan's T histogram releases, handed out once each and in order: a loop cannot release
    more histograms than the plan charged, and `released` says how many it did."""

    def __init__(self, plan: PePlan):
        self.plan = plan
        self.released = 0

    def release(self, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.released >= self.plan.iterations:
            raise PlanOverrun(f"the plan charged {self.plan.iterations} histogram(s); a {self.released + 1}th was asked for")
        self.released += 1
        return noisy_histogram(counts, self.plan.sigma, self.plan.threshold, rng)
