"""The benchmark's own parts, fast: percentile math, stamp timing, the emitter's SSE.

No timings are asserted; `make bench` measures, this only checks the measuring tools.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import h11
import pytest
from anthropic._streaming import SSEDecoder

from bench import frames
from bench.collector import RunTally, StreamTally
from bench.stats import percentile, summarize_ns
from tests.relayproc import REPO


def test_nearest_rank_percentiles() -> None:
    ordered = list(range(1, 1001))
    assert percentile(ordered, 50) == 500
    assert percentile(ordered, 99) == 990
    assert percentile(ordered, 99.9) == 999
    assert percentile(ordered, 100) == 1000
    assert percentile([7], 99.9) == 7
    assert percentile([], 50) == 0
    summary = summarize_ns([3_000_000, 1_000_000, 2_000_000])
    assert summary == {"count": 3, "p50": 2.0, "p99": 3.0, "p99.9": 3.0, "max": 3.0}


def test_stamps_and_keepalives_are_found_across_any_chunking() -> None:
    delta = frames.thinking_deltas(count=1)[0]
    body = delta.render(1_000) + b": keepalive\n\n" + delta.render(2_000) + b": keepalive\n\n"
    for size in (1, 3, 7, 50, len(body)):
        run = RunTally(start_ns=0, end_ns=10**12, keepalive_interval_ns=100)
        stream = StreamTally(run, opened_ns=0)
        for i in range(0, len(body), size):
            stream.feed(body[i : i + size], now_ns=5_000)
        assert sorted(run.latencies) == [3_000, 4_000]
        # Each keepalive is timed from the event before it; both arrive at 5000.
        assert sorted(run.keepalive_lateness) == [2_900, 3_900]


@pytest.fixture(scope="module")
def emitter_port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.emitter"], stdout=subprocess.PIPE, cwd=REPO
    )
    assert proc.stdout is not None
    match = re.search(rb":(\d+)$", proc.stdout.readline().strip())
    assert match, "emitter printed no ready line"
    yield int(match.group(1))
    proc.terminate()
    proc.wait(10)


def _fetch(port: int, query: str) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    body = b'{"stream": true}'
    request = h11.Request(
        method="POST",
        target=f"/v1/messages?{query}",
        headers=[("host", "bench"), ("content-length", str(len(body)))],
    )
    data = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(data)


def test_emitter_speaks_the_messages_stream(emitter_port: int) -> None:
    until = time.monotonic_ns() + 300_000_000
    body = _fetch(emitter_port, f"rate=100&until={until}")
    events = list(SSEDecoder().iter_bytes(iter([body])))
    names = [e.event for e in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = events[2:-3]
    assert deltas and {e.event for e in deltas} == {"content_block_delta"}
    for event in events:
        assert json.loads(event.data)["type"] == event.event
    stamps = [json.loads(e.data)["t"] for e in deltas]
    assert stamps == sorted(stamps) and stamps[-1] < until
