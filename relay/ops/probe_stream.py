"""One stream of `sse-relay probe`: a streaming POST to an `sse-relay sim` through the
network path under test, read with h11, every byte timed, and how it ended named.

The probe speaks HTTP/1.1 (TLS for `https://`): the framing of a dying stream (a reset,
a close mid-chunk, a clean end of body) is then visible as it happened, with no client
library translating it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from relay import __version__

#: The sim's scripted silence starts after this event (0 is message_start, 1 the
#: thinking block's content_block_start): the bytes before it prove the stream is open.
GAP_AFTER = 1
CONNECT_TIMEOUT = 10.0
_BODY = json.dumps(
    {
        "model": "claude-sim-1",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "sse-relay probe"}],
    }
).encode()

# How a stream ended. The first two are the probe's own doing or success; the rest
# are deaths, each a different failure a client would see.
COMPLETED = "completed"  # message_stop, then the end of the body
STOPPED = "stopped"  # the probe had seen enough and closed it
RESET = "reset"  # the connection was reset (RST)
CLOSED = "closed"  # the connection was closed (FIN) before the response ended
ENDED = "ended"  # the body ended cleanly, but without message_stop
HTTP_ERROR = "http_error"  # an answer other than 200
ERROR_EVENT = "error_event"  # an SSE `event: error` frame
ERROR = "error"  # any other transport failure (TLS, refused, ...)
DEATHS = frozenset({RESET, CLOSED, ENDED, HTTP_ERROR, ERROR_EVENT, ERROR})


@dataclass(frozen=True)
class Target:
    """Where the probe's streams go: the sim's `/v1/messages` behind the path."""

    url: str  # the full request URL
    host: str
    port: int
    tls: bool
    path: str
    headers: tuple[tuple[str, str], ...] = ()  # extra request headers (`--header`)

    @classmethod
    def from_url(cls, url: str, headers: tuple[tuple[str, str], ...] = ()) -> Target:
        """A base URL (as `ANTHROPIC_BASE_URL`) or one ending in `/v1/messages`."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        path = parts.path.rstrip("/")
        if not path.endswith("/v1/messages"):
            path += "/v1/messages"
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        full = f"{parts.scheme}://{parts.netloc}{path}"
        return cls(full, parts.hostname, port, tls, path, headers)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"


@dataclass(frozen=True)
class StreamResult:
    """One stream, over: how it ended and when, what arrived. Times are monotonic."""

    how: str
    detail: str
    status: int | None
    started: float
    gap_began: float | None  # arrival of event GAP_AFTER: the scripted silence starts
    last_byte: float  # the last byte received (the request's end if none was)
    ended: float
    longest_silence: float  # seconds without a byte, the final stretch included
    longest_pause: float  # seconds between two events (pings and comments not counted)
    events: int  # SSE events other than pings
    pings: int  # `event: ping` frames
    comments: int  # comment-only frames (`: keepalive`)

    @property
    def died(self) -> bool:
        return self.how in DEATHS

    @property
    def silence_at_end(self) -> float:
        """Seconds between the last byte and the end: the kill time of a silent stream."""
        return self.ended - self.last_byte

    @property
    def gap_open(self) -> float:
        """Seconds the stream stayed open once its scripted silence began."""
        return self.ended - (self.gap_began if self.gap_began is not None else self.started)


