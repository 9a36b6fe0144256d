"""The results as markdown tables (printed, and saved as latest.md); the targets are
checked in bench/targets.py, from the same building blocks (bench/tables.py).

Absolute times are noisy on shared machines, so each figure that matters is also given
as a ratio to nginx and to direct measured in the same run. Added latency is a
contender's percentile minus direct's percentile at the same load (events cannot be
paired across runs, so it is a difference of percentiles).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.records import user_kernel_us
from bench.tables import (
    LABELS,
    MIN_DENOMINATOR_MS,
    RELAY,
    Record,
    added_ms,
    find,
    harness_core,
    harness_own,
    max_sustained,
    number,
    per_core_text,
    rate_text,
    ratio,
    reference_step,
    table,
)
from bench.targets import targets, targets_section

__all__ = ["RELAY", "Record", "markdown", "targets"]
PCTS = ("p50", "p99", "p99.9")


def latency_section(title: str, records: list[Record], floors: list[Record]) -> list[str]:
    """Added latency per contender and load; `floors` are direct's HTTP/1.1 runs."""
    rows = []
    loads = sorted({(r["streams"], r["rate_per_stream"]) for r in records})
    for streams, rate in loads:
        floor = find(floors, "direct", streams, rate)
        nginx = find(records, "nginx", streams, rate)
        for key in LABELS:
            record = find(records, key, streams, rate)
            if record is None or floor is None:
                continue
            p = record["latency_ms"]
            if key == "direct":
                cells = [f"{p[pct]:.2f} (floor)" for pct in PCTS] + ["-", "-"]
            else:
                added = [added_ms(record, floor, pct) for pct in PCTS]
                nginx_added = added_ms(nginx, floor, "p99") if nginx else None
                cells = [f"{a:+.2f}" for a in added] + [
                    ratio(added[1], nginx_added, MIN_DENOMINATOR_MS),
                    ratio(p["p99"], floor["latency_ms"]["p99"]),
                ]
            harness = record.get("harness_cpu_util")
            rows.append(
                [
                    f"{streams} x {rate:g}/s",
                    LABELS[key],
                    *cells,
                    _p99_range(record),
                    f"{record['delivered_ratio']:.1%}",
                    _cpu(record),
                    f"{harness:.0%}" if harness is not None else "-",
                ]
            )
    head = [
        "streams x events/s",
        "contender",
        "+p50 ms",
        "+p99 ms",
        "+p99.9 ms",
        "+p99 xnginx",
        "p99 xdirect",
        "p99 ms over rounds",
        "delivered",
        "CPU s/M ev",
        "harness core",
    ]
    intro = f"### {title}: latency added over direct{_rounds_note(records)}"
    return [intro, "", *table(head, rows), ""] if rows else []


def _p99_range(record: Record) -> str:
    values = [r["latency_ms"]["p99"] for r in record.get("rounds", ())]
    return f"{min(values):.2f} to {max(values):.2f}" if values else "-"


def _rounds_note(records: list[Record]) -> str:
    rounds = max((len(r.get("rounds", ())) for r in records), default=0)
    return " (where several rounds ran, their median)" if rounds > 1 else ""


def _cpu(record: Record) -> str:
    value = record.get("cpu_s_per_mevent")
    return f"{value:.1f}" if value is not None else "-"


def cost_section(records: list[Record], keys: tuple[str, ...]) -> list[str]:
    """CPU per event at each stream count's lowest rate, where every contender keeps up
    and every event is its own read and write (the basis for per-core throughput)."""
    stream_counts = sorted({r["streams"] for r in records})
    head = ["contender"]
    for streams in stream_counts:
        first = reference_step(records, "direct", streams) or records[0]
        head += [f"CPU s/M ev, {streams}x{rate_text(first['rate_per_stream'])}/s", "xnginx"]
    head.append(f"events/CPU-s, {stream_counts[-1]} streams")
    rows = []
    for key in keys:
        if key == "direct":
            continue  # no process in the middle: nothing to count
        row = [LABELS[key]]
        for streams in stream_counts:
            ours = reference_step(records, key, streams)
            nginx = reference_step(records, "nginx", streams)
            cpu = ours.get("cpu_s_per_mevent") if ours else None
            row += [number(cpu), ratio(cpu, nginx.get("cpu_s_per_mevent") if nginx else None)]
        row.append(per_core_text(reference_step(records, key, stream_counts[-1])))
        rows.append(row)
    intro = (
        "### Cost per event (HTTP/1.1, paced: every event its own upstream write)"
        + _rounds_note(records)
    )
    return [intro, "", *table(head, rows), ""]


