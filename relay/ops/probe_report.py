"""What `sse-relay probe` found, what it recommends, and how that is said: a short
summary for people, or JSON for scripts. Pure functions of the streams' results."""

from __future__ import annotations

import math
from dataclasses import dataclass

from relay.ops.probe_stream import (
    CLOSED,
    ENDED,
    ERROR,
    ERROR_EVENT,
    HTTP_ERROR,
    RESET,
    StreamResult,
)

#: The relay's own default `--keepalive-interval`: recommendations never exceed it, as
#: a kill time past twice it needs nothing special.
RELAY_DEFAULT_INTERVAL = 15.0

_HOW = {
    RESET: "connection reset",
    CLOSED: "connection closed (FIN, no reset) before the response ended",
    ENDED: "the body ended cleanly, without message_stop",
    HTTP_ERROR: "an HTTP error",
    ERROR_EVENT: "an SSE error event",
    ERROR: "a transport error",
}


def describe(result: StreamResult) -> str:
    """How a stream died, in a few words a platform engineer would recognise."""
    if result.how == HTTP_ERROR:
        return f"HTTP {result.status} from the path: {result.detail.strip()[:120]}"
    if result.how in (ERROR_EVENT, ERROR):
        return f"{_HOW[result.how]}: {result.detail.strip()[:120]}"
    return _HOW.get(result.how, result.how)


def _round_down(seconds: float) -> float:
    """Whole seconds from 2 s up, tenths below: a value to type, never above the input."""
    if seconds >= 2:
        return float(math.floor(seconds))
    return max(0.1, math.floor(seconds * 10) / 10)


@dataclass
class Check:
    """One keepalive frame (`ping` or `comment`) sent inside the gap: did it arrive, and
    did the stream outlive the silent one's kill?"""

    frame: str
    every: float | None  # the period it was sent with
    result: StreamResult | None  # None: not tested
    note: str = ""

    @classmethod
    def untested(cls, frame: str, why: str) -> Check:
        return cls(frame, None, None, why)

    @property
    def arrived(self) -> int:
        if self.result is None:
            return 0
        return self.result.pings if self.frame == "ping" else self.result.comments

    @property
    def died(self) -> bool:
        return self.result is not None and self.result.died

    def kept_alive(self, kill: float | None) -> bool | None:
        """Whether the stream stayed open past `kill` s into the gap (None: untested,
        or nothing was killed, so there was nothing to outlive)."""
        if self.result is None or kill is None:
            return None
        return not self.result.died and self.result.gap_open > kill

    def to_json(self, kill: float | None) -> dict[str, object]:
        result = self.result
        died = None
        if result is not None and result.died:
            died = {"how": result.how, "status": result.status, "detail": result.detail}
        return {
            "tested": result is not None,
            "every_s": self.every,
            "arrived": self.arrived,
            "open_s": None if result is None else round(result.gap_open, 3),
            "kept_alive": self.kept_alive(kill),
            "died": died,
            "note": self.note or None,
        }

    def line(self, kill: float | None) -> str:
        result = self.result
        if result is None:
            return f"not tested: {self.note}"
        sent = f"in {result.gap_open:.1f} s, one sent every {self.every:g} s"
        text = f"arrive ({self.arrived} {sent})" if self.arrived else f"did not arrive (0 {sent})"
        if result.died:
            text += f"; the stream died {result.gap_open:.1f} s into the gap: {describe(result)}"
        elif kill is not None:
            text += f"; the stream outlived the {kill:.1f} s kill"
        return text + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Recommendation:
    """The keepalive settings the relay should use on the probed path (None: none help)."""

    interval: float | None
    frame: str | None
    why: str

    @property
    def flags(self) -> str | None:
        if self.interval is None:
            return None
        flags = f"--keepalive-interval {self.interval:g}"
        return flags + (f" --keepalive-frame {self.frame}" if self.frame else "")


