"""SelectCandidates' messages <-> service/jobs/select.py: the pool and settings checked within
the server's public bounds (INVALID_ARGUMENT naming the candidate by index, or the field, and
the limit), and the release as a response holding noisy counts only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc

from ..jobs.select import Pool, PoolError, Selection, check_pool
from .convert import check_id
from .errors import ApiError
from .gen.privtext.v1 import generation_pb2
from .settings import ServerSettings


@dataclass(frozen=True)
class SelectAsk:
    """A checked SelectCandidatesRequest."""

    dataset_id: str
    pool: Pool
    top: int
    threshold: float
    epsilon: float | None
    sigma: float | None


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, field)


def select_request(m: generation_pb2.SelectCandidatesRequest, s: ServerSettings) -> SelectAsk:
    """The request's public fields within bounds, before anything is read or charged."""
    check_id(m.dataset_id, "dataset_id", s)
    pool = Pool(tuple(m.candidates), tuple(m.candidate_labels) or None)
    try:
        check_pool(pool, m.top, max_candidates=s.max_select_candidates, max_chars=s.max_candidate_chars,
                   max_label_chars=s.max_label_chars)
    except PoolError as e:
        raise _invalid(e.field, str(e)) from None
    if not (math.isfinite(m.threshold) and m.threshold >= 0):
        raise _invalid("threshold", f"threshold must be a finite number >= 0, got {m.threshold!r}")
    which = m.WhichOneof("noise")
    if which is None:
        raise _invalid("epsilon", "epsilon must be set (or sigma), got neither")
    if which == "epsilon" and not (math.isfinite(m.epsilon) and s.min_epsilon <= m.epsilon <= s.max_epsilon):
        raise _invalid("epsilon", f"epsilon must be in [{s.min_epsilon:g}, {s.max_epsilon:g}] (min_epsilon, max_epsilon), "
                                  f"got {m.epsilon!r}")
    if which == "sigma" and not (math.isfinite(m.sigma) and m.sigma > 0):
        raise _invalid("sigma", f"sigma must be a finite number > 0, got {m.sigma!r}")
    return SelectAsk(m.dataset_id, pool, m.top, m.threshold, m.epsilon if which == "epsilon" else None,
                     m.sigma if which == "sigma" else None)


def select_response(ask: SelectAsk, sel: Selection) -> generation_pb2.SelectCandidatesResponse:
    labels = ask.pool.labels
    return generation_pb2.SelectCandidatesResponse(
        selected=[generation_pb2.SelectedCandidate(index=j, text=ask.pool.texts[j], label=labels[j] if labels else "",
                                                   noisy_count=c) for j, c in zip(sel.indices, sel.noisy_counts)],
        epsilon=sel.plan.epsilon, sigma=sel.plan.sigma, fallback=sel.fallback,
    )
