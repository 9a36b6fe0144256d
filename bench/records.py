"""Load-generator results ("records"): merging repeated rounds, and figures derived from
them. No process or network code here, so the tests can use it without the bench extra."""

from __future__ import annotations

import statistics
from typing import Any

Record = dict[str, Any]
#: Figures merged as the median of the rounds': the contender's CPU, and the harness's.
_MEDIANS = (
    *("cpu_s_per_mevent", "cpu_util", "kernel_share", "harness_cpu_util"),
    *("loadgen_cpu_util", "loadgen_us_per_event", "emitter_cpu_util", "emitter_us_per_event"),
)


def merge_rounds(runs: list[Record]) -> Record:
    """One record for repeated runs: each percentile and the CPU figures are the median
    of the rounds', delivery the worst; the rounds themselves stay in `rounds`."""
    if len(runs) == 1:
        return runs[0]
    merged = dict(runs[0])
    merged["latency_ms"] = {
        pct: statistics.median(r["latency_ms"][pct] for r in runs) for pct in runs[0]["latency_ms"]
    } | {"count": sum(r["latency_ms"]["count"] for r in runs)}
    for key in _MEDIANS:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            merged[key] = statistics.median(values)
    merged["delivered_ratio"] = min(r["delivered_ratio"] for r in runs)
    merged["error_count"] = sum(r["error_count"] for r in runs)
    merged["errors"] = [e for r in runs for e in r["errors"]]
    merged["rounds"] = runs
    return merged


def floor_spread_ms(floor: Record, pct: str) -> float:
    """How much direct's own percentile moved between rounds: added latencies smaller
    than this cannot be told from zero."""
    values = [r["latency_ms"][pct] for r in floor.get("rounds", ())]
    return float(max(values) - min(values)) if values else 0.0


def user_kernel_us(record: Record | None) -> tuple[float, float] | None:
    """(user, kernel) CPU microseconds per event."""
    if record is None or record.get("kernel_share") is None or not record.get("cpu_s_per_mevent"):
        return None
    total = float(record["cpu_s_per_mevent"])  # s per million events = µs per event
    kernel = total * record["kernel_share"]
    return total - kernel, kernel
