"""The load generator: opens N paced streams, times every event, prints one JSON line.

`python -m bench.loadgen --url URL --streams N --rate R ...` runs in its own process.
Timeline: streams open during `--ramp`; the measurement window is the next `--measure`
seconds (events whose send stamp falls in it count; contender CPU is sampled at its
edges); every stream ends at the window's end; stragglers get `--grace` to arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import uvloop

from bench.client_h2c import LeanH2cConnection
from bench.client_h3 import H3ClientConnection, h3_connect
from bench.clients import H1Stream, H2cConnection
from bench.collector import RunTally, StreamTally
from bench.sampler import Sampler
from bench.stats import summarize_ns

BODY = (
    b'{"model":"claude-bench","max_tokens":1024,"stream":true,'
    b'"messages":[{"role":"user","content":"Think about latency."}]}'
)
CONNECT_BATCH = 250  # concurrent connects: stays inside every listener's backlog
OPEN_BATCH = 50  # multiplexed streams opened together
ERRORS_KEPT = 5


@dataclass(frozen=True)
class LoadSpec:
    """One run's load; `watch` are the contender's PIDs (CPU and RSS are theirs)."""

    url: str
    streams: int
    rate: float  # events per second per stream while active
    ramp: float
    measure: float
    grace: float
    proto: str = "h1"  # or "h2c", "h3"
    streams_per_connection: int = 100  # h2c and h3
    h2_client: str = "lean"  # h2c: bench/client_h2c.py, or "h2" (the h2 package's)
    ca_file: str = ""  # h3: the CA that signed the relay's certificate
    cycle: float = 0.0  # idle shape, see bench.pacing.StreamPlan
    duty: float = 1.0
    keepalive_interval: float = 1.0
    watch: tuple[int, ...] = ()
    #: Extra request headers, "name: value" (e.g. relay-resumable: 1).
    headers: tuple[str, ...] = ()
    #: Processes the contender's work moved to (its Redis): sampled at the same edges,
    #: reported apart as side_*, so the contender's own figures stay its own.
    side: tuple[int, ...] = ()
    #: The harness's other processes (the emitter): their CPU per event is reported
    #: beside the load generator's own (harness_*), apart from neighbours on the core.
    harness: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Opened:
    """The streams' connections: when each first heard back, and how to close them."""

    first_bytes: Callable[[], list[int]]
    closers: list[Callable[[], None]]


@dataclass
class _Progress:
    done: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    all_done: asyncio.Event = field(default_factory=asyncio.Event)

    def stream_done(self, total: int, error: str | None) -> None:
        self.done += 1
        if error is not None:
            self.error_count += 1
            if len(self.errors) < ERRORS_KEPT:
                self.errors.append(error)
        if self.done == total:
            self.all_done.set()


