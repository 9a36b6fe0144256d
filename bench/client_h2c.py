"""The load generator's lean h2c client: many streamed requests per connection, frames
parsed in one loop per read (bench/h2_wire.py), DATA handed straight to the streams'
`StreamTally`s.

Per DATA frame: one struct unpack, one dict lookup, one slice. The `h2` package's client
(`clients.H2cConnection`, `--h2-client h2`) spends an event object, a state machine and
flow-control bookkeeping in Python on every frame, and saturated the harness core near
1000 streams. Our windows are opened to the maximum once, and nothing is acknowledged:
a bounded run moves far less than 2 GiB per connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import cast

import hpack

from bench import h2_wire as w
from bench.clients import OnDone
from bench.collector import StreamTally


class LeanH2cConnection(asyncio.Protocol):
    """One HTTP/2 cleartext connection (prior knowledge) carrying many streams."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self._streams: dict[int, tuple[StreamTally, OnDone]] = {}
        self._next_id = 1
        self._rest = b""
        self._out: list[bytes] = []
        self._blocks = w.HeaderBlocks()
        # Request bodies waiting for the server's connection window, in stream order.
        self._bodies: deque[tuple[int, bytes]] = deque()
        self._send_window = w.DEFAULT_WINDOW
        self.first_byte_ns: dict[int, int] = {}
        #: Resolves once the server's SETTINGS arrived.
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._out += [
            w.PREFACE,
            w.settings([(w.ENABLE_PUSH, 0), (w.INITIAL_WINDOW_SIZE, w.MAX_WINDOW)]),
            w.window_update(0, w.MAX_WINDOW - w.DEFAULT_WINDOW),
        ]
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
        stream_id, self._next_id = self._next_id, self._next_id + 2
        block = self._encoder.encode(
            [
                (b":method", b"POST"),
                (b":path", path),
                (b":scheme", b"http"),
                (b":authority", authority),
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *extra,
            ]
        )
        self._out.append(w.frame(w.HEADERS, w.END_HEADERS, stream_id, block))
        self._streams[stream_id] = (tally, on_done)
        self._bodies.append((stream_id, body))
        self._send_bodies()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buffer = self._rest + data if self._rest else data
        size, position = len(buffer), 0
        unpack, streams = w.HEAD.unpack_from, self._streams
        while size - position >= 9:
            high, low, kind, flags, stream_id = unpack(buffer, position)
            start = position + 9
            end = start + (high << 16 | low)
            if end > size:
                break
            if kind == w.DATA:
                entry = streams.get(stream_id)
                if entry is not None:
                    if flags & w.PADDED:
                        entry[0].feed(buffer[start + 1 : end - buffer[start]], now)
                    else:
                        entry[0].feed(buffer[start:end], now)
                    if flags & w.END_STREAM:
                        self._end(stream_id, None)
            else:
                self._control(kind, flags, stream_id, buffer[start:end], now)
            position = end
        self._rest = buffer[position:]
        self.flush()

    def _control(self, kind: int, flags: int, stream_id: int, payload: bytes, now: int) -> None:
        """Every frame but DATA: rare, so plain code."""
        if kind in (w.HEADERS, w.CONTINUATION):
            self._header_frame(kind, flags, stream_id, payload, now)
        elif kind == w.SETTINGS and not flags & w.ACK:
            self._out.append(w.frame(w.SETTINGS, w.ACK, 0))
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == w.WINDOW_UPDATE and stream_id == 0:
            self._send_window += w.word(payload)
            self._send_bodies()
        elif kind == w.PING and not flags & w.ACK:
            self._out.append(w.frame(w.PING, w.ACK, 0, payload))
        elif kind == w.RST_STREAM:
            self._end(stream_id, f"stream reset ({w.word(payload)})")
        elif kind == w.GOAWAY:
            self._end_all(f"GOAWAY ({w.word(payload, 4)})")

    def _header_frame(
        self, kind: int, flags: int, stream_id: int, payload: bytes, now: int
    ) -> None:
        block = self._blocks.add(kind, flags, stream_id, payload)
        if block is None:
            return
        stream_id, first_flags, header_block = block
        # Decoded even when unwanted: the HPACK table must stay in step with the server's.
        fields = dict(self._decoder.decode(header_block, raw=True))
        status = fields.get(b":status")
        if status is not None and stream_id not in self.first_byte_ns:
            self.first_byte_ns[stream_id] = now
            entry = self._streams.get(stream_id)
            if entry is not None:
                entry[0].head(now)
            if status != b"200":
                self._end(stream_id, f"HTTP/2 status {status!r}")
        if first_flags & w.END_STREAM:
            self._end(stream_id, None)

    def _send_bodies(self) -> None:
        """Request bodies in stream order, as the connection window allows (stream
        windows start at 64 KiB at least, far above a body)."""
        bodies = self._bodies
        while bodies and self._send_window >= len(bodies[0][1]):
            stream_id, body = bodies.popleft()
            self._send_window -= len(body)
            self._out.append(w.frame(w.DATA, w.END_STREAM, stream_id, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"h2c connection lost: {exc}"))
        self._end_all(f"connection lost: {exc or 'closed by peer'}")

    def flush(self) -> None:
        if self._out and self._transport is not None:
            self._transport.write(b"".join(self._out))
        self._out.clear()

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
