"""An HTTP/3 client on aioquic for tests: records every stream, can cancel one."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    QuicEvent,
    StreamReset,
)
from aioquic.tls import SessionTicket

from tests.clients import STREAM_BODY


class H3Client(QuicConnectionProtocol):
    """aioquic's client protocol with an H3 layer; per-stream status, data, ends, resets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.status: dict[int, int] = {}
        self.headers: dict[int, list[tuple[bytes, bytes]]] = {}
        self.data: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        #: RESET_STREAM error codes the relay sent, by stream.
        self.reset_codes: dict[int, int] = {}
        self.handshake: HandshakeCompleted | None = None
        self.terminated: ConnectionTerminated | None = None
        self._changed = asyncio.Event()
        self._migrated: asyncio.DatagramTransport | None = None

    def request(
        self,
        script: dict[str, object] | None = None,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        *,
        method: bytes = b"POST",
        path: bytes = b"/v1/messages",
    ) -> int:
        """Sends a request (by default a streaming Messages POST); returns its stream id."""
        stream_id = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path),
            (b"content-type", b"application/json"),
            (b"x-sim-script", json.dumps(script or {}).encode()),
            *(extra_headers or ()),
        ]
        if method != b"POST":
            self.h3.send_headers(stream_id, headers, end_stream=True)
        else:
            self.h3.send_headers(stream_id, headers)
            self.h3.send_data(stream_id, STREAM_BODY, end_stream=True)
        self.data[stream_id] = bytearray()
        self.transmit()
        return stream_id

    def cancel(self, stream_id: int) -> None:
        """Cancels a request the HTTP/3 way: STOP_SENDING and RESET_STREAM (RFC 9114 4.1.1)."""
        self._quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        self._quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        self.transmit()

    async def migrate(self) -> None:
        """Moves to a new UDP port and connection ID, as after a NAT rebinding."""
        old = self._transport
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0, 0, 0))
        loop = asyncio.get_running_loop()
        self._migrated, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        assert old is not None
        old.close()
        self.change_connection_id()  # sends from the new port at once

    def close_migrated(self) -> None:
        if self._migrated is not None:
            self._migrated.close()

    async def wait_until(self, done: Callable[[], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
        elif isinstance(event, StreamReset):
            self.reset_codes[event.stream_id] = event.error_code
            self.ended.add(event.stream_id)
        elif isinstance(event, ConnectionTerminated):
            self.terminated = event
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.headers[h3_event.stream_id] = h3_event.headers
                self.status[h3_event.stream_id] = int(dict(h3_event.headers)[b":status"])
            elif isinstance(h3_event, DataReceived):
                self.data[h3_event.stream_id] += h3_event.data
            else:
                continue
            if h3_event.stream_ended:
                self.ended.add(h3_event.stream_id)
        self._changed.set()


@asynccontextmanager
async def h3_connect(
    port: int,
    cafile: str,
    *,
    session_ticket: SessionTicket | None = None,
    on_ticket: Callable[[SessionTicket], None] | None = None,
    wait_connected: bool = True,
) -> AsyncIterator[H3Client]:
    """An HTTP/3 connection to the relay on 127.0.0.1, trusting `cafile` for localhost."""
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name="localhost",
        session_ticket=session_ticket,
    )
    configuration.load_verify_locations(cafile)
    async with connect(
        "127.0.0.1",
        port,
        configuration=configuration,
        create_protocol=H3Client,
        session_ticket_handler=on_ticket,
        wait_connected=wait_connected,
    ) as client:
        try:
            yield cast(H3Client, client)
        finally:
            cast(H3Client, client).close_migrated()
