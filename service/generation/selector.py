"""MechanismSelector: the engine's Selector, backed by mechanisms.select_tokens.

It holds each active group's GroupState (the gate's noisy threshold, token counts) and the one
random generator that decides every private token; the counts it reports per group are public
(how many tokens were paid for), the states themselves never leave the process.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mechanisms import DecodingConfig, GroupState, select_tokens


class MechanismSelector:
    def __init__(self, cfg: DecodingConfig, rng: np.random.Generator):
        self.cfg = cfg
        self.rng = rng
        self._states: dict[int, GroupState] = {}
        self.private_tokens = 0
        self.public_tokens = 0

    def select(self, group_ids: Sequence[int], private_logits: np.ndarray, group_sizes: np.ndarray, public_logits: np.ndarray) -> np.ndarray:
        states = [self._states.setdefault(g, GroupState()) for g in group_ids]
        return select_tokens(private_logits, group_sizes, public_logits, self.cfg, self.rng, states)

    def halted(self, group_id: int) -> bool:
        s = self._states.get(group_id)
        return s is not None and s.halted

    def release(self, group_id: int) -> None:
        s = self._states.pop(group_id, None)
        if s is not None:
            self.private_tokens += s.private_tokens
            self.public_tokens += s.public_tokens
