"""`privtext bench peer`: without the peer it still runs privtext's side (a real `privtext
generate` process, whose report carries startup_seconds) and says the peer is not installed;
with scripts/peer-venv's .venv-peer it runs both (skipped where that venv is absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from service.bench import peer  # noqa: E402
from service.engine import loader  # noqa: E402

if "transformers" not in loader.available():
    pytest.skip("the transformers backend is not installed", allow_module_level=True)

TINY = {"records": 1, "partitions": 2, "max_tokens": 2, "corpus_records": 4}


def test_peer_status():
    ok, found = peer.peer_status(Path("/nonexistent/bin/python"))
    assert not ok and "does not exist" in found and "scripts/peer-venv" in found
    ok, found = peer.peer_status(Path(sys.executable))  # privtext's own venv never holds invink
    assert not ok and "cannot import invink" in found


def test_without_the_peer_privtext_still_runs(tmp_path):
    d = peer.bench_peer(**TINY, peer="/nonexistent/bin/python", work=tmp_path)
    assert d["peer_installed"] is False and d["ratio"] is None and d["runs"]["peer"] == []
    (run,) = d["runs"]["privtext"]
    assert run["records"] == 1 and 0 < run["tokens"] <= 2
    assert run["tokens_per_second"] == pytest.approx(run["tokens"] / run["wall_seconds"])
    # the report's start-up (process start to the first group entering the engine) and its timed
    # work (after the imports) both lie inside the process' life as the parent measured it
    assert 0 < run["startup_seconds"] < run["wall_seconds"]
    assert 0 < run["in_process_seconds"] < run["wall_seconds"]
    assert (tmp_path / "sms.jsonl").read_text().count("\n") == 4
    table = peer.format_peer(d)
    assert "not installed" in table and "no ratio" in table


def test_bad_arguments(monkeypatch):
    with pytest.raises(ValueError, match=r"records x partitions \(72\) must be at most corpus_records \(64\)"):
        peer.bench_peer(records=9, partitions=8)
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        peer.bench_peer(repeats=0)


@pytest.mark.skipif(not peer.peer_status(peer.peer_python())[0], reason="the peer (invink) is not installed: bash scripts/peer-venv")
def test_side_by_side(tmp_path):
    d = peer.bench_peer(**TINY, work=tmp_path)
    assert d["peer_installed"] and d["peer_found"].startswith("invink ")
    assert d["runs"]["peer"][0]["records"] == 1 and d["runs"]["peer"][0]["tokens"] > 0
    assert d["ratio"] == pytest.approx(d["privtext_tokens_per_second"] / d["peer_tokens_per_second"])
    assert "privtext / peer" in peer.format_peer(d)


def test_summary_takes_medians_and_pairs_like_with_like():
    """Two runs a side: the median is their mean (not the faster one); bf16 is compared with the
    peer in bfloat16, float32 and int8 with the peer in float32."""
    run = lambda tps, wall: {"wall_seconds": wall, "records": 8, "tokens": tps * wall, "tokens_per_second": tps}  # noqa: E731
    runs = {"privtext": [run(10.0, 20.0), run(14.0, 18.0)], "privtext bf16": [run(20.0, 10.0)], "privtext int8": [run(12.0, 15.0)],
            "peer": [run(4.0, 60.0), run(2.0, 70.0)], "peer bf16": [run(5.0, 50.0)]}
    s = peer.summarize(runs)
    assert s["medians"]["privtext"]["tokens_per_second"] == 12.0 and s["medians"]["peer"]["wall_seconds"] == 65.0
    assert {k: (r["against"], r["ratio"]) for k, r in s["ratios"].items()} == {
        "privtext": ("peer", 4.0), "privtext bf16": ("peer bf16", 4.0), "privtext int8": ("peer", 4.0)}
    assert peer.side_names(["none", "bf16"], installed=True) == [
        ("privtext", "privtext", "none"), ("privtext bf16", "privtext", "bf16"), ("peer", "peer", "float32"), ("peer bf16", "peer", "bfloat16")]
    assert peer.side_names(["int8"], installed=False) == [("privtext int8", "privtext", "int8")]
