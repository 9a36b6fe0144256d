"""The results as markdown tables (printed, and saved as latest.md) and the target check.

Absolute times are noisy on shared machines, so each figure that matters is also given
as a ratio to nginx and to direct measured in the same run. Added latency is a
contender's percentile minus direct's percentile at the same load (events cannot be
paired across runs, so it is a difference of percentiles).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.contenders import ALL
from bench.records import floor_spread_ms, user_kernel_us

Record = dict[str, Any]
LABELS = {c.key: c.label for c in ALL}
PCTS = ("p50", "p99", "p99.9")
RELAY = "relay-cython"
# Below this a ratio only divides noise by noise.
_MIN_DENOMINATOR_MS = 0.1


def _find(
    records: list[Record], key: str, streams: int, rate: float | None = None
) -> Record | None:
    for record in records:
        same_load = record["streams"] == streams and rate in (None, record["rate_per_stream"])
        if record["contender"] == key and same_load:
            return record
    return None


def _ratio(value: float | None, base: float | None, floor: float = 0.0) -> str:
    """`value / base`, or n/a when either is missing or at most `floor` (noise)."""
    if value is None or base is None or base <= floor or value <= floor:
        return "n/a"
    return f"x{value / base:.2f}"


def _rate(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def added_ms(record: Record, floor: Record, pct: str) -> float:
    return float(record["latency_ms"][pct] - floor["latency_ms"][pct])


def latency_section(title: str, records: list[Record], floors: list[Record]) -> list[str]:
    """Added latency per contender and load; `floors` are direct's HTTP/1.1 runs."""
    rows = []
    loads = sorted({(r["streams"], r["rate_per_stream"]) for r in records})
    for streams, rate in loads:
        floor = _find(floors, "direct", streams, rate)
        nginx = _find(records, "nginx", streams, rate)
        for key in LABELS:
            record = _find(records, key, streams, rate)
            if record is None or floor is None:
                continue
            p = record["latency_ms"]
            if key == "direct":
                cells = [f"{p[pct]:.2f} (floor)" for pct in PCTS] + ["-", "-"]
            else:
                added = [added_ms(record, floor, pct) for pct in PCTS]
                nginx_added = added_ms(nginx, floor, "p99") if nginx else None
                cells = [f"{a:+.2f}" for a in added] + [
                    _ratio(added[1], nginx_added, _MIN_DENOMINATOR_MS),
                    _ratio(p["p99"], floor["latency_ms"]["p99"]),
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
    return [intro, "", *_table(head, rows), ""]


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
        head += [f"CPU s/M ev, {streams}x{_rate(first['rate_per_stream'])}/s", "xnginx"]
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
            row += [_number(cpu), _ratio(cpu, nginx.get("cpu_s_per_mevent") if nginx else None)]
        row.append(_per_core_text(reference_step(records, key, stream_counts[-1])))
        rows.append(row)
    intro = (
        "### Cost per event (HTTP/1.1, paced: every event its own upstream write)"
        + _rounds_note(records)
    )
    return [intro, "", *_table(head, rows), ""]


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
                _ratio(naive_us, user + kernel),
                _ratio(naive_us, kernel),
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
    rate = _rate(naive["offered_rate"]) if naive else "?"
    intro = (
        f"### Where the CPU goes, {streams} streams at {rate}/s (user/kernel split from "
        "/proc ticks; the kernel part includes loopback TCP delivery)"
    )
    return [intro, "", *_table(head, rows), ""] if rows else []


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
                    f"{'≥' if capped else ''}{_rate(value)}" if value else "none",
                    _ratio(value, nginx["offered_rate"] if nginx else None),
                    _ratio(value, direct["offered_rate"] if direct else None),
                    f"{best['latency_ms']['p50']:.2f} / {best['latency_ms']['p99']:.2f}"
                    if best
                    else "-",
                    f"{best['cpu_util']:.0%}" if best and "cpu_util" in best else "-",
                    _per_core_text(best) if key != "direct" else "-",
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
    return [intro, "", *_table(head, rows), ""] if rows else []


def reference_step(records: list[Record], key: str, streams: int) -> Record | None:
    """The contender's run at the lowest rate tried with `streams` streams."""
    steps = [r for r in records if r["contender"] == key and r["streams"] == streams]
    return min(steps, key=lambda r: r["offered_rate"]) if steps else None


def max_sustained(records: list[Record], key: str, streams: int) -> tuple[Record | None, bool]:
    """The highest step that did not collapse, and whether the ladder ran out above it."""
    steps = [r for r in records if r["contender"] == key and r["streams"] == streams]
    good = [r for r in steps if not r["collapsed"]]
    best = max(good, key=lambda r: r["offered_rate"]) if good else None
    return best, bool(good) and len(good) == len(steps)


def per_core(record: Record | None) -> float | None:
    """Events per CPU-second: what one fully busy core would relay at this cost."""
    cpu = record.get("cpu_s_per_mevent") if record else None
    return 1e6 / cpu if cpu else None


def _per_core_text(record: Record | None) -> str:
    value = per_core(record)
    return f"{value / 1000:.1f}k" if value else "-"


def _number(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


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
                _ratio(per_stream, nginx.get("rss_kib_per_stream") if nginx else None),
                f"{cpu:.1%}" if cpu is not None else "-",
                _ratio(cpu, nginx.get("cpu_util") if nginx else None),
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
        "limit here. Direct is HTTP/1.1. Keepalive lateness: arrival minus (previous event's "
        "send stamp, or previous keepalive's arrival, + 1 s)"
    )
    return [intro, "", *_table(head, rows), ""]


def scanner_section(records: list[Record]) -> list[str]:
    rows = []
    for label in dict.fromkeys(r["chunks"] for r in records):
        fast = next(
            r["mb_per_s"] for r in records if r["chunks"] == label and r["scanner"] == "cython"
        )
        slow = next(
            r["mb_per_s"] for r in records if r["chunks"] == label and r["scanner"] == "python"
        )
        rows.append(
            [label, f"{fast:.0f}" if fast else "missing", f"{slow:.0f}", _ratio(fast, slow)]
        )
    size = records[0]["stream_bytes"] / 1e6 if records else 0
    intro = f"### Scanner alone: a {size:.1f} MB thinking-heavy stream, MB/s (best of 3)"
    return [intro, "", *_table(["chunks", "Cython", "pure Python", "Cython xPython"], rows), ""]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, measured by this run: met, missed, or not measured."""
    found: list[dict[str, Any]] = []

    def check(name: str, measured: str, met: bool | None) -> None:
        found.append({"target": name, "measured": measured, "met": met})

    latency = results.get("latency", [])
    if latency:
        streams, rate = max((r["streams"], r["rate_per_stream"]) for r in latency)
        relay, nginx, floor = (_find(latency, k, streams, rate) for k in (RELAY, "nginx", "direct"))
        if relay and nginx and floor:
            ours, theirs = added_ms(relay, floor, "p99"), added_ms(nginx, floor, "p99")
            noise = floor_spread_ms(floor, "p99")
            measured = f"{ours:+.2f} ms vs nginx {theirs:+.2f} ms at {rate:g} events/s each"
            if floor.get("rounds"):
                measured += f" (direct's own p99 moved {noise:.2f} ms between rounds)"
            check(
                f"added p99 at {streams} streams ≤ 1.5x nginx's",
                measured,
                ours <= 1.5 * max(theirs, noise, _MIN_DENOMINATOR_MS),
            )
    cost = results.get("cost", [])
    if cost:
        streams = max(r["streams"] for r in cost)
        relay_step = reference_step(cost, RELAY, streams)
        for other, factor in (("nginx", 0.7), ("naive", 5.0)):
            other_step = reference_step(cost, other, streams)
            mine, their = per_core(relay_step), per_core(other_step)
            name = f"throughput per core ≥ {factor:g}x {LABELS[other]}"
            if not (relay_step and mine and their):
                check(name, "not measured", None)
                continue
            measured = (
                f"{mine / 1000:.1f}k vs {their / 1000:.1f}k events/CPU-s (x{mine / their:.2f}) "
                f"at {_rate(relay_step['offered_rate'])}/s over {streams} streams"
            )
            split = user_kernel_us(relay_step)
            if mine < factor * their and split:
                # The best the relay could do if its own code took no time at all.
                ceiling = 1e6 / their / split[1]
                if ceiling < factor:
                    measured += (
                        f"; out of reach: its kernel time alone ({split[1]:.1f} µs/event) "
                        f"caps it at x{ceiling:.2f}"
                    )
            check(name, measured, mine >= factor * their)
    relay_idle = next((r for r in results.get("idle", []) if r["contender"] == RELAY), None)
    if relay_idle:
        streams = relay_idle["streams"]
        late = relay_idle["keepalive_lateness_ms"]["p99"]
        check(
            f"{streams} idle streams: keepalives ≤ 10% late at p99",
            f"{late:.1f} ms late",
            late <= 100.0,
        )
        growth = relay_idle.get("rss_kib_per_stream")
        check(
            f"{streams} idle streams: RSS ≤ 25 KiB per stream",
            f"{growth:.1f} KiB" if growth is not None else "not measured",
            growth is not None and growth <= 25,
        )
    scanner = {(r["scanner"], r["chunk_bytes"]): r["mb_per_s"] for r in results.get("scanner", [])}
    fast, slow = scanner.get(("cython", 100)), scanner.get(("python", 100))
    if slow:
        check(
            "Cython scanner ≥ 10x pure Python, 100 B chunks",
            f"x{fast / slow:.1f}" if fast else "extension missing",
            bool(fast) and fast >= 10 * slow,
        )
    return found


def targets_section(found: list[dict[str, Any]]) -> list[str]:
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    rows = [[t["target"], t["measured"], verdict[t["met"]]] for t in found]
    return ["### Targets", "", *_table(["target", "this run", ""], rows), ""]


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
        "raw HTTP/1.1 sockets, h2c (h2) or HTTP/3 (aioquic). Both in their own processes.",
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
        lines += ["1000 h2c streams are not run: the Python h2 client saturates its core.", ""]
    if by_proto["h3"]:
        title = "HTTP/3 towards the relay (aioquic client; nginx 1.22 has no HTTP/3)"
        lines += latency_section(title, by_proto["h3"], results.get("latency", []))
    lines += extra
    lines += targets_section(results.get("targets", []))
    return "\n".join(lines)
