"""End to end: `privtext audit --quick --json out.json` with the real model writes every
required key with sane values, and the text report ends with its PASS/FAIL list."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from service.engine import loader  # noqa: E402

if not loader.available():
    pytest.skip("no engine backend installed", allow_module_level=True)

REQUIRED = ("canaries", "canary_verbatim_leaks", "mia_auc", "mia_auc_ci", "epsilon", "per_token")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from service.cli import main

    out = tmp_path_factory.mktemp("audit") / "out.json"
    work = out.parent / "work"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["audit", "--quick", "--json", str(out), "--workdir", str(work)])
    return rc, json.loads(out.read_text()), buf.getvalue(), work


def test_required_keys_and_sane_values(quick):
    rc, r, _, _ = quick
    assert all(k in r for k in REQUIRED), [k for k in REQUIRED if k not in r]
    assert r["canaries"] >= 20 and r["canaries_held_out"] == r["canaries_once"] + r["canaries_repeated"]
    assert r["canary_verbatim_leaks"] == 0 and r["canary_near_verbatim_leaks"] == 0
    assert 0.0 <= r["mia_auc"] <= 1.0
    lo, hi = r["mia_auc_ci"]
    assert 0.0 <= lo <= r["mia_auc"] <= hi <= 1.0
    assert r["epsilon"] == pytest.approx(3.0, rel=1e-6) and r["delta"] == 1e-5
    assert r["epsilon_repeated_canary"] > r["epsilon"]
    assert r["records"] >= 1 and r["units"] == r["rows"] + r["canaries_once"] + r["canaries_repeated"] * r["copies_per_repeated_canary"]
    assert set(r["per_token"]) == {"em", "amin", "gaussian"}
    for m, a in r["per_token"].items():
        assert a["claimed_epsilon"] > 0 and 0 <= a["empirical_epsilon"] <= a["empirical_point"], (m, a)
        assert a["passed"] and a["empirical_epsilon"] <= a["claimed_epsilon"], (m, a)
    # em and amin share their solved clip, so their pure claims agree; gaussian's is at a delta
    assert r["per_token"]["em"]["claimed_epsilon"] == pytest.approx(r["per_token"]["amin"]["claimed_epsilon"])
    assert r["per_token"]["gaussian"]["delta"] == 1e-5
    pe = r["pe_histogram"]  # Private Evolution's plan for the same corpus at the same (epsilon, delta)
    assert pe["iterations"] == 3 and pe["delta"] == 1e-5 and pe["passed"], pe
    assert 0 <= pe["empirical_epsilon"] <= pe["claimed_epsilon"] <= pe["plan_epsilon"] <= 3.0 + 1e-9
    assert rc == (0 if r["passed"] else 1)
    assert r["passed"] == all(c["passed"] for c in r["checks"])


def test_text_report_ends_with_pass_fail_list(quick):
    _, r, text, _ = quick
    result = text.split("\nResult\n", 1)[1].strip().splitlines()
    assert len(result) == len(r["checks"]) + 1
    for line, c in zip(result, r["checks"]):
        assert line.strip().startswith(("PASS " if c["passed"] else "FAIL ") + c["name"])
    assert "PASS no verbatim canary leak" in text
    for m in ("em", "amin", "gaussian"):
        assert f"PASS {m} per-token privacy loss within its claim" in text
    assert "PASS pe histogram privacy loss within its claim" in text and "Private Evolution histograms" in text


def test_workdir_holds_the_corpus_with_every_canary_copy(quick):
    _, r, _, work = quick
    corpus = [json.loads(line)["text"] for line in (work / "corpus.jsonl").read_text().splitlines()]
    assert len(corpus) == r["units"]
    for c in r["canary_details"]:
        assert corpus.count(c["text"]) == c["copies"]
    synthetic = (work / "synthetic.jsonl").read_text().splitlines()
    assert len(synthetic) == r["records"]
