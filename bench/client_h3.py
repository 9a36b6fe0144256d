"""The load generator's HTTP/3 client: aioquic, many streamed requests per connection.

Like the other clients it hands received bytes straight to a `StreamTally`. aioquic is
Python down to the packet, so this client costs far more per event than the others:
HTTP/3 figures come from light loads only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset

from bench.clients import OnDone
from bench.collector import StreamTally


class H3ClientConnection(QuicConnectionProtocol):
    """One QUIC connection carrying many streamed requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h3 = H3Connection(self._quic)
        self._streams: dict[int, tuple[StreamTally, OnDone]] = {}
        self.first_byte_ns: dict[int, int] = {}

    def open(
        self,
        path: bytes,
        authority: bytes,
        body: bytes,
        tally: StreamTally,
        on_done: OnDone,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Starts a POST; call `transmit` after a batch of them."""
        stream_id = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", authority),
            (b":path", path),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        self._h3.send_headers(stream_id, headers)
        self._h3.send_data(stream_id, body, end_stream=True)
        self._streams[stream_id] = (tally, on_done)

    def quic_event_received(self, event: QuicEvent) -> None:
        now = time.monotonic_ns()
        if isinstance(event, StreamReset):
            self._end(event.stream_id, f"stream reset ({event.error_code})")
        elif isinstance(event, ConnectionTerminated):
            for stream_id in list(self._streams):
                self._end(stream_id, f"connection closed: {event.reason_phrase}")
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, DataReceived):
                entry = self._streams.get(h3_event.stream_id)
                if entry is not None:
                    entry[0].feed(h3_event.data, now)
            elif isinstance(h3_event, HeadersReceived):
                self.first_byte_ns[h3_event.stream_id] = now
                entry = self._streams.get(h3_event.stream_id)
                if entry is not None:
                    entry[0].head(now)
                status = dict(h3_event.headers).get(b":status")
                if status != b"200":
                    self._end(h3_event.stream_id, f"HTTP/3 status {status!r}")
            else:
                continue
            if h3_event.stream_ended:
                self._end(h3_event.stream_id, None)

    def _end(self, stream_id: int, error: str | None) -> None:
        entry = self._streams.pop(stream_id, None)
        if entry is not None:
            entry[1](error)


async def h3_connect(host: str, port: int, ca_file: str) -> H3ClientConnection:
    """A connected client; `close()` ends it (aioquic's `connect` would tie its life to a
    context manager, where a run needs it across phases)."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
    )
    configuration.load_verify_locations(ca_file)  # the bench's own CA, for "localhost"
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: H3ClientConnection(QuicConnection(configuration=configuration)),
        local_addr=(host, 0),
    )
    protocol.connect((host, port))
    await protocol.wait_connected()
    return protocol
