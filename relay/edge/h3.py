"""HTTP/3 towards clients, on aioquic's H3 layer over `quic_listener`.

One QUIC connection carries many `H3ClientStream`s, each the `ClientSide` of its own
`RelayStream`, exactly as on HTTP/2. aioquic buffers whatever is written to a stream
without limit, so backpressure is ours: a stream whose unacknowledged response bytes
pass a high-water mark pauses its own upstream until the client's ACKs bring it back
under the low-water mark.
"""

from __future__ import annotations

import asyncio
import logging

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import (
    CONNECTION_SPECIFIC_HEADERS,
    H3_ALPN,
    ErrorCode,
    FrameType,
    H3Connection,
    Setting,
)
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, stream_is_unidirectional
from aioquic.quic.events import (
    ConnectionTerminated,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.stream import QuicStreamSender

from relay.core.errors import BadRequest, HeadersTooLarge
from relay.core.exchange import BodyWriter, EdgeStream, Headers, RequestHead
from relay.core.headers import split_request_fields
from relay.edge.context import EdgeContext
from relay.edge.quic import QuicListener, QuicSession
from relay.ops.config import RelayConfig

log = logging.getLogger("sse_relay")

# Unacknowledged response bytes per stream: past HIGH its upstream pauses, below LOW
# it resumes (the HTTP/2 adapter's socket buffer marks).
WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024
# Bytes a request stream may carry before its header block is complete. Past
# --max-header-bytes the stream gets a 431; this far past it (aioquic would buffer an
# endless HEADERS frame) the stream is refused with H3_EXCESSIVE_LOAD, unread.
HEADERS_CEILING = 1 << 20
# Response fields that make an HTTP/3 message malformed (RFC 9114 4.2).
_NOT_FORWARDED = CONNECTION_SPECIFIC_HEADERS
_DATA_FRAME = encode_uint_var(FrameType.DATA)


def quic_configuration(config: RelayConfig) -> QuicConfiguration:
    """QUIC for the HTTP/3 listener: the TLS listener's certificate, ALPN h3."""
    assert config.tls_cert is not None and config.tls_key is not None
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=H3_ALPN, idle_timeout=config.quic_idle_timeout
    )
    configuration.load_cert_chain(config.tls_cert, config.tls_key)
    return configuration


async def serve_h3(
    context: EdgeContext, host: str, port: int, *, reuse_port: bool = False
) -> QuicListener:
    """Listen for HTTP/3 on UDP `host`:`port` (shared with other workers: `reuse_port`)."""
    # aioquic logs every handshake at INFO; its warnings (peers breaking QUIC) stay.
    logging.getLogger("quic").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    _, listener = await loop.create_datagram_endpoint(
        lambda: QuicListener(
            quic_configuration(context.config),
            lambda session: H3Protocol(context, session),
            context.metrics,
        ),
        local_addr=(host, port),
        reuse_port=reuse_port,
    )
    return listener


class _H3Connection(H3Connection):
    """aioquic's H3 layer, also advertising the relay's header-size limit.

    aioquic has no public way to send SETTINGS_MAX_FIELD_SECTION_SIZE (RFC 9114 4.2.2),
    which lets clients refuse oversize headers before sending them.
    """

    def __init__(self, quic: QuicConnection, max_field_section_size: int) -> None:
        self._max_field_section_size = max_field_section_size  # read by super().__init__
        super().__init__(quic)

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings[Setting.MAX_FIELD_SECTION_SIZE] = self._max_field_section_size
        return settings


# aioquic keeps every byte written to a stream until the client acknowledges it, and
# offers no public view of that: the two functions below read its stream internals.


def _unacked(sender: QuicStreamSender) -> int:
    """Response bytes written and not yet acknowledged: what the stream costs us."""
    return len(sender._buffer)


def _all_acknowledged(quic: QuicConnection) -> bool:
    """Every request stream's response (or reset) has reached the client."""
    return all(
        quic_stream.sender.is_finished
        for stream_id, quic_stream in quic._streams.items()
        if not stream_is_unidirectional(stream_id)
    )


