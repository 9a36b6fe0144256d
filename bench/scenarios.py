"""Scenarios 1, 2, 3 and 5: which loads run against which contenders, in what order.

Contenders take turns at each load step (not one contender start to finish), so a noisy
minute on a shared machine hurts all of them alike. Every run is one load-generator
process; its JSON result goes into the record as is, tagged with what was run.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import contenders
from bench.certs import run_certificates
from bench.plan import COLLAPSE_DELIVERED, COLLAPSE_P99_MS, Plan
from bench.proc_stats import rss_kib
from bench.procs import HARNESS_CPUS, ServerProcess, run_json_line
from bench.records import merge_rounds

Record = dict[str, Any]
Progress = Callable[[str], None]
_EMITTER_READY = re.compile(rb"listening on http://")
_EMITTER_TLS = re.compile(rb"tls=(https://\S+)")
# The running emitter: its CPU is sampled with each run's (harness cost, per event).
_EMITTER_PIDS: list[int] = []
# The relay's default keepalive interval: no keepalive fires while events flow.
STREAMING_KEEPALIVE = 15.0
IDLE_KEEPALIVE = 1.0


def collapsed(result: Record) -> bool:
    """Latency collapsed, events went missing, or streams failed."""
    return bool(
        result["latency_ms"]["p99"] > COLLAPSE_P99_MS
        or result["delivered_ratio"] < COLLAPSE_DELIVERED
        or result["error_count"]
    )


def start_emitter(workdir: Path) -> tuple[ServerProcess, str]:
    """The emitter, cleartext (the URL returned) and TLS (`tls_upstream`), pinned."""
    certs = run_certificates(workdir)
    emitter = ServerProcess(
        [
            *(sys.executable, "-m", "bench.emitter"),
            *("--tls-cert", str(certs.cert), "--tls-key", str(certs.key)),
        ],
        workdir / "emitter.log",
        cpus=HARNESS_CPUS,
        ready=_EMITTER_READY,
    )
    _EMITTER_PIDS[:] = [emitter.pid]
    return emitter, emitter.ready_line.decode().split()[-1]


def tls_upstream(emitter: ServerProcess) -> str:
    """The emitter's TLS URL (HTTP/2 or HTTP/1.1 by ALPN)."""
    match = _EMITTER_TLS.search(emitter.ready_line)
    assert match is not None, emitter.ready_line
    return match.group(1).decode()


@contextmanager
def started(
    keys: tuple[str, ...], upstream: str, workdir: Path, keepalive: float
) -> Iterator[dict[str, contenders.Running]]:
    by_key = {c.key: c for c in contenders.ALL}
    running: dict[str, contenders.Running] = {}
    try:
        for key in keys:
            running[key] = by_key[key].start(upstream, workdir, keepalive)
        yield running
    finally:
        for each in running.values():
            each.stop()


def load(
    target: contenders.Running,
    *,
    streams: int,
    rate: float,
    plan: Plan,
    measure: float,
    proto: str = "h1",
    keepalive: float = STREAMING_KEEPALIVE,
    idle: bool = False,
    ramp: float | None = None,
) -> Record:
    """One load-generator run against `target`; returns its result. `ramp` (default:
    the plan's for `streams`) is how long streams take to open before the window."""
    url = {"h1": target.url, "h2c": target.h2c_url, "h3": target.h3_url}[proto]
    assert url is not None
    ramp = plan.ramp(streams) if ramp is None else ramp
    args = [
        sys.executable, "-m", "bench.loadgen",
        "--url", url, "--proto", proto,
        "--streams", str(streams), "--rate", str(rate),
        "--ramp", str(ramp), "--measure", str(measure), "--grace", str(plan.grace),
        "--keepalive-interval", str(keepalive),
        "--streams-per-connection", str(1000 if idle else 100),
        "--watch", *map(str, target.pids),
    ]  # fmt: skip
    if idle:
        args += ["--cycle", str(plan.idle_cycle), "--duty", str(plan.idle_duty)]
    if proto == "h3":
        args += ["--ca-file", target.ca_file]
    for header in target.request_headers:
        args += ["--header", header]
    if target.side_pids:
        args += ["--side", *map(str, target.side_pids)]
    if _EMITTER_PIDS:
        args += ["--harness", *map(str, _EMITTER_PIDS)]
    timeout = ramp + measure + plan.grace + 60
    result: Record = json.loads(run_json_line(args, cpus=HARNESS_CPUS, timeout=timeout))
    result.pop("spec")
    return {
        "contender": target.key,
        "proto": proto,
        "streams": streams,
        "rate_per_stream": rate,
        "measure_s": measure,
        **result,
    }


def latency(plan: Plan, running: dict[str, contenders.Running], say: Progress) -> list[Record]:
    """Scenario 2: every contender at each of the plan's (streams, rate) loads, in rounds
    (contenders take turns within each) merged into one record per contender and load."""
    records = []
    for streams, rate, rounds in plan.latency_loads:
        runs: dict[str, list[Record]] = {key: [] for key in plan.contenders}
        for _ in range(rounds):
            for key in plan.contenders:
                record = load(
                    running[key],
                    streams=streams,
                    rate=rate,
                    plan=plan,
                    measure=plan.latency_window(streams, rate),
                )
                say(_line("latency", record))
                runs[key].append(record)
        records += [merge_rounds(each) for each in runs.values()]
    return records


