"""The private internals of h2, h11, aioquic, uvloop and CPython's `_ssl` the relay
reads, checked by name.

pyproject.toml pins the libraries to ranges these checks passed on. A release that
renames one of them fails here, naming the version, instead of in production.
"""

from __future__ import annotations

import asyncio
import os
import platform
import ssl
import sys
from importlib.metadata import version

import h2.config
import h2.connection
import h2.stream
import h11
import pytest
import trustme
import uvloop
from aioquic.h3.connection import H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.stream import QuicStreamSender

from relay.edge.h2_endpoint import GracefulH2Connection
from relay.edge.h2_guard import header_block_pending, oversized_frame_pending
from relay.edge.http1 import pending_chunk_size
from tests.tls_upstreams import localhost_contexts

H2 = f"h2 {version('h2')}"
H11 = f"h11 {version('h11')}"
AIOQUIC = f"aioquic {version('aioquic')}"


def test_h2_state_machine_transitions_are_a_table() -> None:
    """relay/edge/h2_endpoint.py rewrites the GOAWAY transitions of this table."""
    table = getattr(h2.connection.H2ConnectionStateMachine, "_transitions", None)
    assert isinstance(table, dict) and table, f"{H2}: H2ConnectionStateMachine._transitions"
    conn = GracefulH2Connection(h2.config.H2Configuration(client_side=False))
    assert conn.state_machine._transitions is not table, f"{H2}: per-instance transitions"


def test_h2_frame_buffer_shows_partial_frames_and_header_blocks() -> None:
    """relay/edge/h2_guard.py reads FrameBuffer._data and ._headers_buffer."""
    buffer = h2.connection.H2Connection().incoming_buffer
    assert isinstance(getattr(buffer, "_data", None), bytearray), f"{H2}: FrameBuffer._data"
    assert getattr(buffer, "_headers_buffer", None) == [], f"{H2}: FrameBuffer._headers_buffer"


def test_header_block_pending_reads_what_h2_buffers() -> None:
    """Half a frame header, and a HEADERS frame without END_HEADERS, count as pending."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    client = h2.connection.H2Connection()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    assert not header_block_pending(server), H2
    server.receive_data(b"\x00\x00")  # 2 of a frame header's 9 bytes
    assert header_block_pending(server), f"{H2}: partial frame header not seen"
    server.receive_data(b"\x05\x01\x00\x00\x00\x00\x01" + b"\x82\x84\x87\x41\x01")
    assert header_block_pending(server), f"{H2}: HEADERS without END_HEADERS not seen"
    # CONTINUATION with END_HEADERS completes the block: ":authority: a".
    server.receive_data(b"\x00\x00\x01\x09\x04\x00\x00\x00\x01" + b"a")
    assert not header_block_pending(server), f"{H2}: completed header block still pending"


def test_oversized_frame_pending_reads_the_frame_header() -> None:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    client = h2.connection.H2Connection()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    server.receive_data(b"\x01\x00\x00\x00\x00\x00\x00\x00\x01")  # 64 KiB DATA, no payload
    assert oversized_frame_pending(server), f"{H2}: an oversized frame header not seen"


def test_h2_send_data_is_what_the_c_data_writer_does() -> None:
    """relay/edge/_h2data.pyx appends frames to H2Connection._data_to_send and lowers the
    windows itself, where SEND_DATA would change no state of either machine."""
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    client = h2.connection.H2Connection()
    client.initiate_connection()
    request = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "a")]
    client.send_headers(1, request)
    server.receive_data(client.data_to_send())
    server.data_to_send()
    assert isinstance(getattr(server, "_data_to_send", None), bytearray), f"{H2}: _data_to_send"
    stream = server.streams[1]
    for owner, name in (
        (server, "outbound_flow_control_window"),
        (server, "max_outbound_frame_size"),
        (stream, "outbound_flow_control_window"),
    ):
        assert type(getattr(owner, name, None)) is int, f"{H2}: {type(owner).__name__}.{name}"
    assert stream.state_machine.state is h2.stream.StreamState.OPEN, f"{H2}: stream state"
    assert server.state_machine.state is h2.connection.ConnectionState.SERVER_OPEN, H2
    send = h2.stream.StreamInputs.SEND_DATA
    for state in (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE):
        assert h2.stream._transitions[(state, send)] == (None, state), f"{H2}: {state}"
    open_ = h2.connection.ConnectionState.SERVER_OPEN
    table = h2.connection.H2ConnectionStateMachine._transitions
    assert table[(open_, h2.connection.ConnectionInputs.SEND_DATA)] == (None, open_), H2
    # What h2 itself writes for DATA, which the C writer writes too.
    before = stream.outbound_flow_control_window
    server.send_data(1, b"abc")
    assert server.data_to_send() == b"\x00\x00\x03\x00\x00\x00\x00\x00\x01abc", H2
    assert stream.outbound_flow_control_window == before - 3, H2


def test_h11_chunked_reader_shows_the_announced_chunk_size() -> None:
    """relay/edge/http1.py reads h11's ChunkedReader._bytes_in_chunk."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert pending_chunk_size(conn) == 0
    conn.receive_data(b"ffffffffffffffffff\r\nab")
    conn.next_event()
    assert pending_chunk_size(conn) == 0xFFFFFFFFFFFFFFFFFF - 2, f"{H11}: _bytes_in_chunk"


