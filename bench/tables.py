"""What every results table is built from: finding a run, ratios, markdown rows, and
the per-core figures the sections and the target checks share."""

from __future__ import annotations

from typing import Any

from bench.contenders import ALL

Record = dict[str, Any]
LABELS = {c.key: c.label for c in ALL}
RELAY = "relay-cython"
# Below this a ratio only divides noise by noise.
MIN_DENOMINATOR_MS = 0.1


def find(records: list[Record], key: str, streams: int, rate: float | None = None) -> Record | None:
    for record in records:
        same_load = record["streams"] == streams and rate in (None, record["rate_per_stream"])
        if record["contender"] == key and same_load:
            return record
    return None


def ratio(value: float | None, base: float | None, floor: float = 0.0) -> str:
    """`value / base`, or n/a when either is missing or at most `floor` (noise)."""
    if value is None or base is None or base <= floor or value <= floor:
        return "n/a"
    return f"x{value / base:.2f}"


def rate_text(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def added_ms(record: Record, floor: Record, pct: str) -> float:
    return float(record["latency_ms"][pct] - floor["latency_ms"][pct])


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


def per_core_text(record: Record | None) -> str:
    value = per_core(record)
    return f"{value / 1000:.1f}k" if value else "-"


def number(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


def harness_core(record: Record) -> str:
    """How busy the harness core was (whoever ran there, neighbours included)."""
    harness = record.get("harness_cpu_util")
    return f"{harness:.0%}" if harness is not None else "-"


def harness_own(record: Record) -> str:
    """The harness's own processes' share of that core: load generator + emitter."""
    loadgen, emitter = record.get("loadgen_cpu_util"), record.get("emitter_cpu_util")
    if loadgen is None:
        return "-"
    return f"{loadgen:.0%} + {emitter:.0%}" if emitter is not None else f"{loadgen:.0%}"
