"""`privtext serve`: one process, one engine, one store; gRPC with health, reflection, metrics.

Start-up order: data key, store, PII filter, engine, scheduler, jobs resumed, then the port
opens and health turns SERVING. SIGTERM (or SIGINT) drains: health turns NOT_SERVING, new
calls are refused, running streams get `grace_seconds` to finish and are then cancelled
(their groups leave the engine), and running jobs stop where they are, to resume on restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..engine.interface import Engine
from ..jobs.dataset_job import JobRunner
from ..jobs.scheduler import EngineScheduler
from ..store.crypto import load_or_create_key
from ..store.sqlite import SqliteStore
from .auth import ApiKeys, AuthInterceptor
from .datasets import DatasetsServicer
from .gen.privtext.v1 import datasets_pb2, datasets_pb2_grpc, generation_pb2, generation_pb2_grpc
from .generation import GenerationServicer
from .metrics import LatencyInterceptor, Metrics
from .settings import ServerSettings
from .state import ServerState

log = logging.getLogger("privtext.server")
SERVICES = (datasets_pb2.DESCRIPTOR.services_by_name["Datasets"].full_name,
            generation_pb2.DESCRIPTOR.services_by_name["Generation"].full_name)


class Server:
    def __init__(self, settings: ServerSettings, engine: Engine | None = None):
        self.settings = settings
        self._engine = engine
        self.port: int | None = None
        self.metrics_port: int | None = None

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key, created = load_or_create_key(s.config_dir, s.data_dir)
        if created:
            log.warning("created a data key at %s (mode 0600); back it up: without it the stored datasets cannot be read",
                        s.config_dir / "data.key")
        store = SqliteStore(s.data_dir / "privtext.db", key)
        from ..pii import get_filter

        await asyncio.to_thread(get_filter)  # presidio + spaCy load once, before the port opens
        engine = self._engine
        if engine is None:
            from ..engine.loader import load_engine

            engine = await asyncio.to_thread(load_engine, s.engine, s.model, log.info)
        scheduler = EngineScheduler(engine, s.batch_rows)
        metrics = Metrics()
        server_secret = hmac.new(key, b"privtext mechanism seeds", hashlib.sha256).digest()

        runner = JobRunner(store, scheduler, engine, server_secret, s.max_running_jobs,
                           lambda dataset_id, rec: metrics.record(dataset_id, rec.tokens, rec.released))
        self.state = ServerState(s, store, ApiKeys(s.api_keys), engine, scheduler, runner, metrics, server_secret)

        opts = [("grpc.max_receive_message_length", s.max_message_bytes), ("grpc.max_send_message_length", s.max_message_bytes)]
        self.server = grpc.aio.server(interceptors=[LatencyInterceptor(metrics), AuthInterceptor(self.state.keys)], options=opts)
        datasets_pb2_grpc.add_DatasetsServicer_to_server(DatasetsServicer(self.state), self.server)
        generation_pb2_grpc.add_GenerationServicer_to_server(GenerationServicer(self.state), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        address = f"{s.host}:{s.port}"
        if s.tls_cert is not None:
            creds = grpc.ssl_server_credentials([(Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if s.metrics_port is not None:
            self.metrics_port = metrics.serve(s.metrics_port, s.metrics_host)
            log.info("metrics on http://%s:%d/metrics", s.metrics_host, self.metrics_port)
        resumed = runner.resume_all()
        if resumed:
            log.info("resumed %d unfinished job(s)", resumed)
        self._gauges = asyncio.create_task(self._update_gauges())
        await self.server.start()
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("privtext serving on %s:%d (%s, %s, engine %s, %s)", s.host, self.port, "TLS" if s.tls_cert else "plaintext",
                 "single tenant" if self.state.keys.single_tenant else f"{len(s.api_keys)} tenant(s)", engine.name, s.data_dir)

    async def _update_gauges(self) -> None:
        while True:
            self.state.metrics.active_groups.set(self.state.scheduler.active_groups)
            self.state.metrics.queue_depth.set(self.state.scheduler.queued_tickets)
            await asyncio.sleep(1.0)

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.grace_seconds if grace is None else grace
        log.info("draining: NOT_SERVING, %gs grace for running calls", grace)
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.to_thread(self.state.runner.stop, grace)
        await self.server.stop(grace)
        self._gauges.cancel()
        await asyncio.to_thread(self.state.scheduler.close, 30)
        self.state.streams.shutdown(wait=False)
        log.info("stopped")

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def serve(settings: ServerSettings) -> None:
    server = Server(settings)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop()
