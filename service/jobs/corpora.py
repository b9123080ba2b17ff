"""Datasets decrypted and parsed once per server, not once per request.

A request needs its dataset's records as a Corpus (units, labels); rebuilding it meant
decrypting and parsing every record on every request (about 18 us per record: seconds at a
million). Datasets are immutable once uploaded, so a parsed Corpus stays valid until the dataset
is deleted: the API evicts it then, and a deleted dataset is NotFound before this cache is
asked. A few datasets are kept (least recently used first out), bounding the memory held.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..generation.corpus import Corpus, corpus_from_rows
from ..store.interface import DatasetInfo, Store


class CorpusCache:
    def __init__(self, max_datasets: int = 4):
        self.max_datasets = max_datasets
        self._items: OrderedDict[tuple[int, str], Corpus] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # datasets decrypted and parsed (tests and benchmarks read it)

    def get(self, store: Store, tenant: str, info: DatasetInfo) -> Corpus:
        """The dataset's Corpus; the caller has checked the dataset exists for this tenant."""
        key = (id(store), info.id)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        corpus = corpus_from_rows(store.read_records(tenant, info.id), info.text_field, info.label_field, info.unit_field)
        with self._lock:
            self.loads += 1
        self.put(store, info, corpus)
        return corpus

    def put(self, store: Store, info: DatasetInfo, corpus: Corpus) -> None:
        """Keep a Corpus parsed from exactly the rows the dataset holds (read back from the store,
        or a local run's corpus file, whose digest names the dataset), so it is not read again."""
        corpus.units()  # build the unit map once, outside any request's critical path later
        with self._lock:
            self._items[(id(store), info.id)] = corpus
            self._items.move_to_end((id(store), info.id))
            while len(self._items) > self.max_datasets:
                self._items.popitem(last=False)

    def holds(self, dataset_id: str) -> bool:
        with self._lock:
            return any(k[1] == dataset_id for k in self._items)

    def evict(self, dataset_id: str) -> None:
        """Forget a dataset (deleted: its records must not outlive it in memory either)."""
        with self._lock:
            for key in [k for k in self._items if k[1] == dataset_id]:
                del self._items[key]


CORPORA = CorpusCache()
