"""A raw HTTP/1.1 upstream that records every byte it receives and parses it strictly.

Each accepted connection gets a thread that keeps every received byte (`raw`) and feeds
it to an h11 server connection. A request h11 refuses is recorded in `errors`: it means
something non-strict got through the relay. Every complete request is answered with the
same small SSE stream (`SSE_BODY`, chunked) and the connection is kept alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import sys
import termios
import threading
from dataclasses import dataclass, field
from types import TracebackType

import h11

# One Messages API turn, short: what every relayed stream must carry byte for byte.
SSE_BODY: bytes = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_rec_01","type":"message",'
    b'"role":"assistant","model":"claude-sim-1","content":[],"stop_reason":null,'
    b'"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Recorded."}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":2}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)
_FRAMES = [frame + b"\n\n" for frame in SSE_BODY.split(b"\n\n") if frame]
_CONNECT_REFUSAL = b'{"type":"error","error":{"type":"invalid_request_error","message":"no"}}'

Header = tuple[bytes, bytes]


@dataclass(frozen=True)
class UpstreamRequest:
    """A request as upstream's strict parser saw it (names lower-case, in order)."""

    connection: int
    method: bytes
    target: bytes
    http_version: bytes
    headers: list[Header]
    body: bytes = b""

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header `name` (lower-case), in order."""
        return [value for key, value in self.headers if key == name]


@dataclass
class _Connection:
    index: int
    sock: socket.socket
    raw: bytearray = field(default_factory=bytearray)
    waiting: bool = False  # its thread is in recv(), all earlier bytes handled
    done: bool = False  # its thread has finished


class RecordingUpstream:
    """The recording upstream on 127.0.0.1 (a free port), served from daemon threads.

    `heads` has every request head as soon as it parsed; `requests` every request whose
    body arrived complete (and was answered); `aborted` the heads whose connection closed
    before their message ended. `errors` has one line per connection whose bytes h11
    refused. All are live lists, appended to by the serving threads.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.heads: list[UpstreamRequest] = []
        self.requests: list[UpstreamRequest] = []
        self.aborted: list[UpstreamRequest] = []
        self.errors: list[str] = []
        self._connections: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._acceptor = threading.Thread(target=self._accept, name="rec-upstream", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return len(self._connections)

    @property
    def raw(self) -> list[bytes]:
        """Every byte received, per accepted connection, in order of acceptance."""
        with self._lock:
            return [bytes(conn.raw) for conn in self._connections]

    @property
    def total_bytes(self) -> int:
        """Bytes received over all connections so far."""
        with self._lock:
            return sum(len(conn.raw) for conn in self._connections)

    def everything(self) -> bytes:
        """All connections' bytes, joined by a separator no request contains."""
        return b"\0--\0".join(self.raw)

    def offsets(self) -> list[int]:
        """How many bytes each connection has received so far (for `since`)."""
        with self._lock:
            return [len(conn.raw) for conn in self._connections]

    def since(self, offsets: list[int]) -> bytes:
        """The bytes received after `offsets` was taken, joined as in `everything`."""
        raw = self.raw
        starts = offsets + [0] * (len(raw) - len(offsets))
        return b"\0--\0".join(data[start:] for data, start in zip(raw, starts, strict=True))

    def quiet(self) -> bool:
        """Whether every byte that reached upstream's sockets has been read and handled:
        each live connection's thread waits in recv() with nothing pending."""
        for conn in list(self._connections):
            if conn.done:
                continue
            if not conn.waiting:
                return False
            try:
                pending = fcntl.ioctl(conn.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            except (OSError, ValueError):
                continue  # closed meanwhile
            if int.from_bytes(pending, sys.byteorder):
                return False
        return True

    def start(self) -> RecordingUpstream:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Closes the listener and every connection, then joins the threads."""
        self._stopped = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(timeout=5)
        for thread in list(self._threads):
            thread.join(timeout=5)

    def __enter__(self) -> RecordingUpstream:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- serving ----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                conn = _Connection(len(self._connections), sock)
                self._connections.append(conn)
            thread = threading.Thread(
                target=self._serve, args=(conn,), name=f"rec-upstream-{conn.index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: _Connection) -> None:
        try:
            self._read_requests(conn)
        finally:
            conn.done = True
            conn.sock.close()

    def _read_requests(self, conn: _Connection) -> None:
        parser = h11.Connection(h11.SERVER)
        head: UpstreamRequest | None = None
        body = bytearray()
        while True:
            conn.waiting = True
            try:
                data = conn.sock.recv(65536)
            except OSError:
                data = b""  # a reset ends the connection as EOF does
            conn.waiting = False
            if data:
                with self._lock:
                    conn.raw += data
            parser.receive_data(data)
            try:
                while True:
                    event = parser.next_event()
                    if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                        break
                    if isinstance(event, h11.Request):
                        head = UpstreamRequest(
                            conn.index,
                            bytes(event.method),
                            bytes(event.target),
                            bytes(event.http_version),
                            [(bytes(k), bytes(v)) for k, v in event.headers],
                        )
                        body = bytearray()
                        self.heads.append(head)
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage) and head is not None:
                        done = UpstreamRequest(
                            head.connection,
                            head.method,
                            head.target,
                            head.http_version,
                            head.headers,
                            bytes(body),
                        )
                        self.requests.append(done)
                        head = None
                        if not self._answer(parser, conn.sock, done):
                            return
                        parser.start_next_cycle()
                    elif event is h11.PAUSED:
                        return  # a protocol switch: nothing strict left to parse
            except h11.RemoteProtocolError as exc:
                if data:
                    self.errors.append(f"connection {conn.index}: {exc}")
                elif head is not None:
                    self.aborted.append(head)
                return
            except h11.LocalProtocolError as exc:
                self.errors.append(f"connection {conn.index}: cannot answer: {exc}")
                return
            if not data:
                if head is not None:
                    self.aborted.append(head)
                return

    def _answer(
        self, parser: h11.Connection, sock: socket.socket, request: UpstreamRequest
    ) -> bool:
        """Sends the fixed SSE stream; False when the connection must close after it."""
        if request.method == b"CONNECT":
            # 200 would switch protocols; a strict upstream refuses a tunnel.
            head = h11.Response(
                status_code=405,
                headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_CONNECT_REFUSAL)).encode()),
                ],
            )
            chunks = [parser.send(head), parser.send(h11.Data(data=_CONNECT_REFUSAL))]
        else:
            head = h11.Response(
                status_code=200,
                headers=[
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"request-id", b"req_rec_%d" % len(self.requests)),
                    (b"transfer-encoding", b"chunked"),
                ],
            )
            chunks = [parser.send(head)]
            if request.method != b"HEAD":
                chunks += [parser.send(h11.Data(data=frame)) for frame in _FRAMES]
        chunks.append(parser.send(h11.EndOfMessage()))
        try:
            sock.sendall(b"".join(chunk or b"" for chunk in chunks))
        except OSError:
            return False
        return parser.our_state is h11.DONE and parser.their_state is h11.DONE
