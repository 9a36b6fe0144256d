"""Connections to one upstream: connect (TLS with SNI, verified), reuse, expire.

An HTTP/1.1 connection carries one exchange at a time and waits idle in between. An
HTTP/2 connection (chosen by ALPN, or forced) carries as many exchanges at once as
upstream's MAX_CONCURRENT_STREAMS allows; another is opened only when every one is
full, and requests that arrive while one is being opened wait for it instead of each
opening their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import cast

from relay.core.errors import ConnectTimeout, UpstreamCertificateError, UpstreamUnavailable
from relay.core.exchange import (
    PooledConnection,
    RequestHead,
    ResponseSink,
    UpstreamExchange,
    UpstreamTarget,
)
from relay.core.headers import upstream_request_headers
from relay.core.resumable import RESUMABLE_HEADER
from relay.upstream.h2 import H2Upstream
from relay.upstream.http1 import Http1Upstream
from relay.upstream.tls_reads import tls_transport

#: Idle upstream connections are closed after this long, before upstream's own
#: keep-alive timeout is likely to race a new request on them.
IDLE_SECONDS = 30.0
MAX_IDLE = 256

_ALPN = {"auto": ["h2", "http/1.1"], "h2": ["h2"], "http/1.1": ["http/1.1"]}


def tls_context(verify: bool, ca_file: str | None, protocol: str = "auto") -> ssl.SSLContext:
    """Client TLS for upstream: system trust (or `ca_file`), hostname checked, ALPN
    offering what `protocol` (auto, h2, http/1.1) allows."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(_ALPN[protocol])
    return context


class _ByAlpn(asyncio.Protocol):
    """Becomes HTTP/2 or HTTP/1.1 the moment the connection is up, before any byte.
    Over TLS, `raw` is the TCP transport under it: HTTP/1.1 reads it in C
    (relay/upstream/tls_reads.py)."""

    def __init__(self, pool: UpstreamPool, raw: asyncio.BaseTransport | None = None) -> None:
        self._pool = pool
        self._raw = raw
        self.chosen: Http1Upstream | H2Upstream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls = transport.get_extra_info("ssl_object")
        alpn = tls.selected_alpn_protocol() if tls is not None else None
        if self._pool.protocol == "h2" or alpn == "h2":
            self.chosen = H2Upstream(self._pool)
        else:
            self.chosen = Http1Upstream(self._pool)
            if self._raw is not None:
                transport = tls_transport(self._raw, cast(asyncio.Transport, transport))
        transport.set_protocol(self.chosen)
        self.chosen.connection_made(transport)


