"""Invalid settings raise ValueError naming the field and the limit (table-driven)."""

import math

import pytest

from mechanisms import DecodingConfig, GateConfig

BAD = [
    ({"mechanism": "laplace"}, "mechanism", "one of em, amin, gaussian"),
    ({"partitions": 0}, "partitions", ">= 1"),
    ({"partitions": 2.5}, "partitions", "integer"),
    ({"partitions": True}, "partitions", "integer"),
    ({"temperature": 0.0}, "temperature", "> 0"),
    ({"temperature": math.inf}, "temperature", "finite"),
    ({"temperature": math.nan}, "temperature", "finite"),
    ({"clip": -1.0}, "clip", "> 0"),
    ({"noise_multiplier": 0}, "noise_multiplier", "> 0"),
    ({"top_k": 0}, "top_k", ">= 1"),
    ({"top_k_plus": "no"}, "top_k_plus", "True or False"),
    ({"units_per_row": 0}, "units_per_row", ">= 1"),
    ({"gate": "yes"}, "gate", "GateConfig"),
]


@pytest.mark.parametrize("kwargs,field,limit", BAD, ids=[f"{b[1]}={list(b[0].values())[0]!r}" for b in BAD])
def test_bad_config_names_field_and_limit(kwargs, field, limit):
    with pytest.raises(ValueError) as e:
        DecodingConfig(**kwargs)
    assert str(e.value).startswith(f"{field} must be")
    assert limit in str(e.value)


@pytest.mark.parametrize(
    "kwargs,field",
    [({"threshold": 0.0}, "gate.threshold"), ({"threshold": 1.0}, "gate.threshold"), ({"epsilon": 0}, "gate.epsilon"), ({"max_private_tokens": 0}, "gate.max_private_tokens")],
)
def test_bad_gate(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        GateConfig(**kwargs)


def test_replace_revalidates_and_roundtrips():
    cfg = DecodingConfig(mechanism="amin", partitions=4, gate=GateConfig())
    with pytest.raises(ValueError, match="^clip must be"):
        cfg.replace(clip=0)
    assert DecodingConfig.from_dict(cfg.to_dict()) == cfg
    assert DecodingConfig.from_dict(DecodingConfig().to_dict()) == DecodingConfig()
