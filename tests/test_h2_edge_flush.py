"""HTTP/2 towards clients: what one pass of the loop can pile up for a client that
stopped reading.

libuv reads a ready upstream socket up to 32 times in one pass before the loop runs
anything scheduled, so a stream's output must reach the socket (and its pause reach
the stream) while that happens, not at the end of the pass.
"""

from __future__ import annotations

import asyncio
import socket
from typing import cast

import h2.config
import h2.connection
import h2.settings
import uvloop
from h2.errors import ErrorCodes

from relay.core.exchange import RequestHead
from relay.edge.h2 import WRITE_HIGH, WRITE_LOW
from relay.edge.h2_endpoint import FLUSH_AT, GracefulH2Connection, H2Endpoint
from relay.edge.h2_stream import H2ClientStream

READ = 256 * 1024  # what libuv hands over per read (uvloop's read buffer)
READS_PER_PASS = 32


class _Endpoint(H2Endpoint):
    """The connection side a stream needs, without the request handling of H2Protocol."""

    alt_svc = None

    def __init__(self) -> None:
        super().__init__(GracefulH2Connection(h2.config.H2Configuration(client_side=False)))
        self.stream: H2ClientStream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)

    def write_pause_changed(self) -> None:
        if self.stream is not None:
            self.stream.update_pause()

    def forget(self, stream_id: int) -> None:
        return

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        return

    def acknowledge(self, stream_id: int, size: int) -> None:
        return


class _Upstream:
    """The core's stream as the edge sees it: paused or not, nothing more."""

    head = RequestHead(b"POST", b"/v1/messages", [], None, has_body=False)
    paused = False

    def on_client_paused(self) -> None:
        self.paused = True

    def on_client_resumed(self) -> None:
        self.paused = False


def _open_stream(endpoint: _Endpoint) -> None:
    """A client that grants a 1 GiB window, opens stream 1, and then reads nothing."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: (1 << 31) - 1})
    client.increment_flow_control_window(1 << 30)
    client.send_headers(
        1,
        [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "relay")],
        end_stream=True,
    )
    endpoint.conn.initiate_connection()
    endpoint.conn.receive_data(client.data_to_send())


async def _reads_until_paused() -> tuple[int, int]:
    ours, theirs = socket.socketpair()
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    loop = asyncio.get_running_loop()
    transport, endpoint = await loop.connect_accepted_socket(_Endpoint, ours)
    try:
        _open_stream(endpoint)
        stream = H2ClientStream(endpoint, 1)
        upstream = _Upstream()
        stream.relay = upstream  # type: ignore[assignment]
        endpoint.stream = stream
        reads, chunk = 0, b"x" * READ
        # One upstream socket's reads in one pass, as libuv makes them: they stop when
        # the stream pauses its upstream (uv_read_stop), or after 32.
        while reads < READS_PER_PASS and not upstream.paused:
            stream.send_body(chunk)
            reads += 1
        held = len(endpoint.conn.data_to_send())
        return reads, held
    finally:
        transport.abort()
        theirs.close()


def test_a_client_that_stopped_reading_pauses_upstream_within_a_few_reads() -> None:
    reads, held = uvloop.run(_reads_until_paused())
    # The kernel's socket buffers take a few reads' worth; then the transport's buffer
    # passes its high-water mark and the stream pauses, long before 32 reads (8 MiB).
    assert reads < READS_PER_PASS // 2, reads
    assert held <= FLUSH_AT + READ, held
