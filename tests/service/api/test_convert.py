"""Request messages -> JobRequest: an unset setting takes the server default, a set one arrives."""

from __future__ import annotations

import grpc
import pytest

from service.api.convert import dataset_spec, job_request
from service.api.errors import ApiError
from service.api.gen.privtext.v1 import datasets_pb2, generation_pb2
from service.api.settings import ServerSettings


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, {"top_k": 64, "top_k_plus": True, "temperature": 1.0, "partitions": 8}),
        ({"top_k": 0}, {"top_k": None}),  # 0: the whole vocabulary
        ({"top_k_plus": False}, {"top_k_plus": False}),  # set to the proto default: still sent, still honoured
        ({"top_k_plus": True, "top_k": 16}, {"top_k_plus": True, "top_k": 16}),
        ({"temperature": 0.7, "partitions": 16}, {"temperature": 0.7, "partitions": 16}),
        ({}, {"row_slots": None, "max_row_tokens": 512}),  # defaults: 3N slots, 512 tokens per row
        ({"row_slots": 40, "max_row_tokens": 256}, {"row_slots": 40, "max_row_tokens": 256}),
    ],
)
def test_mechanism_settings_reach_the_job_request(tmp_path, settings, expected):
    m = generation_pb2.GenerateRequest(dataset_id="d", records=2, max_tokens=8, epsilon=1.0,
                                       settings=generation_pb2.MechanismSettings(**settings))
    _, req = job_request(m, ServerSettings(port=0, data_dir=tmp_path / "data", config_dir=tmp_path / "config"))
    assert {k: getattr(req, k) for k in expected} == expected
    assert req.decoding_config().top_k_plus == req.top_k_plus


# ---------------------------------------------------------------------------------------------
# issue 22: every free-form field is bounded by a public setting named in the error


def _settings(tmp_path) -> ServerSettings:
    return ServerSettings(port=0, data_dir=tmp_path / "data", config_dir=tmp_path / "config")


def _refused(call, field: str, *words: str) -> str:
    with pytest.raises(ApiError) as e:
        call()
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and e.value.field == field
    assert e.value.message.startswith(f"{field} must be "), e.value.message
    for w in words:
        assert w in e.value.message, (w, e.value.message)
    assert len(e.value.message) < 300  # a client's huge value is never echoed whole
    return e.value.message


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"stop": [""]}, "stop[0]", ("non-empty",)),
        ({"stop": ["x" * 101]}, "stop[0]", ("max_stop_chars", "101 characters")),
        ({"stop": ["s"] * 17}, "stop", ("max_stop_strings",)),
        ({"epsilon": 5e-324}, "epsilon", ("min_epsilon", "5e-324")),
        ({"epsilon": 1e308}, "epsilon", ("max_epsilon",)),
        ({"epsilon": float("nan")}, "epsilon", ("min_epsilon",)),
        ({"settings": generation_pb2.MechanismSettings(gate=generation_pb2.GateSettings(epsilon=1e308))},
         "settings.gate.epsilon", ("max_epsilon",)),
        ({"labels": ["a" * 32_000]}, "labels[0]", ("max_label_chars", "32000 characters")),
        ({"labels": [""]}, "labels[0]", ("non-empty",)),
        ({"labels": [f"l{i}" for i in range(101)]}, "labels", ("max_request_labels",)),
        ({"label_counts": {"b" * 101: 2}, "records": 2}, "label_counts[0]", ("max_label_chars",)),
        ({"dataset_id": "d" * 1_000_000}, "dataset_id", ("max_id_chars", "1000000 characters")),
        ({"dataset_id": ""}, "dataset_id", ("set",)),
    ],
)
def test_request_fields_are_bounded(tmp_path, fields, field, words):
    kw = {"dataset_id": "ds_x", "records": 2, "max_tokens": 8, "epsilon": 1.0, **fields}
    message = _refused(lambda: job_request(generation_pb2.GenerateRequest(**kw), _settings(tmp_path)), field, *words)
    assert "d" * 100 not in message and "a" * 100 not in message


def test_bounds_are_settings(tmp_path):
    """The limits are the settings' values, so an operator can move them."""
    s = ServerSettings(port=0, data_dir=tmp_path / "data", config_dir=tmp_path / "config", max_stop_chars=3, min_epsilon=0.5)
    m = generation_pb2.GenerateRequest(dataset_id="ds_x", records=1, max_tokens=8, epsilon=1.0, stop=["abcd"])
    _refused(lambda: job_request(m, s), "stop[0]", "at most 3 characters (max_stop_chars)")
    m = generation_pb2.GenerateRequest(dataset_id="ds_x", records=1, max_tokens=8, epsilon=0.4)
    _refused(lambda: job_request(m, s), "epsilon", "in [0.5, 1000]")
    ok = generation_pb2.GenerateRequest(dataset_id="ds_x", records=1, max_tokens=8, epsilon=0.5, stop=["abc"], labels=["ham"])
    assert job_request(ok, s)[1].stop == ("abc",)


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"delta": 0.9999999}, "spec.delta", ("max_delta", "0.9999999")),
        ({"delta": 5e-324}, "spec.delta", ("min_delta",)),
        ({"epsilon_cap": 1e308}, "spec.epsilon_cap", ("max_epsilon",)),
        ({"epsilon_cap": 1e-9}, "spec.epsilon_cap", ("min_epsilon",)),
        ({"name": "bad\x00name"}, "spec.name", ("control characters", "U+0000 at position 3")),
        ({"name": "two\nlines"}, "spec.name", ("U+000A",)),
        ({"name": "bell\x07"}, "spec.name", ("U+0007",)),
        ({"name": "n" * 201}, "spec.name", ("max_name_chars",)),
        ({"label_field": "l" * 101}, "spec.label_field", ("max_field_name_chars",)),
        ({"text_field": "te\u2028xt"}, "spec.text_field", ("U+2028",)),
    ],
)
def test_upload_spec_is_bounded(tmp_path, fields, field, words):
    spec = datasets_pb2.DatasetSpec(**{"name": "ok", "epsilon_cap": 8.0, "delta": 1e-4, **fields})
    _refused(lambda: dataset_spec(spec, _settings(tmp_path)), field, *words)


def test_a_sane_spec_passes(tmp_path):
    dataset_spec(datasets_pb2.DatasetSpec(name="sms spam – v2", epsilon_cap=1000.0, delta=0.01, label_field="label"), _settings(tmp_path))
