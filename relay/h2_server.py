"""HTTP/2 towards clients (h2c by prior knowledge, or TLS with ALPN "h2"), on `h2`.

One connection carries many `H2ClientStream`s, each the `ClientSide` of its own
`RelayStream`. Flow control is per stream: data the client's window cannot take yet
waits in that stream's buffer and pauses only that stream's upstream. Frames for all
streams are flushed to the socket once per loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from relay.errors import HeadersTooLarge
from relay.exchange import Headers, RequestHead
from relay.h2_connection import GracefulH2Connection, H2Endpoint, SendQueue, send_queued
from relay.headers import split_request_fields
from relay.relay_context import RelayContext
from relay.stream import RelayStream

log = logging.getLogger("sse_relay")

WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024
# Streams a client may open at once on one connection (advertised in SETTINGS, capped
# by --max-streams). Past it a stream is refused with REFUSED_STREAM, which clients
# retry; h2 itself only ends the connection, and only far past it (the ceiling).
MAX_CONCURRENT_STREAMS = 1000
_STREAMS_CEILING_FACTOR = 2
# Request bodies: the window we grant; WINDOW_UPDATE follows as the relay forwards.
INITIAL_WINDOW = 1 << 20
# Request bodies across all streams of one connection (connection-level window).
CONNECTION_WINDOW = 16 * INITIAL_WINDOW
# Header blocks past our advertised limit get a per-stream 431; far past it (an HPACK
# bomb) h2 ends the connection.
HPACK_CEILING = 1 << 20
# Headers that are meaningless in HTTP/2 and must not be sent (RFC 9113 8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


class H2ClientStream:
    """One HTTP/2 stream as the relay core's `ClientSide`."""

    __slots__ = (
        "_ended",
        "_owner",
        "_paused",
        "_pending",
        "id",
        "relay",
        "unacked",
    )

    def __init__(self, owner: H2Server, stream_id: int) -> None:
        self._owner = owner
        self.id = stream_id
        self.relay: RelayStream | None = None
        self._pending: SendQueue = deque()
        self._ended = False
        self._paused = False
        #: Request body bytes received but not yet acknowledged (upstream paused).
        self.unacked: int | None = None

    # -- ClientSide -------------------------------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        block = [(b":status", str(status).encode())]
        block += [(k, v) for k, v in headers if k not in _CONNECTION_SPECIFIC]
        alt_svc = self._owner._context.alt_svc
        if alt_svc is not None:
            block.append((b"alt-svc", alt_svc))
        self._owner.conn.send_headers(self.id, block)
        self._owner.schedule_flush()

    def send_body(self, data: bytes) -> None:
        self._pending.append(data)
        if len(self._pending) == 1:  # else a shut window holds the queue already
            self.push()

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
            send_queued(conn, self.id, pending)
            if not pending and self._ended:
                conn.end_stream(self.id)
                self._owner.forget(self.id)
        except h2.exceptions.StreamClosedError:
            pending.clear()
            self._owner.forget(self.id)
            return
        self._owner.schedule_flush()
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


