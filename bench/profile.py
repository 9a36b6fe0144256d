"""`python -m bench.profile`: where sse-relay's and nginx's CPU goes per relayed event.

Runs the emitter, a contender and the load generator as `make bench` does (scenario 1's
paced load, every event its own upstream write), samples the contender with `perf
record -g` (kernel and user stacks, no stops: unlike a ptrace sampler it leaves the
timing alone) and sorts every sample: kernel time by the syscall it serves, user time
by the code it runs. Shares times the contender's measured CPU per event give µs per
event. Writes bench/results/profile.md and prints it.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import machine, scenarios
from bench.contenders import Running
from bench.plan import PLANS
from bench.report import LABELS

RESULTS = Path(__file__).resolve().parent / "results"
KERNEL = "[kernel.kallsyms]"
_WRITE = "kernel: write to sockets (with loopback delivery to the reader)"
_READ = "kernel: read from sockets"
_POLL = "kernel: epoll"
_MEMORY = "kernel: memory (mmap, munmap, mremap, page faults)"
_SYSCALLS = {
    **dict.fromkeys(("writev", "write", "send", "sendto", "sendmsg"), _WRITE),
    **dict.fromkeys(("read", "readv", "recv", "recvfrom", "recvmsg"), _READ),
    **dict.fromkeys(("epoll_wait", "epoll_pwait", "epoll_ctl"), _POLL),
    **dict.fromkeys(("mmap", "munmap", "mremap", "brk", "madvise"), _MEMORY),
}
_OTHER_KERNEL = "kernel: other (timers, scheduling, interrupts, other syscalls)"
# User space, by the shared object the sample's innermost frame is in.
_PYTHON = "Python interpreter (the relay's Python code)"
_SCANNER = "SSE scanner (Cython)"
_LOOP = "event loop (uvloop, libuv)"
_NGINX = "nginx's own code"
_LIBC = "libc (copies, allocation)"
_OTHER_USER = "other user space"
ORDER = (
    _WRITE,
    _READ,
    _POLL,
    _MEMORY,
    _OTHER_KERNEL,
    _PYTHON,
    _SCANNER,
    _LOOP,
    _NGINX,
    _LIBC,
    _OTHER_USER,
)

Frame = tuple[str, str]  # (symbol, shared object), innermost first


def bucket(stack: list[Frame]) -> str:
    """What a sample's CPU time was spent on. Kernel time goes by the libc syscall
    wrapper that entered the kernel (kernel-side names vary with inlining)."""
    leaf_dso = stack[0][1]
    if leaf_dso == KERNEL:
        if any(symbol == "handle_mm_fault" for symbol, _ in stack):
            return _MEMORY
        caller = next((frame for frame in stack if frame[1] != KERNEL), None)
        if caller is None or not Path(caller[1]).name.startswith("libc.so"):
            return _OTHER_KERNEL
        name = caller[0].removeprefix("__GI_").lstrip("_").removeprefix("libc_")
        name = name.split(".")[0]  # sysmalloc_mmap.constprop.0 and the like
        return _SYSCALLS.get(name, _OTHER_KERNEL)
    name = Path(leaf_dso).name
    if name.startswith(("libpython", "python")):
        return _PYTHON
    if name.startswith("_fastsse"):
        return _SCANNER
    if "uvloop" in leaf_dso:
        return _LOOP
    if name == "nginx":
        return _NGINX
    if name.startswith("libc.so"):
        return _LIBC
    return _OTHER_USER


def parse_perf_script(text: str) -> collections.Counter[str]:
    """Samples per `bucket`, from `perf script -F ip,sym,dso` output (with call chains)."""
    counts: collections.Counter[str] = collections.Counter()
    for block in text.split("\n\n"):
        stack: list[Frame] = []
        for line in block.splitlines():
            parts = line.strip().split(" ", 1)
            if len(parts) == 2 and parts[1].endswith(")"):
                symbol, _, dso = parts[1].rpartition(" (")
                stack.append((symbol.split("+")[0], dso[:-1]))
        if stack:
            counts[bucket(stack)] += 1
    return counts


def profile_one(
    target: Running, streams: int, rate: float, seconds: float, workdir: Path
) -> dict[str, Any]:
    """One contender under load: its load result and its samples per bucket."""
    plan = PLANS["full"]
    found: dict[str, Any] = {}

    def run_load() -> None:
        found["load"] = scenarios.load(
            target, streams=streams, rate=rate, plan=plan, measure=seconds + 2
        )

    loader = threading.Thread(target=run_load)
    loader.start()
    time.sleep(plan.ramp(streams) + 1)
    data = workdir / f"{target.key}.perf"
    subprocess.run(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-o", str(data),
         "-p", ",".join(map(str, target.pids)), "--", "sleep", str(seconds)],
        check=True, capture_output=True,
    )  # fmt: skip
    loader.join()
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "ip,sym,dso"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    found["samples"] = parse_perf_script(script.stdout)
    return found


def markdown(streams: int, rate: float, profiles: dict[str, dict[str, Any]]) -> str:
    keys = list(profiles)
    meta = machine.describe()
    lines = [
        f"## Where the CPU goes per relayed event: {streams} streams x {rate:g} events/s "
        "(perf record -g)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}; {meta['cpu']} x {meta['cores']} cores, "
        f"{meta['kernel']}, Python {meta['python']}; git {meta['git']}. Same harness and "
        "pinning as `make bench`.",
        "",
        "µs per event = the category's share of the contender's perf samples x its CPU per "
        "event measured from /proc in the same run.",
        "",
        "| where | " + " | ".join(f"{LABELS[k]} µs/event | share" for k in keys) + " |",
        "|---|" + "---|---|" * len(keys),
    ]
    per_event = {k: float(p["load"].get("cpu_s_per_mevent") or 0.0) for k, p in profiles.items()}
    totals = {k: sum(p["samples"].values()) or 1 for k, p in profiles.items()}
    kernel = dict.fromkeys(keys, 0.0)
    for category in ORDER:
        if not any(p["samples"][category] for p in profiles.values()):
            continue
        cells = []
        for key, found in profiles.items():
            share = found["samples"][category] / totals[key]
            cells += [f"{share * per_event[key]:.1f}", f"{share:.0%}"]
            if category.startswith("kernel"):
                kernel[key] += share * per_event[key]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    cells = [f"**{per_event[k]:.1f}** | 100%" for k in keys]
    lines.append("| **total** | " + " | ".join(cells) + " |")
    lines += ["", "Kernel time per event: " + ", ".join(
        f"{LABELS[k]} {kernel[k]:.1f} µs" for k in keys
    ) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="events/s per stream")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--contenders", nargs="+", default=["relay-cython", "nginx", "naive"])
    args = parser.parse_args()
    if shutil.which("perf") is None:
        raise SystemExit("perf not found: `make bench-profile` installs Debian's linux-perf")
    profiles: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="sse-relay-profile-") as tmp:
        workdir = Path(tmp)
        emitter, upstream = scenarios.start_emitter(workdir)
        try:
            with scenarios.started(
                tuple(args.contenders), upstream, workdir, scenarios.STREAMING_KEEPALIVE
            ) as running:
                for key in args.contenders:
                    profiles[key] = profile_one(
                        running[key], args.streams, args.rate, args.seconds, workdir
                    )
        finally:
            emitter.stop()
    text = markdown(args.streams, args.rate, profiles)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
