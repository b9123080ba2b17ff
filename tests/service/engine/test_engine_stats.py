"""EngineStats arithmetic, and the Engine interface without the raw baseline (no model needed;
the counters of real backends are checked in test_contract.py)."""

from __future__ import annotations

import dataclasses

import pytest

from service.engine.interface import Engine, GroupRequest, GroupResult
from service.engine.raw import RawDecoding
from service.engine.stats import EngineStats


def test_plus_adds_and_keeps_the_row_mark():
    s = EngineStats().plus(4, steps=1, forwards=2, prefill_seconds=0.5).plus(3, steps=1, decode_seconds=0.25)
    assert (s.steps, s.forwards, s.prefill_seconds, s.decode_seconds) == (2, 2, 0.5, 0.25)
    assert s.max_batch_rows_seen == 4  # a high-water mark: 3 rows later does not lower it
    assert s.forward_seconds == 0.75


def test_since_is_the_difference_of_two_snapshots():
    before = EngineStats().plus(8, prefill_tokens=100, steps=3, selections=3, selection_seconds=0.25, groups_finished=1)
    after = before.plus(16, prefill_tokens=40, decode_row_tokens=18, steps=4, selections=4, selection_seconds=0.5, out_of_step=1)
    d = after.since(before)
    assert (d.prefill_tokens, d.decode_row_tokens, d.steps, d.selections, d.selection_seconds) == (40, 18, 4, 4, 0.5)
    assert (d.groups_finished, d.out_of_step, d.forwards) == (0, 1, 0)
    assert d.max_batch_rows_seen == 16
    assert after.since(EngineStats()) == dataclasses.replace(after)


def test_snapshots_are_frozen():
    s = EngineStats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 1  # type: ignore[misc]
    assert s.plus(steps=1) is not s and s.steps == 0


class HaltEverything(Engine):
    """A backend with only what the product calls: it halts every group before its first step
    (no model). It has no raw baseline."""

    name = "halt-everything"
    model_path = "none"
    max_model_len = 64

    def __init__(self) -> None:
        self._vocab, self._stats, self.tokens = 16, EngineStats(), None

    def run(self, groups, selector, max_batch_rows=160):
        for req in groups:
            if req is not None:
                self.validate(req)
                self._count(groups_finished=1)
                yield GroupResult(req.group_id, (), "", "halted")


def test_a_backend_needs_only_what_the_product_calls():
    assert "run_raw" not in Engine.__abstractmethods__ and Engine.__abstractmethods__ == {"run"}
    e = HaltEverything()
    (r,) = e.run([GroupRequest(0, ((1, 2),), (3,), 2)], selector=None)
    assert r.finish_reason == "halted" and e.stats.groups_finished == 1
    assert not isinstance(e, RawDecoding)


def test_the_bench_says_when_a_backend_has_no_raw_baseline():
    from service.bench import engine as bench

    e = HaltEverything()
    with pytest.raises(ValueError, match="engine 'halt-everything' has no raw baseline.*RawDecoding"):
        bench.raw_decoder(e)
    with pytest.raises(ValueError, match="has no raw baseline"):
        bench.measure(e, "raw", [GroupRequest(0, ((1, 2),), (3,), 2)], None, 0)
    with pytest.raises(ValueError, match="has no raw baseline"):
        bench.bench_engine(partitions=1, groups=1, max_tokens=2, engine=e)
