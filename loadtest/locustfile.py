"""Locust load test of the privtext gRPC service: each user runs `Generate` streams back to back,
and one more user (BudgetUser) polls GetBudget on the same dataset, as a dashboard would.

Run it through `loadtest/run`, which starts a server, uploads a dataset and passes its id here;
by hand: PRIVTEXT_LOADTEST_DATASET=ds_... locust -f loadtest/locustfile.py --host 127.0.0.1:50051.

Environment:
  PRIVTEXT_LOADTEST_DATASET     the dataset to generate from (required)
  PRIVTEXT_LOADTEST_RECORDS, _MAX_TOKENS, _EPSILON, _TIMEOUT: the request (workload.py, shared
                                with the in-process measurement of loadtest/run)
  PRIVTEXT_API_KEY              sent as `x-api-key` metadata when set (multi-tenant servers)

Request events (type "grpc"):
  "Generate"               response_time = the whole stream (ms), response_length = its tokens
                           (the `tokens` of the records received: released records only)
  "Generate:first-record"  response_time = time to the first record (ms), response_length = 0
  "GetBudget"              response_time = one GetBudget call (ms), every BUDGET_POLL_SECONDS,
                           from the one BudgetUser (loadtest/run asks locust for --users + 1)
A gRPC error fires "Generate" with exception= (and "Generate:first-record" only if a record came).
loadtest/run passes --stop-timeout (streams running at the end of the run time finish and count)
and --reset-stats, so "Generate" Requests/s x Average Content Size is tokens per second from the
start to the end of the last stream.
"""

from __future__ import annotations

import os
import time

import grpc
import grpc.experimental.gevent

# grpc's C core must cooperate with gevent's loop (locust runs users as greenlets); this has to
# happen before any channel is created.
grpc.experimental.gevent.init_gevent()

import workload  # noqa: E402  (loadtest/workload.py: locust puts the locustfile's folder on sys.path)
import gevent  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.stats import CSV_STATS_INTERVAL_SEC  # noqa: E402

from service.api.gen.privtext.v1 import datasets_pb2, datasets_pb2_grpc, generation_pb2_grpc  # noqa: E402
from service.client import API_KEY_HEADER  # noqa: E402

REQUEST_TYPE = "grpc"
BUDGET_POLL_SECONDS = 1.0


@events.test_stop.add_listener
def _let_the_csv_catch_up(environment, **_kw) -> None:
    """Locust's CSV writer rewrites locust_stats.csv once a second and nothing writes it at exit,
    so a stream that ends in the last second (with --stop-timeout: the last one, always) would be
    missing from it. test_stop fires once every user has stopped: give the writer one more turn."""
    if getattr(environment.parsed_options, "csv_prefix", None):
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.5)


class GenerateUser(User):
    """One gRPC channel per user; each task is one Generate stream."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.request = workload.generate_request(os.environ["PRIVTEXT_LOADTEST_DATASET"])
        self.timeout = workload.timeout()
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
        start = time.perf_counter()
        tokens = 0
        first = True
        try:
            for rec in self.stub.Generate(self.request, timeout=self.timeout, metadata=self.metadata):
                if first:
                    self._fire("Generate:first-record", start)
                    first = False
                tokens += rec.tokens
        except grpc.RpcError as err:
            self._fire("Generate", start, tokens, exception=err)
            return
        self._fire("Generate", start, tokens)


class BudgetUser(User):
    """Exactly one of these (fixed_count): GetBudget on the dataset once a second, while the
    GenerateUsers keep the engine busy. Its latency says whether budget reads wait on decoding."""

    fixed_count = 1
    wait_time = constant(BUDGET_POLL_SECONDS)

    def on_start(self) -> None:
        self.request = datasets_pb2.GetBudgetRequest(id=os.environ["PRIVTEXT_LOADTEST_DATASET"])
        key = os.environ.get("PRIVTEXT_API_KEY")
        self.metadata = ((API_KEY_HEADER, key),) if key else None
        self.channel = grpc.insecure_channel(self.host)
        self.stub = datasets_pb2_grpc.DatasetsStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def budget(self) -> None:
        start = time.perf_counter()
        exception = None
        try:
            self.stub.GetBudget(self.request, timeout=30, metadata=self.metadata)
        except grpc.RpcError as err:
            exception = err
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name="GetBudget", response_time=(time.perf_counter() - start) * 1000.0,
            response_length=0, exception=exception, context={})
