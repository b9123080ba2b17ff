"""The in-process side of the load test: the server's generation path without gRPC.

`loadtest/run` measures in its own process what `privtext serve` delivers when nothing but
generation stands between a client and the engine: the same store (the server's own database, so
the same dataset, released count and ledger), the same settings (ServerSettings from the same
environment: engine, model, batch_rows, count_noise), the same request (workload.py, mapped by the
server's convert.job_request), the same PII filter, and `users` concurrent streams through an
EngineScheduler, each stream being exactly the servicer's steps (dataset_job.prepare, Admission,
decode, RecordFilter) minus asyncio, gRPC, metrics and protobuf. One thread per stream, so the
server's thread pool (asyncio.to_thread) plays no part here.

Streams are counted as loadtest/run counts locust's: streams start during the window, the ones
running at its end finish, every stream adds the tokens of its released records (the records a
client receives), and tokens/s = tokens / (end of the last stream - start of the window).
"""

from __future__ import annotations

import os
import resource
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from service.api.auth import API_KEY_HEADER, LOCAL_TENANT, ApiKeys
from service.api.convert import job_request
from service.api.gen.privtext.v1 import generation_pb2
from service.api.settings import ServerSettings
from service.engine.loader import load_engine
from service.jobs.dataset_job import Admission, decode, prepare
from service.jobs.records import RecordFilter
from service.jobs.scheduler import EngineScheduler
from service.store.crypto import load_or_create_key
from service.store.sqlite import SqliteStore


def process_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Phase:
    """One measured window of `users` back-to-back streams."""

    users: int
    seconds: float  # streams start during this window
    elapsed: float = 0.0  # from the start to the end of the last stream: the tokens/s denominator
    streams: int = 0
    tokens: int = 0
    errors: int = 0
    first_record_ms: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0  # this process (engine, PII filter, store), during the window

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.elapsed if self.elapsed else 0.0

    def to_dict(self) -> dict:
        fr = sorted(self.first_record_ms)
        return {"seconds": self.seconds, "elapsed_seconds": self.elapsed, "streams": self.streams, "tokens": self.tokens,
                "tokens_per_second": self.tokens_per_second, "errors": self.errors,
                "first_record_p50_ms": statistics.median(fr) if fr else None, "cpu_seconds": self.cpu_seconds}


class InProcess:
    """The server's store, engine and scheduler, loaded in this process."""

    def __init__(self, data_dir: Path, config_dir: Path, say: Callable[[str], None] = lambda _m: None):
        self.settings = s = ServerSettings.load(data_dir=data_dir, config_dir=config_dir)
        key, _ = load_or_create_key(s.config_dir, s.data_dir)
        self.store = SqliteStore(s.data_dir / "privtext.db", key)
        if s.api_keys:  # multi-tenant: the tenant whose key locust sends
            api_key = os.environ.get("PRIVTEXT_API_KEY", "")
            self.tenant = ApiKeys(s.api_keys).tenant_of(((API_KEY_HEADER, api_key),))
            if self.tenant is None:
                raise ValueError("api_keys are configured: set PRIVTEXT_API_KEY to one of them")
        else:
            self.tenant = LOCAL_TENANT
        from service.pii import get_filter

        get_filter()  # presidio + spaCy, loaded once before any stream (as the server does)
        self.engine = load_engine(s.engine, s.model, say)
        self.scheduler = EngineScheduler(self.engine, s.batch_rows)
        self.server_secret = secrets.token_bytes(32)  # the in-process server's own, as the server derives one

    def close(self) -> None:
        self.scheduler.close(30)
        self.store.close()

    def stream(self, request: generation_pb2.GenerateRequest, name: str, on_record: Callable[[int], None]) -> None:
        """One Generate stream, as GenerationServicer.Generate runs it: on_record(tokens) for each
        released record (the records a client receives)."""
        dataset_id, req = job_request(request, self.settings)
        prep = prepare(self.store, self.tenant, dataset_id, req, name, self.settings.count_noise, self.server_secret,
                       self.engine, self.settings.batch_rows)
        admission = Admission(self.scheduler, name)
        try:
            records = RecordFilter(prep.request.pii)
            for rec in decode(prep, self.engine, admission, records):
                if rec.released:
                    on_record(rec.tokens)
        finally:
            admission.cancel()  # as the servicer: on an error its groups leave the engine

    def wave(self, request: generation_pb2.GenerateRequest, users: int, label: str = "warm-up") -> float:
        """One stream per user, all at once, until every one ends (a warm-up); returns its seconds."""
        t0 = time.perf_counter()
        errors: list[BaseException] = []

        def one(u: int) -> None:
            try:
                self.stream(request, f"{label} u{u}", lambda _t: None)
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=one, args=(u,), name=f"{label}-user{u}", daemon=True) for u in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return time.perf_counter() - t0

    def run(self, request: generation_pb2.GenerateRequest, users: int, seconds: float, label: str = "inprocess") -> Phase:
        """`users` threads run streams back to back, starting new ones for `seconds`; the streams
        running then finish. As loadtest/run reads locust (--stop-timeout): the phase's seconds run
        from its start to the end of its last stream."""
        phase = Phase(users, seconds)
        lock = threading.Lock()
        t0 = time.perf_counter()
        deadline = t0 + seconds
        last_end = t0

        def user(u: int) -> None:
            nonlocal last_end
            n = 0
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                got = {"tokens": 0, "first": None}

                def on_record(tokens: int) -> None:
                    if got["first"] is None:
                        got["first"] = (time.perf_counter() - start) * 1000.0
                    got["tokens"] += tokens

                failed = False
                try:
                    self.stream(request, f"{label} u{u} s{n}", on_record)
                except Exception:
                    failed = True
                n += 1
                with lock:
                    last_end = max(last_end, time.perf_counter())
                    if got["first"] is not None:
                        phase.first_record_ms.append(got["first"])
                    phase.errors += failed
                    phase.streams += 1
                    phase.tokens += got["tokens"]  # a failed stream's records reached the client too (as locust counts)

        cpu0 = process_cpu_seconds()
        threads = [threading.Thread(target=user, args=(u,), name=f"{label}-user{u}", daemon=True) for u in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        phase.cpu_seconds = process_cpu_seconds() - cpu0
        phase.elapsed = last_end - t0
        return phase
