"""Percentiles and the per-run summary the load generator reports."""

from __future__ import annotations

import math
from collections.abc import Sequence

#: The percentiles every latency figure is reported at.
PERCENTILES = {"p50": 50.0, "p99": 99.0, "p99.9": 99.9}


def percentile(ordered: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile of an ascending sequence (0 when it is empty)."""
    if not ordered:
        return 0
    # Rounded first: 99.9% of 1000 must be rank 999, not 1000 by a float's last bit.
    rank = math.ceil(round(pct / 100.0 * len(ordered), 6))
    return ordered[min(len(ordered), max(1, rank)) - 1]


def summarize_ns(samples: Sequence[int]) -> dict[str, float]:
    """Count, percentiles and max of nanosecond samples, in milliseconds."""
    ordered = sorted(samples)
    summary: dict[str, float] = {"count": len(ordered)}
    for name, pct in PERCENTILES.items():
        summary[name] = round(percentile(ordered, pct) / 1e6, 4)
    summary["max"] = round(ordered[-1] / 1e6, 4) if ordered else 0.0
    return summary
