"""HTTP/2 to upstream: one `h2` client connection carrying many exchanges at once.

Each `H2Exchange` is one stream, the core's `UpstreamExchange`, delivering to its own
`ResponseSink`. A request body waits in its stream's queue for upstream's window.
Response data is acknowledged as it is delivered, except while the core has paused
that stream: upstream then stops sending to that stream only, and the stream's window
bounds what it holds. Frames for all streams leave in one write per loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import cast

import h2.config
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from relay.core.errors import UpstreamUnavailable, upstream_failure
from relay.core.exchange import MAX_RESPONSE_HEAD, ConnectionPool, Headers, ResponseSink
from relay.edge.h2_endpoint import GracefulH2Connection, H2Endpoint, SendQueue, send_queued

#: Response bytes upstream may send a stream ahead of our acknowledgements: the most a
#: paused stream holds in memory.
STREAM_WINDOW = 256 * 1024
#: Each stream is bounded by its own window; the connection's must never be the one
#: that stalls the others.
CONNECTION_WINDOW = 1 << 30
_INITIAL_WINDOW = 65_535


class H2Exchange:
    """One request on an HTTP/2 connection to upstream, as the core drives it."""

    __slots__ = (
        "_blocked",
        "_end_asked",
        "_owner",
        "_pending",
        "head_seen",
        "id",
        "paused",
        "request_ended",
        "sink",
        "unacked",
    )

    def __init__(
        self, owner: H2Upstream, stream_id: int, sink: ResponseSink, request_ended: bool
    ) -> None:
        self._owner = owner
        self.id = stream_id
        #: None once the exchange is over (ended, failed or aborted).
        self.sink: ResponseSink | None = sink
        self._pending: SendQueue = deque()
        self._end_asked = self.request_ended = request_ended
        self._blocked = False
        self.head_seen = False
        self.paused = False
        #: Response bytes delivered while paused; acknowledged on resume.
        self.unacked = 0

    # -- UpstreamExchange -------------------------------------------------------------

    def send_body(self, data: bytes) -> None:
        self._pending.append(data)
        self.push()

    def send_end(self) -> None:
        self._end_asked = True
        self.push()

    def abort(self) -> None:
        """RST_STREAM(CANCEL) for this stream only; the connection carries the others."""
        self._owner.cancel(self)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        unacked, self.unacked = self.unacked, 0
        self._owner.acknowledge(self.id, unacked)

    # -- for the connection -----------------------------------------------------------

    def push(self) -> None:
        """Send what upstream's window allows; pause the client's body while bytes wait."""
        if self.sink is None:
            return
        conn = self._owner.conn
        sent = send_queued(conn, self.id, self._pending)
        if not self._pending and self._end_asked and not self.request_ended:
            self.request_ended = True
            conn.end_stream(self.id)
        self._owner.schedule_flush(sent)
        self.update_blocked()

    def update_blocked(self) -> None:
        blocked = bool(self._pending) or self._owner.write_paused
        if blocked != self._blocked and self.sink is not None:
            self._blocked = blocked
            if blocked:
                self.sink.on_upstream_paused()
            else:
                self.sink.on_upstream_resumed()

    def fail(self, message: str, reason: str = "") -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            # Clients are told what happened; which upstream, only the log.
            detail = self._owner.url + reason
            sink.on_upstream_failed(upstream_failure(message, detail, head_seen=self.head_seen))


class H2Upstream(H2Endpoint):
    """An HTTP/2 connection to upstream, multiplexing exchanges as streams."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        super().__init__(GracefulH2Connection(config))
        self._scheme = b"https" if pool.target.tls else b"http"
        #: Upstream's URL, for the log only.
        self.url = pool.url
        self._streams: dict[int, H2Exchange] = {}
        #: No new streams here: upstream sent GOAWAY, or the connection is closing.
        self.draining = False
        #: Done once upstream's first SETTINGS arrived: only then is its stream limit known.
        self.settled: asyncio.Future[None] = self._loop.create_future()
        #: Since when no stream is open; None while one is.
        self.idle_since: float | None = self._loop.time()

    @property
    def has_room(self) -> bool:
        conn = self.conn
        limit: int = conn.remote_settings.max_concurrent_streams
        return not self.draining and conn.open_outbound_streams < limit

    def start(
        self, method: bytes, target: bytes, headers: Headers, has_body: bool, sink: ResponseSink
    ) -> H2Exchange:
        """Open a stream for a request head; the `host` header becomes `:authority`."""
        stream_id = self.conn.get_next_available_stream_id()
        block = [
            (b":method", method),
            (b":scheme", self._scheme),
            (b":authority", self._pool.target.authority),
            (b":path", target),
        ]
        block += [(name, value) for name, value in headers if name != b"host"]
        self.conn.send_headers(stream_id, block, end_stream=not has_body)
        stream = H2Exchange(self, stream_id, sink, request_ended=not has_body)
        self._streams[stream_id] = stream
        self.idle_since = None
        self.schedule_flush()
        return stream

    def close(self) -> None:
        """GOAWAY and close: idle too long, or the relay is stopping."""
        self.draining = True
        self._pool.forget(self)
        if self._transport is not None and not self._transport.is_closing():
            self.conn.close_connection()
            self.flush()
            self._transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        codes = h2.settings.SettingCodes
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                codes.ENABLE_PUSH: 0,
                codes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                codes.MAX_HEADER_LIST_SIZE: MAX_RESPONSE_HEAD,
            },
        )
        self.conn.initiate_connection()
        self.conn.decoder.max_header_list_size = MAX_RESPONSE_HEAD
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - _INITIAL_WINDOW)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail_all("upstream broke HTTP/2", f": {exc}")
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        reason = f": {exc}" if exc else ""
        self._fail_all("upstream closed the connection", reason)

    def write_pause_changed(self) -> None:
        for stream in list(self._streams.values()):
            stream.update_blocked()

    # -- events -----------------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            size = event.flow_controlled_length
            if stream is None or stream.sink is None:
                self.acknowledge(event.stream_id, size)
                return
            stream.sink.on_response_body(event.data)
            if stream.paused and stream.sink is not None:
                stream.unacked += size
            else:
                self.acknowledge(event.stream_id, size)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None and stream.sink is not None:
                stream.head_seen = True
                stream.sink.on_response_head(*_response_head(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                self._end(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                code = event.error_code
                name = code.name if isinstance(code, ErrorCodes) else str(code)
                self._remove(stream)
                stream.fail(f"upstream reset the stream ({name})")
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                self._push_all()
            elif (stream := self._streams.get(event.stream_id)) is not None:
                stream.push()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if not self.settled.done():
                self.settled.set_result(None)
            self._push_all()  # a new initial window may let waiting body bytes go
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event.last_stream_id or 0)

    def _end(self, stream: H2Exchange) -> None:
        sink, stream.sink = stream.sink, None
        if not stream.request_ended:
            # Upstream answered before the whole body went up: stop sending it, and
            # free the stream's place under upstream's concurrency limit.
            self._reset(stream.id, ErrorCodes.CANCEL)
        self._remove(stream)
        if sink is not None:
            sink.on_response_end()

    def _goaway(self, last_stream_id: int) -> None:
        """Upstream is shutting down: streams it never saw are free to retry elsewhere."""
        message = "upstream sent GOAWAY before the stream started"
        self.draining = True
        self._pool.forget(self)
        if not self.settled.done():
            self.settled.set_exception(UpstreamUnavailable(message, self.url))
        for stream in [s for s in self._streams.values() if s.id > last_stream_id]:
            self._remove(stream)
            stream.fail(message)
        if not self._streams:
            self.close()

    def _fail_all(self, message: str, reason: str = "") -> None:
        self.draining = True
        self._pool.forget(self)
        if not self.settled.done():
            self.settled.set_exception(UpstreamUnavailable(message, self.url + reason))
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.fail(message, reason)
        if self._transport is not None:
            self.flush()  # h2's own GOAWAY for a protocol error
            self._transport.close()

    # -- for the streams --------------------------------------------------------------

    def cancel(self, stream: H2Exchange) -> None:
        stream.sink = None
        if self._streams.get(stream.id) is stream:
            self._reset(stream.id, ErrorCodes.CANCEL)
            self._remove(stream)

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size and self._transport is not None:
            self.conn.acknowledge_received_data(size, stream_id)
            self.schedule_flush()

    # -- internals --------------------------------------------------------------------

    def _reset(self, stream_id: int, code: ErrorCodes) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.conn.reset_stream(stream_id, code)
        self.schedule_flush()

    def _remove(self, stream: H2Exchange) -> None:
        """A stream is over: hand back the connection window it held; a draining
        connection closes with its last stream."""
        del self._streams[stream.id]
        unacked, stream.unacked = stream.unacked, 0
        self.acknowledge(stream.id, unacked)
        if not self._streams:
            self.idle_since = self._loop.time()
            if self.draining:
                self.close()

    def _push_all(self) -> None:
        for stream in list(self._streams.values()):
            stream.push()


def _response_head(block: Headers) -> tuple[int, Headers]:
    status = 0
    headers: Headers = []
    for name, value in block:
        if name == b":status":
            status = int(value)
        elif not name.startswith(b":"):
            headers.append((name, value))
    return status, headers
