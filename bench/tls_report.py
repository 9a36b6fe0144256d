"""Scenario 7's table (a TLS upstream, bench/tls_cost.py) and its target, from
`results["tls"]`. Ratios are to nginx's TLS proxy in the same rounds; added latency is
over `direct` (cleartext, no middle process) in the same rounds."""

from __future__ import annotations

from typing import Any

from bench.records import user_kernel_us
from bench.tables import (
    LABELS,
    Record,
    added_ms,
    find,
    harness_core,
    harness_own,
    rate_text,
    ratio,
    table,
)

#: Issue #14: the default path (HTTP/1.1 upstream) costs at most this much CPU per event.
CPU_TARGET = 1.2
AUTO, DEFAULT, NGINX = "relay-tls-auto", "relay-tls-h1", "nginx-tls"
_KEYS = ("direct", AUTO, DEFAULT, NGINX)


def _us(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def _cpu_range(record: Record) -> str:
    values = [r["cpu_s_per_mevent"] for r in record.get("rounds", ()) if r.get("cpu_s_per_mevent")]
    return f"{min(values):.1f} to {max(values):.1f}" if len(values) > 1 else "-"


def per_round_ratios(records: list[Record], key: str, other: str, streams: int) -> list[float]:
    """Each round's CPU per event over `other`'s in the same round (seconds apart, so a
    neighbour's load on a shared machine mostly cancels out)."""
    mine, theirs = find(records, key, streams), find(records, other, streams)
    if mine is None or theirs is None:
        return []
    return [
        a["cpu_s_per_mevent"] / b["cpu_s_per_mevent"]
        for a, b in zip(mine.get("rounds", [mine]), theirs.get("rounds", [theirs]), strict=False)
        if a.get("cpu_s_per_mevent") and b.get("cpu_s_per_mevent")
    ]


def _row(record: Record, floor: Record | None, nginx: Record | None) -> list[str]:
    key = record["contender"]
    cpu = record.get("cpu_s_per_mevent")
    split = user_kernel_us(record)
    nginx_split = user_kernel_us(nginx)
    if key == "direct" or floor is None:
        added = [f"{record['latency_ms'][p]:.2f} (floor)" for p in ("p50", "p99")] + ["-"]
    else:
        ours = added_ms(record, floor, "p99")
        theirs = added_ms(nginx, floor, "p99") if nginx else None
        added = [
            f"{added_ms(record, floor, 'p50'):+.2f}",
            f"{ours:+.2f}",
            ratio(ours, theirs, 0.1),
        ]
    return [
        f"{record['streams']} x {record['rate_per_stream']:g}/s",
        LABELS[key],
        str(record.get("upstream_tls_connections", "-")) if key != "direct" else "-",
        _us(cpu),
        ratio(cpu, nginx.get("cpu_s_per_mevent") if nginx else None),
        _us(split[0] if split else None),
        ratio(split[0] if split else None, nginx_split[0] if nginx_split else None),
        _us(split[1] if split else None),
        _cpu_range(record),
        *added,
        f"{record['delivered_ratio']:.1%}",
        harness_own(record),
        harness_core(record),
    ]


def section(results: dict[str, Any]) -> list[str]:
    records: list[Record] = results.get("tls") or []
    if not records:
        return []
    rows = []
    for streams, rate in sorted({(r["streams"], r["rate_per_stream"]) for r in records}):
        floor = find(records, "direct", streams, rate)
        nginx = find(records, NGINX, streams, rate)
        for key in _KEYS:
            record = find(records, key, streams, rate)
            if record is not None:
                rows.append(_row(record, floor, nginx))
    head = [
        "streams x events/s",
        "contender",
        "TLS connections upstream after",
        "CPU µs/event",
        "xnginx",
        "user µs/event",
        "xnginx",
        "kernel µs/event",
        "CPU µs/event over rounds",
        "+p50 ms",
        "+p99 ms",
        "+p99 xnginx",
        "delivered",
        "load gen + emitter",
        "harness core",
    ]
    rounds = max(len(r.get("rounds", ())) for r in records) or 1
    intro = (
        "### TLS upstream (the emitter's TLS listener: HTTP/2 or HTTP/1.1 by ALPN, a CA made "
        "for the run, verified); clients over cleartext HTTP/1.1; added latency over direct "
        f"to the cleartext emitter; median of {rounds} round{'s' if rounds > 1 else ''}, "
        "the four in turn"
    )
    return [intro, "", *table(head, rows), ""]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #14: with a TLS upstream, the default path (HTTP/1.1 upstream) costs ≤ 1.2x
    nginx's CPU per event, judged at the most streams; the per-round ratios are shown
    as the noise, and `auto` (h2 upstream) beside it."""
    records: list[Record] = results.get("tls") or []
    if not records:
        return []
    name = (
        "TLS upstream, the default path (HTTP/1.1): "
        f"CPU per event ≤ {CPU_TARGET:g}x nginx's TLS proxy"
    )
    streams = max(r["streams"] for r in records)
    default, nginx = find(records, DEFAULT, streams), find(records, NGINX, streams)
    ours = default.get("cpu_s_per_mevent") if default else None
    theirs = nginx.get("cpu_s_per_mevent") if nginx else None
    if not (default and ours and theirs):
        return [{"target": name, "measured": "not measured", "met": None}]
    measured = (
        f"{ours:.1f} vs {theirs:.1f} µs/event (x{ours / theirs:.2f}) at "
        f"{rate_text(default['offered_rate'])}/s over {streams} streams"
    )
    rounds = per_round_ratios(records, DEFAULT, NGINX, streams)
    if len(rounds) > 1:
        measured += f" (per round x{min(rounds):.2f} to x{max(rounds):.2f})"
    auto = find(records, AUTO, streams)
    if auto and auto.get("cpu_s_per_mevent"):
        measured += f"; auto (h2 upstream) x{auto['cpu_s_per_mevent'] / theirs:.2f}"
    return [{"target": name, "measured": measured, "met": ours <= CPU_TARGET * theirs}]
