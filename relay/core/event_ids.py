"""`id:` lines in a resumable stream whose client asked for them (`relay-event-ids: 1`),
so that a resume can say `Last-Event-ID: N` (relay/core/resume_request.py).

Every dispatched event (a frame with a field line: comment-only frames such as `:
keepalive` are none) gets `id: N` right before the empty line that dispatches it. N is
the client stream's byte offset right after that event's dispatching line ending, id
lines included: the offset a resume from there takes. Sans-IO: `ResumableClient` runs
it on the bytes it journals, so replays carry the same ids; other streams never get here.
"""

from __future__ import annotations

from relay.core.exchange import Headers
from relay.core.headers import header_value
from relay.sse.scanner import FrameScanner

#: The request header that asks for `id:` lines (on a `relay-resumable: 1` request).
EVENT_IDS_HEADER = b"relay-event-ids"

_CRLF = b"\r\n"
_LF = b"\n"
_CR = b"\r"


def wants_event_ids(headers: Headers) -> bool:
    return any(name == EVENT_IDS_HEADER and value.strip() == b"1" for name, value in headers)


def takes_event_ids(status: int, headers: Headers) -> bool:
    """Whether a response is an event stream ids can go into: uncompressed and 2xx. A
    JSON error answer or a compressed body stays byte-exact."""
    if not 200 <= status < 300:
        return False
    content_type = header_value(headers, b"content-type") or b""
    encoding = header_value(headers, b"content-encoding")
    return content_type.lower().startswith(b"text/event-stream") and (
        encoding is None or encoding.lower() == b"identity"
    )


def _counting_itself(fixed: int) -> int:
    """The N with N == fixed + len(str(N)): an offset that counts its own digits."""
    digits = len(str(fixed))
    while len(str(fixed + digits)) != digits:
        digits += 1  # one more digit can only move N up, to at most one digit more
    return fixed + digits


class EventIdWriter:
    """Puts an `id:` line into each event of one client stream, chunk by chunk."""

    __slots__ = ("_scanner",)

    def __init__(self) -> None:
        # Fed the stream without the ids: an id line sits among its frame's field lines,
        # where it changes nothing the scanner keeps.
        self._scanner = FrameScanner()

    def add_ids(self, data: bytes, offset: int) -> bytes:
        """`data`, the client stream from byte `offset` on, with the id lines in;
        `data` itself when no event ends in it."""
        scanner = self._scanner
        n = len(data)
        at = scanner.feed_to_dispatch(data, 0)
        if at == n:
            return data
        view = memoryview(data)
        parts: list[bytes | memoryview] = []
        start = added = 0
        while at < n:
            # The id line ends the way the dispatching line does: the Python SDK finds
            # an event's end only as `\n\n`, `\r\r` or `\r\n\r\n`. A `\r` last in the
            # chunk counts as a lone `\r` (a `\n` after it starts the resumed stream
            # as an empty line, which no parser dispatches anything for).
            eol = _CRLF if data.startswith(_CRLF, at) else _CR if data[at] == 13 else _LF
            # The bytes before the id line, the line ("id: ", digits, eol) and the ending.
            event_id = _counting_itself(offset + at + added + 4 + 2 * len(eol))
            line = b"id: %d%s" % (event_id, eol)
            parts += (view[start:at], line)
            added += len(line)
            start = at
            at = scanner.feed_to_dispatch(data, at + 1)
        parts.append(view[start:])
        return b"".join(parts)
