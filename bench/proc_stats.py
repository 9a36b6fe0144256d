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
    return sum(_user_system_ticks(stat_path)) * 1000 / _TICKS


def _user_system_ticks(stat_path: Path) -> tuple[int, int]:
    stat = stat_path.read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    return int(fields[11]), int(fields[12])  # utime, stime


def user_system_seconds(pids: Iterable[int]) -> tuple[float, float]:
    """CPU time in user space and in the kernel (syscalls, and on loopback the TCP
    delivery a send does for its receiver), in 10 ms ticks: good for splitting the
    precise total over a window of many ticks, not for timing one stream."""
    user = system = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            u, s = _user_system_ticks(task / "stat")
            user += u
            system += s
    return user / _TICKS, system / _TICKS


def cores_busy_seconds(cores: Iterable[int]) -> float:
    """Seconds the given cores spent not idle, whoever ran there (from /proc/stat)."""
    wanted = {f"cpu{core}" for core in cores}
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *counters = line.split()
        if name in wanted:
            ticks = [int(c) for c in counters]
            # user, nice, system, idle, iowait, irq, softirq: all but idle and iowait
            busy += sum(ticks[:7]) - ticks[3] - ticks[4]
    return busy / _TICKS


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


def established_to(pids: Iterable[int], port: int) -> int:
    """The processes' established TCP connections to 127.0.0.1:`port` (IPv4)."""
    inodes: set[str] = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed since the listing
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    wanted = f":{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].endswith(wanted) and fields[3] == "01" and fields[9] in inodes:
            count += 1
    return count
