"""The relay core: one request/response exchange, whatever HTTP version carries it.

A protocol adapter (HTTP/1.1, HTTP/2, HTTP/3) turns its library's events into calls on
`RelayStream` and implements `ClientSide`; the upstream side implements
`UpstreamExchange` and calls back the `on_response_*` methods. The SSE rules live here
once: bytes pass untouched, the scanner tracks frame boundaries, keepalives go in only
at boundaries, and failures end the response in the API's own format.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from relay.counters import Counters
from relay.errors import (
    RelayError,
    UpstreamLost,
    error_frame,
    new_request_id,
    render_error_body,
)
from relay.headers import Headers, end_to_end, header_value
from relay.keepalive import KeepaliveClock
from relay.sse_scanner import FrameScanner

log = logging.getLogger("sse_relay")

_BOM = b"\xef\xbb\xbf"
# Closes a partial frame so every parser drops it: the SDKs skip `ping` events before
# looking at their data, so the half-sent data never reaches JSON decoding.
_DISCARD_PARTIAL_FRAME = b"event: ping\n\n"


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A client request as the core sees it: HTTP-version-neutral."""

    method: bytes
    target: bytes
    headers: Headers
    client_ip: str | None


class ClientSide(Protocol):
    """What an adapter offers the core for one stream towards the client."""

    def send_head(self, status: int, headers: Headers) -> None: ...
    def send_body(self, data: bytes) -> None: ...
    def send_end(self) -> None: ...
    def abort(self) -> None: ...
    def pause_request_body(self) -> None: ...
    def resume_request_body(self) -> None: ...


