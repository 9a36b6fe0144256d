"""The emitter's clock: what one response sends, and when, whatever protocol carries it.

`PacedStream` decides when each stamped event goes out; an `EventSink` (HTTP/1.1 chunks
in bench/emitter.py, HTTP/2 DATA frames in bench/emitter_h2.py) puts it on the wire.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from bench import frames

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


class EventSink(Protocol):
    """Where a response's frames go: `send` each frame as its own write (chunk or DATA
    frame), `flush` after a timer's worth, `end` once after the last frame."""

    def send(self, frame: bytes) -> None: ...

    def flush(self) -> None: ...

    def end(self) -> None: ...


class PacedStream:
    """Sends one response's events on schedule; catches up (one write each) if late."""

    def __init__(
        self, sink: EventSink, plan: StreamPlan, rng: random.Random, on_done: Callable[[], None]
    ) -> None:
        self._sink = sink
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
        """Sends the turn's opening frames (after the sink's head) and arms the clock."""
        self._sink.send(frames.MESSAGE_START)
        self._sink.send(frames.THINKING_START)
        self._sink.flush()
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
        send = self._sink.send
        deltas = _DELTAS
        now = time.monotonic()
        while self._next <= now + _EARLY_S and self._next < self._until_s:
            send(deltas[self._sent % len(deltas)].render(time.monotonic_ns()))
            self._sent += 1
            self._next += self._period
            if self._plan.cycle:
                self._next = self._skip_idle(self._next)
        self._sink.flush()
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
        for frame in frames.CLOSING:
            self._sink.send(frame)
        self._sink.end()
        self._on_done()
