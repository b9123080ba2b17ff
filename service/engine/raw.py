"""RawDecoding: an optional capability of a backend, the benchmarks' raw baseline.

The product never calls it, so it is not part of the Engine interface: a backend may leave it
out, and `privtext bench` then says so instead of measuring (service.bench.engine.raw_decoder).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

from .interface import GroupRequest


class RawDecoding(abc.ABC):
    """A backend that can decode the same rows without a mechanism, for comparison."""

    @abc.abstractmethod
    def run_raw(self, groups: Iterable[GroupRequest], seed: int = 0, max_batch_rows: int = 160) -> int:
        """The same rows, each sampling its own tokens (no mechanism, no lock step); returns
        only the number of tokens generated, never the tokens. The engine's stats count its
        work as they count `run`'s (no selections)."""
