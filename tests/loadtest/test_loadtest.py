"""loadtest/run end to end: a real `privtext serve`, the SMS corpus, one locust user, and the
in-process measurement of the same work before and after it. Bounded: streams that start within
a window always finish, so a 5 s window is one 8-token stream per side and phase (about 1.5 min
in all on 2 busy cores, most of it loading presidio and the model twice). No timing thresholds."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Never import locust here: importing it monkey-patches the whole pytest process with gevent,
# which leaves every later grpc test hanging. Look it up without importing it.
if importlib.util.find_spec("locust") is None:
    pytest.skip("needs locust (pip install -e '.[loadtest]')", allow_module_level=True)

RUN = Path(__file__).resolve().parents[2] / "loadtest" / "run"


@pytest.mark.slow
def test_loadtest_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PRIVTEXT_LOADTEST_MAX_TOKENS": "8"}
    proc = subprocess.run([sys.executable, str(RUN), "--users", "1", "--run-time", "5s", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["inprocess_errors"] == 0
    assert summary["users"] == 1
    assert summary["requests"] >= 1 and summary["tokens"] > 0
    assert summary["tokens_per_second"] > 0, summary
    assert summary["first_record_p50_ms"] is not None and summary["first_record_p50_ms"] > 0
    # the in-process side of the same run: both phases measured, the ratio computed (not judged here)
    assert summary["inprocess_tokens_per_second"] > 0, summary
    assert summary["served_ratio"] is not None and summary["served_ratio"] > 0, summary
    assert isinstance(summary["ratio_pass"], bool) and summary["target_ratio"] == 0.8
    assert [p["streams"] >= 1 and p["tokens"] > 0 for p in summary["inprocess_phases"]] == [True, True]
    assert set(summary["cpu_seconds"]) == {"inprocess_before", "served", "inprocess_after"}
    assert summary["workload"]["max_tokens"] == 8 and summary["workload"]["records_per_stream"] == 2
    # the budget-polling user ran beside the generating one; its latency is on the summary line
    assert summary["budget_requests"] >= 1 and summary["budget_p50_ms"] is not None and summary["budget_p50_ms"] >= 0, summary
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("users=1 tokens/s=") and " in-process tokens/s=" in line and "served/in-process=" in line
    assert f"GetBudget p50={summary['budget_p50_ms']:.0f} ms" in line and f"({summary['budget_requests']} polls; idle p50=" in line
    assert summary["budget_idle_p50_ms"] > 0 and summary["budget_idle_p99_ms"] >= summary["budget_idle_p50_ms"]
    assert summary["budget_poller_polls"] >= 1 and summary["budget_poller_p50_ms"] > 0  # a plain client beside locust
    assert ("PASS" in line) == summary["ratio_pass"]

    # locust's CSV holds every stream: streams started within the run time finish (--stop-timeout)
    # and the locustfile lets the CSV writer catch up before locust exits
    with (out / "locust_stats.csv").open(newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(rows["Generate"]["Request Count"]) == summary["requests"]
    assert int(rows["Generate:first-record"]["Request Count"]) >= 1
    assert int(rows["Generate"]["Failure Count"]) == 0
    assert int(rows["GetBudget"]["Request Count"]) == summary["budget_requests"] and int(rows["GetBudget"]["Failure Count"]) == 0
    assert (out / "report.html").stat().st_size > 0