class H3ClientStream:
    """One HTTP/3 request stream as the relay core's `ClientSide`."""

    __slots__ = ("_owner", "_sender", "id", "paused", "relay", "request_ended")

    def __init__(self, owner: H3Protocol, stream_id: int, sender: QuicStreamSender) -> None:
        self._owner = owner
        self._sender = sender
        self.id = stream_id
        self.relay: EdgeStream | None = None
        self.paused = False
        self.request_ended = False

    # Each write checks the stream is still ours: after a client's STOP_SENDING aioquic
    # refuses writes, and the core, told at once, may still be unwinding.
    def send_head(self, status: int, headers: Headers) -> None:
        if self.id in self._owner.streams:
            block = [(b":status", b"%d" % status)]
            block += [(k, v) for k, v in headers if k not in _NOT_FORWARDED]
            self._owner.h3.send_headers(self.id, block)
            self._owner.session.schedule_transmit()

    def body_writer(self) -> BodyWriter:
        """The native path hands each piece to `send_body` (relay.core.exchange)."""
        return BodyWriter(self.send_body, chunked=False)

    def send_body(self, data: bytes) -> None:
        owner = self._owner
        if not data or self.id not in owner.streams:
            return
        # The DATA frame by hand: h3.send_data would copy the payload twice more, and
        # takes only bytes where h11 hands over bytearrays. It changes no H3 state.
        owner.quic.send_stream_data(self.id, _DATA_FRAME + encode_uint_var(len(data)))
        owner.quic.send_stream_data(self.id, data)
        owner.session.schedule_transmit()
        if not self.paused and _unacked(self._sender) > WRITE_HIGH and self.relay is not None:
            self.paused = True
            owner.paused.add(self)
            self.relay.on_client_paused()

    def send_end(self) -> None:
        if self.id in self._owner.streams:
            self._owner.h3.send_data(self.id, b"", end_stream=True)
            self._owner.close_stream(self.id, reading=not self.request_ended)

    def abort(self) -> None:
        if self.id in self._owner.streams:
            self._owner.close_stream(
                self.id, ErrorCode.H3_INTERNAL_ERROR, reading=not self.request_ended
            )

    # aioquic grants request-body flow control credit as data arrives, with no way to
    # hold it back; the body is bounded by --max-body-bytes, and the core keeps it
    # whole anyway until the response starts (for retries).
    def pause_request_body(self) -> None:
        pass

    def resume_request_body(self) -> None:
        pass

    def check_resume(self) -> None:
        if _unacked(self._sender) < WRITE_LOW:
            self.paused = False
            self._owner.paused.discard(self)
            if self.relay is not None:
                self.relay.on_client_resumed()


