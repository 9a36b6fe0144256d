"""Connections to one upstream: connect (TLS with SNI, verified), reuse, expire."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from relay.config import UpstreamTarget
from relay.errors import ConnectTimeout, UpstreamCertificateError, UpstreamUnavailable
from relay.exchange import RequestHead, ResponseSink
from relay.headers import upstream_request_headers
from relay.upstream_http1 import Http1Upstream

#: Idle upstream connections are closed after this long, before upstream's own
#: keep-alive timeout is likely to race a new request on them.
IDLE_SECONDS = 30.0
MAX_IDLE = 256


def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """Client TLS for upstream: system trust (or `ca_file`), hostname checked."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to one upstream base URL."""

    def __init__(
        self,
        target: UpstreamTarget,
        *,
        connect_timeout: float,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.target = target
        self.url = target.url
        self._connect_timeout = connect_timeout
        self._tls = tls if target.tls else None
        self._idle: deque[tuple[float, Http1Upstream]] = deque()
        self._loop = asyncio.get_running_loop()
        self.connections_opened = 0

    async def open(self, head: RequestHead, sink: ResponseSink) -> Http1Upstream:
        """Send `head` upstream on a pooled or new connection; responses go to `sink`."""
        connection = self._take_idle() or await self._connect()
        # Only POST can stream in the Messages API; ask for an uncompressed body so that
        # keepalives can be injected (a compressed SSE body is relayed without them).
        headers = upstream_request_headers(
            head.headers,
            authority=self.target.authority,
            client_ip=head.client_ip,
            identity_encoding=head.method == b"POST",
        )
        target = self.target.base_path.encode() + head.target
        connection.start(head.method, target, headers, head.has_body, sink)
        return connection

    def release(self, connection: Http1Upstream) -> None:
        """A connection finished an exchange cleanly and may carry another."""
        self._idle.append((self._loop.time() + IDLE_SECONDS, connection))
        while len(self._idle) > MAX_IDLE:
            self._idle.popleft()[1].abort()

    def forget(self, connection: Http1Upstream) -> None:
        """A connection closed; it must never be handed out again."""
        for entry in self._idle:
            if entry[1] is connection:
                self._idle.remove(entry)
                break

    def close(self) -> None:
        while self._idle:
            self._idle.popleft()[1].abort()

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

    async def _connect(self) -> Http1Upstream:
        target = self.target
        try:
            _, protocol = await asyncio.wait_for(
                self._loop.create_connection(
                    lambda: Http1Upstream(self),
                    target.host,
                    target.port,
                    ssl=self._tls,
                    server_hostname=target.host if self._tls else None,
                ),
                self._connect_timeout,
            )
        except TimeoutError:
            raise ConnectTimeout(
                f"connecting to upstream {self.url} timed out after {self._connect_timeout:g} s"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamCertificateError(
                f"upstream {self.url} presented a certificate that failed verification: "
                f"{exc.verify_message or exc}"
            ) from None
        except ssl.SSLError as exc:
            raise UpstreamUnavailable(
                f"TLS handshake with upstream {self.url} failed: {exc}"
            ) from None
        except OSError as exc:
            raise UpstreamUnavailable(
                f"cannot connect to upstream {self.url}: {exc.strerror or exc}"
            ) from None
        self.connections_opened += 1
        return protocol
