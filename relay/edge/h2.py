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
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from relay.core.errors import BadRequest, HeadersTooLarge
from relay.core.exchange import RequestHead
from relay.core.headers import split_request_fields
from relay.edge.context import EdgeContext
from relay.edge.h2_endpoint import GracefulH2Connection, H2Endpoint
from relay.edge.h2_guard import (
    CONTROL_BURST,
    CONTROL_PER_SECOND,
    OUTPUT_BACKLOG,
    READ_SLICE,
    RESETS_BURST,
    RESETS_PER_SECOND,
    RateLimit,
    header_block_pending,
    oversized_frame_pending,
)
from relay.edge.h2_stream import H2ClientStream

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
# Header blocks past our advertised limit get a per-stream 431; this far past it (an
# HPACK bomb) h2 ends the connection. Decoding one block is one uninterrupted piece of
# work, so the margin also bounds how long one client can hold the loop.
HPACK_MARGIN = 64 * 1024


class H2Protocol(H2Endpoint):
    """One client connection speaking HTTP/2."""

    def __init__(self, context: EdgeContext) -> None:
        self._context = context
        # Malformed requests are stream errors (RFC 9113 8.1.1): `relay.core.request_rules`
        # and `split_request_fields` find them and answer 400 on that stream only, where
        # h2's own validation would end the whole connection.
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False
        )
        super().__init__(GracefulH2Connection(config))
        self._client_ip: str | None = None
        self._streams: dict[int, H2ClientStream] = {}
        self._max_streams = min(MAX_CONCURRENT_STREAMS, context.config.max_streams)
        self._draining = False
        self._closed = False
        now = self._loop.time()
        self._resets = RateLimit(RESETS_BURST, RESETS_PER_SECOND, now)
        self._control = RateLimit(CONTROL_BURST, CONTROL_PER_SECOND, now)
        # Input read but not yet handled (more than one slice came in one read).
        self._backlog: memoryview | None = None
        self._reading_paused = False
        # Every stream's window may have grown: push them all after this read.
        self._push_all = False
        # Armed while a frame header or header block is incomplete.
        self._head_timer: asyncio.TimerHandle | None = None

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
        hpack_ceiling = self._context.config.max_header_bytes + HPACK_MARGIN
        enforced = {
            **advertised,
            codes.MAX_CONCURRENT_STREAMS: self._max_streams * _STREAMS_CEILING_FACTOR,
            codes.MAX_HEADER_LIST_SIZE: hpack_ceiling,
        }
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=enforced)
        self.conn.decoder.max_header_list_size = hpack_ceiling
        self.flush()
        self._context.streams.on_drain.add(self.drain)

    def data_received(self, data: bytes) -> None:
        if self._backlog is not None:  # read before the pause took effect
            self._backlog = memoryview(bytes(self._backlog) + data)
            return
        self._receive(memoryview(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self._context.streams.on_drain.discard(self.drain)
        self._cancel_head_timer()
        self._drop_streams()

    def _receive(self, data: memoryview) -> None:
        """Handle at most one slice of input now; the rest waits for the next loop pass."""
        if len(data) > READ_SLICE:
            self._backlog = data[READ_SLICE:]
            data = data[:READ_SLICE]
            self._loop.call_soon(self._receive_backlog)
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.warning("HTTP/2 protocol error from %s: %s", self._client_ip, exc)
            self.flush()  # h2 queued a GOAWAY naming the error
            self._terminate()
            return
        for event in events:
            if self._closed:
                return
            self._dispatch(event)
        if oversized_frame_pending(self.conn):
            log.warning("HTTP/2 frame over the size limit from %s", self._client_ip)
            self._go_away(ErrorCodes.FRAME_SIZE_ERROR, b"frame too large")
            return
        if self._push_all:
            # Once per read, however many connection-level WINDOW_UPDATEs (or SETTINGS)
            # came in it: each would otherwise walk every stream.
            self._push_all = False
            for stream in list(self._streams.values()):
                stream.push()
        self.flush()
        self._update_reading()

    def _receive_backlog(self) -> None:
        backlog, self._backlog = self._backlog, None
        if backlog is not None and not self._closed:
            self._receive(backlog)

    def _update_reading(self) -> None:
        """Read while there is no backlog and the client takes what we send it; watch
        for a stalled header block only while reading."""
        transport = self._transport
        if transport is None or self._closed:
            return
        paused = self._backlog is not None or transport.get_write_buffer_size() > OUTPUT_BACKLOG
        if paused != self._reading_paused:
            self._reading_paused = paused
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()
        if paused or not header_block_pending(self.conn):
            self._cancel_head_timer()
        elif self._head_timer is None:
            timeout = self._context.config.header_timeout
            self._head_timer = self._loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        timeout = self._context.config.header_timeout
        log.warning(
            "closed HTTP/2 connection from %s: a header block stalled for %g s",
            self._client_ip,
            timeout,
        )
        self._context.metrics.connection_closed("header_timeout")
        self._go_away(ErrorCodes.NO_ERROR, b"request head not received in time")

    def _go_away(self, code: ErrorCodes, reason: bytes) -> None:
        if self._closed:
            return
        self.conn.close_connection(error_code=code, additional_data=reason)
        self.flush()
        self._terminate()

    def _calm_down(self, reason: str, what: str) -> None:
        """A flood: GOAWAY(ENHANCE_YOUR_CALM), and every stream of the connection ends."""
        log.warning("closed HTTP/2 connection from %s: %s", self._client_ip, what)
        self._context.metrics.connection_closed(reason)
        self._go_away(ErrorCodes.ENHANCE_YOUR_CALM, what.encode())

    def _drop_streams(self) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            if stream.relay is not None:
                stream.relay.on_client_gone()

    def _terminate(self) -> None:
        """The connection is dead to h2: its streams end now. The transport may linger
        (a slow reader's bytes still buffered), and writing for a stream of a closed
        connection would raise into whoever called, a shared upstream connection too."""
        self._closed = True
        self._backlog = None
        self._cancel_head_timer()
        self._drop_streams()
        if self._transport is not None:
            self._transport.close()

    def write_pause_changed(self) -> None:
        for stream in list(self._streams.values()):
            stream.update_pause()
        if not self.write_paused:
            self._update_reading()

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
                self._push_all = True
            elif (stream := self._streams.get(event.stream_id)) is not None:
                stream.push()
        elif isinstance(event, h2.events.StreamReset):
            stream = self._remove(event.stream_id)
            if stream is not None and stream.relay is not None:
                stream.relay.on_client_gone()
            if not self._resets.take(self._loop.time()):
                self._calm_down("rapid_reset", "the client resets streams too fast")
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if not self._control.take(self._loop.time()):
                self._calm_down("control_flood", "SETTINGS flood")
                return
            self._push_all = True
        elif isinstance(event, h2.events.PingReceived):
            if not self._control.take(self._loop.time()):
                self._calm_down("control_flood", "PING flood")
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
        fields = split_request_fields(event.headers or ())
        stream = H2ClientStream(self, stream_id)
        self._streams[stream_id] = stream
        relay = self._context.streams.open(
            stream,
            RequestHead(
                fields.method,
                fields.target,
                fields.headers,
                self._client_ip,
                has_body=event.stream_ended is None,
                http_version="2",
            ),
        )
        stream.relay = relay
        if fields.malformed is not None:
            relay.refuse(BadRequest(f"malformed HTTP/2 request: {fields.malformed}"))
            return
        if fields.size > self._context.config.max_header_bytes:
            relay.refuse(HeadersTooLarge("request header fields too large"))
            return
        self._context.streams.start(relay)
        stream.update_pause()

    # -- for the streams --------------------------------------------------------------

    @property
    def alt_svc(self) -> bytes | None:
        """What responses advertise as Alt-Svc (HTTP/3), if anything."""
        return self._context.alt_svc

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # a stream gone by now
                self.conn.acknowledge_received_data(size, stream_id)
            self.schedule_flush()

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        self._remove(stream_id)
        try:
            self.conn.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:  # closed already, or forgotten by h2
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
