"""The issue's targets, measured by a run: met, missed, or not measured. Never asserted
in tests: `make bench` measures, the report says."""

from __future__ import annotations

from typing import Any

from bench.records import floor_spread_ms, user_kernel_us
from bench.tables import (
    LABELS,
    MIN_DENOMINATOR_MS,
    RELAY,
    Record,
    added_ms,
    find,
    per_core,
    rate_text,
    reference_step,
    table,
)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, measured by this run: met, missed, or not measured."""
    found: list[dict[str, Any]] = []

    def check(name: str, measured: str, met: bool | None) -> None:
        found.append({"target": name, "measured": measured, "met": met})

    latency = results.get("latency", [])
    if latency:
        streams, rate = max((r["streams"], r["rate_per_stream"]) for r in latency)
        relay, nginx, floor = (find(latency, k, streams, rate) for k in (RELAY, "nginx", "direct"))
        if relay and nginx and floor:
            ours, theirs = added_ms(relay, floor, "p99"), added_ms(nginx, floor, "p99")
            noise = floor_spread_ms(floor, "p99")
            measured = f"{ours:+.2f} ms vs nginx {theirs:+.2f} ms at {rate:g} events/s each"
            if floor.get("rounds"):
                measured += f" (direct's own p99 moved {noise:.2f} ms between rounds)"
            check(
                f"added p99 at {streams} streams ≤ 1.5x nginx's",
                measured,
                ours <= 1.5 * max(theirs, noise, MIN_DENOMINATOR_MS),
            )
    cost = results.get("cost", [])
    if cost:
        streams = max(r["streams"] for r in cost)
        relay_step = reference_step(cost, RELAY, streams)
        nginx_step = reference_step(cost, "nginx", streams)
        mine, their = per_core(relay_step), per_core(nginx_step)
        name = f"throughput per core ≥ {THROUGHPUT_TARGET:g}x {LABELS['nginx']}"
        if not (relay_step and mine and their):
            check(name, "not measured", None)
        else:
            measured = (
                f"{mine / 1000:.1f}k vs {their / 1000:.1f}k events/CPU-s (x{mine / their:.2f}) "
                f"at {rate_text(relay_step['offered_rate'])}/s over {streams} streams"
            )
            split = user_kernel_us(relay_step)
            if mine < THROUGHPUT_TARGET * their and split:
                # The best the relay could do if its own code took no time at all.
                ceiling = 1e6 / their / split[1]
                if ceiling < THROUGHPUT_TARGET:
                    measured += (
                        f"; out of reach: its kernel time alone ({split[1]:.1f} µs/event) "
                        f"caps it at x{ceiling:.2f}"
                    )
            check(name, measured, mine >= THROUGHPUT_TARGET * their)
        for found_target in _cpu_targets(relay_step, nginx_step, streams):
            check(*found_target)
    h2c = [r for r in results.get("h2-h3", []) if r["proto"] == "h2c"]
    for streams, rate in sorted({(r["streams"], r["rate_per_stream"]) for r in h2c}):
        if streams >= H2_TARGET_STREAMS:
            check(*_h2_target(h2c, streams, rate))
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


#: Issue #14, HTTP/1.1 to HTTP/1.1 at the most streams: CPU per event against nginx's,
#: and user CPU per event against nginx's plus a margin.
CPU_TARGET = 1.05
USER_MARGIN_US = 1.0
#: The older, looser bar, kept beside it: events per CPU-second against nginx's.
THROUGHPUT_TARGET = 0.7


def _cpu_targets(
    relay: Record | None, nginx: Record | None, streams: int
) -> list[tuple[str, str, bool | None]]:
    cpu_name = f"CPU per event at {streams} streams ≤ {CPU_TARGET:g}x nginx's"
    user_name = f"user CPU per event at {streams} streams ≤ nginx's + {USER_MARGIN_US:g} µs"
    ours, theirs = user_kernel_us(relay), user_kernel_us(nginx)
    if relay is None or nginx is None or ours is None or theirs is None:
        return [(cpu_name, "not measured", None), (user_name, "not measured", None)]
    cpu, nginx_cpu = sum(ours), sum(theirs)
    at = f"at {rate_text(relay['offered_rate'])}/s"
    return [
        (
            cpu_name,
            f"{cpu:.1f} vs {nginx_cpu:.1f} µs/event (x{cpu / nginx_cpu:.2f}) {at}",
            cpu <= CPU_TARGET * nginx_cpu,
        ),
        (
            user_name,
            f"{ours[0]:.1f} vs {theirs[0]:.1f} µs/event ({ours[0] - theirs[0]:+.1f}) {at}",
            ours[0] <= theirs[0] + USER_MARGIN_US,
        ),
    ]


#: Issue #14: HTTP/2 towards clients, judged from 100 streams up.
H2_TARGET_STREAMS = 100
H2_CPU_TARGET = 1.5


def _h2_target(records: list[Record], streams: int, rate: float) -> tuple[str, str, bool | None]:
    """sse-relay's CPU per event over nginx's `http2` listener's, one load."""
    name = f"HTTP/2 towards clients, {streams} streams: CPU per event ≤ {H2_CPU_TARGET:g}x nginx's"
    relay, nginx = find(records, RELAY, streams, rate), find(records, "nginx", streams, rate)
    ours = relay.get("cpu_s_per_mevent") if relay else None
    theirs = nginx.get("cpu_s_per_mevent") if nginx else None
    if not (relay and ours and theirs):
        return name, "not measured", None
    measured = (
        f"{ours:.1f} vs {theirs:.1f} µs/event (x{ours / theirs:.2f}) at "
        f"{rate_text(relay['offered_rate'])}/s; harness core {relay['harness_cpu_util']:.0%}, "
        f"load generator {relay.get('loadgen_cpu_util', 0):.0%} of it"
    )
    return name, measured, ours <= H2_CPU_TARGET * theirs


def targets_section(found: list[dict[str, Any]]) -> list[str]:
    verdict = {True: "met", False: "**missed**", None: "not measured"}
    rows = [[t["target"], t["measured"], verdict[t["met"]]] for t in found]
    return ["### Targets", "", *table(["target", "this run", ""], rows), ""]
