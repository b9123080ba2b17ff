"""EngineStats: the counters an engine keeps about its own work, as immutable snapshots.

Aggregates of the engine only (shapes, counts, seconds), never anything per row, and never
returned to clients: the server logs and the benchmarks read them. A backend replaces its
snapshot with a new one as it works (`plus`), so a reader (another thread, the bench) always
holds a consistent snapshot, and what a run cost is the difference of two (`since`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineStats:
    """Counters since the engine was built. Seconds are perf_counter wall time on the host
    (on CUDA a forward's kernels may finish later, inside whatever next waits for them)."""

    forwards: int = 0  # model forward passes (transformers: per batch, prefill chunks included; vLLM: engine steps)
    prefill_forwards: int = 0  # of which prefilled prompts (vLLM: steps right after admitting groups)
    prefill_tokens: int = 0  # prompt tokens prefilled (transformers: a shared prefix once; vLLM: as admitted)
    decode_row_tokens: int = 0  # tokens fed in decode forwards: one per row per step after the first
    steps: int = 0  # decode-loop steps: each gives every active group (or raw row) one token
    selections: int = 0  # Selector.select calls (one per step with a group to select for)
    prefill_seconds: float = 0.0  # in prefill (vLLM: the steps that prefilled, their selection excluded)
    decode_seconds: float = 0.0  # in decode forwards (vLLM: the other steps, their selection excluded)
    selection_seconds: float = 0.0  # in Selector.select
    groups_finished: int = 0
    out_of_step: int = 0  # groups ended unaggregated because their rows disagreed on the step
    cached_prompt_tokens: int = 0  # vLLM: prompt tokens served from its (salted) prefix cache
    max_batch_rows_seen: int = 0  # a high-water mark, not a sum

    def plus(self, rows_seen: int = 0, **add: float) -> EngineStats:
        """A new snapshot with `add` added to its counters and rows_seen folded into the mark."""
        changes = {k: getattr(self, k) + v for k, v in add.items()}
        if rows_seen > self.max_batch_rows_seen:
            changes["max_batch_rows_seen"] = rows_seen
        return dataclasses.replace(self, **changes)

    def since(self, before: EngineStats) -> EngineStats:
        """What happened between `before` and this snapshot; the row mark stays this one's."""
        return EngineStats(**{f.name: getattr(self, f.name) - getattr(before, f.name) for f in dataclasses.fields(self)
                              if f.name != "max_batch_rows_seen"}, max_batch_rows_seen=self.max_batch_rows_seen)

    @property
    def forward_seconds(self) -> float:
        """Prefill and decode forwards together (selection and the loop's own work excluded)."""
        return self.prefill_seconds + self.decode_seconds
