"""`privtext serve`: one process, one engine, one store; gRPC with health, reflection, metrics.

Start-up order: the data directory's lock, data key, store, the port (bound exclusively: no
SO_REUSEPORT, so a second server on the same port fails here), PII filter, engine, scheduler,
jobs resumed, then the server starts and health turns SERVING. Everything that can refuse a start
for a reason an operator must fix (the directory, the key, the database, TLS files, the port)
comes before the slow loads, as a StartupError naming the setting. SIGTERM (or SIGINT) drains: health turns NOT_SERVING, new
calls are refused, running streams get `grace_seconds` to finish and are then cancelled
(their groups leave the engine), and running jobs stop where they are, to resume on restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import logging
import signal
import sqlite3
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..engine.interface import Engine
from ..jobs.dataset_job import JobRunner
from ..jobs.scheduler import EngineScheduler
from ..store.crypto import DecryptionError, load_or_create_key
from ..store.interface import Store, StoreError, describe_internal
from ..store.lock import DataDirBusy, DataDirLock
from ..store.open import open_store
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


class StartupError(Exception):
    """Why the server cannot start, naming the setting to fix; `privtext serve` prints it as
    one line."""


def _lock_data_dir(data_dir: Path) -> DataDirLock:
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return DataDirLock(data_dir)
    except DataDirBusy as e:
        raise StartupError(str(e)) from None
    except OSError as e:
        raise StartupError(f"data_dir must be a writable directory, got {str(data_dir)!r}: {e.strerror or e}") from None


def _load_key(s: ServerSettings) -> bytes:
    try:
        key, created = load_or_create_key(s.config_dir, s.data_dir)
    except OSError as e:
        raise StartupError(f"config_dir must be a readable, writable directory, got {str(s.config_dir)!r}: {e.strerror or e}") from None
    if created:
        log.warning("created a data key at %s (mode 0600); back it up: without it the stored datasets cannot be read",
                    s.config_dir / "data.key")
    return key


STORE_CHECK_SECONDS = 2


def _open_store(data_dir: Path, key: bytes, url: str | None = None) -> Store:
    """SQLite in data_dir, or the store at `url` (postgresql://..., shared by several servers)."""
    if url:
        try:
            return open_store(url, key)
        except Exception as e:  # the store's own message; a password in the URL is never echoed
            raise StartupError(f"store must be a reachable privtext database: {describe_internal(e)}") from None
    path = data_dir / "privtext.db"
    try:
        return SqliteStore(path, key)
    except (sqlite3.Error, StoreError, DecryptionError, OSError) as e:  # database messages carry no records
        raise StartupError(f"data_dir must hold a readable privtext database, got {str(path)!r}: {e}") from None


def _tls_credentials(s: ServerSettings) -> grpc.ServerCredentials:
    try:
        pair = (Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes())
    except OSError as e:
        raise StartupError(f"tls_cert and tls_key must be readable files, got {e.filename!r}: {e.strerror or e}") from None
    return grpc.ssl_server_credentials([pair])


def _bind(server: grpc.aio.Server, s: ServerSettings) -> int:
    """Bind host:port for this server alone (so_reuseport off): a port in use is refused here."""
    address = f"{s.host}:{s.port}"
    creds = _tls_credentials(s) if s.tls_cert is not None else None
    try:
        port = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise StartupError(f"port must be free to bind on {s.host}, got {s.port}: in use by another process (or not permitted)")
    return port


class Server:
    def __init__(self, settings: ServerSettings, engine: Engine | None = None):
        self.settings = settings
        self._engine = engine
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._lock: DataDirLock | None = None
        self._store: Store | None = None
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Start, or raise (StartupError for what an operator must fix) holding nothing."""
        try:
            await self._start()
        except BaseException:
            if getattr(self, "server", None) is not None:
                await self.server.stop(None)  # gives back a port bound before the failure
            if self._store is not None:
                self._store.close()
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def _start(self) -> None:
        s = self.settings
        self._lock = _lock_data_dir(s.data_dir)
        key = _load_key(s)
        self._store = store = _open_store(s.data_dir, key, s.store)
        metrics = Metrics()
        keys = ApiKeys(s.api_keys)
        opts = [("grpc.max_receive_message_length", s.max_message_bytes), ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0)]
        self.server = grpc.aio.server(interceptors=[LatencyInterceptor(metrics), AuthInterceptor(keys)], options=opts)
        self.port = _bind(self.server, s)
        from ..pii import get_filter

        await asyncio.to_thread(get_filter)  # presidio + spaCy load once, before the port opens
        engine = self._engine
        if engine is None:
            from ..engine.loader import load_engine

            engine = await asyncio.to_thread(load_engine, s.engine, s.model, log.info)
        scheduler = EngineScheduler(engine, s.batch_rows)
        server_secret = hmac.new(key, b"privtext mechanism seeds", hashlib.sha256).digest()

        workers = None
        if s.ray:
            from ..jobs.ray_executor import RayWorkers

            workers = await asyncio.to_thread(RayWorkers, s.ray, s.ray_workers, engine.name, s.model)
            log.info("batch jobs decode on %d Ray engine worker(s) (%s)", s.ray_workers, s.ray)
        runner = JobRunner(store, scheduler, engine, server_secret, s.max_running_jobs,
                           lambda dataset_id, rec: metrics.record(dataset_id, rec.tokens, rec.released), workers=workers,
                           # one live server per data dir (its lock): a restart on it takes its own leases back at once
                           owner=f"{socket.gethostname()}:{Path(s.data_dir).resolve()}", lease_s=s.job_lease_seconds)
        self.state = ServerState(s, store, keys, engine, scheduler, runner, metrics, server_secret)
        datasets_pb2_grpc.add_DatasetsServicer_to_server(DatasetsServicer(self.state), self.server)
        generation_pb2_grpc.add_GenerationServicer_to_server(GenerationServicer(self.state), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        if s.metrics_port is not None:
            self.metrics_port = metrics.serve(s.metrics_port, s.metrics_host)
            log.info("metrics on http://%s:%d/metrics", s.metrics_host, self.metrics_port)
        resumed = runner.resume_all()
        if resumed:
            log.info("resumed %d unfinished job(s)", resumed)
        runner.start_leases()
        self._gauges = asyncio.create_task(self._update_gauges())
        await self.server.start()
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("privtext serving on %s:%d (%s, %s, engine %s, %s)", s.host, self.port, "TLS" if s.tls_cert else "plaintext",
                 "single tenant" if self.state.keys.single_tenant else f"{len(s.api_keys)} tenant(s)", engine.name, s.data_dir)

    async def _update_gauges(self) -> None:
        """Gauges every second; the store's health every STORE_CHECK_SECONDS: a server that
        cannot reach its database says NOT_SERVING (load balancers route around it) until it
        can again. Requests it still gets fail with UNAVAILABLE before anything is charged."""
        serving, tick = True, 0
        while True:
            self.state.metrics.active_groups.set(self.state.scheduler.active_groups)
            self.state.metrics.queue_depth.set(self.state.scheduler.queued_tickets)
            if tick % STORE_CHECK_SECONDS == 0:
                try:
                    await asyncio.wait_for(asyncio.to_thread(self.state.store.ping), STORE_CHECK_SECONDS)
                    ok = True
                except Exception as e:
                    ok = False
                    if serving:
                        log.error("the store is unreachable (%s): NOT_SERVING until it is back", describe_internal(e))
                if ok != serving:
                    serving = ok
                    status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                    for name in ("", *SERVICES):
                        await self.health.set(name, status)
                    if ok:
                        log.info("the store is reachable again: SERVING")
            tick += 1
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
        if self.state.runner.workers is not None:
            await asyncio.to_thread(self.state.runner.workers.close)
        self.state.streams.shutdown(wait=False)
        self.state.reads.shutdown(wait=False)
        self._release_lock()
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
