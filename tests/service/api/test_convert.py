"""Request messages -> JobRequest: an unset setting takes the server default, a set one arrives."""

from __future__ import annotations

import pytest

from service.api.convert import job_request
from service.api.gen.privtext.v1 import generation_pb2
from service.api.settings import ServerSettings


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, {"top_k": 64, "top_k_plus": True, "temperature": 1.0, "partitions": 8}),
        ({"top_k": 0}, {"top_k": None}),  # 0: the whole vocabulary
        ({"top_k_plus": False}, {"top_k_plus": False}),  # set to the proto default: still sent, still honoured
        ({"top_k_plus": True, "top_k": 16}, {"top_k_plus": True, "top_k": 16}),
        ({"temperature": 0.7, "partitions": 16}, {"temperature": 0.7, "partitions": 16}),
    ],
)
def test_mechanism_settings_reach_the_job_request(tmp_path, settings, expected):
    m = generation_pb2.GenerateRequest(dataset_id="d", records=2, max_tokens=8, epsilon=1.0,
                                       settings=generation_pb2.MechanismSettings(**settings))
    _, req = job_request(m, ServerSettings(port=0, data_dir=tmp_path / "data", config_dir=tmp_path / "config"))
    assert {k: getattr(req, k) for k in expected} == expected
    assert req.decoding_config().top_k_plus == req.top_k_plus