@dataclass(frozen=True)
class ProbeReport:
    """Everything one probe found."""

    url: str
    max_seconds: float
    elapsed: float
    silent: StreamResult
    ping: Check
    comment: Check

    @property
    def kill(self) -> float | None:
        """Seconds of silence after which the path killed the silent stream."""
        return self.silent.silence_at_end if self.silent.died else None

    @property
    def path_keepalives(self) -> int:
        """Keepalive frames the silent stream got anyway: the path itself sends them."""
        return self.silent.pings + self.silent.comments

    def notes(self) -> list[str]:
        notes = []
        if self.path_keepalives:
            notes.append(
                f"the silent stream got {self.path_keepalives} keepalive frames from the path "
                "itself: something on it (an sse-relay?) already sends them"
            )
        if self.kill is None and not self.path_keepalives:
            notes.append("raise --max-seconds to look for a longer idle timeout")
        return notes

    def recommendation(self) -> Recommendation:
        kill = self.kill
        checks = (self.comment, self.ping)  # comments first: the relay's default
        if kill is None and self.path_keepalives:
            why = (
                "the path's own keepalives kept the stream from being silent, so its idle "
                "timeout was not measured; probe a sim with nothing inserting keepalives"
            )
            return Recommendation(None, None, why)
        if kill is not None and not any(check.kept_alive(kill) for check in checks):
            if any(check.arrived for check in checks):
                why = (
                    "keepalives arrived, yet streams still died: the path ends them by "
                    "something other than silence (a total response timeout?); raise that "
                    "limit, keepalives cannot help"
                )
            else:
                why = (
                    "no keepalive frame reached the client: the path strips or buffers "
                    "them; fix that first (response buffering off for text/event-stream)"
                )
            return Recommendation(None, None, why)
        bound = kill if kill is not None else self.silent.longest_silence
        interval = _round_down(min(RELAY_DEFAULT_INTERVAL, bound / 2))
        why = "the relay's default, well inside" if bound / 2 >= RELAY_DEFAULT_INTERVAL else "half"
        why += f" the {bound:.1f} s " + ("kill" if kill is not None else "survived silence")
        # A frame is usable if it arrived and its stream lived: past the kill when there
        # was one, to its end otherwise.
        usable = [
            check.frame
            for check in checks
            if check.arrived and (check.kept_alive(kill) if kill is not None else not check.died)
        ]
        frame = usable[0] if usable else None
        if frame == "ping" and self.comment.result is None:
            why += "; pings were seen to pass, comments were not tested"
        elif frame == "ping":
            why += "; comments did not reach the client"
        elif frame is None:
            why += "; but no keepalive frame was seen to reach the client"
        return Recommendation(interval, frame, why)

    def to_json(self) -> dict[str, object]:
        silent, kill = self.silent, self.kill
        advice = self.recommendation()
        return {
            "url": self.url,
            "max_seconds": self.max_seconds,
            "elapsed_s": round(self.elapsed, 3),
            "idle_kill": {
                "seen": kill is not None,
                "after_s": None if kill is None else round(kill, 3),
                "how": silent.how if kill is not None else None,
                "status": silent.status if kill is not None else None,
                "detail": silent.detail if kill is not None else None,
                "longest_silence_s": round(silent.longest_silence, 3),
            },
            "keepalives": {"ping": self.ping.to_json(kill), "comment": self.comment.to_json(kill)},
            "recommendation": {
                "keepalive_interval_s": advice.interval,
                "keepalive_frame": advice.frame,
                "flags": advice.flags,
                "why": advice.why,
            },
            "notes": self.notes(),
        }

    def summary(self) -> str:
        kill = self.kill
        if kill is not None:
            killed = f"after {kill:.1f} s of silence: {describe(self.silent)}"
        elif self.path_keepalives:
            killed = (
                f"none in {self.silent.gap_open:.1f} s, but the stream was never silent "
                f"for more than {self.silent.longest_silence:.1f} s (see the note)"
            )
        else:
            killed = f"no idle kill seen up to {self.silent.longest_silence:.1f} s"
        advice = self.recommendation()
        lines = [
            f"sse-relay probe {self.url} (HTTP/1.1), {self.elapsed:.1f} s",
            f"  idle kill     {killed}",
            f"  event: ping   {self.ping.line(kill)}",
            f"  : comment     {self.comment.line(kill)}",
            f"  recommend     {advice.flags or 'no keepalive setting'} ({advice.why})",
        ]
        lines += [f"  note          {note}" for note in self.notes()]
        return "\n".join(lines)
