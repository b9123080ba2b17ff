"""`privtext bench engine` on a small real run: the default model, SMS spam rows, 2 groups of
2 + 1 rows, 4 new tokens."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from service.bench import engine as bench  # noqa: E402
from service.engine import loader  # noqa: E402

if not loader.available():
    pytest.skip("no engine backend installed", allow_module_level=True)

N, GROUPS, MAX_TOKENS = 2, 2, 4
KEYS = {
    "raw_tokens_per_s", "private_tokens_per_s", "efficiency", "partitions", "groups", "max_tokens", "engine", "model",
    "mechanism", "threads", "device", "raw_seconds", "private_seconds", "prompt_tokens", "raw_prefill_seconds",
    "private_prefill_seconds", "raw_decode_seconds", "private_decode_seconds", "selection_seconds", "runs",
}


@pytest.fixture(scope="module")
def engine():
    return loader.load_engine("auto")


@pytest.fixture(scope="module")
def result(engine):
    return bench.bench_engine(partitions=N, groups=GROUPS, max_tokens=MAX_TOKENS, engine=engine)


def check(d: dict) -> None:
    assert KEYS <= set(d), KEYS - set(d)
    assert (d["partitions"], d["groups"], d["max_tokens"], d["mechanism"]) == (N, GROUPS, MAX_TOKENS, "em")
    assert d["raw_tokens"] == GROUPS * (N + 1) * MAX_TOKENS and d["private_tokens"] == GROUPS * MAX_TOKENS
    for kind, tokens in (("raw", d["raw_tokens"]), ("private", d["private_tokens"])):
        assert len(d["runs"][kind]) == d["repeats"]
        for run in d["runs"][kind]:
            assert run["tokens"] == tokens
            assert run["tokens_per_s"] == pytest.approx(tokens / run["seconds"])
            # the same rows: every prompt prefilled once, then one token per row per step but the last
            assert run["prompt_tokens"] == d["prompt_tokens"] > 0
            assert run["decode_tokens"] == GROUPS * (N + 1) * (MAX_TOKENS - 1)
            assert run["steps"] == MAX_TOKENS  # one token per group (raw: per row) each step
            # phases from the engine's stats, every backend: they and "other" make up the run
            assert run["prefill_seconds"] > 0 and run["decode_seconds"] > 0 and run["other_seconds"] >= 0
            assert run["prefill_seconds"] + run["decode_seconds"] + run["selection_seconds"] + run["other_seconds"] == pytest.approx(run["seconds"])
    assert d["runs"]["private"][0]["selection_calls"] == MAX_TOKENS
    assert d["efficiency"] == pytest.approx(d["private_tokens_per_s"] * (N + 1) / d["raw_tokens_per_s"])
    assert d["raw_tokens_per_s"] > 0 and d["private_tokens_per_s"] > 0 and d["selection_seconds"] > 0
    assert d["threads"] >= 1 and d["model"] and d["engine"] == loader.resolve_backend("auto")
    assert 0 < d["private_prefill_seconds"] + d["private_decode_seconds"] + d["selection_seconds"] <= d["private_seconds"]
    assert 0 < d["private_prefill_share"] < d["private_prefill_share_of_engine"] < 1


def test_small_run(result, engine):
    check(result)
    assert not [k for k in vars(engine) if callable(getattr(type(engine), k, None))]  # no method shadowed on the engine
    table = bench.format_result(result)
    assert "efficiency" in table and "raw" in table and "private" in table
    json.dumps(result)  # JSON-serialisable as written by --json


def test_phases_are_the_engines_own_stats(engine):
    """A run's phase table is the difference of the engine's stats across it, to the last bit."""
    reqs = bench.build_groups(engine, N, 1, 3)
    before = engine.stats
    run = bench.measure(engine, "private", reqs, bench.private_config("em", N), 0)
    spent = engine.stats.since(before)
    assert run["prefill_seconds"] == spent.prefill_seconds and run["decode_seconds"] == spent.decode_seconds
    assert (run["selection_seconds"], run["selection_calls"]) == (spent.selection_seconds, spent.selections) != (0.0, 0)
    assert (run["prompt_tokens"], run["decode_tokens"], run["steps"]) == (spent.prefill_tokens, spent.decode_row_tokens, spent.steps)
    assert run["other_seconds"] == run["seconds"] - spent.forward_seconds - spent.selection_seconds


def test_bad_arguments():
    with pytest.raises(ValueError, match="partitions must be an integer >= 1"):
        bench.bench_engine(partitions=0)
    with pytest.raises(ValueError, match="groups \\* partitions must be at most"):
        bench.bench_engine(partitions=4000, groups=4)


def _cli_wired() -> bool:
    from service.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["bench", "engine", "--groups", "1"])
    except SystemExit:
        return False
    return True


ARGS = ["--partitions", str(N), "--groups", str(GROUPS), "--max-tokens", str(MAX_TOKENS)]


def test_add_parser_options():
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="bench"))
    a = parser.parse_args(["engine"])
    assert (a.engine, a.partitions, a.groups, a.max_tokens, a.mechanism, a.json, a.func) == ("auto", 8, 16, 32, "em", None, bench.cmd)
    a = parser.parse_args(["engine", *ARGS, "--json", "x.json"])
    assert (a.partitions, a.groups, a.max_tokens, a.json) == (N, GROUPS, MAX_TOKENS, "x.json")


def test_json_output(tmp_path, capsys):
    """Through `python -m service.cli bench engine` once the CLI wires it; until then through
    cmd() with the Namespace add_parser builds."""
    out = tmp_path / "engine.json"
    if _cli_wired():
        r = subprocess.run(
            [sys.executable, "-m", "service.cli", "bench", "engine", *ARGS, "--json", str(out)], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        table = r.stdout
    else:
        parser = argparse.ArgumentParser()
        bench.add_parser(parser.add_subparsers(dest="bench"))
        a = parser.parse_args(["engine", *ARGS, "--json", str(out)])
        assert a.func(a) == 0
        table = capsys.readouterr().out
    assert "efficiency" in table
    check(json.loads(out.read_text()))
