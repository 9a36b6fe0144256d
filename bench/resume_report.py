"""Scenario 6's tables (the cost of resumable streams) and its target, from
`results["resume"]` as bench/resume_cost.py records it. Ratios are to the plain relay
of the same run: the three were measured in turn, round by round."""

from __future__ import annotations

from typing import Any

from bench.contenders import LABELS_RESUME
from bench.records import user_kernel_us
from bench.tables import Record, harness_core, number, rate_text, ratio, table

#: Issue #13: resumability, journal in memory, costs at most this much CPU per event.
CPU_TARGET = 1.10


def _by_journal(records: list[Record]) -> dict[str, Record]:
    return {r["journal"]: r for r in records}


def _cpu_range(record: Record) -> str:
    values = [r["cpu_s_per_mevent"] for r in record.get("rounds", ()) if r.get("cpu_s_per_mevent")]
    return f"{min(values):.1f} to {max(values):.1f}" if len(values) > 1 else "-"


def per_round_ratios(cpu: list[Record], journal: str) -> list[float]:
    """Each round's CPU per event over the plain relay's in the same round: the two ran
    seconds apart, so a neighbour's load on a shared machine mostly cancels out."""
    by = _by_journal(cpu)
    mine, plain = by[journal].get("rounds", [by[journal]]), by["off"].get("rounds", [by["off"]])
    return [
        a["cpu_s_per_mevent"] / b["cpu_s_per_mevent"]
        for a, b in zip(mine, plain, strict=False)
        if a.get("cpu_s_per_mevent") and b.get("cpu_s_per_mevent")
    ]


def cpu_section(cpu: list[Record]) -> list[str]:
    by = _by_journal(cpu)
    plain = by.get("off")
    plain_us = plain.get("cpu_s_per_mevent") if plain else None
    plain_user = (user_kernel_us(plain) or (None, None))[0] if plain else None
    rows = []
    for journal, record in by.items():
        ours = record.get("cpu_s_per_mevent")
        split = user_kernel_us(record)
        redis_us = record.get("side_cpu_s_per_mevent")
        both = ours + redis_us if ours is not None and redis_us is not None else None
        rows.append(
            [
                LABELS_RESUME[journal],
                f"{record['resumable_streams']} of {record['streams']}",
                number(ours),
                ratio(ours, plain_us),
                number(split[0] if split else None),
                ratio(split[0] if split else None, plain_user),
                number(split[1] if split else None),
                number(redis_us),
                number(both),
                ratio(both, plain_us),
                _cpu_range(record),
                f"{record['latency_ms']['p99']:.2f}",
                f"{record['delivered_ratio']:.1%}",
                harness_core(record),
            ]
        )
    head = [
        "contender",
        "resumable streams per run",
        "relay CPU µs/event",
        "xplain",
        "user µs/event",
        "xplain",
        "kernel µs/event",
        "Redis's own CPU µs/event",
        "relay + Redis µs/event",
        "xplain",
        "relay µs/event over rounds",
        "p99 ms",
        "delivered",
        "harness core",
    ]
    first = next(iter(by.values()))
    rounds = len(first.get("rounds", ())) or 1
    intro = (
        f"### Cost of resumable streams: CPU, {first['streams']} streams x "
        f"{first['rate_per_stream']:g} events/s ({rate_text(first['offered_rate'])}/s, HTTP/1.1), "
        f"median of {rounds} round{'s' if rounds > 1 else ''} (the three in turn). Journals "
        f"kept {first['retain_s']:g} s after their stream; Redis runs on the harness core"
    )
    return [intro, "", *table(head, rows), ""]


def memory_section(memory: list[Record]) -> list[str]:
    by = _by_journal(memory)
    plain = by.get("off")
    plain_rss = plain.get("rss_kib_per_stream") if plain else None
    rows = []
    for journal, record in by.items():
        rss = record["rss_kib_per_stream"]
        redis_rss = record.get("side_rss_kib_per_stream")
        rows.append(
            [
                LABELS_RESUME[journal],
                f"{record['resumable_streams']} of {record['streams']}",
                f"{record['received_kib_per_stream']:.1f}",
                f"{record['journal_kib_per_stream']:.1f}",
                f"{rss:.1f}",
                ratio(rss, plain_rss),
                f"{rss - plain_rss:+.1f}" if plain_rss is not None and journal != "off" else "-",
                number(redis_rss),
                number(record.get("redis_used_kib_per_stream")),
                f"{record['latency_ms']['p99']:.2f}",
                f"{record['delivered_ratio']:.1%}",
                harness_core(record),
            ]
        )
    head = [
        "contender",
        "resumable streams",
        "received KiB/stream",
        "journal KiB/stream",
        "relay RSS KiB/stream",
        "xplain",
        "RSS over plain KiB/stream",
        "Redis RSS KiB/stream",
        "Redis used_memory KiB/stream",
        "p99 ms",
        "delivered",
        "harness core",
    ]
    first = next(iter(by.values()))
    intro = (
        f"### Cost of resumable streams: memory, {first['streams']} concurrent streams of "
        f"{first['rate_per_stream']:g} events/s for {first['measure_s']:g} s, each contender "
        "fresh (RSS growth over its warmed-up baseline at the window's end, per stream; "
        "journal: the relay's sse_relay_journal_bytes, per stream)"
    )
    return [intro, "", *table(head, rows), ""]


def section(results: dict[str, Any]) -> list[str]:
    resume = results.get("resume") or {}
    lines: list[str] = []
    if resume.get("cpu"):
        lines += cpu_section(resume["cpu"])
    if resume.get("memory"):
        lines += memory_section(resume["memory"])
    return lines


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #13: resumable (journal in memory) costs ≤ 1.10x the plain relay's CPU per
    event. Judged on the medians; the per-round ratios are shown as the noise."""
    cpu = (results.get("resume") or {}).get("cpu")
    if not cpu:
        return []
    by = _by_journal(cpu)
    name = f"resumable streams, journal in memory: CPU per event ≤ {CPU_TARGET:.2f}x plain relay"
    ours, plain = (by[k].get("cpu_s_per_mevent") if k in by else None for k in ("memory", "off"))
    if not ours or not plain:
        return [{"target": name, "measured": "not measured", "met": None}]
    ratio = ours / plain
    measured = (
        f"{ours:.1f} vs {plain:.1f} µs/event (x{ratio:.2f}) at "
        f"{rate_text(by['off']['offered_rate'])}/s over {by['off']['streams']} streams"
    )
    rounds = per_round_ratios(cpu, "memory")
    if len(rounds) > 1:
        measured += f" (per round x{min(rounds):.2f} to x{max(rounds):.2f})"
    redis = by.get("redis")
    if redis and redis.get("cpu_s_per_mevent"):
        measured += f"; with Redis x{redis['cpu_s_per_mevent'] / plain:.2f} in the relay"
        if redis.get("side_cpu_s_per_mevent") is not None:
            measured += f" + {redis['side_cpu_s_per_mevent']:.1f} µs/event in redis-server"
    return [{"target": name, "measured": measured, "met": ratio <= CPU_TARGET}]