class H2Server(H2Endpoint):
    """One client connection speaking HTTP/2."""

    def __init__(self, context: RelayContext) -> None:
        self._context = context
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        super().__init__(GracefulH2Connection(config))
        self._client_ip: str | None = None
        self._streams: dict[int, H2ClientStream] = {}
        self._max_streams = min(MAX_CONCURRENT_STREAMS, context.config.max_streams)
        self._draining = False

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        peer = self._transport.get_extra_info("peername")
        self._client_ip = peer[0] if isinstance(peer, tuple) else None
        codes = h2.settings.SettingCodes
        advertised = {
            codes.MAX_CONCURRENT_STREAMS: self._max_streams,
            codes.MAX_HEADER_LIST_SIZE: self._context.config.max_header_bytes,
            codes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW,
        }
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=advertised)
        self.conn.initiate_connection()
        # The connection window starts at 64 KiB whatever SETTINGS say: widen it to 16
        # streams' windows, or concurrent uploads queue behind it (request bodies are
        # small; a wider one would only let a client park more bytes here).
        self.conn.increment_flow_control_window(CONNECTION_WINDOW)
        # h2 enforces its local settings as connection errors, which would kill every
        # stream of a client that is merely one over: advertise the limits above, but let
        # h2 enforce only ceilings far past them, and refuse the excess per stream.
        enforced = {
            **advertised,
            codes.MAX_CONCURRENT_STREAMS: self._max_streams * _STREAMS_CEILING_FACTOR,
            codes.MAX_HEADER_LIST_SIZE: HPACK_CEILING,
        }
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=enforced)
        self.conn.decoder.max_header_list_size = HPACK_CEILING
        self.flush()
        self._context.on_drain.add(self.drain)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("HTTP/2 protocol error from %s: %s", self._client_ip, exc)
            self.flush()  # h2 queued a GOAWAY naming the error
            self._terminate()
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._context.on_drain.discard(self.drain)
        self._drop_streams()

    def _drop_streams(self) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            if stream.relay is not None:
                stream.relay.on_client_gone()

    def _terminate(self) -> None:
        """The connection is dead to h2: its streams end now. The transport may linger
        (a slow reader's bytes still buffered), and writing for a stream of a closed
        connection would raise into whoever called, a shared upstream connection too."""
        self._drop_streams()
        if self._transport is not None:
            self._transport.close()

    def write_pause_changed(self) -> None:
        for stream in list(self._streams.values()):
            stream.update_pause()

    # -- events -> core ---------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is None or stream.relay is None:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
                return
            if stream.unacked is not None:  # upstream is not taking body bytes yet
                stream.unacked += event.flow_controlled_length
            else:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
            stream.relay.on_request_body(event.data)
        elif isinstance(event, h2.events.RequestReceived):
            self._open_stream(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None and stream.relay is not None:
                stream.relay.on_request_end()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                for stream in list(self._streams.values()):
                    stream.push()
            elif (stream := self._streams.get(event.stream_id)) is not None:
                stream.push()
        elif isinstance(event, h2.events.StreamReset):
            stream = self._remove(event.stream_id)
            if stream is not None and stream.relay is not None:
                stream.relay.on_client_gone()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            for stream in list(self._streams.values()):
                stream.push()
        elif isinstance(event, h2.events.ConnectionTerminated):
            if event.error_code == ErrorCodes.NO_ERROR:
                # A client's polite GOAWAY: no new streams, but the live ones finish.
                self.drain()
            else:
                self._terminate()

    def _open_stream(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self._draining or len(self._streams) >= self._max_streams:
            self.reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        method, target, headers, size = split_request_fields(event.headers or ())
        stream = H2ClientStream(self, stream_id)
        self._streams[stream_id] = stream
        relay = self._context.new_stream(
            stream,
            RequestHead(
                method,
                target,
                headers,
                self._client_ip,
                has_body=event.stream_ended is None,
                http_version="2",
            ),
        )
        stream.relay = relay
        if size > self._context.config.max_header_bytes:
            relay.refuse(HeadersTooLarge("request header fields too large"))
            return
        self._context.start(relay)
        stream.update_pause()

    # -- for the streams --------------------------------------------------------------

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.conn.acknowledge_received_data(size, stream_id)
            self.schedule_flush()

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        self._remove(stream_id)
        try:
            self.conn.reset_stream(stream_id, code)
        except h2.exceptions.StreamClosedError:
            return
        self.schedule_flush()
        self._close_when_idle()

    def forget(self, stream_id: int) -> None:
        self._remove(stream_id)
        self._close_when_idle()

    def _remove(self, stream_id: int) -> H2ClientStream | None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.unacked:
            # Request body bytes held for a blocked upstream: the connection window
            # gets them back, or every stream ended this way shrinks it for good.
            self.acknowledge(stream_id, stream.unacked)
            stream.unacked = None
        return stream

    def drain(self) -> None:
        """Graceful shutdown: refuse new streams, GOAWAY once the live ones have ended.

        The GOAWAY waits for idleness because clients built on `h2` (httpx2, and so the
        Python SDK) stop reading a connection the moment one arrives, live streams and
        all; streams opened meanwhile get REFUSED_STREAM, which every client retries.
        """
        self._draining = True
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        if self._draining and not self._streams and self._transport is not None:
            self.conn.close_connection()
            self.flush()
            self._transport.close()
