"""The benchmark's upstream: a fast emitter of paced, stamped Messages-API SSE frames.

`python -m bench.emitter` answers every POST with a chunked SSE stream whose pace the
request's query string sets (see `StreamPlan`). Each event is its own `write` (its own
chunk), as the real API sends them, and carries its send time. HTTP/1.1 with keep-alive,
parsed by hand: the load is in the frames, and the request side stays off the profile.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qsl, urlsplit

import uvloop

from bench import frames

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\nrequest-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n"
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_DELTAS = frames.thinking_deltas()
# Timers fire on whole milliseconds: an event due within one is sent now, not re-armed.
_EARLY_S = 0.001


@dataclass(frozen=True)
class StreamPlan:
    """What one response does, from its query string.

    rate: events per second while active; until: `time.monotonic_ns()` at which the turn
    ends; cycle and duty: active for `duty * cycle` seconds of every `cycle` (0: always).
    """

    rate: float = 50.0
    until: int = 0
    cycle: float = 0.0
    duty: float = 1.0

    @classmethod
    def from_target(cls, target: bytes) -> StreamPlan:
        query = dict(parse_qsl(urlsplit(target.decode("latin-1")).query))
        return cls(
            rate=float(query.get("rate", cls.rate)),
            until=int(query.get("until", time.monotonic_ns() + 10**9)),
            cycle=float(query.get("cycle", cls.cycle)),
            duty=float(query.get("duty", cls.duty)),
        )


class PacedStream:
    """Sends one response's events on schedule; catches up (one write each) if late."""

    def __init__(
        self,
        transport: asyncio.Transport,
        plan: StreamPlan,
        rng: random.Random,
        on_done: Callable[[], None],
    ) -> None:
        self._transport = transport
        self._plan = plan
        self._on_done = on_done
        self._loop = asyncio.get_running_loop()
        self._period = 1.0 / plan.rate
        self._until_s = plan.until / 1e9
        now = time.monotonic()
        # A random phase spreads streams over the period (and over the idle cycle).
        if plan.cycle:
            self._origin = now - rng.random() * plan.cycle
            self._next = self._skip_idle(now)
        else:
            self._origin = now
            self._next = now + rng.random() * self._period
        self._sent = 0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        write = self._transport.write
        write(_HEAD)
        write(_chunk(frames.MESSAGE_START))
        write(_chunk(frames.THINKING_START))
        self._arm()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._next >= self._until_s:
            self._timer = self._loop.call_at(self._until_s, self._finish)
        else:
            self._timer = self._loop.call_at(self._next, self._tick)

    def _tick(self) -> None:
        write = self._transport.write
        deltas = _DELTAS
        now = time.monotonic()
        while self._next <= now + _EARLY_S and self._next < self._until_s:
            frame = deltas[self._sent % len(deltas)].render(time.monotonic_ns())
            write(_chunk(frame))
            self._sent += 1
            self._next += self._period
            if self._plan.cycle:
                self._next = self._skip_idle(self._next)
        self._arm()

    def _skip_idle(self, when: float) -> float:
        """`when`, or the start of the next active window if `when` is in a silent part."""
        cycle = self._plan.cycle
        position = (when - self._origin) % cycle
        # Half a period of slack: summed float steps must not squeeze in an extra event
        # at the window's very end.
        active = self._plan.duty * cycle - self._period / 2
        return when if position < active else when + cycle - position

    def _finish(self) -> None:
        self._timer = None
        write = self._transport.write
        for frame in frames.CLOSING:
            write(_chunk(frame))
        write(_LAST_CHUNK)
        self._on_done()


def _chunk(frame: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(frame), frame)


class EmitterConnection(asyncio.Protocol):
    """One keep-alive connection: reads a request, streams the answer, repeats."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._stream: PacedStream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    def _stream_finished(self) -> None:
        self._stream = None
        self._next_request()

    def _next_request(self) -> None:
        """Starts answering the buffered request once its head and body are complete."""
        if self._stream is not None or self._transport is None:
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buffer[:end].decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        fields = dict(line.lower().split(":", 1) for line in head[1:] if ":" in line)
        body_start = end + 4
        if "chunked" in fields.get("transfer-encoding", ""):
            body_end = self._buffer.find(b"0\r\n\r\n", body_start)
            if body_end < 0:
                return
            body_end += 5
        else:
            body_end = body_start + int(fields.get("content-length", "0"))
            if len(self._buffer) < body_end:
                return
        self._buffer = self._buffer[body_end:]
        if method != "POST":
            self._transport.write(_NOT_FOUND)
            self._next_request()
            return
        plan = StreamPlan.from_target(target.encode("latin-1"))
        self._stream = PacedStream(self._transport, plan, self._rng, self._stream_finished)
        self._stream.start()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(1)
    server = await loop.create_server(
        lambda: EmitterConnection(rng), host, port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"bench emitter listening on http://{host}:{bound}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.emitter", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
