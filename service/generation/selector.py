"""MechanismSelector: the engine's Selector, backed by mechanisms.select_tokens.

It holds each active group's GroupState (the gate's noisy threshold, token counts) and the
group's own random stream (mechanisms.randomness: one per group id, derived from the job's
nonce), so no two groups and no two jobs ever share a draw, whatever the batching. The counts it
reports per group are public (how many tokens were paid for); states and streams never leave.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mechanisms import DecodingConfig, GroupState, select_tokens
from mechanisms.randomness import JobRandomness


class StreamReused(RuntimeError):
    """A group id was decoded twice by one job: its stream would be reused (never allowed)."""


class MechanismSelector:
    def __init__(self, cfg: DecodingConfig, randomness: JobRandomness):
        self.cfg = cfg
        self.randomness = randomness
        self._states: dict[int, GroupState] = {}
        self._streams: dict[int, np.random.Generator] = {}
        self._finished: set[int] = set()
        self.private_tokens = 0
        self.public_tokens = 0

    def stream(self, group_id: int) -> np.random.Generator:
        """The group's own generator, created on its first step; a finished group's never again."""
        rng = self._streams.get(group_id)
        if rng is None:
            if group_id in self._finished:
                raise StreamReused(f"group {group_id} already finished in this job; its random stream is never reused")
            rng = self._streams[group_id] = self.randomness.group(group_id)
        return rng

    def select(self, group_ids: Sequence[int], private_logits: np.ndarray, group_sizes: np.ndarray, public_logits: np.ndarray) -> np.ndarray:
        states = [self._states.setdefault(g, GroupState()) for g in group_ids]
        rngs = [self.stream(g) for g in group_ids]
        return select_tokens(private_logits, group_sizes, public_logits, self.cfg, rngs, states)

    def halted(self, group_id: int) -> bool:
        s = self._states.get(group_id)
        return s is not None and s.halted

    def release(self, group_id: int) -> None:
        self._streams.pop(group_id, None)
        self._finished.add(group_id)
        s = self._states.pop(group_id, None)
        if s is not None:
            self.private_tokens += s.private_tokens
            self.public_tokens += s.public_tokens
