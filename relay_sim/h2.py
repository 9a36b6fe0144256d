"""The simulated Messages API over HTTP/2 (h2c by prior knowledge, or TLS with ALPN h2).

Each stream is a `relay_sim.script.Sink`, so every script plays as over HTTP/1.1,
except that a failure is the stream's own: `drop_after`, `truncate_after` and
`drop_before_head` reset that stream (INTERNAL_ERROR) and leave the connection to the
others. `goaway` shuts a connection down gracefully: streams whose response has begun
run to their end, later ones are refused, and the connection closes with its last stream.

Built on the `h2` library alone, sharing no code with the relay's own HTTP/2, so that
the upstream tests check the relay against an implementation other than its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from relay_sim.script import RecordedRequest, play
from relay_sim.state import SimState

# What an h2c client sends first (RFC 9113 3.4): how the sim's one port tells HTTP/2 apart.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_Headers = list[tuple[bytes, bytes]]


class _Stream:
    """One request as it arrives, and the `Sink` its response is played on."""

    def __init__(self, owner: Http2Connection, stream_id: int, block: _Headers) -> None:
        self._owner = owner
        self.id = stream_id
        self.method = self.target = ""
        self.headers: _Headers = []
        for name, value in block:
            if name == b":method":
                self.method = value.decode()
            elif name == b":path":
                self.target = value.decode()
            elif name == b":authority":
                self.headers.insert(0, (b"host", value))  # where HTTP/1.1 carries it
            elif not name.startswith(b":"):
                self.headers.append((name, value))
        self.body = bytearray()
        self.responder: asyncio.Task[None] | None = None
        # Each write stays its own DATA frame (or frames, when larger than one may be):
        # scripts that split an SSE frame across writes mean the split to reach the peer.
        self._waiting: deque[memoryview] = deque()
        self._ending = False
        self._drained = asyncio.Event()
        self._drained.set()

    # Sink

    def send_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        if not self._owner.owns(self):
            return
        self._owner.started(self.id)
        block = [(b":status", str(status).encode())]
        block += [(name.encode(), value.encode()) for name, value in headers]
        self._owner.conn.send_headers(self.id, block)
        self._owner.schedule_flush()

    def write(self, data: bytes) -> None:
        if data:
            self._waiting.append(memoryview(data))
            self.push()

    def write_truncated(self, data: bytes) -> None:
        self.write(data[: len(data) // 2])
        self.abort()

    async def drain(self) -> None:
        await self._drained.wait()

    def end(self) -> None:
        self._ending = True
        self.push()

    def abort(self) -> None:
        self._owner.reset(self.id, ErrorCodes.INTERNAL_ERROR)

    # Flow control

    def push(self) -> None:
        """Sends what waits as far as the stream's window allows, ends the stream once
        all is sent and the script has ended, and lets the script go on only when
        nothing waits and the socket takes more."""
        owner = self._owner
        if not owner.owns(self):
            return
        conn = owner.conn
        try:
            while self._waiting:
                room = min(conn.local_flow_control_window(self.id), conn.max_outbound_frame_size)
                if room <= 0:
                    break  # a WINDOW_UPDATE (or new SETTINGS) pushes again
                chunk = self._waiting[0]
                if len(chunk) > room:
                    self._waiting[0] = chunk[room:]
                    chunk = chunk[:room]
                else:
                    self._waiting.popleft()
                conn.send_data(self.id, chunk)
            if not self._waiting and self._ending:
                conn.end_stream(self.id)
                owner.finished(self.id)
        except h2.exceptions.ProtocolError:
            # The peer reset or closed the stream (its news may be in this very read):
            # what waits is nobody's now, and the other streams go on.
            self._waiting.clear()
            owner.finished(self.id)
        owner.schedule_flush()
        if self._waiting or owner.write_paused:
            self._drained.clear()
        else:
            self._drained.set()


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection of the sim, answering each stream with the script.

    Frames of all streams collect in h2's buffer and go out in one write per loop pass.
    """

    def __init__(self, state: SimState, number: int) -> None:
        self._state = state
        self._number = number
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._flush_scheduled = False
        #: The socket's send buffer is over its high-water mark: every stream waits.
        self.write_paused = False
        self._streams: dict[int, _Stream] = {}
        self._last_started = 0
        self._goaway_last: int | None = None  # our GOAWAY's last stream id, once sent
        self._closing = False  # we closed, or h2 gave up on the connection
        self._closed_by_us = False
        self._peer_left_at: float | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._state.live.add(self)
        limit = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self._state.h2_max_streams}
        self.conn.local_settings = h2.settings.Settings(client=False, initial_values=limit)
        self.conn.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._close()  # after h2's GOAWAY naming the error
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def eof_received(self) -> bool:
        self._peer_left_at = time.monotonic()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        answering = [s for s in self._streams.values() if s.responder is not None]
        noticed = self._peer_left_at or time.monotonic()
        self._state.record_close(noticed, bool(answering) and not self._closed_by_us, self._number)
        self._state.live.discard(self)
        for stream in answering:
            cast(asyncio.Task[None], stream.responder).cancel()
        self._streams.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._push_all()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._push_all()

    # For SimState and the streams

    def goaway(self) -> None:
        """GOAWAY naming the last stream whose response has begun; later ones are refused.

        The frame is written here, not by h2: h2 moves the whole connection to CLOSED
        when it sends a GOAWAY and then refuses every frame (python-hyper/h2#1181), while
        RFC 9113 6.8 lets the streams it names run to their end. New streams are then
        refused here (`_dispatch`), since h2 does not know they should be.
        """
        if self._closing or self._goaway_last is not None:
            return
        self._goaway_last = self._last_started
        self.flush()  # frames h2 already holds go first, as if it had sent the GOAWAY
        frame = GoAwayFrame(0, last_stream_id=self._last_started, error_code=ErrorCodes.NO_ERROR)
        self._write(frame.serialize())
        for stream_id in [i for i in self._streams if i > self._last_started]:
            self.reset(stream_id, ErrorCodes.REFUSED_STREAM)
        self.flush()
        self._close_when_done()

    def abort(self) -> None:
        self._closing = self._closed_by_us = True
        if self._transport is not None:
            self._transport.abort()

    def owns(self, stream: _Stream) -> bool:
        """Whether `stream` may still send: neither it nor the connection has ended."""
        return not self._closing and self._streams.get(stream.id) is stream

    def started(self, stream_id: int) -> None:
        self._last_started = max(self._last_started, stream_id)

    def finished(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        self._close_when_done()

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None and stream.responder is not None:
            stream.responder.cancel()
        if self._closing:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.conn.reset_stream(stream_id, code)
        self.schedule_flush()
        self._close_when_done()

    def schedule_flush(self) -> None:
        # Frames from many streams (and many writes of one) go out as one write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        self._write(self.conn.data_to_send())

    # Events

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            if self._goaway_last is not None and event.stream_id > self._goaway_last:
                self.reset(event.stream_id, ErrorCodes.REFUSED_STREAM)
            else:
                self._streams[event.stream_id] = _Stream(self, event.stream_id, event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream.body += event.data
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None and stream.responder is None:
                self._answer(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None and stream.responder is not None:
                # The client gave up on a response in progress: as a close is on HTTP/1.1.
                code = int(event.error_code)
                self._state.record_close(time.monotonic(), True, self._number, code)
                stream.responder.cancel()
            self._close_when_done()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._push_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close()

    def _answer(self, stream: _Stream) -> None:
        recorded = RecordedRequest(
            method=stream.method,
            target=stream.target,
            headers=stream.headers,
            body=bytes(stream.body),
            http_version="2",
        )
        self._state.requests.append(recorded)
        request_id = self._state.next_request_id()
        coroutine = play(recorded, self._state.script, request_id, stream)
        stream.responder = self._loop.create_task(coroutine)
        stream.responder.add_done_callback(functools.partial(self._answered, stream.id))

    def _answered(self, stream_id: int, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            message = "sse-relay sim: response failed"
            task.get_loop().call_exception_handler({"message": message, "exception": exc})
            self.reset(stream_id, ErrorCodes.INTERNAL_ERROR)

    def _push_all(self) -> None:
        for stream in list(self._streams.values()):
            stream.push()

    def _close_when_done(self) -> None:
        if self._goaway_last is not None and not self._streams:
            self._close()

    def _close(self) -> None:
        self.flush()  # h2's GOAWAY after a protocol error, the last frames of a drain
        self._closing = self._closed_by_us = True
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)
