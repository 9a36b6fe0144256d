"""One HTTP/1.1 connection to upstream: h11 client over a raw asyncio Protocol.

h11 writes requests and parses response heads; response bodies bypass it, because
they are the hot path: from the head's end to the body's, the transport belongs to
the body's decoder, a `BufferedProtocol` (relay/upstream/body_pump.py) that uvloop
reads into directly.
"""

from __future__ import annotations

import asyncio
from typing import cast

import h11

from relay.core.errors import RelayError, upstream_failure
from relay.core.exchange import (
    MAX_RESPONSE_HEAD,
    BodyWriter,
    ConnectionPool,
    Headers,
    ResponseSink,
)
from relay.upstream.body_decoder import BodyDecoder, BodyFramingError, ExpressBody
from relay.upstream.body_pump import body_decoder


def _client_connection() -> h11.Connection:
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)


class Http1Upstream(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection carrying one exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._h11 = _client_connection()
        self._transport: asyncio.Transport | None = None
        self._sink: ResponseSink | None = None
        self._method = b""
        self._head_seen = False
        # Set from the response head to the end of its body, which it decodes instead of
        # h11; meanwhile it is the transport's protocol, and tells us what happens.
        self._body: BodyDecoder | None = None
        # The body, while it does the stream's per-piece work itself (`express`), and
        # after it ended, until the next exchange: the stream asks what it did.
        self._express: ExpressBody | None = None
        self.closed = False

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # Heads only: once a head is parsed, its body's decoder reads the transport.
        self._h11.receive_data(data)
        self._drain_events()

    def eof_received(self) -> bool:
        body = self._body
        if body is None:
            # Lets h11 notice a response cut off in its head.
            self._h11.receive_data(b"")
            self._drain_events()
            return False
        try:
            body.feed_eof()  # ends a close-delimited body, or finds a truncated one
        except BodyFramingError as exc:
            self._fail(f"upstream broke HTTP/1.1: {exc}")
            return False
        self._body = None
        self._take_transport()
        self._end_exchange(reusable=False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        sink, self._sink = self._sink, None
        if sink is not None:
            reason = f": {exc}" if exc else ""
            sink.on_upstream_failed(self._lost("upstream closed the connection", reason))

    # -- from the body's decoder (relay.upstream.body_decoder.PumpOwner) ---------------

    def body_ended(self) -> None:
        body, self._body = self._body, None
        self._take_transport()
        # Bytes past the response's end were never asked for: a broken upstream.
        self._end_exchange(reusable=body is not None and not body.trailing)

    def body_failed(self, message: str) -> None:
        self._body = None
        self._fail(f"upstream broke HTTP/1.1: {message}")

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.on_upstream_paused()

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.on_upstream_resumed()

    # -- UpstreamExchange -------------------------------------------------------------

    def start(
        self, method: bytes, target: bytes, headers: Headers, has_body: bool, sink: ResponseSink
    ) -> Http1Upstream:
        """Send a request head; the connection itself is the exchange."""
        assert self._transport is not None
        self._sink = sink
        self._method = method
        self._head_seen = False
        self._express = None
        if has_body and all(name != b"content-length" for name, _ in headers):
            # A body of unknown length (HTTP/2, or chunked from the client): h11 would
            # take a request without framing headers as having none at all.
            headers = [*headers, (b"transfer-encoding", b"chunked")]
        request = h11.Request(method=method, target=target, headers=headers)
        self._transport.write(self._h11.send(request))
        return self

    def send_body(self, data: bytes) -> None:
        if self._transport is not None and self._h11.our_state is h11.SEND_BODY:
            self._transport.writelines(
                self._h11.send_with_data_passthrough(h11.Data(data=data)) or ()
            )

    def send_end(self) -> None:
        if self._transport is not None and self._h11.our_state is h11.SEND_BODY:
            self._transport.write(self._h11.send(h11.EndOfMessage()))

    def abort(self) -> None:
        """Close at once (never back to the pool): the exchange is abandoned."""
        self._sink = None
        self.closed = True
        if self._body is not None:
            self._body.stop()  # the rest of a read being decoded goes nowhere
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    # -- the express path (relay.core.exchange.ExpressUpstream) -----------------------

    def express(self, writer: BodyWriter, scanner: object, last_byte: float) -> bool:
        """Hand the body's per-piece work to the Cython pump, if that is what decodes it."""
        body = self._body
        if self.closed or not isinstance(body, ExpressBody):
            return False
        body.express(writer.write, writer.chunked, scanner, last_byte, writer.journal)
        self._express = body
        return True

    def redirect(self, writer: BodyWriter) -> None:
        if self._express is not None:
            self._express.redirect(writer.write, writer.chunked, writer.journal)

    def take_progress(self) -> tuple[int, float, float]:
        """What the express path did since the last call (also once the body ended)."""
        express = self._express
        return (0, 0.0, 0.0) if express is None else express.take_progress()

    def rebase(self, last_byte: float) -> None:
        if self._express is not None:
            self._express.rebase(last_byte)

    # -- internals --------------------------------------------------------------------

    def _lost(self, message: str, reason: str = "") -> RelayError:
        # Clients are told what happened; which upstream, only the log.
        return upstream_failure(message, self._pool.url + reason, head_seen=self._head_seen)

    def _drain_events(self) -> None:
        conn = self._h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._fail(f"upstream broke HTTP/1.1: {exc}")
                return
            if isinstance(event, h11.Response):
                self._on_head(event)
                return
            if (
                event is h11.NEED_DATA
                or event is h11.PAUSED
                or isinstance(event, h11.ConnectionClosed)
            ):
                return
            # InformationalResponse (100 Continue and the like) is not relayed.

    def _on_head(self, response: h11.Response) -> None:
        self._head_seen = True
        if self._sink is not None:
            self._sink.on_response_head(response.status_code, list(response.headers))
        if self.closed or self._h11.their_state is not h11.SEND_BODY:
            return  # aborted by the sink, or (CONNECT) not a response h11 frames
        # Body bytes that came with the head are still in h11's buffer.
        rest = self._h11.trailing_data[0]
        body = body_decoder(self._method, response.status_code, response.headers, self._deliver)
        if body is None:
            self._end_exchange(reusable=not rest)
            return
        self._body = body
        if rest:
            try:
                complete = body.feed(rest)
            except BodyFramingError as exc:
                self.body_failed(str(exc))
                return
            if complete:
                self.body_ended()
                return
        if not self.closed and self._transport is not None:  # not aborted meanwhile
            body.owner = self
            # uvloop takes any object with get_buffer as a BufferedProtocol, the
            # Cython pump too (asyncio's own loop wants a subclass, as the twin is).
            self._transport.set_protocol(cast(asyncio.BufferedProtocol, body))

    def _take_transport(self) -> None:
        """The body is over: reads come to this protocol again (the next head)."""
        if self._transport is not None and self._transport.get_protocol() is not self:
            self._transport.set_protocol(self)

    def _deliver(self, data: bytes) -> None:
        # The sink may abort us between two chunks of one read: the rest is dropped.
        if self._sink is not None:
            self._sink.on_response_body(data)

    def _end_exchange(self, *, reusable: bool) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.on_response_end()
        # h11 saw the head, so a `connection: close` or HTTP/1.0 answer has already
        # made our state MUST_CLOSE; DONE means our request went out whole, keep-alive.
        if reusable and self._h11.our_state is h11.DONE and not self.closed:
            # h11 never saw the body, so it still waits for the body's end: a fresh h11
            # connection (cheap) starts the next exchange, as start_next_cycle() would.
            self._h11 = _client_connection()
            # The last chunk may have arrived while the client asked for a pause: the
            # connection goes back to the pool readable, or its next exchange hangs.
            self.resume_reading()
            self._pool.release(self)
        elif self._transport is not None:
            self.closed = True
            self._transport.close()

    def _fail(self, message: str) -> None:
        sink, self._sink = self._sink, None
        self.abort()
        if sink is not None:
            sink.on_upstream_failed(self._lost(message))
