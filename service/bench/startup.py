"""Start-up time: how long after its process started a job's first group reached the engine.

The process start comes from Linux's /proc/self/stat (field 22, starttime, in clock ticks
since boot) against /proc/uptime (seconds since boot, to 10 ms), so it counts everything before
the first line of Python: the interpreter, the imports, reading the corpus, planning, loading the
engine and the PII filter. /proc/stat's btime would also give the start as a wall-clock time,
but btime is whole seconds: up to a second off, for start-ups of a few seconds.
"""

from __future__ import annotations

import os
import time


def process_age_seconds() -> float | None:
    """Seconds since this process started, or None where /proc is not there (not Linux)."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    # field 2 (comm) is in parentheses and may hold spaces: count fields after its closing one
    fields = stat[stat.rindex(")") + 2 :].split()
    return uptime - int(fields[22 - 3]) / ticks  # fields[0] is field 3 (state)


def startup_seconds(at_wall_time: float) -> float | None:
    """Seconds from this process' start to the moment `at_wall_time` (a time.time() taken
    earlier in this process), or None off Linux."""
    age = process_age_seconds()
    return None if age is None else max(0.0, age - (time.time() - at_wall_time))