def split_section(records: list[Record], keys: tuple[str, ...]) -> list[str]:
    """User against kernel time per event at the most streams' lowest rate: the kernel
    part (a read from upstream, a write to the client, the poll) is a floor no relay
    code can go under while every event is its own write."""
    streams = max(r["streams"] for r in records)
    naive = reference_step(records, "naive", streams)
    naive_us = naive.get("cpu_s_per_mevent") if naive else None
    rows = []
    for key in keys:
        step = reference_step(records, key, streams)
        split = user_kernel_us(step)
        if key == "direct" or step is None or split is None:
            continue
        user, kernel = split
        rows.append(
            [
                LABELS[key],
                f"{user:.1f}",
                f"{kernel:.1f}",
                f"{user + kernel:.1f}",
                ratio(naive_us, user + kernel),
                ratio(naive_us, kernel),
            ]
        )
    head = [
        "contender",
        "user µs/event",
        "kernel µs/event",
        "total",
        "throughput xnaive",
        "xnaive if user time were 0",
    ]
    rate = rate_text(naive["offered_rate"]) if naive else "?"
    intro = (
        f"### Where the CPU goes, {streams} streams at {rate}/s (user/kernel split from "
        "/proc ticks; the kernel part includes loopback TCP delivery)"
    )
    return [intro, "", *table(head, rows), ""] if rows else []


def ladder_section(records: list[Record], keys: tuple[str, ...]) -> list[str]:
    """The highest paced aggregate rate sustained before latency collapses."""
    climbed = [
        s
        for s in sorted({r["streams"] for r in records})
        if len({r["offered_rate"] for r in records if r["streams"] == s}) > 1
    ]
    rows = []
    for streams in climbed:
        nginx, _ = max_sustained(records, "nginx", streams)
        direct, _ = max_sustained(records, "direct", streams)
        for key in keys:
            best, capped = max_sustained(records, key, streams)
            value = best["offered_rate"] if best else None
            rows.append(
                [
                    str(streams),
                    LABELS[key],
                    f"{'≥' if capped else ''}{rate_text(value)}" if value else "none",
                    ratio(value, nginx["offered_rate"] if nginx else None),
                    ratio(value, direct["offered_rate"] if direct else None),
                    f"{best['latency_ms']['p50']:.2f} / {best['latency_ms']['p99']:.2f}"
                    if best
                    else "-",
                    f"{best['cpu_util']:.0%}" if best and "cpu_util" in best else "-",
                    per_core_text(best) if key != "direct" else "-",
                ]
            )
    head = [
        "streams",
        "contender",
        "max events/s",
        "xnginx",
        "xdirect",
        "p50 / p99 ms there",
        "CPU there",
        "events/CPU-s there",
    ]
    intro = (
        "### Highest paced aggregate rate sustained (collapse: p99 > 50 ms or < 95% "
        "delivered; ≥: the ladder's top, where the harness core saturates)"
    )
    return [intro, "", *table(head, rows), ""] if rows else []


def h2_cost_section(records: list[Record]) -> list[str]:
    """CPU per event with HTTP/2 towards the client, against nginx's `http2` listener,
    beside what the load generator itself spent per event."""
    rows = []
    for streams, rate in sorted({(r["streams"], r["rate_per_stream"]) for r in records}):
        nginx = find(records, "nginx", streams, rate)
        nginx_cpu = nginx.get("cpu_s_per_mevent") if nginx else None
        nginx_user = (user_kernel_us(nginx) or (None, None))[0]
        for key in LABELS:
            record = find(records, key, streams, rate)
            if record is None:
                continue
            cpu = record.get("cpu_s_per_mevent")
            user, kernel = user_kernel_us(record) or (None, None)
            rows.append(
                [
                    f"{streams} x {rate:g}/s",
                    LABELS[key],
                    number(cpu),
                    ratio(cpu, nginx_cpu),
                    number(user),
                    ratio(user, nginx_user),
                    number(kernel),
                    f"{record['latency_ms']['p50']:.2f} / {record['latency_ms']['p99']:.2f}",
                    f"{record['delivered_ratio']:.1%}",
                    number(record.get("loadgen_us_per_event")),
                    harness_own(record),
                    harness_core(record),
                ]
            )
    head = [
        "streams x events/s",
        "contender",
        "CPU µs/event",
        "xnginx",
        "user µs/event",
        "xnginx",
        "kernel µs/event",
        "p50 / p99 ms",
        "delivered",
        "load gen µs/event",
        "load gen + emitter",
        "harness core",
    ]
    intro = (
        "### HTTP/2 towards the client: CPU per event (h2c, 100 streams per connection; "
        "the load generator parses frames itself, bench/client_h2c.py)"
    )
    return [intro, "", *table(head, rows), ""]


