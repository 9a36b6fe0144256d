"""Picks the HTTP version of each new client connection, then gets out of the way.

Under TLS, ALPN decides. In cleartext, a client that opens with the HTTP/2 connection
preface speaks h2c (prior knowledge); anything else is HTTP/1.1. So one port serves both.
"""

from __future__ import annotations

import asyncio
from typing import cast

from relay.edge.context import EdgeContext
from relay.edge.h2 import H2Protocol
from relay.edge.h2_endpoint import H2_PREFACE
from relay.edge.http1 import Http1Protocol


class FirstBytesProtocol(asyncio.Protocol):
    """Holds a new connection until its protocol is known, then hands it over."""

    def __init__(self, context: EdgeContext) -> None:
        self._context = context
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            alpn = ssl_object.selected_alpn_protocol()
            self._hand_over(
                H2Protocol(self._context) if alpn == "h2" else Http1Protocol(self._context)
            )
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._context.config.header_timeout, self._transport.close)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) < len(H2_PREFACE) and H2_PREFACE.startswith(self._buffer):
            return  # could still become the HTTP/2 preface
        if self._buffer.startswith(H2_PREFACE):
            self._hand_over(H2Protocol(self._context))
        else:
            self._hand_over(Http1Protocol(self._context))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _hand_over(self, protocol: asyncio.Protocol) -> None:
        if self._timer is not None:
            self._timer.cancel()
        transport = self._transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._buffer:
            protocol.data_received(self._buffer)