def test_aioquic_stream_sender_buffer_and_connection_streams() -> None:
    """relay/edge/h3.py reads QuicStreamSender._buffer and QuicConnection._streams, and
    overrides H3Connection._get_local_settings."""
    sender = QuicStreamSender(stream_id=0, writable=True)
    assert isinstance(getattr(sender, "_buffer", None), bytearray), f"{AIOQUIC}: _buffer"
    assert callable(getattr(H3Connection, "_get_local_settings", None)), AIOQUIC

    async def streams() -> object:
        quic = QuicConnection(configuration=QuicConfiguration(is_client=True))
        return getattr(quic, "_streams", None)

    assert isinstance(asyncio.run(streams()), dict), f"{AIOQUIC}: QuicConnection._streams"


UVLOOP = f"uvloop {version('uvloop')}"
PYTHON_SSL = f"CPython {platform.python_version()} ({ssl.OPENSSL_VERSION})"


@pytest.mark.skipif(
    os.environ.get("SSE_RELAY_NO_EXTENSIONS") == "1", reason="no C TLS reads to check"
)
def test_tls_reads_find_their_ssl_object_and_uvloops_layer() -> None:
    """relay/upstream/_tlsread.pyx reads the `SSL*` from CPython's `_ssl._SSLSocket`
    (checked against SSL_get_app_data), needs `_ssl` to run on the OpenSSL it is linked
    with, and relies on uvloop: start_tls leaves its SSLProtocol as the TCP transport's
    protocol, told by get_extra_info("uvloop.sslproto"), and its SSL transport has
    `_force_close(exc)`. If one of them changed, HTTP/1.1 upstreams fall back to
    uvloop's reads (slower); this test says which."""
    from relay.upstream import _tlsread

    assert sys.version_info[:2] in _tlsread.LAYOUTS, f"{PYTHON_SSL}: _ssl layout not known"
    assert _tlsread.SAME_OPENSSL, f"{PYTHON_SSL}: another OpenSSL than the relay's"
    server_context, client_context = localhost_contexts(trustme.CA())

    async def check() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        raw, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        tls = await loop.start_tls(
            raw, asyncio.Protocol(), client_context, server_hostname="localhost"
        )
        assert tls is not None
        layer = tls.get_extra_info("uvloop.sslproto")
        assert layer is not None and raw.get_protocol() is layer, f"{UVLOOP}: SSLProtocol"
        assert callable(getattr(tls, "_force_close", None)), f"{UVLOOP}: _force_close"
        assert _tlsread.fits(tls), f"{PYTHON_SSL}: SSL* not where _ssl.c keeps it"
        tls.abort()
        server.close()

    uvloop.run(check())
