"""Turns received response bytes into timings, whatever protocol carried them.

Each stamped event yields `receive time - send stamp`; each `: keepalive` yields how late
it came: its receive time minus (the previous thing on the stream + the interval), where
the previous thing is the response head's arrival, an event's send stamp or the previous
keepalive's receive time
(the relay schedules from its own last write, so drift between keepalives is not held
against it). Work per chunk is one regex pass; no SSE parsing.
"""

from __future__ import annotations

import re
from array import array

# The stamp must be followed by its delimiter, so a number cut by a chunk end never matches.
_TOKENS = re.compile(rb'"t":(\d+)[,}]|: keepalive\n')
# Longer than any token: a token split across chunks lies wholly within this tail.
_CARRY = 48


class RunTally:
    """What all streams of one run measured inside the window [start_ns, end_ns)."""

    def __init__(self, start_ns: int, end_ns: int, keepalive_interval_ns: int) -> None:
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.interval_ns = keepalive_interval_ns
        self.latencies = array("q")
        self.keepalive_lateness = array("q")
        self.events_outside_window = 0
        self.keepalives = 0


class StreamTally:
    """One response stream's bytes, fed in order as they arrive."""

    __slots__ = ("_carry", "_ref_ns", "_run")

    def __init__(self, run: RunTally, opened_ns: int) -> None:
        self._run = run
        self._carry = b""
        # Until the response head arrives (`head`): the request's time.
        self._ref_ns = opened_ns

    def head(self, now_ns: int) -> None:
        """The response head arrived: a relay's keepalive clock starts with it. (At
        10,000 streams the heads came 0.5 to 7 s after their requests while the ramp
        opened the upstream connections, and every first keepalive counted that delay
        as its own lateness.)"""
        self._ref_ns = now_ns

    def feed(self, data: bytes, now_ns: int) -> None:
        run = self._run
        buffer = self._carry + data if self._carry else data
        last_end = 0
        for match in _TOKENS.finditer(buffer):
            last_end = match.end()
            stamp = match.group(1)
            if stamp is not None:
                sent = int(stamp)
                self._ref_ns = sent
                if run.start_ns <= sent < run.end_ns:
                    run.latencies.append(now_ns - sent)
                else:
                    run.events_outside_window += 1
            else:
                run.keepalives += 1
                if run.start_ns <= now_ns < run.end_ns:
                    run.keepalive_lateness.append(now_ns - self._ref_ns - run.interval_ns)
                self._ref_ns = now_ns
        self._carry = buffer[max(last_end, len(buffer) - _CARRY) :]
