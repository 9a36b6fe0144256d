"""The admin listener: GET /metrics, /healthz and /readyz over HTTP/1.1 (h11).

Kept apart from the client listeners so that metrics and probes are never exposed
where clients connect, and a busy relay still answers its probes. It starts once the
client listeners are bound and stays open while the relay drains, so that /readyz
can tell load balancers to stop sending.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import cast

import h11

from relay.core.exchange import UpstreamTarget
from relay.core.registry import StreamRegistry
from relay.ops.config import RelayConfig
from relay.ops.metrics import CONTENT_TYPE, RelayMetrics

# A probe connects to upstream at most this often; others in between reuse its result.
PROBE_CACHE_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 1.0
# Scrapers keep connections open between scrapes (15-60 s); an idle one past this goes.
IDLE_SECONDS = 120.0
_JSON = b"application/json"


class Readiness:
    """Whether the relay should get traffic: not draining, and upstream reachable.

    Upstream reachability is a plain TCP connect to the first upstream (TLS would add
    nothing a load balancer can act on), cached so that frequent probes stay cheap.
    """

    def __init__(self, draining: Callable[[], bool], upstream: UpstreamTarget) -> None:
        self._draining = draining
        self._upstream = upstream
        self._probe: asyncio.Task[str | None] | None = None
        self._probed_at = 0.0

    async def check(self) -> str | None:
        """None when ready, else why not."""
        if self._draining():
            return "draining"
        loop = asyncio.get_running_loop()
        if self._probe is None or (
            self._probe.done() and loop.time() - self._probed_at >= PROBE_CACHE_SECONDS
        ):
            self._probed_at = loop.time()
            self._probe = loop.create_task(self._connect())
        # Shielded: a prober that hangs up must not cancel the probe others share.
        return await asyncio.shield(self._probe)

    async def _connect(self) -> str | None:
        host, port = self._upstream.host, self._upstream.port
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), PROBE_TIMEOUT_SECONDS
            )
        except TimeoutError:
            return f"upstream {host}:{port} did not accept within {PROBE_TIMEOUT_SECONDS:g} s"
        except OSError as exc:
            return f"upstream {host}:{port} unreachable: {exc.strerror or exc}"
        writer.close()
        return None


class AdminProtocol(asyncio.Protocol):
    """One admin connection; requests are answered in order, keep-alive allowed."""

    def __init__(self, metrics: RelayMetrics, readiness: Readiness) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._h11 = h11.Connection(h11.SERVER)
        self._transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._pending: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._h11.receive_data(data)
        self._next()

    def eof_received(self) -> bool:
        self._h11.receive_data(b"")
        self._next()
        return True  # an answer may still be on its way; we close once it is sent

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._idle is not None:
            self._idle.cancel()
        if self._pending is not None:
            self._pending.cancel()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._transport is not None:
            self._idle = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._transport.close)

    def _next(self) -> None:
        """Process events until a request is complete or more input is needed."""
        while self._transport is not None and self._pending is None:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError:
                self._transport.close()
                return
            if isinstance(event, h11.Request):
                self._request = event
            elif isinstance(event, h11.EndOfMessage) and self._request is not None:
                self._answer(self._request)
            elif event is h11.PAUSED:
                self._transport.pause_reading()  # a pipelined request waits its turn
                return
            elif event is h11.NEED_DATA:
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._transport.close()
                return

    def _answer(self, request: h11.Request) -> None:
        path = request.target.split(b"?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            self._send(405, _JSON, b'{"error": "method not allowed"}', ((b"allow", b"GET, HEAD"),))
        elif path == b"/metrics":
            self._send(200, CONTENT_TYPE.encode(), self._metrics.render())
        elif path == b"/healthz":
            self._send(200, _JSON, b'{"status": "ok"}')
        elif path == b"/readyz":
            self._pending = asyncio.get_running_loop().create_task(self._answer_ready())
        else:
            self._send(404, _JSON, b'{"error": "not found"}')

    async def _answer_ready(self) -> None:
        problem = await self._readiness.check()
        self._pending = None
        if problem is None:
            self._send(200, _JSON, b'{"status": "ready"}')
        else:
            body = json.dumps({"status": "not ready", "reason": problem}).encode()
            self._send(503, _JSON, body)
        self._next()

    def _send(
        self,
        status: int,
        content_type: bytes,
        body: bytes,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        transport = self._transport
        if transport is None:
            return
        assert self._request is not None
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        conn = self._h11
        reason = HTTPStatus(status).phrase.encode()
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
        if self._request.method != b"HEAD":
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        transport.write(data)
        self._request = None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            transport.resume_reading()
            self._arm_idle()
        else:
            transport.close()


async def serve_admin(
    config: RelayConfig,
    streams: StreamRegistry,
    metrics: RelayMetrics,
    worker_id: int | None = None,
) -> asyncio.Server | None:
    """The admin listener `--admin-listen` asks for, or None when it is off.

    Each process counts its own streams, so as worker N of --workers each process gets
    a port of its own: the configured one plus N - 1 (an ephemeral port stays ephemeral).
    """
    if config.admin_listen is None:
        return None
    host, port = config.admin_listen
    if worker_id is not None and port:
        port += worker_id - 1
    readiness = Readiness(lambda: streams.draining, config.upstreams[0])
    return await asyncio.get_running_loop().create_server(
        lambda: AdminProtocol(metrics, readiness), host, port, reuse_address=True
    )
