"""vLLM V1 batch-level logits processor that makes a group's rows decode in lock step.

vLLM builds this processor inside its engine; it finds each group's rows through the requests'
`SamplingParams.extra_args["privtext"]` and hands every step's logits to the coordinator of the
engine that submitted them (in-process only: VLLM_ENABLE_V1_MULTIPROCESSING=0). The coordinator
calls the selector for every complete, in-step group and forces each of its rows to the chosen
token (every other logit to -inf), so the sampler can only pick that token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

# engine key -> callable(logits, {group id: [(batch index, row index, tokens so far)]}) -> None
COORDINATORS: dict[int, Callable[[torch.Tensor, dict[int, list[tuple[int, int, int]]]], None]] = {}


class LockStepLogitsProcessor(LogitsProcessor):
    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        # batch index -> (engine key, group id, row index (-1: public row), live output token list)
        self.rows: dict[int, tuple[int, int, int, list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for i in batch_update.removed:
            self.rows.pop(i, None)
        for i, params, _prompt, output in batch_update.added:
            tag = (params.extra_args or {}).get("privtext") if params is not None else None
            if tag is None:
                self.rows.pop(i, None)
            else:
                self.rows[i] = (tag["engine"], tag["group"], tag["row"], output)
        for a, b, direction in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if direction == MoveDirectionality.SWAP and rb is not None:
                self.rows[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        by_engine: dict[int, dict[int, list[tuple[int, int, int]]]] = {}
        for i, (key, group, row, output) in self.rows.items():
            if i < logits.shape[0]:
                by_engine.setdefault(key, {}).setdefault(group, []).append((i, row, len(output)))
        for key, groups in by_engine.items():
            coordinator = COORDINATORS.get(key)
            if coordinator is not None:
                coordinator(logits, groups)
        return logits
