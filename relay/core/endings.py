"""How an SSE response ends when upstream did not end it properly.

Everything here is bytes appended after what upstream sent: a partial frame is closed
so that no parser can glue it to what follows, then one `event: error` frame in the
API's own format tells every SDK to raise its typed API error.
"""

from __future__ import annotations

from relay.core.errors import error_frame
from relay.sse.scanner import FrameScanner

# The SDKs skip `ping` events before looking at their data, so a half-sent frame renamed
# to ping is dropped by every client instead of failing JSON decoding.
_DISCARD_PARTIAL_FRAME = b"event: ping\n\n"


def close_partial_frame(scanner: FrameScanner) -> bytes:
    """Bytes that end a frame upstream left unfinished (nothing if none is open)."""
    if scanner.at_boundary:
        return b""
    return (b"" if scanner.at_line_start else b"\n") + _DISCARD_PARTIAL_FRAME


def needs_truncation_error(scanner: FrameScanner) -> bool:
    """A Messages stream ended without message_stop or error: the SDKs would return a
    silently truncated message, so the relay must add an error."""
    return scanner.saw_message_start and not (scanner.saw_message_stop or scanner.saw_error)


def ended_by_upstream(scanner: FrameScanner) -> bool:
    """Upstream already sent its last word (message_stop or its own error) in whole frames:
    nothing the relay could add would be news, only a contradiction."""
    return (scanner.saw_message_stop or scanner.saw_error) and scanner.at_boundary


def ending_frames(scanner: FrameScanner, error_type: str, message: str) -> bytes:
    """Close any partial frame, then one well-formed error frame."""
    return close_partial_frame(scanner) + error_frame(error_type, message)
