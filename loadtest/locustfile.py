"""Locust load test of the privtext gRPC service: each user runs `Generate` streams back to back.

Run it through `loadtest/run`, which starts a server, uploads a dataset and passes its id here;
by hand: PRIVTEXT_LOADTEST_DATASET=ds_... locust -f loadtest/locustfile.py --host 127.0.0.1:50051.

Environment:
  PRIVTEXT_LOADTEST_DATASET     the dataset to generate from (required)
  PRIVTEXT_LOADTEST_RECORDS     records per request (default 2)
  PRIVTEXT_LOADTEST_MAX_TOKENS  max tokens per record (default 16)
  PRIVTEXT_LOADTEST_EPSILON     epsilon per request (default 0.2)
  PRIVTEXT_LOADTEST_TIMEOUT     deadline of one stream in seconds (default 600)
  PRIVTEXT_API_KEY              sent as `x-api-key` metadata when set (multi-tenant servers)

Request events (type "grpc"):
  "Generate"               response_time = the whole stream (ms), response_length = its tokens
  "Generate:first-record"  response_time = time to the first record (ms), response_length = 0
A gRPC error fires "Generate" with exception= (and "Generate:first-record" only if a record came).
"""

from __future__ import annotations

import os
import time

import grpc
import grpc.experimental.gevent

# grpc's C core must cooperate with gevent's loop (locust runs users as greenlets); this has to
# happen before any channel is created.
grpc.experimental.gevent.init_gevent()

from locust import User, constant, task  # noqa: E402

from service.api.gen.privtext.v1 import generation_pb2, generation_pb2_grpc  # noqa: E402
from service.client import API_KEY_HEADER  # noqa: E402

REQUEST_TYPE = "grpc"


def _env(name: str, default, cast):
    value = os.environ.get(name)
    return cast(value) if value not in (None, "") else default


class GenerateUser(User):
    """One gRPC channel per user; each task is one Generate stream."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.dataset_id = os.environ["PRIVTEXT_LOADTEST_DATASET"]
        self.records = _env("PRIVTEXT_LOADTEST_RECORDS", 2, int)
        self.max_tokens = _env("PRIVTEXT_LOADTEST_MAX_TOKENS", 16, int)
        self.epsilon = _env("PRIVTEXT_LOADTEST_EPSILON", 0.2, float)
        self.timeout = _env("PRIVTEXT_LOADTEST_TIMEOUT", 600.0, float)
        key = os.environ.get("PRIVTEXT_API_KEY")
        self.metadata = ((API_KEY_HEADER, key),) if key else None
        self.channel = grpc.insecure_channel(self.host)
        self.stub = generation_pb2_grpc.GenerationStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def _fire(self, name: str, start: float, length: int = 0, exception: BaseException | None = None) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=name, response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length, exception=exception, context={})

    @task
    def generate(self) -> None:
        req = generation_pb2.GenerateRequest(dataset_id=self.dataset_id, records=self.records,
                                             max_tokens=self.max_tokens, epsilon=self.epsilon)
        start = time.perf_counter()
        tokens = 0
        first = True
        try:
            for rec in self.stub.Generate(req, timeout=self.timeout, metadata=self.metadata):
                if first:
                    self._fire("Generate:first-record", start)
                    first = False
                tokens += rec.tokens
        except grpc.RpcError as err:
            self._fire("Generate", start, tokens, exception=err)
            return
        self._fire("Generate", start, tokens)
