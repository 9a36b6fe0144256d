"""One HTTP/2 stream towards a client: the relay core's `ClientSide` on `H2Protocol`.

Flow control is per stream: data the client's window cannot take yet waits in the
stream's queue and pauses only this stream's upstream.

DATA goes out through `H2DataOut` (relay/edge/_h2data.pyx) when the extensions are
built: frames written in C for as much as the window takes at once, the rest through
`h2`'s `send_data` as here. `SSE_RELAY_NO_EXTENSIONS=1` sends everything through `h2`.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import h2.connection
import h2.exceptions
from h2.errors import ErrorCodes

from relay.core.exchange import BodyWriter, EdgeStream, Headers
from relay.edge import native_out
from relay.edge.h2_endpoint import SendQueue, send_queued


class StreamOwner(Protocol):
    """The connection a stream belongs to (relay/edge/h2.py's `H2Protocol`)."""

    conn: h2.connection.H2Connection
    write_paused: bool

    @property
    def alt_svc(self) -> bytes | None: ...
    def schedule_flush(self, queued: int = 0) -> None: ...
    def forget(self, stream_id: int) -> None: ...
    def reset(self, stream_id: int, code: ErrorCodes) -> None: ...
    def acknowledge(self, stream_id: int, size: int) -> None: ...


# Headers that are meaningless in HTTP/2 and must not be sent (RFC 9113 8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


class H2ClientStream:
    """One HTTP/2 stream as the relay core's `ClientSide`."""

    __slots__ = (
        "_ended",
        "_out",
        "_owner",
        "_paused",
        "_pending",
        "id",
        "relay",
        "unacked",
    )

    def __init__(self, owner: StreamOwner, stream_id: int) -> None:
        self._owner = owner
        self.id = stream_id
        self.relay: EdgeStream | None = None
        self._pending: SendQueue = deque()
        self._ended = False
        self._paused = False
        # The C DATA writer, once the response head has opened the way for DATA.
        self._out: native_out.H2DataOut | None = None
        #: Request body bytes received but not yet acknowledged (upstream paused).
        self.unacked: int | None = None

    # -- ClientSide -------------------------------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        block = [(b":status", str(status).encode())]
        block += [(k, v) for k, v in headers if k not in _CONNECTION_SPECIFIC]
        alt_svc = self._owner.alt_svc
        if alt_svc is not None:
            block.append((b"alt-svc", alt_svc))
        try:
            self._owner.conn.send_headers(self.id, block)
        except h2.exceptions.ProtocolError:
            # Reset by the client in the same read that opened it (h2 may have dropped
            # the stream already, closed or not): nobody to answer.
            self._owner.forget(self.id)
            return
        owner = self._owner
        if native_out.H2DataOut is not None:
            flushed = owner.schedule_flush
            self._out = native_out.H2DataOut(
                owner.conn, self.id, self._pending, self.queue, flushed
            )
        owner.schedule_flush()

    def send_body(self, data: bytes) -> None:
        if self._out is not None:
            self._out(data)
        else:
            self.queue(data)

    def queue(self, data: bytes) -> None:
        """Send `data` through `h2`, after whatever waits for the window."""
        self._pending.append(data)
        if len(self._pending) == 1:  # else a shut window holds the queue already
            self.push()

    def body_writer(self) -> BodyWriter:
        """The native path hands each piece to the C DATA writer, or to `send_body`
        (relay.core.exchange)."""
        return BodyWriter(self._out or self.send_body, chunked=False)

    def send_end(self) -> None:
        self._ended = True
        self.push()

    def abort(self) -> None:
        self._owner.reset(self.id, ErrorCodes.INTERNAL_ERROR)

    def pause_request_body(self) -> None:
        if self.unacked is None:
            self.unacked = 0

    def resume_request_body(self) -> None:
        unacked, self.unacked = self.unacked, None
        if unacked:
            self._owner.acknowledge(self.id, unacked)

    # -- flow control -----------------------------------------------------------------

    def push(self) -> None:
        """Send what the stream's window allows; pause upstream while data waits."""
        conn = self._owner.conn
        pending = self._pending
        try:
            sent = send_queued(conn, self.id, pending)
            if not pending and self._ended:
                conn.end_stream(self.id)
                self._owner.forget(self.id)
        except h2.exceptions.ProtocolError:  # closed, or already forgotten by h2
            pending.clear()
            self._owner.forget(self.id)
            return
        self._owner.schedule_flush(sent)
        self.update_pause()

    def update_pause(self) -> None:
        """Upstream reads pause while this stream's window or the socket is full."""
        paused = bool(self._pending) or self._owner.write_paused
        if paused != self._paused and self.relay is not None:
            self._paused = paused
            if paused:
                self.relay.on_client_paused()
            else:
                self.relay.on_client_resumed()
