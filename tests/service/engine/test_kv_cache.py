"""The KV cache with room to grow (service/engine/kv_cache.py) and the prefill chunking of the
transformers backend: both change where work happens, never what a row computes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from service.engine.kv_cache import RoomyLayer, roomy_cache  # noqa: E402
from service.engine.transformers_backend import prefill_chunks  # noqa: E402


def kv(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, n, 8, generator=g), torch.randn(b, 3, n, 8, generator=g)


@pytest.mark.parametrize("room, steps", [(1, 9), (4, 3), (4, 17), (32, 40)])
def test_appends_equal_concatenation(room, steps):
    """Step after step (and across regrowths), the layer's keys and values are exactly what
    torch.cat would hold, and its length is theirs."""
    k0, v0 = kv(2, 5, 0)
    layer = RoomyLayer(k0, v0, room)
    ref_k, ref_v = k0, v0
    for step in range(steps):
        k, v = kv(2, 1 if step % 5 else 2, step + 1)  # now and then a two-token append
        got_k, got_v = layer.update(k, v)
        ref_k, ref_v = torch.cat([ref_k, k], dim=-2), torch.cat([ref_v, v], dim=-2)
        assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v)
        assert layer.get_seq_length() == ref_k.shape[-2]
        assert layer.keys.data_ptr() == got_k.data_ptr()


def test_a_step_writes_into_the_buffer_without_copying_it():
    k0, v0 = kv(2, 4, 0)
    layer = RoomyLayer(k0, v0, room=8)
    start = layer.keys.data_ptr()
    for step in range(8):
        layer.update(*kv(2, 1, step))
        assert layer.keys.data_ptr() == start  # the same buffer: no copy of the cache
    layer.update(*kv(2, 1, 99))
    assert layer.keys.data_ptr() != start and layer.get_seq_length() == 13  # out of room: one copy into a larger buffer


def test_the_cache_is_a_copy_of_what_it_was_given():
    k0, v0 = kv(1, 3, 0)
    cache = roomy_cache([(k0, v0), (k0 * 2, v0 * 2)])
    k0.zero_()
    assert len(cache.layers) == 2 and cache.get_seq_length() == 3
    assert cache.layers[0].keys.abs().sum() > 0


CHUNKS = [  # widths (ascending), budget -> chunks
    ([5, 5, 5, 5], 4096, [(0, 4)]),
    ([10, 11, 12, 80, 82, 86], 4096, [(0, 3), (3, 6)]),
    ([10, 10, 10, 10], 25, [(0, 2), (2, 4)]),  # the budget: 2 x 10 fits 25, 3 x 10 does not
    ([1, 2, 3, 4, 100], 4096, [(0, 1), (1, 3), (3, 4), (4, 5)]),
    ([5000], 4096, [(0, 1)]),  # a row wider than the budget goes alone
    ([], 4096, []),
]


@pytest.mark.parametrize("widths, budget, expected", CHUNKS)
def test_prefill_chunks(widths, budget, expected):
    assert prefill_chunks(widths, budget) == expected


@pytest.mark.parametrize("seed", range(5))
def test_prefill_chunks_cover_every_row_once_and_bound_the_padding(seed):
    import random

    rnd = random.Random(seed)
    widths = sorted(rnd.randint(1, 200) for _ in range(rnd.randint(1, 300)))
    chunks = prefill_chunks(widths, 4096, waste=0.25)
    assert [i for a, b in chunks for i in range(a, b)] == list(range(len(widths)))
    for a, b in chunks:
        padded, real = (b - a) * widths[b - 1], sum(widths[a:b])
        assert b - a == 1 or (padded <= 4096 and padded <= 1.25 * real)