async def run(spec: LoadSpec) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    t0 = time.monotonic_ns()
    start_ns = t0 + int(spec.ramp * 1e9)
    end_ns = start_ns + int(spec.measure * 1e9)
    tally = RunTally(start_ns, end_ns, int(spec.keepalive_interval * 1e9))
    sampler = Sampler(spec.watch, spec.side, spec.harness)
    loop.call_at(start_ns / 1e9, sampler.sample)
    loop.call_at(end_ns / 1e9, sampler.sample)
    progress = _Progress()
    url = urlsplit(spec.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    query = f"rate={spec.rate}&until={end_ns}&cycle={spec.cycle}&duty={spec.duty}"
    path = f"/v1/messages?{query}".encode()
    open_streams = {"h1": _open_h1, "h2c": _open_h2c, "h3": _open_h3}[spec.proto]
    opened = await open_streams(spec, host, port, path, tally, progress)
    opened_ns = time.monotonic_ns()
    deadline = end_ns / 1e9 + spec.grace
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(progress.all_done.wait(), max(0.0, deadline - time.monotonic()))
    for close in opened.closers:
        close()
    return _result(spec, tally, sampler, progress, t0, opened_ns, opened.first_bytes())


async def _spread(spec: LoadSpec, started: float, opened: int) -> None:
    """Waits until `opened` streams are due: arrivals spread evenly over half the ramp,
    as independent clients' are (a burst would also align every stream's timers)."""
    due = started + spec.ramp / 2 * opened / spec.streams
    await asyncio.sleep(max(0.0, due - time.monotonic()))


def _header_pairs(spec: LoadSpec) -> list[tuple[bytes, bytes]]:
    """`--header` values as (lower-case name, value) pairs, as HTTP/2 and 3 want them."""
    pairs = [header.split(":", 1) for header in spec.headers]
    return [(name.strip().lower().encode(), value.strip().encode()) for name, value in pairs]


async def _open_h1(
    spec: LoadSpec, host: str, port: int, path: bytes, tally: RunTally, progress: _Progress
) -> _Opened:
    loop = asyncio.get_running_loop()
    extra = b"".join(b"%b: %b\r\n" % pair for pair in _header_pairs(spec))
    request = (
        b"POST %b HTTP/1.1\r\nhost: %b:%d\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\n%bcontent-length: %d\r\n\r\n%b"
        % (path, host.encode(), port, extra, len(BODY), BODY)
    )
    streams: list[H1Stream] = []

    def make() -> H1Stream:
        stream = H1Stream(
            request,
            StreamTally(tally, time.monotonic_ns()),
            lambda error: progress.stream_done(spec.streams, error),
        )
        streams.append(stream)
        return stream

    started = time.monotonic()
    for first in range(0, spec.streams, CONNECT_BATCH):
        await _spread(spec, started, first)
        batch = range(first, min(spec.streams, first + CONNECT_BATCH))
        results = await asyncio.gather(
            *(loop.create_connection(make, host, port) for _ in batch), return_exceptions=True
        )
        for failure in (r for r in results if isinstance(r, BaseException)):
            progress.stream_done(spec.streams, f"connect: {failure!r}")

    def first_bytes() -> list[int]:
        return [s.first_byte_ns for s in streams if s.first_byte_ns]

    return _Opened(first_bytes, [s.close for s in streams])


async def _open_h2c(
    spec: LoadSpec, host: str, port: int, path: bytes, tally: RunTally, progress: _Progress
) -> _Opened:
    loop = asyncio.get_running_loop()
    kind: Callable[[], LeanH2cConnection | H2cConnection] = (
        LeanH2cConnection if spec.h2_client == "lean" else H2cConnection
    )
    connections: list[LeanH2cConnection | H2cConnection] = []
    for _ in range(math.ceil(spec.streams / spec.streams_per_connection)):
        _, connection = await loop.create_connection(kind, host, port)
        assert isinstance(connection, LeanH2cConnection | H2cConnection)
        await asyncio.wait_for(connection.ready, 10)
        connections.append(connection)
    return await _open_multiplexed(
        spec,
        connections,
        [c.flush for c in connections],
        f"{host}:{port}".encode(),
        path,
        tally,
        progress,
    )


async def _open_h3(
    spec: LoadSpec, host: str, port: int, path: bytes, tally: RunTally, progress: _Progress
) -> _Opened:
    count = math.ceil(spec.streams / spec.streams_per_connection)
    connections = [await h3_connect(host, port, spec.ca_file) for _ in range(count)]
    return await _open_multiplexed(
        spec,
        connections,
        [c.transmit for c in connections],
        f"localhost:{port}".encode(),
        path,
        tally,
        progress,
    )


async def _open_multiplexed(
    spec: LoadSpec,
    connections: Sequence[LeanH2cConnection | H2cConnection] | Sequence[H3ClientConnection],
    flushes: list[Callable[[], None]],
    authority: bytes,
    path: bytes,
    tally: RunTally,
    progress: _Progress,
) -> _Opened:
    """Open the streams round robin over h2c or HTTP/3 connections, in paced batches."""
    started = time.monotonic()
    extra = _header_pairs(spec)
    for index in range(spec.streams):
        if index % OPEN_BATCH == 0:
            for flush in flushes:
                flush()
            await _spread(spec, started, index)
        connections[index % len(connections)].open(
            path,
            authority,
            BODY,
            StreamTally(tally, time.monotonic_ns()),
            lambda error: progress.stream_done(spec.streams, error),
            extra,
        )
    for flush in flushes:
        flush()

    def first_bytes() -> list[int]:
        return [ns for c in connections for ns in c.first_byte_ns.values()]

    return _Opened(first_bytes, [c.close for c in connections])


def _result(
    spec: LoadSpec,
    tally: RunTally,
    sampler: Sampler,
    progress: _Progress,
    t0: int,
    opened_ns: int,
    first_bytes: list[int],
) -> dict[str, Any]:
    offered = spec.streams * spec.rate * spec.duty
    events = len(tally.latencies)
    delivered_rate = events / spec.measure
    result: dict[str, Any] = {
        "spec": asdict(spec),
        "offered_rate": offered,
        "events": events,
        "delivered_rate": round(delivered_rate, 1),
        "delivered_ratio": round(events / (offered * spec.measure), 4) if offered else 0.0,
        "latency_ms": summarize_ns(tally.latencies),
        "open_s": round((opened_ns - t0) / 1e9, 3),
        "first_byte_max_s": round((max(first_bytes, default=t0) - t0) / 1e9, 3),
        "responses": len(first_bytes),
        "streams_done": progress.done,
        "error_count": progress.error_count,
        "errors": progress.errors,
        "keepalives": tally.keepalives,
        "keepalive_lateness_ms": summarize_ns(tally.keepalive_lateness),
    }
    return result | sampler.figures(delivered_rate)


def _parse() -> LoadSpec:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    add = parser.add_argument
    add("--url", required=True)
    add("--streams", type=int, required=True)
    add("--rate", type=float, required=True, help="events/s per stream while active")
    add("--ramp", type=float, default=1.0)
    add("--measure", type=float, default=5.0)
    add("--grace", type=float, default=1.0)
    add("--proto", choices=("h1", "h2c", "h3"), default="h1")
    add("--ca-file", default="", help="h3: CA certificate for the relay's listener")
    add("--streams-per-connection", type=int, default=100)
    add("--h2-client", choices=("lean", "h2"), default="lean", help="h2c: which client")
    add("--cycle", type=float, default=0.0)
    add("--duty", type=float, default=1.0)
    add("--keepalive-interval", type=float, default=1.0)
    add("--watch", type=int, nargs="*", default=[])
    add("--header", action="append", default=[], help="extra request header, NAME: VALUE")
    add("--side", type=int, nargs="*", default=[], help="PIDs reported apart (side_*)")
    add("--harness", type=int, nargs="*", default=[], help="the emitter's PID (harness_*)")
    args = parser.parse_args()
    return LoadSpec(
        url=args.url,
        streams=args.streams,
        rate=args.rate,
        ramp=args.ramp,
        measure=args.measure,
        grace=args.grace,
        proto=args.proto,
        streams_per_connection=args.streams_per_connection,
        h2_client=args.h2_client,
        ca_file=args.ca_file,
        cycle=args.cycle,
        duty=args.duty,
        keepalive_interval=args.keepalive_interval,
        watch=tuple(args.watch),
        headers=tuple(args.header),
        side=tuple(args.side),
        harness=tuple(args.harness),
    )


def main() -> None:
    spec = _parse()
    print(json.dumps(uvloop.run(run(spec))), flush=True)


if __name__ == "__main__":
    main()
