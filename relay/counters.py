"""Process-wide counters of what the relay did (exported as metrics later)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Counters:
    """Plain integer counters; the event loop is single-threaded, so no locking."""

    streams_total: int = 0
    keepalives: int = 0
    client_aborts: int = 0
    #: Clients dropped for taking no bytes for --client-send-timeout.
    client_stalls: int = 0
    upstream_errors: int = 0
    read_timeouts: int = 0
    retries: int = 0
    #: Requests answered by the relay itself (limits, policy, overload).
    refused: int = 0
    #: Messages streams that ended without message_stop and got an error frame.
    truncated: int = 0
    #: SSE responses that arrived content-encoded and so could take no keepalives.
    sse_compressed: int = 0
    #: UDP datagrams on the HTTP/3 port that belonged to no QUIC connection (garbage,
    #: unknown connection IDs, Initials that did not decrypt).
    quic_dropped: int = 0