class UpstreamPool:
    """Keep-alive HTTP/1.1 and multiplexed HTTP/2 connections to one upstream base URL."""

    def __init__(
        self,
        target: UpstreamTarget,
        *,
        connect_timeout: float,
        tls: ssl.SSLContext | None,
        protocol: str = "auto",
        resumable: bool = False,
    ) -> None:
        self.target = target
        #: Upstream is a remote sse-relay asked for resumable streams (--resume-upstream).
        self.resumable = resumable
        self.url = target.url
        #: auto (HTTP/2 when TLS's ALPN picks it), h2 (h2c in cleartext) or http/1.1.
        self.protocol = protocol
        self._connect_timeout = connect_timeout
        self._tls = tls if target.tls else None
        self._idle: deque[tuple[float, Http1Upstream]] = deque()
        self._multiplexed: list[H2Upstream] = []
        self._connecting: asyncio.Task[Http1Upstream | H2Upstream] | None = None
        #: Whether upstream speaks HTTP/2: fixed by `protocol`, else what ALPN said last.
        self._speaks_h2: bool | None = protocol == "h2" or (
            None if protocol == "auto" and target.tls else False
        )
        self._loop = asyncio.get_running_loop()
        self.connections_opened = 0

    async def open(self, head: RequestHead, sink: ResponseSink) -> UpstreamExchange:
        """Send `head` upstream on a pooled or new connection; responses go to `sink`."""
        # Only POST can stream in the Messages API; ask for an uncompressed body so that
        # keepalives can be injected (a compressed SSE body is relayed without them).
        headers = upstream_request_headers(
            head.headers,
            authority=self.target.authority,
            client_ip=head.client_ip,
            identity_encoding=head.method == b"POST",
        )
        if self.resumable and head.method == b"POST":
            headers.append((RESUMABLE_HEADER, b"1"))
        target = self.target.base_path.encode() + head.target
        while True:
            connection = self._with_room() or self._take_idle() or await self._new_connection()
            if connection is not None:
                break
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Cancelled (the client left) just as a connection came: asyncio.wait_for
            # may hand over its result anyway, but no request goes upstream for nobody.
            if isinstance(connection, Http1Upstream):
                self.release(connection)
            raise asyncio.CancelledError
        try:
            return connection.start(head.method, target, headers, head.has_body, sink)
        except BaseException:
            # `relay.core.request_rules` lets through only what HTTP/1.1 can carry; should a
            # head still fail to go out, the connection it took must not leak.
            if isinstance(connection, Http1Upstream):
                connection.abort()
            raise

    def release(self, connection: PooledConnection) -> None:
        """A connection finished an exchange cleanly and may carry another."""
        assert isinstance(connection, Http1Upstream)  # only those are pooled idle
        self._idle.append((self._loop.time() + IDLE_SECONDS, connection))
        while len(self._idle) > MAX_IDLE:
            self._idle.popleft()[1].abort()

    def forget(self, connection: object) -> None:
        """A connection closed or is draining; it must never be handed out again."""
        if isinstance(connection, H2Upstream):
            with contextlib.suppress(ValueError):
                self._multiplexed.remove(connection)
            return
        for entry in self._idle:
            if entry[1] is connection:
                self._idle.remove(entry)
                break

    def close(self) -> None:
        while self._idle:
            self._idle.popleft()[1].abort()
        for connection in list(self._multiplexed):
            connection.close()

    def _with_room(self) -> H2Upstream | None:
        now = self._loop.time()
        for connection in list(self._multiplexed):
            idle_since = connection.idle_since
            if idle_since is not None and now - idle_since > IDLE_SECONDS:
                connection.close()
            elif connection.has_room:
                return connection
        return None

    def _take_idle(self) -> Http1Upstream | None:
        now = self._loop.time()
        while self._idle:
            expires, connection = self._idle.pop()
            if connection.closed:
                continue
            if expires <= now:
                connection.abort()
                continue
            return connection
        return None

    async def _new_connection(self) -> Http1Upstream | None:
        """A new HTTP/1.1 connection for this request; or None once an HTTP/2 one is
        up (this request's or another's), to look for room again."""
        if self._speaks_h2 is False:
            connection = await self._connect()
        elif self._connecting is not None:
            # Shielded: a request that gives up (its client left) must not cancel the
            # connection every other waiting request shares.
            await asyncio.shield(self._connecting)
            return None
        else:
            self._connecting = task = self._loop.create_task(self._shared_connect())
            try:
                connection = await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(self._adopt)
                raise
        return connection if isinstance(connection, Http1Upstream) else None

    def _adopt(self, task: asyncio.Task[Http1Upstream | H2Upstream]) -> None:
        """A connection made for a request that gave up meanwhile: an HTTP/1.1 one is
        pooled for the next request (an HTTP/2 one is shared already)."""
        if task.cancelled() or task.exception() is not None:
            return
        connection = task.result()
        if isinstance(connection, Http1Upstream):
            self.release(connection)

    async def _shared_connect(self) -> Http1Upstream | H2Upstream:
        try:
            return await self._connect()
        finally:
            self._connecting = None

    async def _connect(self) -> Http1Upstream | H2Upstream:
        try:
            connection = await asyncio.wait_for(self._handshake(), self._connect_timeout)
        except TimeoutError:
            raise ConnectTimeout(
                f"connecting to upstream timed out after {self._connect_timeout:g} s", self.url
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamCertificateError(
                "upstream presented a certificate that failed verification",
                f"{self.url}: {exc.verify_message or exc}",
            ) from None
        except ssl.SSLError as exc:
            raise UpstreamUnavailable(
                "TLS handshake with upstream failed", f"{self.url}: {exc}"
            ) from None
        except OSError as exc:
            # Clients are told what happened; which upstream, only the log.
            raise UpstreamUnavailable(
                f"cannot connect to upstream: {exc.strerror or exc}", self.url
            ) from None
        self.connections_opened += 1
        self._speaks_h2 = isinstance(connection, H2Upstream)
        if isinstance(connection, H2Upstream):
            if not connection.has_room:
                # A GOAWAY with its first SETTINGS, or no concurrent streams at all: a
                # failed connect (retried with backoff), not a reason to connect again now.
                connection.close()
                raise UpstreamUnavailable("upstream accepts no HTTP/2 streams", self.url)
            self._multiplexed.append(connection)
        return connection

    async def _handshake(self) -> Http1Upstream | H2Upstream:
        target = self.target
        if self._tls is None:
            _, chooser = await self._loop.create_connection(
                lambda: _ByAlpn(self), target.host, target.port
            )
        else:
            # TLS over a TCP transport of our own (start_tls), as create_connection's
            # ssl= would do, but with that transport in hand for the reads.
            raw, _ = await self._loop.create_connection(asyncio.Protocol, target.host, target.port)
            chooser = _ByAlpn(self, raw)
            try:
                tls = await self._loop.start_tls(
                    raw, chooser, self._tls, server_hostname=target.host
                )
            except BaseException:
                raw.abort()
                raise
            assert tls is not None
            chooser.connection_made(tls)
        connection = chooser.chosen
        assert connection is not None
        if isinstance(connection, H2Upstream):
            # Upstream's SETTINGS say how many streams it takes: wait for them.
            try:
                await connection.settled
            except asyncio.CancelledError:  # the connect timeout: no half-made connection
                connection.close()
                raise
        return connection
