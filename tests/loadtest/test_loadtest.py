"""loadtest/run end to end: a real `privtext serve`, the SMS corpus, one locust user for 20 s."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("locust")

RUN = Path(__file__).resolve().parents[2] / "loadtest" / "run"


@pytest.mark.slow
def test_loadtest_run(tmp_path):
    out = tmp_path / "out"
    # 8 tokens instead of the default 16: one stream must finish inside the 20 s on a busy 2-core box.
    env = {**os.environ, "PRIVTEXT_LOADTEST_MAX_TOKENS": "8"}
    proc = subprocess.run([sys.executable, str(RUN), "--users", "1", "--run-time", "20s", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 0
    assert summary["users"] == 1
    assert summary["tokens_per_second"] > 0, summary
    assert summary["first_record_p50_ms"] is not None and summary["first_record_p50_ms"] > 0
    assert proc.stdout.strip().splitlines()[-1].startswith("users=1 tokens/s=")

    with (out / "locust_stats.csv").open(newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(rows["Generate:first-record"]["Request Count"]) >= 1
    assert int(rows["Generate"]["Failure Count"]) == 0