def idle_section(records: list[Record]) -> list[str]:
    nginx = next((r for r in records if r["contender"] == "nginx"), None)
    rows = []
    for r in records:
        late = r["keepalive_lateness_ms"]
        per_stream = r.get("rss_kib_per_stream")
        cpu = r.get("cpu_util")
        rows.append(
            [
                LABELS[r["contender"]],
                r["proto"],
                str(r["streams"]),
                f"{late['p50']:.2f} / {late['p99']:.2f}" if late["count"] else "-",
                f"{r['latency_ms']['p99']:.2f}",
                f"{per_stream:.1f}" if per_stream is not None else "-",
                ratio(per_stream, nginx.get("rss_kib_per_stream") if nginx else None),
                f"{cpu:.1%}" if cpu is not None else "-",
                ratio(cpu, nginx.get("cpu_util") if nginx else None),
                f"{late['count'] / r['measure_s']:.0f}",
            ]
        )
    head = [
        "contender",
        "client",
        "streams",
        "keepalive late p50 / p99 ms",
        "event p99 ms",
        "RSS KiB/stream",
        "xnginx",
        "CPU (of a core)",
        "xnginx",
        "keepalives/s",
    ]
    intro = (
        "### Idle scale: streams silent 95% of the time (1 s of 10 events/s in every 20 s), "
        "keepalive interval 1 s. Relays and nginx are reached over h2c, 1000 streams per "
        "connection: 10,000 HTTP/1.1 streams would need 20,000 fds in one process, the hard "
        "limit here. Direct is HTTP/1.1. Keepalive lateness: arrival minus (the response "
        "head's arrival, previous event's send stamp, or previous keepalive's arrival, + 1 s)"
    )
    return [intro, "", *table(head, rows), ""]


def scanner_section(records: list[Record]) -> list[str]:
    rows = []
    for label in dict.fromkeys(r["chunks"] for r in records):
        fast = next(
            r["mb_per_s"] for r in records if r["chunks"] == label and r["scanner"] == "cython"
        )
        slow = next(
            r["mb_per_s"] for r in records if r["chunks"] == label and r["scanner"] == "python"
        )
        rows.append([label, f"{fast:.0f}" if fast else "missing", f"{slow:.0f}", ratio(fast, slow)])
    size = records[0]["stream_bytes"] / 1e6 if records else 0
    intro = f"### Scanner alone: a {size:.1f} MB thinking-heavy stream, MB/s (best of 3)"
    return [intro, "", *table(["chunks", "Cython", "pure Python", "Cython xPython"], rows), ""]


def header(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    versions = meta["versions"]
    return [
        f"## sse-relay benchmark ({meta['plan']}, {meta['date']}, {meta['duration_s']:.0f} s)",
        "",
        f"{meta['cpu']} x {meta['cores']} cores, {meta['kernel']}, Python {meta['python']}; "
        f"{versions['sse-relay']}, nginx {versions['nginx']}, {versions['aiohttp']}; "
        f"git {meta['git']}.",
        f"Pinning: {meta['pinning']}",
        "Upstream: bench/emitter.py, pre-rendered Messages-API frames, each event its own "
        "write, stamped with its send time (one monotonic clock). Client: bench/loadgen.py, "
        "raw HTTP/1.1 sockets, h2c (its own framing, bench/client_h2c.py) or HTTP/3 (aioquic). "
        "Both in their own processes. The emitter also serves TLS, HTTP/2 or HTTP/1.1 by ALPN.",
        "Added latency: a contender's percentile minus direct's at the same load (negative: "
        "within the VM's scheduling jitter). CPU: the contender's own scheduler runtime in "
        "the window; events/CPU-s is throughput per core.",
        "",
    ]


def markdown(results: dict[str, Any], extra: Sequence[str] = ()) -> str:
    """The tables; `extra` (more sections, bench/resume_report.py) goes before the targets."""
    keys = tuple(results["meta"]["contenders"])
    lines = header(results)
    if results.get("latency"):
        lines += latency_section("Added latency (HTTP/1.1)", results["latency"], results["latency"])
    if results.get("cost"):
        lines += cost_section(results["cost"], keys)
        lines += split_section(results["cost"], keys)
        lines += ladder_section(results["cost"], keys)
    if results.get("idle"):
        lines += idle_section(results["idle"])
    if results.get("scanner"):
        lines += scanner_section(results["scanner"])
    by_proto = {p: [r for r in results.get("h2-h3", []) if r["proto"] == p] for p in ("h2c", "h3")}
    if by_proto["h2c"]:
        title = "HTTP/2 (h2c, 100 streams per connection) towards the contender"
        lines += latency_section(title, by_proto["h2c"], results.get("latency", []))
        lines += h2_cost_section(by_proto["h2c"])
    if by_proto["h3"]:
        title = "HTTP/3 towards the relay (aioquic client; nginx 1.22 has no HTTP/3)"
        lines += latency_section(title, by_proto["h3"], results.get("latency", []))
    lines += extra
    lines += targets_section(results.get("targets", []))
    return "\n".join(lines)
