"""Prometheus metrics on their own port. Public quantities only: counts, rates, epsilons
charged per dataset (the ledger's own figures), latencies; never text, logits or row data."""

from __future__ import annotations

import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .handlers import rewrap


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tokens = Counter("privtext_tokens", "Tokens of released and filtered records", registry=r)
        self.records = Counter("privtext_records", "Records released", ["dataset"], registry=r)
        self.epsilon_spent = Gauge("privtext_epsilon_spent", "Epsilon spent per dataset (ledger, at its delta)", ["dataset"], registry=r)
        self.active_groups = Gauge("privtext_active_groups", "Groups decoding in the shared engine", registry=r)
        self.queue_depth = Gauge("privtext_queue_depth", "Requests and jobs waiting for their first group to decode", registry=r)
        self.latency = Histogram("privtext_request_seconds", "RPC latency", ["method", "code"], registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800))

    def record(self, dataset_id: str, tokens: int, released: bool) -> None:
        """One finished group: its tokens, and a record if it was released."""
        self.tokens.inc(tokens)
        if released:
            self.records.labels(dataset_id).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP endpoint; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_address[1]


class LatencyInterceptor(grpc.aio.ServerInterceptor):
    """Times every RPC (a whole stream for streaming ones) into Metrics.latency by method and code."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]

        def done(t0: float, context) -> None:
            code = context.code()
            name = code.name if isinstance(code, grpc.StatusCode) else "OK"
            self.metrics.latency.labels(method, name).observe(time.monotonic() - t0)

        def unary(fn):
            async def wrapped(request, context):
                t0 = time.monotonic()
                try:
                    return await fn(request, context)
                finally:
                    done(t0, context)
            return wrapped

        def stream(fn):
            async def wrapped(request, context):
                t0 = time.monotonic()
                try:
                    async for item in fn(request, context):
                        yield item
                finally:
                    done(t0, context)
            return wrapped

        return rewrap(handler, unary, stream)
