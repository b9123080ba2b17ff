"""Health reflects the store: a server whose PostgreSQL goes away says NOT_SERVING, refuses new
work with UNAVAILABLE before anything is charged, and serves again when the database is back."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pg_kit import server_for_tests
from server_kit import KEYS, Client, Process, corpus

from service.api.auth import hash_key


def health(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def until(cond, seconds=60):
    deadline = time.time() + seconds
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)


@pytest.mark.slow
def test_a_server_that_loses_its_database_says_not_serving_and_refuses_with_unavailable(tmp_path):
    pg = server_for_tests()  # its own PostgreSQL: this test stops it
    server = None
    try:
        env = {"PRIVTEXT_STORE": pg.create_database("health"),
               "PRIVTEXT_API_KEYS": json.dumps({t: [hash_key(k)] for t, k in KEYS.items()})}
        server = Process(tmp_path / "data", tmp_path / "config", tmp_path / "server.log", env=env)
        client = Client(server.address, KEYS["acme"])
        ds = client.upload("health", corpus(40))
        assert health(server.address) == health_pb2.HealthCheckResponse.SERVING
        pg.pause()
        until(lambda: health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.RpcError) as e:
            client.generate(ds.id, records=1, max_tokens=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        pg.resume()
        until(lambda: health(server.address) == health_pb2.HealthCheckResponse.SERVING)
        assert client.budget(ds.id).entries_total == 0  # the refused request charged nothing
        assert len(client.generate(ds.id, records=1, max_tokens=3)) <= 1
    finally:
        if server is not None and server.proc.poll() is None:
            server.terminate()
        pg.stop()
