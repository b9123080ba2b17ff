"""A dataset is decrypted and parsed once per server, and forgotten when it is deleted."""

from __future__ import annotations

import secrets

from service.jobs.corpora import CORPORA, CorpusCache
from service.store.sqlite import SqliteStore


def dataset(store, name, n=50):
    rows = [{"text": f"record {i} of {name}", "unit": f"r{i}"} for i in range(n)]
    return store.create_dataset("t", name, text_field="text", label_field=None, unit_field=None, epsilon_cap=5.0, delta=1e-4,
                                declared_public_units=None, records=rows)


def test_a_dataset_is_parsed_once_and_the_cache_is_bounded(tmp_path):
    store = SqliteStore(tmp_path / "p.db", secrets.token_bytes(32))
    cache = CorpusCache(max_datasets=2)
    a, b, c = (dataset(store, x) for x in "abc")
    first = cache.get(store, "t", a)
    assert cache.get(store, "t", a) is first and cache.loads == 1  # the second request reuses it
    assert len(first.units()) == 50 and first.units() is first.units()
    cache.get(store, "t", b)
    cache.get(store, "t", c)  # a, least recently used, leaves
    assert cache.loads == 3
    cache.get(store, "t", a)
    assert cache.loads == 4
    cache.evict(a.id)
    cache.get(store, "t", a)
    assert cache.loads == 5


def test_deleting_a_dataset_evicts_its_records_from_memory(server, acme):
    from server_kit import corpus

    from service.api.gen.privtext.v1 import datasets_pb2

    ds = acme.upload("evicted", corpus(30))
    acme.generate(ds.id, records=1, max_tokens=2)
    assert CORPORA.holds(ds.id)
    acme.datasets.DeleteDataset(datasets_pb2.DeleteDatasetRequest(id=ds.id), metadata=acme.md)
    assert not CORPORA.holds(ds.id)
