"""Batch jobs decoded by engine workers on a Ray cluster (`privtext serve --ray ADDRESS|auto`).

A job's groups are independent (disjoint partitions), so they can be spread over workers. The
head (the API server) plans, reserves once and claims each group durably before dispatching
it, exactly as for local decoding: the decode pipeline (service.jobs.generate.decode_records)
hands this executor its groups one by one, after their claim. Each Ray actor holds an engine and
decodes the chunks of groups it is handed, with the job's own per-group random streams
(mechanisms.randomness), and returns finished records only: the shared suffix of each group and
the counts of tokens paid for. Workers never see the store, the ledger or any other group.

Determinism: groups go out in chunks of `chunk_groups` consecutive groups, and a chunk is
decoded alone, as one batch, on whichever worker gets it; each group draws from its own stream.
So a job gives the same records on one worker or many (only their order of arrival differs).

A worker that dies loses the chunk it held: those groups were claimed, so they are never
decoded again (nothing is spent twice); they end as "worker_lost", the job goes on with the
workers left, and its message says how many groups were lost. With no worker left the job fails.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Iterator

from ..engine.interface import GroupRequest, GroupResult
from ..generation.selector import MechanismSelector
from .errors import JobFailed

log = logging.getLogger(__name__)


class NoWorkersLeft(JobFailed):
    """Every engine worker died: the job cannot go on (its claimed groups are not retried)."""


def init_ray(address: str, object_store_bytes: int = 200 << 20) -> None:
    """Join a Ray cluster, or start a local one for `auto`: loopback only, no dashboard, no usage
    stats, an object store of a fixed size (records are small)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    if address == "auto":
        ray.init(include_dashboard=False, object_store_memory=object_store_bytes, _node_ip_address="127.0.0.1",
                 log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


def _worker_class():
    import ray

    @ray.remote(num_cpus=1)
    class EngineWorker:
        """One engine; decodes chunks of groups with the job's streams; returns records only."""

        def __init__(self, engine: str, model: str | None, threads: int):
            os.environ["PRIVTEXT_THREADS"] = str(threads)
            from service.engine.loader import load_engine

            self.engine = load_engine(engine, model)

        def decode(self, chunk: list[GroupRequest], cfg: dict, randomness) -> tuple[list[GroupResult], int, int]:
            from mechanisms import DecodingConfig

            selector = MechanismSelector(DecodingConfig.from_dict(cfg), randomness)
            rows = sum(g.admit_rows for g in chunk)
            results = list(self.engine.run(iter(chunk), selector, max_batch_rows=max(rows, 2)))
            return results, selector.private_tokens, selector.public_tokens

        def pid(self) -> int:
            return os.getpid()

    return EngineWorker


class RayWorkers:
    """The pool of engine workers one server uses for its batch jobs."""

    def __init__(self, address: str, workers: int, engine: str = "transformers", model: str | None = None,
                 threads_per_worker: int = 1, chunk_groups: int = 4):
        init_ray(address)
        cls = _worker_class()
        self.chunk_groups = chunk_groups
        self.actors = [cls.remote(engine, model, threads_per_worker) for _ in range(workers)]

    def ready(self) -> list[int]:
        """Wait until every worker has loaded its engine; their process ids."""
        import ray

        return ray.get([a.pid.remote() for a in self.actors])

    def run(self) -> RayRun:
        return RayRun(self)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


class RayRun:
    """One job's decode function over the workers: `run(groups, selector)` like the engine's, and
    `cancel()` like the local scheduler's Admission (no chunk is dispatched after it)."""

    def __init__(self, pool: RayWorkers):
        self.pool = pool
        self._cancelled = threading.Event()
        self.lost_groups = 0

    def cancel(self) -> None:
        self._cancelled.set()

    def __call__(self, groups: Iterator[GroupRequest], selector: MechanismSelector) -> Iterator[GroupResult]:
        import ray
        from ray.exceptions import RayActorError

        cfg = selector.cfg.to_dict()
        idle = list(self.pool.actors)
        pending: dict = {}
        source = iter(groups)
        exhausted = False
        while True:
            while idle and not exhausted and not self._cancelled.is_set():
                chunk = list(itertools.islice(source, self.pool.chunk_groups))  # claims each group first
                if not chunk:
                    exhausted = True
                    break
                actor = idle.pop()
                pending[actor.decode.remote(chunk, cfg, selector.randomness)] = (actor, chunk)
            if not pending:
                if not exhausted and not self._cancelled.is_set():
                    raise NoWorkersLeft("every engine worker died; the job's remaining groups were not decoded")
                return
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, chunk = pending.pop(ref)
            try:
                results, private, public = ray.get(ref)
            except RayActorError:
                log.error("an engine worker died; %d claimed group(s) lost (never decoded again)", len(chunk))
                self.lost_groups += len(chunk)
                for g in chunk:
                    yield GroupResult(g.group_id, (), "", "worker_lost")
                continue
            idle.append(actor)
            selector.private_tokens += private
            selector.public_tokens += public
            yield from results