class ProbeStream:
    """Sends one request with an `x-sim-script` and reads the answer to its end.

    The counters are live while `run` goes on, for progress; `stop` ends the stream
    early (as `STOPPED`)."""

    def __init__(self, target: Target, script: dict[str, object]) -> None:
        self._target = target
        self._script = json.dumps(script)
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[StreamResult] | None = None
        self._stopping = False
        self._buffer = b""
        self._message_stop = False
        self._error_frame: bytes | None = None
        self.started = self.last_byte = time.monotonic()
        self.gap_began: float | None = None
        self.longest_silence = self.longest_pause = 0.0
        self._last_event = self.started
        self.events = self.pings = self.comments = 0
        self.open = False

    def silence(self, now: float) -> float:
        """Seconds since the last byte arrived."""
        return now - self.last_byte

    def stop(self) -> None:
        """Ends the stream now; `run` returns a `STOPPED` result."""
        self._stopping = True
        if self._writer is not None:
            self._writer.transport.abort()
        elif self._task is not None:
            self._task.cancel()  # still connecting

    async def run(self) -> StreamResult:
        """Sends the request and reads until the stream ends, however it ends."""
        self._task = asyncio.current_task()
        self.started = self.last_byte = self._last_event = time.monotonic()
        self.open = True
        try:
            how, detail, status = await self._exchange()
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            how, detail, status = STOPPED, "", None
        finally:
            self.open = False
            if self._writer is not None:
                self._writer.transport.abort()
        if self._stopping and how in DEATHS:
            how, detail = STOPPED, ""  # our own abort, seen by the read loop
        ended = time.monotonic()
        return StreamResult(
            how=how,
            detail=detail,
            status=status,
            started=self.started,
            gap_began=self.gap_began,
            last_byte=self.last_byte,
            ended=ended,
            longest_silence=max(self.longest_silence, ended - self.last_byte),
            longest_pause=self.longest_pause,
            events=self.events,
            pings=self.pings,
            comments=self.comments,
        )

    async def _exchange(self) -> tuple[str, str, int | None]:
        target = self._target
        context = None
        if target.tls:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    target.host,
                    target.port,
                    ssl=context,
                    server_hostname=target.host if target.tls else None,
                ),
                CONNECT_TIMEOUT,
            )
        except (TimeoutError, OSError) as exc:
            return ERROR, f"cannot connect to {target.authority}: {str(exc) or 'timed out'}", None
        self._writer = writer
        conn = h11.Connection(h11.CLIENT)
        headers = [
            ("host", target.authority),
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
            ("anthropic-version", "2023-06-01"),
            ("user-agent", f"sse-relay-probe/{__version__}"),
            ("x-sim-script", self._script),
            ("content-length", str(len(_BODY))),
            *target.headers,
        ]
        request = h11.Request(method="POST", target=target.path, headers=headers)
        writer.write(conn.send(request) + conn.send(h11.Data(data=_BODY)))
        writer.write(conn.send(h11.EndOfMessage()))
        self.last_byte = time.monotonic()  # silence counts from the request sent
        return await self._read(reader, conn)

    async def _read(
        self, reader: asyncio.StreamReader, conn: h11.Connection
    ) -> tuple[str, str, int | None]:
        status: int | None = None
        error_body = b""
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionResetError as exc:
                return RESET, str(exc), status
            except OSError as exc:  # TLS errors included
                return ERROR, f"{type(exc).__name__}: {exc}", status
            now = time.monotonic()
            if data:
                self.longest_silence = max(self.longest_silence, now - self.last_byte)
                self.last_byte = now
            conn.receive_data(data)
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    if not data:  # end of input mid-response
                        return self._cut(status, error_body)
                    return ERROR, f"malformed HTTP/1.1: {exc}", status
                if event is h11.NEED_DATA:
                    if not data:  # h11 wants more, and there never will be
                        return self._cut(status, error_body)
                    break
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    if status != 200:
                        error_body = (error_body + bytes(event.data))[:300]
                        continue
                    self._frames(bytes(event.data), now)
                    if self._error_frame is not None:
                        return ERROR_EVENT, self._error_frame.decode(errors="replace"), status
                elif isinstance(event, h11.EndOfMessage):
                    if status != 200:
                        return HTTP_ERROR, error_body.decode(errors="replace"), status
                    if self._message_stop:
                        return COMPLETED, "", status
                    return ENDED, "the body ended without message_stop", status
                elif isinstance(event, h11.ConnectionClosed):
                    return self._cut(status, error_body)

    @staticmethod
    def _cut(status: int | None, error_body: bytes) -> tuple[str, str, int | None]:
        """The connection closed (FIN) before the response ended."""
        if status is not None and status != 200:  # an error answer, cut short
            return HTTP_ERROR, error_body.decode(errors="replace"), status
        return CLOSED, "connection closed before the response ended", status

    def _frames(self, data: bytes, now: float) -> None:
        """Counts the complete SSE frames in `data` (after what earlier calls kept)."""
        self._buffer += data.replace(b"\r\n", b"\n")
        while (end := self._buffer.find(b"\n\n")) >= 0:
            frame, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            lines = [line for line in frame.split(b"\n") if line]
            if not lines:
                continue
            if all(line.startswith(b":") for line in lines):
                self.comments += 1
                continue
            name = next((line[6:].strip() for line in lines if line.startswith(b"event:")), b"")
            if name == b"ping":
                self.pings += 1
            elif name == b"error":
                self._error_frame = frame
            else:
                if self.events:
                    self.longest_pause = max(self.longest_pause, now - self._last_event)
                self._last_event = now
                self.events += 1
                self._message_stop = name == b"message_stop"
                if self.events == GAP_AFTER + 1:
                    self.gap_began = now
