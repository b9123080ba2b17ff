"""Bring your own candidates: rank a public pool by one DP histogram of the private units' votes.

Private Evolution's release (mechanisms/pe.py) on its own: the client's candidates are public,
each private unit votes for its nearest candidate (MiniLM, service/generation/embed.py; of its
label when the pool is labelled), one vote per unit whatever its number of records (L2
sensitivity 1), and the counts are released once with Gaussian noise. Only the noisy counts
of the top candidates leave; the votes, the exact counts and the embeddings never do.

The gRPC method `SelectCandidates` (service/api/generation.py) runs `select_from_dataset` on a
stored dataset; `privtext select` (service/select_cmd.py) runs it on the local store's dataset of a corpus file.
Both validate the pool with `check_pool` and reserve the release's event on their ledger (the
dataset's, or the corpus's local one) before any vote is computed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mechanisms.pe import HistogramReleases, PePlan, plan_pe, rank, vote_histogram

from ..generation.corpus import Record
from ..generation.embed import embed
from ..generation.pe import voters
from ..store.interface import Store
from .corpora import CORPORA
from .dataset_job import fresh_randomness, pe_within_cap, public_units, shared_embed, unreleased

Embed = Callable[[Sequence[str]], np.ndarray]
ALLOWED_CONTROLS = ("\n", "\t")  # whitespace a multi-line candidate may hold


class PoolError(ValueError):
    """A pool the request cannot use; `field` names the candidate (candidates[3]) or setting."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Pool:
    """Public candidates, with one label each or none."""

    texts: tuple[str, ...]
    labels: tuple[str, ...] | None = None


def _bad_char(text: str) -> str | None:
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if (cat[0] == "C" or cat in ("Zl", "Zp")) and ch not in ALLOWED_CONTROLS:
            return f"U+{ord(ch):04X} at position {i}"
    return None


def check_pool(pool: Pool, top: int, *, max_candidates: int, max_chars: int, max_label_chars: int,
               limit_names: tuple[str, str, str] = ("max_select_candidates", "max_candidate_chars", "max_label_chars")) -> None:
    """Refuse, before anything is read or charged, a pool out of its public bounds; the error
    names the candidate by index and the limit (limit_names: the settings that set them)."""
    n_max, chars_max, label_name = limit_names
    label_max = max_label_chars
    n = len(pool.texts)
    if not 1 <= n <= max_candidates:
        raise PoolError("candidates", f"candidates must be between 1 and {max_candidates} strings ({n_max}), got {n}")
    for i, text in enumerate(pool.texts):
        if not text.strip():
            raise PoolError(f"candidates[{i}]", f"candidates[{i}] must be a non-empty text, got {text[:20]!r}")
        if len(text) > max_chars:
            raise PoolError(f"candidates[{i}]", f"candidates[{i}] must be at most {max_chars} characters ({chars_max}), "
                                                f"got {len(text)}")
        bad = _bad_char(text)
        if bad is not None:
            raise PoolError(f"candidates[{i}]", f"candidates[{i}] must be free of control characters other than newline and "
                                                f"tab, got {bad}")
    if pool.labels is not None:
        if len(pool.labels) != n:
            raise PoolError("candidate_labels", f"candidate_labels must be empty or one per candidate ({n}), got {len(pool.labels)}")
        for i, lab in enumerate(pool.labels):
            if not lab or len(lab) > label_max or _bad_char(lab) is not None or "\n" in lab or "\t" in lab:
                raise PoolError(f"candidate_labels[{i}]", f"candidate_labels[{i}] must be a non-empty label of at most "
                                                          f"{label_max} characters ({label_name}) without control characters")
    if not 1 <= top <= n:
        raise PoolError("top", f"top must be in [1, {n}] (the number of candidates), got {top}")


@dataclass(frozen=True)
class Selection:
    """The release: the top candidates (indices into the pool, best first) and their noisy counts."""

    indices: tuple[int, ...]
    noisy_counts: tuple[float, ...]
    plan: PePlan
    fallback: bool  # every released count was 0: the pool's first `top`, in its order


def noisy_top(units: Mapping[str, Sequence[Record]], pool: Pool, plan: PePlan, top: int, rng: np.random.Generator,
              embed_fn: Embed = embed, max_records_per_unit: int = 4, max_record_chars: int = 500) -> Selection:
    """Call only once `plan` (one histogram) is charged. Each unit votes once (its first
    max_records_per_unit records of the pool's labels, each cut to max_record_chars: public caps
    on the work one unit causes); the histogram is released with the plan's sigma and threshold
    (HistogramReleases refuses a second release), and ranked."""
    labels = sorted(set(pool.labels)) if pool.labels is not None else None
    private = voters(units, labels, embed_fn, max_records_per_unit, max_record_chars)
    cands = embed_fn(list(pool.texts))
    counts = vote_histogram(private.embeddings, private.units, cands, private.labels,
                            list(pool.labels) if pool.labels is not None else None)
    noisy = HistogramReleases(plan).release(counts, rng)
    del counts, private  # private: nothing below reads them
    order, fell_back = rank(noisy, top)
    return Selection(tuple(int(j) for j in order), tuple(float(noisy[j]) for j in order), plan, fell_back)


def select_plan(units: int, source: str, top: int, threshold: float, delta: float, epsilon: float | None,
                sigma: float | None, **kw) -> PePlan:
    """The plan of one release: a PE plan of one iteration (sigma from epsilon, or epsilon from
    sigma); kw: plan_pe's count_noise, count_what and ledger."""
    return plan_pe(units=units, records=top, iterations=1, threshold=threshold, delta=delta, epsilon=epsilon, sigma=sigma,
                   units_source=source, **kw)


def select_from_dataset(store: Store, tenant: str, dataset_id: str, pool: Pool, top: int, threshold: float,
                        epsilon: float | None, sigma: float | None, label: str, count_noise: float, server_secret: bytes,
                        embed_fn: Embed = shared_embed, max_records_per_unit: int = 4, max_record_chars: int = 500) -> Selection:
    """SelectCandidates on a stored dataset (the pool already checked with check_pool). In order:
    the plan checked against the dataset's cap, with the DP unit count's cost if it is still to
    be released (BudgetExceeded: nothing drawn, computed or charged); the embedding model
    loaded; the unit count (released once per dataset); the release's event reserved; only then
    the votes, with a fresh nonce's noise."""
    info = store.get_dataset(tenant, dataset_id)
    if pool.labels is not None and not info.label_field:
        raise PoolError("candidate_labels", f"candidate_labels: dataset {info.id} has no label field, so its units cannot "
                                            "vote by label (send the candidates without labels)")
    noise, what = unreleased(store, tenant, info, None, count_noise)
    first = select_plan(1, "declared-public", top, threshold, info.delta, epsilon, sigma)
    pe_within_cap(store, tenant, info, first, noise, what)
    embed_fn([])  # the model loads before anything is charged
    randomness = fresh_randomness(server_secret)
    corpus = CORPORA.get(store, tenant, info)
    units, source = public_units(store, tenant, info, corpus, count_noise, randomness.stream("counts"))
    p = pe_within_cap(store, tenant, info, select_plan(units, source, top, threshold, info.delta, None, first.sigma))
    store.reserve(tenant, dataset_id, label, p.events)
    return noisy_top(corpus.units(), pool, p, top, randomness.stream("select"), embed_fn, max_records_per_unit, max_record_chars)
