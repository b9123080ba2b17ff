"""A setting is declared once (service/jobs/declared.py): the CLI flags, the proto mapping and the
validation all follow from JobRequest's and GenerateSpec's declarations."""

from __future__ import annotations

import argparse
from typing import Annotated

import pytest
from pydantic import BaseModel, Field, ValidationError

from service.jobs.declared import Setting, add_arguments, declared, flag_of, proto_paths, values_from_args, values_from_message
from service.jobs.request import GenerateSpec, JobRequest

REQUIRED = ["--input", "c.jsonl", "--out", "o.jsonl", "--records", "2", "--max-tokens", "4", "--epsilon", "1", "--delta", "1e-5"]


def parser_for(model) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_arguments(p, model)
    return p


def test_every_field_is_declared():
    for model in (JobRequest, GenerateSpec):
        assert set(declared(model)) == set(model.model_fields), f"{model.__name__}: a field without its Setting"


def test_flag_defaults_are_the_models_defaults():
    ns = parser_for(GenerateSpec).parse_args(REQUIRED)
    values = values_from_args(ns, GenerateSpec)
    spec = GenerateSpec(**values)
    for name, field in GenerateSpec.model_fields.items():
        if not field.is_required():
            assert getattr(spec, name) == field.get_default(call_default_factory=True), name


@pytest.mark.parametrize("flags, field, value", [
    (["--top-k", "0"], "top_k", None),  # 0: the whole vocabulary
    (["--top-k", "12"], "top_k", 12),
    (["--no-top-k-plus"], "top_k_plus", False),
    (["--labels", "spam, ham", "--label-field", "label"], "labels", ("spam", "ham")),
    (["--records", "5", "--label-counts", "spam=2,ham=3", "--label-field", "label"], "label_counts", {"spam": 2, "ham": 3}),
    (["--stop", "\n\n", "--stop", "###"], "stop", ("\n\n", "###")),
    (["--threshold", "2.5", "--method", "pe"], "pe_threshold", 2.5),  # the alias
    (["--gate-threshold", "0.2"], "gate_threshold", 0.2),
])
def test_flags_parse_to_field_values(flags, field, value):
    ns = parser_for(GenerateSpec).parse_args(REQUIRED + flags)
    assert getattr(GenerateSpec(**values_from_args(ns, GenerateSpec)), field) == value


@pytest.mark.parametrize("flags, field", [
    (["--partitions", "0"], "partitions"),
    (["--max-row-tokens", "4"], "max_row_tokens"),
    (["--gate-threshold", "1.5"], "gate_threshold"),
    (["--iterations", "101"], "iterations"),
])
def test_out_of_bounds_is_refused_by_the_declared_limit(flags, field):
    ns = parser_for(GenerateSpec).parse_args(REQUIRED + flags)
    with pytest.raises(ValidationError) as e:
        GenerateSpec(**values_from_args(ns, GenerateSpec))
    assert e.value.errors()[0]["loc"] == (field,)


def test_help_names_the_limits_and_the_default():
    text = parser_for(GenerateSpec).format_help().replace("\n", " ")
    text = " ".join(text.split())
    assert "--partitions PARTITIONS N, rows per group the average divides by (default: 8) [>= 1, <= 4096]" in text
    from mechanisms.registry import names

    assert "--mechanism {" + ",".join(names()) + "}" in text


def test_a_bad_label_count_names_the_setting():
    with pytest.raises(argparse.ArgumentError, match="label_counts must look like spam=20,ham=180"):
        parser_for(GenerateSpec).parse_args(REQUIRED + ["--label-counts", "spam:2"])


def test_every_proto_path_is_a_generate_request_field():
    pytest.importorskip("grpc")
    from service.api.gen.privtext.v1 import generation_pb2 as pb

    for name, path in proto_paths(JobRequest).items():
        desc = pb.GenerateRequest.DESCRIPTOR
        *parents, leaf = path.split(".")
        for p in parents:
            desc = desc.fields_by_name[p].message_type
        f = desc.fields_by_name[leaf]
        assert f.has_presence, f"{name}: {path} must be optional (set or not)"


def test_the_proto_mapping_reads_only_what_the_client_set():
    pytest.importorskip("grpc")
    from service.api.gen.privtext.v1 import generation_pb2 as pb

    m = pb.GenerateRequest(settings=pb.MechanismSettings(partitions=4, top_k=0, gate=pb.GateSettings(epsilon=0.25)))
    assert values_from_message(m, JobRequest) == {"partitions": 4, "top_k": None, "gate_epsilon": 0.25}
    assert values_from_message(pb.GenerateRequest(), JobRequest) == {}


def test_a_new_setting_gets_its_flag_from_its_declaration_alone():
    class Toy(BaseModel):
        width: Annotated[int, Setting("how wide", proto="settings.partitions")] = Field(default=3, ge=1, le=9)
        name: Annotated[str, Setting("what", flag="--toy-name", choices=lambda: ["a", "b"])] = "a"

    p = parser_for(Toy)
    ns = p.parse_args(["--width", "5", "--toy-name", "b"])
    assert Toy(**values_from_args(ns, Toy)) == Toy(width=5, name="b")
    assert flag_of("name", declared(Toy)["name"][1]) == "--toy-name"
    with pytest.raises(argparse.ArgumentError):
        p.parse_args(["--toy-name", "c"])
    assert "how wide (default: 3) [>= 1, <= 9]" in " ".join(p.format_help().split())
