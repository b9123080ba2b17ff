"""A KV cache with room to grow, for the transformers backend's batches.

transformers' DynamicLayer appends a step's keys and values with torch.cat, which copies the
layer's whole cache every decode step: at 144 rows and ~90 tokens of context that was a fifth
of a decode run's CPU time (`aten::cat`, torch profiler). Here each layer keeps a buffer with
spare columns; a step writes its one column into it and the layer's keys/values are views of the
filled part. When the spare columns run out the buffer is copied once into a larger one (half
again as many columns, at least `room`), so the copies amortise to a constant per step.

Only where a row's keys sit in memory changes, never their values or order: attention reads the
same numbers, so a row's logits still depend on that row alone.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

ROOM = 32  # spare columns a fresh buffer gets: a record of up to ROOM tokens never regrows it


class RoomyLayer(DynamicLayer):
    """One layer's keys and values in buffers with spare columns (see the module docstring)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int = ROOM):
        super().__init__()
        self.room = room
        self._place(keys, values, room)

    def _place(self, keys: torch.Tensor, values: torch.Tensor, spare: int) -> None:
        b, h, n, d = keys.shape
        self._kbuf = keys.new_empty((b, h, n + spare, d))
        self._vbuf = values.new_empty((b, values.shape[1], n + spare, values.shape[3]))
        self._kbuf[:, :, :n].copy_(keys)
        self._vbuf[:, :, :n].copy_(values)
        self._n = n
        self.dtype, self.device = keys.dtype, keys.device
        self.keys, self.values = self._kbuf[:, :, :n], self._vbuf[:, :, :n]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        n, add = self._n, key_states.shape[-2]
        if n + add > self._kbuf.shape[-2]:
            self._place(self.keys, self.values, max(self.room, add, n // 2))
        self._kbuf[:, :, n : n + add].copy_(key_states)
        self._vbuf[:, :, n : n + add].copy_(value_states)
        self._n = n + add
        self.keys, self.values = self._kbuf[:, :, : self._n], self._vbuf[:, :, : self._n]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._n


def roomy_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], room: int = ROOM) -> Cache:
    """A cache over (keys, values) per layer, each copied into a buffer with `room` spare columns."""
    return Cache(layers=[RoomyLayer(k, v, room) for k, v in layers])
