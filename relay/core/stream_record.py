"""What one finished stream did: built once at its end, read by metrics and the log.

Nothing here is touched per chunk; the stream keeps plain integers and times and
turns them into a `StreamRecord` at the single place it finishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """How a stream ended; set once, where the stream finishes (relay/core/stream.py)."""

    COMPLETED = "completed"  # upstream's whole response reached the client
    REFUSED = "refused"  # the relay answered itself (limits, policy, overload)
    CLIENT_ABORT = "client_abort"  # the client closed or reset
    CLIENT_STALL = "client_stall"  # dropped after --client-send-timeout
    UPSTREAM_ERROR = "upstream_error"  # upstream unreachable, or died mid-response
    READ_TIMEOUT = "read_timeout"  # upstream silent past --upstream-read-timeout
    TRUNCATED = "truncated"  # a clean end without message_stop: error frame added
    DRAINED = "drained"  # still running when the drain timeout ran out


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One finished exchange, as operators see it. Times are in seconds."""

    http_version: str
    method: str
    path: str
    #: The status sent to the client (upstream's or the relay's own); None if none was.
    status: int | None
    #: Upstream's `request-id`, or the relay's own for a relay-made answer.
    request_id: str | None
    outcome: Outcome
    #: First upstream try started -> the relayed response head; None without a head.
    ttfb: float | None
    duration: float
    #: Longest upstream silence after the response head (client pauses excluded).
    longest_silence: float | None
    keepalives: int
    #: Request body bytes received from the client.
    bytes_in: int
    #: Upstream response body bytes relayed (keepalives and relay-made bytes excluded).
    bytes_out: int
    #: SSE frames relayed from upstream, pings included.
    events: int
    pings: int
    retries: int
    #: Why upstream failed this stream (an error kind), if it did.
    upstream_error: str | None
    #: The failure as only the log tells it (which upstream, the library's words).
    error_detail: str | None = None
    #: An SSE response that arrived content-encoded, so it took no keepalives.
    sse_compressed: bool = False
    #: A resumable stream's id as logs show it (a prefix), its resumes, and how long
    #: upstream ran with no client attached.
    stream_id: str | None = None
    resumes: int = 0
    detached_seconds: float = 0.0
    #: Whose stream it was (relay/core/providers.py PROVIDER_NAMES).
    provider: str = "unknown"