def cost_ladder(plan: Plan, running: dict[str, contenders.Running], say: Progress) -> list[Record]:
    """Scenario 1: climb the paced aggregate rate until each contender collapses.

    The lowest step is the CPU-per-event reference (throughput per core), so with many
    streams it runs in rounds like scenario 2 and the median counts."""
    records = []
    for streams, rates in plan.ladder.items():
        climbing = list(plan.contenders)
        for step, aggregate in enumerate(rates):
            runs: dict[str, list[Record]] = {key: [] for key in climbing}
            for _ in range(plan.reference_rounds if step == 0 and streams > 1 else 1):
                for key in climbing:
                    runs[key].append(_ladder_step(plan, running[key], streams, aggregate, say))
            for key, each in runs.items():
                record = merge_rounds(each)
                record["collapsed"] = collapsed(record)
                records.append(record)
                if record["collapsed"]:
                    climbing.remove(key)
    return records


def _ladder_step(
    plan: Plan, target: contenders.Running, streams: int, aggregate: int, say: Progress
) -> Record:
    """One step; a collapse is run again, and counts only if it happens twice (one
    garbage collection or a neighbour's burst on a shared machine is not a collapse)."""
    for attempt in (1, 2):
        record = load(
            target,
            streams=streams,
            rate=aggregate / streams,
            plan=plan,
            measure=plan.ladder_measure,
        )
        record["collapsed"] = collapsed(record)
        record["attempts"] = attempt
        say(_line("cost", record))
        if not record["collapsed"]:
            break
    return record


def other_protocols(
    plan: Plan, running: dict[str, contenders.Running], say: Progress
) -> list[Record]:
    """Scenario 5: scenario 2's loads over h2c and over HTTP/3, where contenders speak it;
    h2c loads with several rounds take turns within each, as scenario 2's do.

    (The CPU per event of these runs is scenario 1's figure for the protocol.)
    """
    records = []
    h3_loads = tuple((streams, plan.latency_rate, 1) for streams in plan.h3_streams)
    for proto, loads in (("h2c", plan.h2_loads), ("h3", h3_loads)):
        for streams, rate, rounds in loads:
            keys = [
                key
                for key in plan.contenders
                if (running[key].h2c_url if proto == "h2c" else running[key].h3_url)
            ]
            runs: dict[str, list[Record]] = {key: [] for key in keys}
            for _ in range(rounds):
                for key in keys:
                    record = load(
                        running[key],
                        streams=streams,
                        rate=rate,
                        plan=plan,
                        measure=plan.latency_window(streams, rate),
                        proto=proto,
                    )
                    say(_line(proto, record))
                    runs[key].append(record)
            records += [merge_rounds(each) for each in runs.values()]
    return records


def idle(plan: Plan, upstream: str, workdir: Path, say: Progress) -> list[Record]:
    """Scenario 3: many mostly-silent streams, each contender fresh (RSS is its own).

    Clients reach the relays over h2c: 10,000 HTTP/1.1 streams would need 20,000 fds
    in one process, the machine's hard limit. `direct` (HTTP/1.1, no middle process)
    is the floor for event latency only.
    """
    records = []
    for key in plan.idle_contenders:
        with started((key,), upstream, workdir, IDLE_KEEPALIVE) as running:
            target = running[key]
            proto = "h2c" if target.h2c_url else "h1"
            # Warm up (imports, first allocations, the upstream pool), then the baseline.
            load(target, streams=100, rate=10, plan=plan, measure=0.5, proto=proto)
            time.sleep(0.5)
            baseline = rss_kib(target.pids) if target.pids else 0
            record = load(
                target,
                streams=plan.idle_streams,
                rate=plan.idle_rate,
                plan=plan,
                measure=plan.idle_measure,
                proto=proto,
                keepalive=IDLE_KEEPALIVE,
                idle=True,
            )
        record["rss_baseline_kib"] = baseline
        if target.pids:
            growth = record["rss_kib"] - baseline
            record["rss_kib_per_stream"] = round(growth / plan.idle_streams, 2)
        say(_line("idle", record))
        records.append(record)
    return records


def _line(scenario: str, r: Record) -> str:
    cpu = f" cpu {r['cpu_util']:.0%}" if "cpu_util" in r else ""
    cpu += f" harness {r['harness_cpu_util']:.0%}" if "harness_cpu_util" in r else ""
    flag = "  COLLAPSED" if r.get("collapsed") else ""
    flag += " (2nd try)" if r.get("attempts") == 2 else ""
    errors = f" errors {r['error_count']}: {r['errors'][:1]}" if r["error_count"] else ""
    return (
        f"  {scenario:8} {r['contender']:13} {r['proto']:3} {r['streams']:>6} streams "
        f"x {r['rate_per_stream']:g}/s: delivered {r['delivered_ratio']:.1%}, "
        f"p50 {r['latency_ms']['p50']:.2f} p99 {r['latency_ms']['p99']:.2f} ms{cpu}{errors}{flag}"
    )
