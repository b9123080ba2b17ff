"""service.bench.startup: a process' age from /proc (the report's startup_seconds)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from service.bench.startup import process_age_seconds, startup_seconds

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")


def test_age_of_a_fresh_process():
    code = "import time; time.sleep(0.5); from service.bench.startup import process_age_seconds; print(process_age_seconds())"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    wall = time.perf_counter() - t0
    age = float(r.stdout)
    assert 0.5 <= age <= wall + 0.05  # /proc's clock ticks are 10 ms


def test_startup_is_the_age_at_a_moment():
    age = process_age_seconds()
    assert age is not None and age > 0
    now = time.time()
    assert startup_seconds(now) == pytest.approx(age, abs=0.05)
    assert startup_seconds(now - 1.0) == pytest.approx(age - 1.0, abs=0.05)
    assert startup_seconds(now - 10 * age - 100) == 0.0  # never negative
