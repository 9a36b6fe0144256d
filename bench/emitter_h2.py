"""The emitter over HTTP/2 (TLS, chosen by ALPN): what `--upstream-protocol auto` gets
from the real API. Each event is its own DATA frame, each timer's frames one write.

Framed by hand (bench/h2_wire.py), as the HTTP/1.1 side is parsed by hand: the `h2`
package's per-frame work took most of the harness core at 10k events/s. Flow control is
kept for real (the relay's windows are 256 KiB a stream): frames beyond a window wait,
in order, for the relay's WINDOW_UPDATE.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import cast

import hpack

from bench import h2_wire as w
from bench.pacing import PacedStream, StreamPlan

_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"request-id", b"req_bench"),
]
#: Streams one connection may carry at once; the relay opens more connections past it.
MAX_STREAMS = 256
_END = b""  # queued after the last frame: end the stream once its frames went out


class H2Sink:
    """One stream's response on its connection."""

    __slots__ = ("_connection", "_stream_id", "ended", "held", "window")

    def __init__(self, connection: H2EmitterConnection, stream_id: int, window: int) -> None:
        self._connection = connection
        self._stream_id = stream_id
        self.window = window
        self.held: deque[bytes] = deque()
        self.ended = False
        block = connection.encoder.encode(_HEADERS)
        connection.out.append(w.frame(w.HEADERS, w.END_HEADERS, stream_id, block))

    def send(self, frame: bytes) -> None:
        size = len(frame)
        connection = self._connection
        if self.held or self.window < size or connection.window < size:
            self.held.append(frame)
            return
        self.window -= size
        connection.window -= size
        connection.out += (w.HEAD.pack(size >> 16, size & 0xFFFF, 0, 0, self._stream_id), frame)

    def flush(self) -> None:
        self._connection.flush()

    def end(self) -> None:
        self.ended = True
        if self.held:
            self.held.append(_END)
        else:
            self._connection.out.append(w.frame(w.DATA, w.END_STREAM, self._stream_id))
        self.flush()

    def release(self) -> None:
        """Sends what the windows now allow."""
        held, self.held = self.held, deque()
        while held:
            frame = held.popleft()
            if frame is _END:
                self.end()
            elif self.held or self.window < len(frame) or self._connection.window < len(frame):
                held.appendleft(frame)
                self.held = held
                return
            else:
                self.send(frame)


class H2EmitterConnection(asyncio.Protocol):
    """One HTTP/2 connection: each request stream gets its paced answer once its body
    has ended."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._transport: asyncio.Transport | None = None
        self.encoder = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self.out: list[bytes] = []
        self._rest = b""
        self._preface = True
        self.window = w.DEFAULT_WINDOW  # the relay's connection window, for our DATA
        self._initial_window = w.DEFAULT_WINDOW  # a new stream's, from its SETTINGS
        self._blocks = w.HeaderBlocks()
        self._targets: dict[int, bytes] = {}
        self._streams: dict[int, tuple[PacedStream, H2Sink]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self.out.append(w.settings([(w.MAX_CONCURRENT_STREAMS, MAX_STREAMS)]))
        self.flush()

    def data_received(self, data: bytes) -> None:
        buffer = self._rest + data if self._rest else data
        if self._preface:
            if len(buffer) < len(w.PREFACE):
                self._rest = buffer
                return
            self._preface = False
            buffer = buffer[len(w.PREFACE) :]
        size, position, body_bytes = len(buffer), 0, 0
        while size - position >= 9:
            high, low, kind, flags, stream_id = w.HEAD.unpack_from(buffer, position)
            start = position + 9
            end = start + (high << 16 | low)
            if end > size:
                break
            payload = buffer[start:end]
            position = end
            if kind == w.DATA:
                body_bytes += len(payload)
                if flags & w.END_STREAM:
                    self._answer(stream_id)
            elif kind in (w.HEADERS, w.CONTINUATION):
                self._header_frame(kind, flags, stream_id, payload)
            elif kind == w.WINDOW_UPDATE:
                self._window_update(stream_id, w.word(payload))
            elif kind == w.SETTINGS and not flags & w.ACK:
                self._settings(payload)
            elif kind == w.PING and not flags & w.ACK:
                self.out.append(w.frame(w.PING, w.ACK, 0, payload))
            elif kind == w.RST_STREAM:
                self._drop(stream_id)
            elif kind == w.GOAWAY and self._transport is not None:
                self._transport.close()
        self._rest = buffer[position:]
        if body_bytes:
            # Request bodies are tiny: hand their share of our connection window back.
            self.out.append(w.window_update(0, body_bytes))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for stream_id in list(self._streams):
            self._drop(stream_id)
        self._transport = None

    def flush(self) -> None:
        if self.out and self._transport is not None:
            self._transport.write(b"".join(self.out))
        self.out.clear()

    def _header_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        block = self._blocks.add(kind, flags, stream_id, payload)
        if block is None:
            return
        stream_id, first_flags, header_block = block
        fields = dict(self._decoder.decode(header_block, raw=True))
        self._targets[stream_id] = fields.get(b":path", b"/")
        if first_flags & w.END_STREAM:
            self._answer(stream_id)

    def _settings(self, payload: bytes) -> None:
        values = w.parse_settings(payload)
        if w.INITIAL_WINDOW_SIZE in values:
            change = values[w.INITIAL_WINDOW_SIZE] - self._initial_window
            self._initial_window += change
            for _, sink in self._streams.values():
                sink.window += change
        self.out.append(w.frame(w.SETTINGS, w.ACK, 0))
        self._window_update(-1, 0)  # a grown initial window may free held frames

    def _window_update(self, stream_id: int, increment: int) -> None:
        """A window grew: the stream's held frames (for stream 0, every stream's) may go."""
        if stream_id == 0:
            self.window += increment
        elif stream_id in self._streams:
            self._streams[stream_id][1].window += increment
        ids = list(self._streams) if stream_id <= 0 else [stream_id]
        for each in ids:
            entry = self._streams.get(each)
            if entry is not None and entry[1].held:
                entry[1].release()
                if entry[1].ended and not entry[1].held:
                    del self._streams[each]

    def _answer(self, stream_id: int) -> None:
        target = self._targets.pop(stream_id, None)
        if target is None:
            return
        sink = H2Sink(self, stream_id, self._initial_window)
        stream = PacedStream(
            sink, StreamPlan.from_target(target), self._rng, lambda: self._done(stream_id)
        )
        self._streams[stream_id] = (stream, sink)
        stream.start()

    def _done(self, stream_id: int) -> None:
        """The turn is over; a stream with frames still held stays until they went."""
        entry = self._streams.get(stream_id)
        if entry is not None and not entry[1].held:
            del self._streams[stream_id]

    def _drop(self, stream_id: int) -> None:
        entry = self._streams.pop(stream_id, None)
        if entry is not None:
            entry[0].cancel()
