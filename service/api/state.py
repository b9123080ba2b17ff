"""What every servicer shares: one store, one engine scheduler, one job runner, the settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..engine.interface import Engine
from ..jobs.dataset_job import JobRunner
from ..jobs.scheduler import EngineScheduler
from ..store.interface import Store
from .auth import ApiKeys, tenant
from .errors import abort_for
from .metrics import Metrics
from .settings import ServerSettings


@dataclass
class ServerState:
    settings: ServerSettings
    store: Store
    keys: ApiKeys
    engine: Engine
    scheduler: EngineScheduler
    runner: JobRunner
    metrics: Metrics
    server_secret: bytes
    # Open streams wait here, not in asyncio's default pool (cpu_count + 4 threads: 6 on two
    # cores), where they would hold every thread and make store calls and further streams queue.
    streams: ThreadPoolExecutor = field(init=False)
    # Reads (budgets, jobs) have threads of their own: in the default pool they queued behind
    # every request's planning, and a budget read took 32 s under 40 streams (1 ms idle).
    reads: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.streams = ThreadPoolExecutor(self.settings.stream_threads, thread_name_prefix="privtext-stream")
        self.reads = ThreadPoolExecutor(4, thread_name_prefix="privtext-read")

    async def read(self, context: grpc.aio.ServicerContext, fn: Callable[..., Any], *args, subject: str = "") -> Any:
        """A short store read on the read threads; its errors mapped to a status, as call() does."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.reads, fn, *args)
        except Exception as e:
            await abort_for(context, e, subject)

    def tenant(self, context: grpc.aio.ServicerContext) -> str:
        return tenant(self.keys, context)

    async def call(self, context: grpc.aio.ServicerContext, fn: Callable[..., Any], *args, subject: str = "") -> Any:
        """Run blocking store/job work off the event loop; map its errors to a status."""
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as e:
            await abort_for(context, e, subject)

    def refresh_budget(self, tenant_: str, dataset_id: str) -> None:
        # budget() reads the dataset's composed rho (one row): never the whole ledger
        self.metrics.epsilon_spent.labels(dataset_id).set(self.store.budget(tenant_, dataset_id)["spent"])
