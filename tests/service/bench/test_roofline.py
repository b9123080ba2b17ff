"""`privtext bench roofline` on a tiny real run: the default model, float32, bf16 and int8 engines
side by side, 1 group of 2 + 1 rows, 3 new tokens; the FLOP count; bad arguments; the CLI wiring."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from service.bench import roofline  # noqa: E402
from service.engine import loader  # noqa: E402

if "transformers" not in loader.available():
    pytest.skip("the transformers backend is not installed", allow_module_level=True)

N, GROUPS, MAX_TOKENS = 2, 1, 3


@pytest.fixture(scope="module")
def int8_engine():
    return loader.load_engine("transformers", quantize="int8")


@pytest.fixture(scope="module")
def bf16_engine():
    return loader.load_engine("transformers", quantize="bf16")


@pytest.fixture(scope="module")
def result(engine, bf16_engine, int8_engine):
    return roofline.bench_roofline(partitions=N, groups=GROUPS, max_tokens=MAX_TOKENS, matmul_repeats=1,
                                   engines={"none": engine, "bf16": bf16_engine, "int8": int8_engine})


def test_bf16_linears_are_timed_on_bf16_inputs(bf16_engine):
    mods = roofline.linear_modules(bf16_engine.model)
    t = roofline.time_step_linears(mods[:2], [3], repeats=1)
    assert t["rows"] == [3] and t["gflops"] > 0


def test_flops_from_the_config(engine):
    """SmolLM2-135M: 30 layers of q/k/v/o (576 -> 576, 192, 192; 576 -> 576) and an MLP
    (576 -> 1536 x 2, 1536 -> 576), and a 576 x 49152 head: 134,479,872 weights, 2 FLOPs each."""
    f = roofline.model_flops(engine.model.config)
    assert f["linear_params"] == 30 * (576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3) + 576 * 49152 == 134_479_872
    assert f["flops_per_row_token"] == 268_959_744
    assert f["attention_flops_per_context_token"] == 4 * 9 * 64 * 30
    mods = roofline.linear_modules(engine.model)
    assert len(mods) == 211 and sum(m.in_features * m.out_features for m in mods) == f["linear_params"]


def test_small_run(result):
    d = result
    rows = GROUPS * (N + 1)
    assert (d["partitions"], d["groups"], d["max_tokens"], d["batch_rows"], d["split_rows"]) == (N, GROUPS, MAX_TOKENS, rows, [GROUPS * N, GROUPS])
    assert list(d["variants"]) == ["none", "bf16", "int8"]
    for v, r in d["variants"].items():
        assert r["quantize"] == v and r["gflops"] > 0 and r["gflops_split"] > 0
        assert r["roofline_row_tokens_per_s"] == pytest.approx(r["gflops"] * 1e9 / d["flops"]["flops_per_row_token"])
        assert r["decode_over_roofline"] == pytest.approx(r["decode_tokens_per_s"] / r["roofline_row_tokens_per_s"])
        assert r["raw_over_roofline"] == pytest.approx(r["raw_tokens_per_s"] / r["roofline_row_tokens_per_s"])
        (run,) = r["runs"]["decode"]
        assert run["tokens"] == rows * MAX_TOKENS  # bench engine's raw run: every row, exactly max_tokens
        assert run["decode_tokens"] == rows * (MAX_TOKENS - 1)
        assert run["decode_tokens_per_s"] == pytest.approx(run["decode_tokens"] / run["decode_seconds"])
    r8 = d["variants"]["int8"]
    assert r8["decode_tokens_per_s_vs_none"] == pytest.approx(r8["decode_tokens_per_s"] / d["variants"]["none"]["decode_tokens_per_s"])
    assert 0 < d["attention_flops_per_row_token"] < d["flops"]["flops_per_row_token"]
    table = roofline.format_roofline(d)
    for word in ("GFLOP/s", "roofline", "dec/roof", "bf16 / none", "int8 / none", "269.0 M"):
        assert word in table, word
    json.dumps(d, allow_nan=False)  # as --out writes it


@pytest.mark.parametrize("kw,message", [
    ({"variants": ["int4"]}, "quantize must be distinct values among none, bf16, int8"),
    ({"variants": ["none", "none"]}, "quantize must be distinct"),
    ({"max_tokens": 1}, "max_tokens must be >= 2"),
    ({"groups": 0}, "groups must be an integer >= 1"),
])
def test_bad_arguments(kw, message, monkeypatch):
    monkeypatch.setattr(loader, "load_engine", lambda *a, **k: pytest.fail("loaded an engine despite a bad argument"))
    with pytest.raises(ValueError, match=message):
        roofline.bench_roofline(**kw)


def test_cli_wiring():
    from service.bench import peer
    from service.cli import build_parser

    a = build_parser().parse_args(["bench", "roofline", "--quantize", "int8", "--out", "r.json"])
    assert (a.func, a.quantize, a.out, a.partitions, a.groups, a.max_tokens) == (roofline.cmd, ["int8"], "r.json", 8, 16, 16)
    a = build_parser().parse_args(["bench", "roofline"])
    assert a.quantize == ["none", "bf16", "int8"]
    a = build_parser().parse_args(["bench", "peer"])
    assert (a.func, a.records, a.partitions, a.max_tokens, a.epsilon, a.corpus_records, a.pii, a.quantize) == (
        peer.cmd, 8, 8, 32, 3.0, 64, "off", ["none"])
    assert build_parser().parse_args(["bench", "peer", "--quantize", "none", "bf16"]).quantize == ["none", "bf16"]


def test_bench_engine_side_by_side(engine, int8_engine):
    """`privtext bench engine --quantize none int8`: both engines on the same rows in one process,
    raw and private runs each, and the ratios to the first variant."""
    from service.bench import engine as bench

    d = bench.bench_side_by_side(["none", "int8"], engines={"none": engine, "int8": int8_engine}, partitions=N, groups=GROUPS,
                                 max_tokens=MAX_TOKENS)
    assert list(d["variants"]) == ["none", "int8"]
    for v, r in d["variants"].items():
        assert r["quantize"] == v and r["raw_tokens"] == GROUPS * (N + 1) * MAX_TOKENS and r["private_tokens"] == GROUPS * MAX_TOKENS
        assert r["raw_tokens_per_s"] > 0 and r["private_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0
    r8 = d["variants"]["int8"]
    assert r8["raw_tokens_per_s_vs_none"] == pytest.approx(r8["raw_tokens_per_s"] / d["variants"]["none"]["raw_tokens_per_s"])
    table = bench.format_side_by_side(d)
    assert "int8 / none: raw" in table and "private tok/s" in table
    json.dumps(d)
    with pytest.raises(ValueError, match="quantize must be distinct"):
        bench.bench_side_by_side(["none", "int4"])
    from service.cli import build_parser

    a = build_parser().parse_args(["bench", "engine", "--quantize", "none", "int8"])
    assert a.quantize == ["none", "int8"] and a.func is bench.cmd
