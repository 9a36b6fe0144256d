"""A process's own accounting, from /proc: CPU seconds and resident memory.

CPU time is the scheduler's per-thread runtime (`se.sum_exec_runtime`, nanosecond
precision), summed over the process's threads; `utime + stime` from /proc/PID/stat
counts in 10 ms ticks, too coarse for one stream at 50 events/s.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of the processes' live threads, summed."""
    total = 0.0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += _runtime_ms(task / "sched")
    return total / 1000


def _runtime_ms(sched: Path) -> float:
    for line in sched.read_text().splitlines():
        if line.startswith("se.sum_exec_runtime"):
            return float(line.split(":")[1])
    return _ticks_ms(sched.parent / "stat")  # kernels without CONFIG_SCHED_DEBUG


def _ticks_ms(stat_path: Path) -> float:
    stat = stat_path.read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) * 1000 / _TICKS  # utime, stime


def rss_kib(pids: Iterable[int]) -> int:
    """Resident set size of the processes, summed, in KiB."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def children(pid: int) -> list[int]:
    """Direct children of `pid` (nginx's worker under its master)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found