class UpstreamExchange(Protocol):
    """One request in flight to upstream, as the core drives it."""

    def send_body(self, data: bytes) -> None: ...
    def send_end(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


#: Opens an upstream exchange for a request head and hands responses to the stream.
OpenUpstream = Callable[[RequestHead, "RelayStream"], Awaitable[UpstreamExchange]]


@dataclass(frozen=True, slots=True)
class StreamSettings:
    keepalive_interval: float
    keepalive_frame: bytes
    read_timeout: float


class RelayStream:
    """Relays one exchange: request to upstream, response back, keepalives in between."""

    __slots__ = (
        "_body_backlog",
        "_client",
        "_client_paused",
        "_clock",
        "_counters",
        "_finished",
        "_head",
        "_head_sent",
        "_last_byte",
        "_loop",
        "_request_ended",
        "_scanner",
        "_settings",
        "_timer",
        "_upstream",
        "bytes_out",
        "keepalives",
    )

    def __init__(
        self,
        client: ClientSide,
        head: RequestHead,
        settings: StreamSettings,
        counters: Counters,
    ) -> None:
        self._client = client
        self._head = head
        self._settings = settings
        self._counters = counters
        self._loop = asyncio.get_running_loop()
        self._upstream: UpstreamExchange | None = None
        self._body_backlog: list[bytes] | None = []
        self._request_ended = False
        self._head_sent = False
        self._finished = False
        self._client_paused = False
        self._scanner: FrameScanner | None = None
        self._clock: KeepaliveClock | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_byte = self._loop.time()
        self.bytes_out = 0
        self.keepalives = 0
        counters.streams_total += 1
        counters.streams_active += 1

    def start(self, open_upstream: OpenUpstream) -> None:
        self._loop.create_task(self._connect(open_upstream))

    async def _connect(self, open_upstream: OpenUpstream) -> None:
        try:
            upstream = await open_upstream(self._head, self)
        except RelayError as error:
            self.on_upstream_failed(error)
            return
        if self._finished:  # the client left while we were connecting
            upstream.abort()
            return
        self._upstream = upstream
        for chunk in self._body_backlog or ():
            upstream.send_body(chunk)
        self._body_backlog = None
        if self._request_ended:
            upstream.send_end()
        self._last_byte = self._loop.time()
        self._arm(self._last_byte + self._settings.read_timeout)

    # -- from the client adapter ------------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        if self._upstream is not None:
            self._upstream.send_body(data)
        elif self._body_backlog is not None:
            self._body_backlog.append(data)

    def on_request_end(self) -> None:
        self._request_ended = True
        if self._upstream is not None:
            self._upstream.send_end()

    def on_client_gone(self) -> None:
        """The client closed or reset: stop upstream at once so no tokens are wasted."""
        if self._finished:
            return
        self._counters.client_aborts += 1
        self._finish()
        if self._upstream is not None:
            self._upstream.abort()

    def on_client_paused(self) -> None:
        """The client's send buffer is over its high-water mark: stop reading upstream."""
        self._client_paused = True
        if self._upstream is not None:
            self._upstream.pause_reading()

    def on_client_resumed(self) -> None:
        self._client_paused = False
        # Silence while paused was our own doing; it must not count as upstream idling.
        self._last_byte = self._loop.time()
        if self._upstream is not None:
            self._upstream.resume_reading()

    # -- from upstream ----------------------------------------------------------------

    def on_upstream_paused(self) -> None:
        self._client.pause_request_body()

    def on_upstream_resumed(self) -> None:
        self._client.resume_request_body()

    def on_response_head(self, status: int, headers: Headers) -> None:
        if self._finished:
            return
        self._head_sent = True
        content_type = header_value(headers, b"content-type") or b""
        headers = end_to_end(headers)
        if content_type.lower().startswith(b"text/event-stream"):
            encoding = header_value(headers, b"content-encoding")
            if encoding is None or encoding.lower() == b"identity":
                self._scanner = FrameScanner()
                self._clock = KeepaliveClock(self._settings.keepalive_interval, self._loop.time())
                # Keepalives add bytes, so the client's framing cannot be a fixed length.
                headers = [(k, v) for k, v in headers if k != b"content-length"]
                self._arm(self._loop.time() + self._settings.keepalive_interval)
            else:
                self._counters.sse_compressed += 1
                log.warning(
                    "SSE response for %s is content-encoded (%s): relayed without keepalives",
                    self._head.target.decode(errors="replace"),
                    encoding.decode(errors="replace"),
                )
        self._client.send_head(status, headers)

    def on_response_body(self, data: bytes) -> None:
        # The hot path: one clock read, one scanner pass, one write. No allocation.
        self._last_byte = self._loop.time()
        scanner = self._scanner
        if scanner is not None:
            if self.keepalives and not self.bytes_out and data.startswith(_BOM):
                # A BOM only means something at the very start; a keepalive went first.
                data = data[3:]
            scanner.feed(data)
        self.bytes_out += len(data)
        self._client.send_body(data)

    def on_response_end(self) -> None:
        if self._finished:
            return
        self._finish()
        self._client.send_end()

    def on_upstream_failed(self, error: RelayError) -> None:
        """Upstream could not be reached or died: end the exchange loudly, never silently."""
        if self._finished:
            return
        self._counters.upstream_errors += 1
        self._finish()
        if self._upstream is not None:
            self._upstream.abort()
        if not self._head_sent:
            self._send_error_response(error)
        elif self._scanner is not None:
            self._client.send_body(self._close_partial_frame() + self._lost_frame())
            self._client.send_end()
        else:
            # A fixed-length or compressed body cannot carry an error in-band; a reset is
            # the only way the client learns it is incomplete.
            self._client.abort()

    # -- internals --------------------------------------------------------------------

    def _send_error_response(self, error: RelayError) -> None:
        body = render_error_body(error.error_type, error.message)
        self._client.send_head(
            error.status,
            [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"request-id", new_request_id().encode()),
                (b"x-should-retry", b"true" if error.retryable else b"false"),
            ],
        )
        self._client.send_body(body)
        self._client.send_end()

    def _close_partial_frame(self) -> bytes:
        scanner = self._scanner
        if scanner is None or scanner.at_boundary:
            return b""
        return (b"" if scanner.at_line_start else b"\n") + _DISCARD_PARTIAL_FRAME

    def _lost_frame(self) -> bytes:
        frames = self._scanner.frames if self._scanner is not None else 0
        return error_frame(
            "api_error",
            f"upstream connection lost after {self.bytes_out} bytes / {frames} events",
        )

    def _finish(self) -> None:
        self._finished = True
        self._counters.streams_active -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        """Wakes at most once per interval: read timeout and keepalive decisions."""
        self._timer = None
        if self._finished:
            return
        now = self._loop.time()
        interval = self._settings.keepalive_interval
        if self._client_paused:
            self._timer = self._loop.call_at(now + interval, self._on_timer)
            return
        deadline = self._last_byte + self._settings.read_timeout
        if now >= deadline:
            self.on_upstream_failed(
                UpstreamLost(f"upstream sent nothing for {self._settings.read_timeout:g} s")
            )
            return
        next_check = deadline
        clock, scanner = self._clock, self._scanner
        if clock is not None and scanner is not None:
            decision = clock.decide(now, self._last_byte, scanner.at_boundary)
            if decision.write:
                self.keepalives += 1
                self._counters.keepalives += 1
                self._client.send_body(self._settings.keepalive_frame)
            next_check = min(next_check, decision.next_check)
        self._timer = self._loop.call_at(next_check, self._on_timer)
