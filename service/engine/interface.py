"""The engine interface: backends decode groups in lock step; a Selector chooses the tokens.

A backend (transformers, vLLM) turns prompts into raw next-token logits and appends tokens; it
never chooses a token itself and never lets a per-row logit, log-probability or text out of the
engine-to-selector call. Each step, every active group's rows hand the selector one block:
their private rows' logits and their public row's logits; the selector returns one token per
group, and the backend appends it to every row of that group.
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from .stats import EngineStats

FinishReason = Literal["eos", "length", "stop", "halted", "out_of_step", "worker_lost"]


@dataclass(frozen=True)
class GroupRequest:
    """One group: its private rows' prompts and its public row's prompt, as token ids.

    max_tokens and stop strings are public limits. ignore_eos is for benchmarks only (decode
    exactly max_tokens tokens so that runs compare equal work).

    max_rows and max_row_tokens are the group's public worst case (the plan's row slots and the
    per-row token cap). When set, a backend admits and budgets the group by them, never by its
    actual rows or prompt lengths (private): which groups share a batch, when a group starts
    and whether it fits are then decided by public numbers. cache_salt keys any cross-request
    cache (vLLM's prefix cache) to one tenant and dataset.
    """

    group_id: int
    rows: tuple[tuple[int, ...], ...]
    public: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    max_rows: int | None = None
    max_row_tokens: int | None = None
    cache_salt: str | None = None

    @property
    def n_rows(self) -> int:
        return len(self.rows) + 1

    @property
    def admit_rows(self) -> int:
        """Rows the group is admitted as: its public worst case (with the public row) if known."""
        return (self.max_rows if self.max_rows is not None else len(self.rows)) + 1

    @property
    def admit_prompt_tokens(self) -> int:
        """Prompt tokens the group is budgeted as: public worst case if known, else its own."""
        if self.max_rows is not None and self.max_row_tokens is not None:
            return self.max_rows * self.max_row_tokens + len(self.public)
        return sum(len(r) for r in self.rows) + len(self.public)


@dataclass(frozen=True)
class GroupResult:
    """What a finished group produced: the shared suffix, never anything per row."""

    group_id: int
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason


class Selector(Protocol):
    """Chooses one token per group from a step's logits (mechanisms' batched selection)."""

    def select(
        self,
        group_ids: Sequence[int],
        private_logits: np.ndarray,  # (R, V) float32, the rows of group i contiguous, in order
        group_sizes: np.ndarray,  # (G,) private rows per group
        public_logits: np.ndarray,  # (G, V) float32
    ) -> np.ndarray:  # (G,) token ids
        ...

    def halted(self, group_id: int) -> bool:
        """True when the mechanism must not select again for this group (a gate's cap, or the
        request was cancelled): the backend ends the group ("halted") before its next step."""
        ...

    def release(self, group_id: int) -> None:
        """The group has finished; drop its state."""
        ...


class EngineError(RuntimeError):
    pass


class Engine(abc.ABC):
    """A backend: decodes many groups in one batch with continuous batching.

    What the product calls, and nothing else (the benchmarks' raw baseline is an optional
    capability, service.engine.raw.RawDecoding). A backend sets `tokens` (a
    service.engine.tokens.ChatTokens), `_vocab` and `_stats` (an EngineStats()) in its
    constructor and counts its work with `_count`; the accessors and request validation below
    are shared.
    """

    name: str
    model_path: str
    tokens: Any
    _vocab: int
    _stats: EngineStats

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.tokens.eos_ids

    @property
    def stats(self) -> EngineStats:
        """A snapshot of the engine's counters: immutable, so it never changes under a reader;
        what a run cost is `engine.stats.since(before)`."""
        return self._stats

    def _count(self, rows_seen: int = 0, **add: float) -> None:
        """Add to the counters (a backend's hot loop: a few calls per step, microseconds each)."""
        self._stats = self._stats.plus(rows_seen, **add)

    def encode_chat(self, user_message: str, prefix: str = "") -> tuple[int, ...]:
        """Token ids of a one-turn chat prompt (the model's chat template when it has one),
        followed by an optional assistant prefix."""
        return self.tokens.encode_chat(user_message, prefix)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokens.decode(token_ids)

    max_model_len: int  # the longest sequence (prompt + generated tokens) a row may reach

    def validate(self, req: GroupRequest) -> None:
        """Reject a request before any of it reaches the model. The worst-case bounds are the
        layout's promise: a row beyond them is a bug upstream, never something to decode."""
        if req.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {req.max_tokens}")
        for r in (*req.rows, req.public):
            if not r:
                raise ValueError(f"group {req.group_id}: a row has an empty prompt")
            if max(r) >= self._vocab or min(r) < 0:
                raise ValueError(f"group {req.group_id}: token id outside the vocabulary of {self._vocab}")
        if req.max_rows is not None and len(req.rows) > req.max_rows:
            raise ValueError(f"group {req.group_id}: more private rows than its max_rows {req.max_rows}")
        if req.max_row_tokens is not None and any(len(r) > req.max_row_tokens for r in req.rows):
            raise ValueError(f"group {req.group_id}: a private row over its max_row_tokens {req.max_row_tokens}")

    def capacity_problems(self, max_rows: int, max_row_tokens: int, public_tokens: int, max_tokens: int,
                          max_batch_rows: int) -> list[str]:
        """Why a group of this public worst case could not be decoded here (empty: it fits).

        Called at plan time with public numbers only, so a job that cannot fit is refused
        before anything is charged, and no unit's data can make a started job fail. Backends
        add their own limits (vLLM: tokens prefilled per step, KV cache)."""
        problems = []
        if max_row_tokens + max_tokens > self.max_model_len:
            problems.append(f"max_row_tokens {max_row_tokens} + max_tokens {max_tokens} = {max_row_tokens + max_tokens} "
                            f"is over the model's context of {self.max_model_len} tokens")
        if public_tokens + max_tokens > self.max_model_len:
            problems.append(f"the public prompt's {public_tokens} tokens + max_tokens {max_tokens} are over the model's "
                            f"context of {self.max_model_len} tokens")
        if max_rows + 1 > max_batch_rows:
            problems.append(f"a group's {max_rows} row slots + 1 public row = {max_rows + 1} rows are over the batch "
                            f"limit of {max_batch_rows} rows (batch_rows)")
        return problems

    def check_admissible(self, req: GroupRequest, max_batch_rows: int) -> None:
        """EngineError if the group can never be admitted (its worst case is over a limit)."""
        if req.admit_rows > max_batch_rows:
            raise EngineError(f"group {req.group_id} has {req.admit_rows} rows, over max_batch_rows {max_batch_rows}")

    def _peek(self, waiting: deque[GroupRequest], source: Iterator[GroupRequest | None], max_rows: int) -> GroupRequest | None:
        """The next group waiting for admission (validated, never larger than a batch), or None.

        A source may yield None for "nothing to admit now" (a live source shared by many
        requests, see service.jobs.scheduler): the loop goes on with the active groups, and the
        run ends only when the source is exhausted (self._drained) and no group is active."""
        if not waiting:
            try:
                nxt = next(source)
            except StopIteration:
                self._drained = True
                return None
            if nxt is None:
                return None
            self.validate(nxt)
            waiting.append(nxt)
        req = waiting[0]
        self.check_admissible(req, max_rows)
        return req

    _drained: bool = False  # the current run's source is exhausted

    @abc.abstractmethod
    def run(self, groups: Iterable[GroupRequest | None], selector: Selector, max_batch_rows: int = 160) -> Iterator[GroupResult]:
        """Decode groups in lock step, yielding each as it finishes. Waiting groups join
        between steps as finished ones leave; at most max_batch_rows rows decode at once.
        `groups` may yield None (nothing to admit now); the run ends when it is exhausted and
        every admitted group has finished."""
