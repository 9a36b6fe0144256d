"""Scenario 4: the SSE frame scanner alone, in this process, Cython against its twin."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from bench.frames import thinking_heavy_stream
from bench.procs import CONTENDER_CPUS, pinning_enabled
from relay.sse import scanner_pure as sse_scanner_pure

CHUNK_SIZES = {"small (100 B)": 100, "large (64 KiB)": 64 * 1024}
ROUNDS = 3  # best of: a VM's neighbours only ever make a round slower


def _implementations() -> dict[str, Callable[[], Any]]:
    found: dict[str, Callable[[], Any]] = {"python": sse_scanner_pure.FrameScanner}
    try:
        from relay.sse._fastsse import FrameScanner
    except ImportError:  # reported as missing, not silently skipped
        return found
    found["cython"] = FrameScanner
    return found


def _mb_per_s(make: Callable[[], Any], chunks: list[bytes], size: int, seconds: float) -> float:
    best = 0.0
    for _ in range(ROUNDS):
        fed = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or not fed:
            feed = make().feed
            for chunk in chunks:
                feed(chunk)
            fed += size
        best = max(best, fed / elapsed / 1e6)
    return best


def run(seconds: float) -> list[dict[str, Any]]:
    """MB/s per implementation and chunk size, pinned to the contender core."""
    stream = thinking_heavy_stream()
    implementations = _implementations()
    saved = os.sched_getaffinity(0)
    if pinning_enabled():
        os.sched_setaffinity(0, CONTENDER_CPUS)
    try:
        results = []
        for label, size in CHUNK_SIZES.items():
            chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
            for name in ("cython", "python"):
                make = implementations.get(name)
                results.append(
                    {
                        "scanner": name,
                        "chunks": label,
                        "chunk_bytes": size,
                        "stream_bytes": len(stream),
                        "mb_per_s": round(_mb_per_s(make, chunks, len(stream), seconds), 1)
                        if make
                        else None,
                    }
                )
        return results
    finally:
        os.sched_setaffinity(0, saved)
