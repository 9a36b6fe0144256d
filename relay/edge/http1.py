"""HTTP/1.1 towards clients: h11 over a hand-written asyncio Protocol.

Turns h11 events into `RelayStream` calls and implements `ClientSide` for the stream
it carries (one at a time; pipelined requests wait their turn).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from http import HTTPStatus
from typing import cast

import h11

from relay.core.errors import (
    BadRequest,
    BodyTooLarge,
    HeadersTooLarge,
    HeaderTimeout,
    RelayError,
    VersionNotSupported,
    error_response,
    new_request_id,
)
from relay.core.exchange import BodyWriter, EdgeStream, Headers, RequestHead
from relay.core.headers import header_value
from relay.edge.context import EdgeContext
from relay.edge.native_out import chunk_out
from relay.ops.access_log import redact_text
from relay.upstream.body_decoder import NO_BODY_STATUS

# The client's send buffer: past HIGH the stream stops reading upstream (backpressure).
WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024
# An idle keep-alive connection is closed after this long: longer than the idle timeout
# of common load balancers (60-350 s), so that they, not we, close first.
IDLE_SECONDS = 620.0
# After an answer sent while the client may still be sending, input is read and dropped
# for this long before closing: closing with unread input makes the kernel send RST,
# which can destroy the answer before the client reads it.
LINGER_SECONDS = 2.0
log = logging.getLogger("sse_relay")
# h11 unfolds obs-fold (RFC 9112 5.2) before we see a header; in a framing header a
# fold is a classic way to make two parsers disagree on where a body ends.
_FOLDED_FRAMING = re.compile(
    rb"\n(?:content-length|transfer-encoding)[ \t]*:[^\n]*\n[ \t]", re.IGNORECASE
)
# SO_LINGER on, 0 s: close() sends RST.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


def _origin_form(target: bytes) -> bytes:
    """The path of an absolute-form target (sent by clients that take the relay for an
    HTTP proxy), which is what upstream must see; any other target as it is."""
    if not target[:8].lower().startswith((b"http://", b"https://")):
        return target
    authority = target.index(b"//") + 2
    ends = [i for i in (target.find(b"/", authority), target.find(b"?", authority)) if i != -1]
    if not ends:
        return b"/"
    rest = target[min(ends) :]
    return rest if rest.startswith(b"/") else b"/" + rest  # "http://host?q" -> "/?q"


def pending_chunk_size(conn: h11.Connection) -> int:
    """Bytes left of the request body chunk h11 is reading (0 outside one).

    h11 shows no chunk sizes, and waits for a whole announced chunk before giving up
    on it; its ChunkedReader keeps the count in `_bytes_in_chunk`, guarded by
    tests/test_library_internals.py.
    """
    return int(getattr(conn._reader, "_bytes_in_chunk", 0))


class Http1Protocol(asyncio.Protocol):
    """One client connection speaking HTTP/1.1."""

    def __init__(self, context: EdgeContext) -> None:
        self._context = context
        self._h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=context.config.max_header_bytes
        )
        self._transport: asyncio.Transport | None = None
        # Waiting for a request head: a timer, and whether any byte of it came yet.
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False
        # The raw bytes of the request head being read: h11 hides its size and folds.
        self._raw_head = b""
        self._lingering = False
        self._client_ip: str | None = None
        self._stream: EdgeStream | None = None
        self._method = b""
        # True when we frame the body ourselves as chunked (the hot path skips h11).
        self._chunked = False

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        peer = self._transport.get_extra_info("peername")
        self._client_ip = peer[0] if isinstance(peer, tuple) else None
        self._await_head(self._context.config.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._lingering or self._h11.their_state is h11.MUST_CLOSE:
            # Bytes after a request that ends the connection (Connection: close,
            # HTTP/1.0) are ignored, as RFC 9112 9.6 asks, not parsed as a request.
            return
        if self._head_timer is not None and not self._head_started:
            # The first byte of a request head starts the slowloris clock.
            self._head_started = True
            self._await_head(self._context.config.header_timeout)
        if self._h11.their_state is h11.IDLE:
            self._raw_head += data
        self._h11.receive_data(data)
        self._drain_events()

    def eof_received(self) -> bool:
        # HTTP clients do not half-close while awaiting a response: EOF means the client
        # left, and upstream must stop now rather than at our next write.
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.on_client_gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.on_client_gone()

    def pause_writing(self) -> None:
        if self._stream is not None:
            self._stream.on_client_paused()

    def resume_writing(self) -> None:
        if self._stream is not None:
            self._stream.on_client_resumed()

    # -- h11 events -> core -----------------------------------------------------------

    def _drain_events(self) -> None:
        conn = self._h11
        while self._transport is not None and not self._transport.is_closing():
            if self._lingering or conn.their_state is h11.MUST_CLOSE:
                return  # answered and closing, or nothing may follow this request
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc)
                return
            if isinstance(event, h11.Data):
                if self._stream is not None:
                    self._stream.on_request_body(event.data)
            elif isinstance(event, h11.Request):
                self._open_stream(event)
            elif isinstance(event, h11.EndOfMessage):
                if self._stream is not None:
                    self._stream.on_request_end()
                self._maybe_next_cycle()
            elif event is h11.NEED_DATA:
                if pending_chunk_size(conn) > self._context.config.max_body_bytes:
                    # h11 would wait for all of an announced chunk (even 2**72 bytes).
                    self._refuse_error(BodyTooLarge("a request body chunk exceeds the limit"))
                return
            elif event is h11.PAUSED:
                # A pipelined request waits until this response is done.
                self._transport.pause_reading()
                return
            elif isinstance(event, h11.ConnectionClosed):
                return

    def _framing_error(self, request: h11.Request) -> RelayError | None:
        """What h11 accepts but a relay must refuse: anything on which two parsers
        could disagree about where this request ends and the next begins."""
        raw, self._raw_head = self._raw_head, b""
        end = _HEAD_END.search(raw)
        head = raw if end is None else raw[: end.end()]
        if request.http_version not in (b"1.0", b"1.1"):
            version = request.http_version.decode(errors="replace")
            return VersionNotSupported(f"HTTP/{version} is not spoken on an HTTP/1 connection")
        if len(head) > self._context.config.max_header_bytes:
            return HeadersTooLarge("request header fields too large")
        encoding = header_value(request.headers, b"transfer-encoding")
        if encoding is not None and header_value(request.headers, b"content-length") is not None:
            return BadRequest("a request with both Content-Length and Transfer-Encoding")
        if encoding is not None and request.http_version == b"1.0":
            return BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if _FOLDED_FRAMING.search(head):
            return BadRequest("a folded Content-Length or Transfer-Encoding header")
        return None

    def _open_stream(self, request: h11.Request) -> None:
        self._cancel_head_timer()
        self._method = request.method
        error = self._framing_error(request)
        if error is not None:
            log.warning("refused request from %s: %d %s", self._client_ip, error.status, error)
            self._context.metrics.refused(error.status)
            self._write_refusal(error)
            return
        if self._h11.they_are_waiting_for_100_continue:
            self._write(self._h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        headers = list(request.headers)
        length = header_value(headers, b"content-length")
        has_body = header_value(headers, b"transfer-encoding") is not None or (
            length is not None and length != b"0"
        )
        target = _origin_form(request.target)
        head = RequestHead(
            request.method,
            target,
            headers,
            self._client_ip,
            has_body,
            http_version=request.http_version.decode(),
        )
        self._stream = self._context.streams.open(self, head)
        self._context.streams.start(self._stream)

    def _await_head(self, timeout: float) -> None:
        self._cancel_head_timer()
        self._head_timer = asyncio.get_running_loop().call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._transport is None:
            return
        if not self._head_started:
            self._transport.close()  # an idle keep-alive connection: nothing to answer
            return
        error = HeaderTimeout(
            f"request head not received within {self._context.config.header_timeout:g} s"
        )
        log.warning("refused connection from %s: %s", self._client_ip, error.message)
        self._context.metrics.refused(error.status)
        self._write_refusal(error)

    def _refuse(self, exc: h11.RemoteProtocolError) -> None:
        """Malformed or oversize input: answer in the API's error shape, then close."""
        self._refuse_error(
            HeadersTooLarge("request header fields too large")
            if exc.error_status_hint == 431
            # h11 quotes the offending line, which may carry the client's credentials.
            else BadRequest(f"malformed HTTP/1.1 request: {redact_text(str(exc))}")
        )

    def _refuse_error(self, error: RelayError) -> None:
        log.warning("refused connection from %s: %d %s", self._client_ip, error.status, error)
        self._context.metrics.refused(error.status)
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.on_client_gone()
        self._write_refusal(error)

    def _write_refusal(self, error: RelayError) -> None:
        """An error answer written by hand, then close: h11 frames nothing for a peer
        that broke protocol."""
        if self._transport is None or self._lingering:
            return
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            headers, body = error_response(error, new_request_id())
            if self._method == b"HEAD":
                body = b""  # the length stays: it is what a GET would have got
            if self._context.alt_svc is not None:
                headers.append((b"alt-svc", self._context.alt_svc))
            head = b"HTTP/1.1 %d %s\r\n" % (error.status, _REASONS.get(error.status, b""))
            fields = b"".join(b"%s: %s\r\n" % field for field in headers)
            self._transport.write(head + fields + b"\r\n" + body)
        self._close_lingering()

    def _close_lingering(self) -> None:
        transport = self._transport
        if transport is None or self._lingering:
            return
        self._lingering = True
        self._cancel_head_timer()
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def _maybe_next_cycle(self) -> None:
        """After a complete exchange, get ready for the next request on this connection."""
        conn = self._h11
        if self._stream is not None or self._transport is None:
            return
        if conn.our_state is h11.MUST_CLOSE or self._context.streams.draining:
            if conn.their_state is h11.DONE or conn.their_state is h11.MUST_CLOSE:
                self._transport.close()
            else:
                self._close_lingering()
        elif conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._method = b""
            # Bytes of a pipelined request may be here already: its head is then under
            # way, and the header timeout runs, not the idle one.
            self._raw_head = bytes(conn.trailing_data[0])
            self._head_started = bool(self._raw_head)
            timeout = self._context.config.header_timeout
            self._await_head(timeout if self._head_started else IDLE_SECONDS)
            self._transport.resume_reading()
            self._drain_events()

    def _write(self, data: bytes | None) -> None:
        if data and self._transport is not None:
            self._transport.write(data)

    # -- ClientSide (called by the core) ----------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        chunked = (
            self._h11.their_http_version == b"1.1"
            and self._method != b"HEAD"
            and status not in NO_BODY_STATUS
            and all(name != b"content-length" for name, _ in headers)
        )
        if chunked:
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        if self._context.streams.draining:
            headers = [*headers, (b"connection", b"close")]
        if self._context.alt_svc is not None:
            headers = [*headers, (b"alt-svc", self._context.alt_svc)]
        self._chunked = chunked
        response = h11.Response(
            status_code=status, headers=headers, reason=_REASONS.get(status, b"")
        )
        self._write(self._h11.send(response))

    def send_body(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or not data:
            return
        if self._chunked:
            # Chunk framing by hand: h11's chunked writer keeps no count, so bypassing
            # it per chunk is safe and saves an event object and a state-machine pass.
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
        elif self._h11.our_state is h11.SEND_BODY and self._method != b"HEAD":
            # A HEAD answer has no body (h11 would raise on one, the relay's own error
            # answers included); nor has one h11 already ended (204, 304).
            transport.writelines(self._h11.send_with_data_passthrough(h11.Data(data=data)) or ())

    def body_writer(self) -> BodyWriter | None:
        """When the body goes out chunked, the body pump can write each piece as
        `send_body` would (relay.core.exchange.DirectClient): on the socket from C
        (relay/edge/_h1data.pyx), or through `transport.write`."""
        if self._transport is None or not self._chunked:
            return None
        out = chunk_out(self._transport)
        if out is not None:
            return BodyWriter(out, chunked=False)
        return BodyWriter(self._transport.write, chunked=True)

    def send_end(self) -> None:
        self._stream = None
        self._write(self._h11.send(h11.EndOfMessage()))
        if self._h11.their_state is h11.SEND_BODY and self._h11.our_state is h11.DONE:
            # Answered before the request body was read: discard the rest, then reuse.
            # Reading may have been paused for a congested upstream that is gone now.
            if self._transport is not None:
                self._transport.resume_reading()
            return
        self._maybe_next_cycle()

    def abort(self) -> None:
        self._stream = None
        transport = self._transport
        if transport is not None:
            # A reset (RST), not a close (FIN): a client must not take what it got for
            # a whole response, whatever its framing says.
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.fileno() >= 0:  # uvloop's, closed: -1
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            transport.abort()

    def pause_request_body(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_request_body(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()
