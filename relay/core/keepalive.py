"""When to write a keepalive: a sans-IO decision, so it can be tested without sockets.

The relay records the loop time of the last upstream byte per stream (one float store
per chunk) and a single timer per stream wakes up at most once per interval to ask
`KeepaliveClock.decide`. No timer is cancelled or re-armed per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

COMMENT_FRAME: Final = b": keepalive\n\n"
PING_FRAME: Final = b'event: ping\ndata: {"type": "ping"}\n\n'

FRAMES: Final = {"comment": COMMENT_FRAME, "ping": PING_FRAME}


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do at a timer wake-up: write a keepalive or not, and when to wake next."""

    write: bool
    next_check: float


class KeepaliveClock:
    """Decides keepalives for one stream from its last activity and frame state.

    Upstream stalled mid-frame (`at_boundary` False): nothing can be written without
    corrupting the frame for every SSE parser, so the keepalive is deferred; the
    clock checks again one interval later. Once the frame completes, that byte is
    activity and the normal schedule resumes.
    """

    __slots__ = ("last_write",)

    def __init__(self, now: float) -> None:
        #: When the relay last wrote a keepalive (or the stream started).
        self.last_write = now

    def decide(
        self, now: float, last_upstream_byte: float, at_boundary: bool, interval: float
    ) -> Decision:
        """`interval` is the stream's (`StreamSettings`, its one owner)."""
        quiet_since = max(last_upstream_byte, self.last_write)
        due = quiet_since + interval
        # Timers may fire a hair early; treat within 1 ms as due rather than re-arm.
        if now + 0.001 < due:
            return Decision(False, due)
        if not at_boundary:
            return Decision(False, now + interval)
        self.last_write = now
        return Decision(True, now + interval)
