"""The load generator's lean clients: raw HTTP/1.1 sockets and h2c (prior knowledge).

Neither parses SSE or even chunked framing: received bytes go straight to a
`StreamTally`, which finds the stamps. HTTP/1.1 ends a stream at the last chunk;
HTTP/2 at END_STREAM.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.settings

from bench.collector import StreamTally

#: Called once per stream: None when it ended cleanly, else what went wrong.
OnDone = Callable[[str | None], None]

_LAST_CHUNK = b"\r\n0\r\n\r\n"
# Windows so large nothing is ever acknowledged: a bounded run moves far less than 2 GiB.
_MAX_WINDOW = 2**31 - 1


class H1Stream(asyncio.Protocol):
    """One connection carrying one streamed request."""

    def __init__(self, request: bytes, tally: StreamTally, on_done: OnDone) -> None:
        self._request = request
        self._tally = tally
        self._on_done: OnDone | None = on_done
        self._transport: asyncio.Transport | None = None
        self._head_checked = False
        self._tail = b""
        self.first_byte_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self._head_checked:
            self._head_checked = True
            self.first_byte_ns = now
            self._tally.head(now)
            if not data.startswith(b"HTTP/1.1 200"):
                self._end(data.split(b"\r\n", 1)[0].decode("latin-1"))
                return
        self._tally.feed(data, now)
        # Nothing follows the last chunk (no pipelining), so it ends what was received.
        self._tail = (self._tail + data[-len(_LAST_CHUNK) :])[-len(_LAST_CHUNK) :]
        if self._tail == _LAST_CHUNK:
            self._end(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"connection lost: {exc or 'closed by peer'}")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _end(self, error: str | None) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(error)
            self.close()


class H2cConnection(asyncio.Protocol):
    """One HTTP/2 cleartext connection carrying many streamed requests."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._conn = h2.connection.H2Connection(config)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, tuple[StreamTally, OnDone]] = {}
        # Request bodies waiting for the server's flow-control window, in stream order.
        self._bodies: deque[tuple[int, bytes]] = deque()
        self.first_byte_ns: dict[int, int] = {}
        #: Resolves once the server's SETTINGS (its stream limit) arrived.
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        codes = h2.settings.SettingCodes
        self._conn.local_settings = h2.settings.Settings(
            client=True, initial_values={codes.INITIAL_WINDOW_SIZE: _MAX_WINDOW}
        )
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(_MAX_WINDOW - 65_535)
        self.flush()

    def open(
        self,
        path: bytes,
        authority: bytes,
        body: bytes,
        tally: StreamTally,
        on_done: OnDone,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Starts a POST; call `flush` after a batch of them."""
        stream_id: int = self._conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":path", path),
            (b":scheme", b"http"),
            (b":authority", authority),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        self._conn.send_headers(stream_id, headers)
        self._streams[stream_id] = (tally, on_done)
        self._bodies.append((stream_id, body))
        self._send_bodies()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        for event in self._conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                entry = self._streams.get(event.stream_id)
                if entry is not None:
                    entry[0].feed(event.data, now)
            elif isinstance(event, h2.events.ResponseReceived):
                self.first_byte_ns[event.stream_id] = now
                entry = self._streams.get(event.stream_id)
                if entry is not None:
                    entry[0].head(now)
                status = dict(event.headers or ()).get(b":status")
                if status != b"200":
                    self._end(event.stream_id, f"HTTP/2 status {status!r}")
            elif isinstance(event, h2.events.WindowUpdated):
                self._send_bodies()
            elif isinstance(event, h2.events.StreamEnded):
                self._end(event.stream_id, None)
            elif isinstance(event, h2.events.StreamReset):
                self._end(event.stream_id, f"stream reset ({event.error_code!r})")
            elif isinstance(event, h2.events.RemoteSettingsChanged) and not self.ready.done():
                self.ready.set_result(None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._end_all(f"GOAWAY ({event.error_code!r})")
        self.flush()

    def _send_bodies(self) -> None:
        bodies = self._bodies
        while bodies and self._conn.local_flow_control_window(bodies[0][0]) >= len(bodies[0][1]):
            stream_id, body = bodies.popleft()
            self._conn.send_data(stream_id, body, end_stream=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"h2c connection lost: {exc}"))
        self._end_all(f"connection lost: {exc or 'closed by peer'}")

    def flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _end(self, stream_id: int, error: str | None) -> None:
        entry = self._streams.pop(stream_id, None)
        if entry is not None:
            entry[1](error)

    def _end_all(self, error: str) -> None:
        for stream_id in list(self._streams):
            self._end(stream_id, error)
