"""The load test's request, shared by the locust user (served) and loadtest/inprocess.py (in-process),
so both sides generate exactly the same work. No gevent or locust imports here.

Environment:
  PRIVTEXT_LOADTEST_RECORDS     records per request (default 2)
  PRIVTEXT_LOADTEST_MAX_TOKENS  max tokens per record (default 16)
  PRIVTEXT_LOADTEST_EPSILON     epsilon per request (default 0.2)
  PRIVTEXT_LOADTEST_TIMEOUT     deadline of one stream in seconds (default 600)
"""

from __future__ import annotations

import os

from service.api.gen.privtext.v1 import generation_pb2


def _env(name: str, default, cast):
    value = os.environ.get(name)
    return cast(value) if value not in (None, "") else default


def records() -> int:
    return _env("PRIVTEXT_LOADTEST_RECORDS", 2, int)


def max_tokens() -> int:
    return _env("PRIVTEXT_LOADTEST_MAX_TOKENS", 16, int)


def epsilon() -> float:
    return _env("PRIVTEXT_LOADTEST_EPSILON", 0.2, float)


def timeout() -> float:
    return _env("PRIVTEXT_LOADTEST_TIMEOUT", 600.0, float)


def generate_request(dataset_id: str) -> generation_pb2.GenerateRequest:
    """The one request every stream sends (everything else at the server's defaults: EM mechanism,
    its default partitions and top-k, PII policy redact)."""
    return generation_pb2.GenerateRequest(dataset_id=dataset_id, records=records(), max_tokens=max_tokens(), epsilon=epsilon())


def describe() -> dict:
    return {"records_per_stream": records(), "max_tokens": max_tokens(), "epsilon_per_stream": epsilon()}