class H3Protocol:
    """One QUIC connection speaking HTTP/3: the `QuicHandler` for its session."""

    def __init__(self, context: EdgeContext, session: QuicSession) -> None:
        self._context = context
        self.session = session
        self.quic = session.quic
        self._h3: _H3Connection | None = None
        self.streams: dict[int, H3ClientStream] = {}
        #: Streams over their high-water mark, checked again after every send.
        self.paused: set[H3ClientStream] = set()
        # Request streams whose header block is still arriving: bytes so far, and the
        # timer that resets the stream if the block is not complete in time.
        self._head_bytes: dict[int, int] = {}
        self._head_timers: dict[int, asyncio.TimerHandle] = {}
        # Streams we asked the client to stop sending on: what still comes is dropped.
        self._ignored: set[int] = set()
        self._draining = False
        self._closed = False
        context.streams.on_drain.add(self.drain)

    @property
    def h3(self) -> _H3Connection:
        # Streams exist only after HeadersReceived, which needs the H3 layer.
        assert self._h3 is not None
        return self._h3

    # -- QuicHandler ------------------------------------------------------------------

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            self._h3 = _H3Connection(self.quic, self._context.config.max_header_bytes)
        elif isinstance(event, StreamDataReceived) and not self._wanted(event):
            return
        if self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                self._dispatch(h3_event)
        if isinstance(event, StreamReset | StopSendingReceived):
            self._forget_head(event.stream_id)
            self._ignored.discard(event.stream_id)
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                # The client cancelled: reset our half too (a no-op after STOP_SENDING,
                # where aioquic already did), and stop upstream at once.
                self.close_stream(
                    stream.id,
                    ErrorCode.H3_REQUEST_CANCELLED,
                    reading=not stream.request_ended and isinstance(event, StopSendingReceived),
                )
                if stream.relay is not None:
                    stream.relay.on_client_gone()
        elif isinstance(event, ConnectionTerminated):
            self._context.streams.on_drain.discard(self.drain)
            for stream_id in list(self._head_timers):
                self._forget_head(stream_id)
            streams, self.streams = self.streams, {}
            self.paused.clear()
            for stream in streams.values():
                if stream.relay is not None:
                    stream.relay.on_client_gone()

    def transmitted(self) -> None:
        if self.paused:
            for stream in list(self.paused):
                stream.check_resume()
        if self._draining:
            self._close_when_idle()

    # -- events -> core ---------------------------------------------------------------

    def _wanted(self, event: StreamDataReceived) -> bool:
        """Drop data we asked the client to stop sending; bound unfinished header blocks."""
        stream_id = event.stream_id
        if stream_id in self._ignored:
            if event.end_stream:
                self._ignored.discard(stream_id)
            return False
        if stream_id in self.streams or stream_is_unidirectional(stream_id):
            return True
        size = self._head_bytes.get(stream_id, 0) + len(event.data)
        if stream_id not in self._head_timers:
            timeout = self._context.config.header_timeout
            self._head_timers[stream_id] = asyncio.get_running_loop().call_later(
                timeout, self._head_timed_out, stream_id
            )
        if size <= HEADERS_CEILING:
            self._head_bytes[stream_id] = size
            return True
        self._forget_head(stream_id)
        self.close_stream(stream_id, ErrorCode.H3_EXCESSIVE_LOAD, reading=True)
        return False

    def _forget_head(self, stream_id: int) -> None:
        self._head_bytes.pop(stream_id, None)
        timer = self._head_timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    def _head_timed_out(self, stream_id: int) -> None:
        """A request stream's header block stalled: the stream is reset, unanswered."""
        self._head_timers.pop(stream_id, None)
        if self._closed or self._head_bytes.pop(stream_id, None) is None:
            return
        log.warning(
            "reset HTTP/3 stream %d: request head not received within %g s",
            stream_id,
            self._context.config.header_timeout,
        )
        self.close_stream(stream_id, ErrorCode.H3_REQUEST_INCOMPLETE, reading=True)

    def _dispatch(self, event: H3Event) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None or stream.relay is None:
                return
            if event.data:
                stream.relay.on_request_body(event.data)
            if event.stream_ended:
                stream.request_ended = True
                stream.relay.on_request_end()
        elif isinstance(event, HeadersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self._open_stream(event)
            elif event.stream_ended and stream.relay is not None:
                stream.request_ended = True  # trailers end the request; they are dropped
                stream.relay.on_request_end()

    def _open_stream(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
        self._forget_head(stream_id)
        if self._draining:
            # Safe for every client to retry (RFC 9114 8.1): nothing was relayed.
            self.close_stream(
                stream_id, ErrorCode.H3_REQUEST_REJECTED, reading=not event.stream_ended
            )
            return
        fields = split_request_fields(event.headers)
        # The QUIC stream exists: the client's HEADERS arrived on it (see _unacked).
        sender = self.quic._streams[stream_id].sender
        stream = H3ClientStream(self, stream_id, sender)
        stream.request_ended = event.stream_ended
        self.streams[stream_id] = stream
        peer = self.quic.get_peer_address()
        client_ip = peer[0] if isinstance(peer, tuple) else None
        head = RequestHead(
            fields.method,
            fields.target,
            fields.headers,
            client_ip,
            has_body=not event.stream_ended,
            http_version="3",
        )
        relay = stream.relay = self._context.streams.open(stream, head)
        if fields.malformed is not None:
            relay.refuse(BadRequest(f"malformed HTTP/3 request: {fields.malformed}"))
            return
        if fields.size > self._context.config.max_header_bytes:
            relay.refuse(HeadersTooLarge("request header fields too large"))
            return
        self._context.streams.start(relay)
        if event.stream_ended:
            relay.on_request_end()

    # -- for the streams --------------------------------------------------------------

    def close_stream(
        self, stream_id: int, reset: ErrorCode | None = None, *, reading: bool
    ) -> None:
        """Our half of a stream is done: ended cleanly, or reset with `reset`.

        While the client is still sending (`reading`) it is asked to stop (H3_NO_ERROR
        after a complete response, RFC 9114 4.1) and whatever still comes is dropped.
        """
        if reset is not None:
            self.quic.reset_stream(stream_id, reset)
        if reading:
            self.quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR if reset is None else reset)
            self._ignored.add(stream_id)
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self.paused.discard(stream)
        self.session.schedule_transmit()
        self._close_when_idle()

    def drain(self) -> None:
        """Graceful shutdown: refuse new streams, close the connection once idle.

        aioquic's H3 layer cannot send GOAWAY, so streams opened meanwhile are reset with
        H3_REQUEST_REJECTED, which every client may retry, and the connection closes
        with H3_NO_ERROR once its live streams have ended and been acknowledged (a
        QUIC close discards whatever is still unacknowledged).
        """
        self._draining = True
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        if (
            self._draining
            and not self._closed
            and not self.streams
            and _all_acknowledged(self.quic)
        ):
            self._closed = True
            self.quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="draining")
            self.session.schedule_transmit()
