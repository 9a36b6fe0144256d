"""What an HTTP/2 client connection may cost the relay: the limits behind the h2 server's
answers to floods (CVE-2019-9512/9515, CVE-2023-44487) and stalled header blocks.

Sans-IO: rates are fed times, and `header_block_pending` only reads the connection.
"""

from __future__ import annotations

from h2.connection import H2Connection

# Streams a client may reset: a burst, then a steady rate. Rapid reset (open, reset,
# repeat) costs the relay a stream set-up each time for nothing; past this the
# connection gets GOAWAY(ENHANCE_YOUR_CALM), as nginx, Envoy and h2o answer it.
RESETS_BURST = 200
RESETS_PER_SECOND = 100.0
# Frames the relay must answer (PING, SETTINGS): the answers queue on a client that
# may read nothing at all.
CONTROL_BURST = 500
CONTROL_PER_SECOND = 100.0
# Past this many bytes queued for a client, the relay stops reading it: only frames
# that ask for answers (stream data pauses far earlier) could fill it.
OUTPUT_BACKLOG = 1 << 20
# Bytes of one client's input handled per loop pass: a connection that sends a flood
# in one read cannot keep every other stream (and their keepalives) waiting.
READ_SLICE = 16 * 1024

_HEADERS = 0x1
_CONTINUATION = 0x9
_FRAME_HEADER = 9


class RateLimit:
    """A token bucket: `burst` events at once, then `rate` a second."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        """Count one event at `now`; False once the client is over the limit."""
        tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if tokens < 1:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1
        return True


def header_block_pending(conn: H2Connection) -> bool:
    """Whether `conn` holds part of a frame header or of a header block.

    A client that stops there holds the connection without ever opening a stream, so
    the header timeout applies. h2 keeps both in its frame buffer, which has no public
    view: `tests/test_h2_guard.py` fails, naming the h2 version, if that changes.
    """
    buffer = conn.incoming_buffer
    if buffer._headers_buffer:  # HEADERS without END_HEADERS, CONTINUATIONs so far
        return True
    data = buffer._data
    if not data:
        return False
    return len(data) < _FRAME_HEADER or data[3] in (_HEADERS, _CONTINUATION)


def oversized_frame_pending(conn: H2Connection) -> bool:
    """Whether the frame being read declares more than the frame size we allow.

    h2 checks a frame's length only once all of it has arrived, up to 16 MiB later;
    RFC 9113 4.2 lets the header alone be answered with FRAME_SIZE_ERROR.
    """
    data = conn.incoming_buffer._data
    return len(data) >= _FRAME_HEADER and int.from_bytes(data[:3]) > conn.max_inbound_frame_size
