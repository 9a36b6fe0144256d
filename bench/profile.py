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
from bench.perf_samples import ORDER, parse_perf_script
from bench.plan import PLANS
from bench.tables import LABELS

RESULTS = Path(__file__).resolve().parent / "results"


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
    _perf(
        "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-o", str(data),
        "-p", ",".join(map(str, target.pids)), "--", "sleep", str(seconds),
    )  # fmt: skip
    loader.join()
    found["samples"] = parse_perf_script(_perf("script", "-i", str(data), "-F", "ip,sym,dso"))
    return found


def _perf(*args: str) -> str:
    """Runs perf; a refusal (no permission to sample, as in many containers) stops the
    run with perf's own words rather than a traceback."""
    done = subprocess.run(["perf", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"perf {args[0]} failed: {done.stderr.strip()[-1000:]}")
    return done.stdout


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
