"""HTTP/1.1 chunks sent on the client's socket in C (relay/edge/_h1data.pyx), on real
uvloop sockets: the bytes the peer reads are exactly those `transport.write` would
have sent, in the order written, however the socket's buffer fills; and the
descriptor is never written once the transport is closing.

`ChunkOut` uses uvloop's public transport API only, but relies on what it does:
`get_write_buffer_size()` counts every byte not yet in the kernel, and `is_closing()`
turns true before the descriptor is closed. Both are checked here, naming the version.
"""

from __future__ import annotations

import asyncio
import os
import socket
from importlib.metadata import version
from typing import cast

import pytest
import trustme
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.edge import native_out
from tests.tls_upstreams import localhost_contexts

if os.environ.get("SSE_RELAY_NO_EXTENSIONS") == "1":
    pytest.skip("SSE_RELAY_NO_EXTENSIONS=1: no Cython writer", allow_module_level=True)

from relay.edge._h1data import ChunkOut
from relay.sse._fastsse import FrameScanner
from relay.upstream._bodypump import FRAMINGS, BodyPump

UVLOOP = f"uvloop {version('uvloop')}"


class Server(asyncio.Protocol):
    """The relay's side of one client connection: its transport and flow control."""

    def __init__(self, made: asyncio.Future[Server]) -> None:
        self.made = made
        self.lost: asyncio.Future[Exception | None] = made.get_loop().create_future()
        self.pauses = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        self.made.set_result(self)

    def pause_writing(self) -> None:
        self.pauses += 1
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def connected(sndbuf: int = 0) -> tuple[asyncio.Server, Server, socket.socket]:
    """A uvloop server's transport for a plain client socket (nonblocking, small
    receive buffer), the server's send buffer set to `sndbuf` if given."""
    loop = asyncio.get_running_loop()
    made: asyncio.Future[Server] = loop.create_future()
    server = await loop.create_server(lambda: Server(made), "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    await loop.sock_connect(client, server.sockets[0].getsockname())
    protocol = await made
    if sndbuf:
        sock = protocol.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return server, protocol, client


def read_now(client: socket.socket, limit: int) -> bytes:
    """What the client can read at once, up to `limit` bytes."""
    got = bytearray()
    while len(got) < limit:
        try:
            data = client.recv(min(65536, limit - len(got)))
        except BlockingIOError:
            break
        if not data:
            break
        got += data
    return bytes(got)


async def read_all(client: socket.socket, size: int) -> bytes:
    got = bytearray()
    for _ in range(20000):
        got += read_now(client, size - len(got))
        if len(got) >= size:
            break
        await asyncio.sleep(0.001)
    return bytes(got)


def chunk(data: bytes) -> bytes:
    """`Http1Protocol.send_body`'s framing (an empty piece is not sent at all)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("piece"), st.integers(0, 70000)),
        # One read of the body pump: its pieces go out together (past one batch too).
        st.tuples(st.just("read of the pump"), st.lists(st.integers(1, 9000), max_size=70)),
        st.tuples(st.just("raw"), st.integers(1, 3000)),  # the head, keepalives
        st.tuples(st.just("read"), st.integers(0, 200000)),
        st.tuples(st.just("tick"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, sndbuf=st.sampled_from([0, 4096, 65536]))
def test_the_peer_reads_what_transport_write_would_have_sent(
    ops: list[tuple[str, int | list[int]]], sndbuf: int
) -> None:
    async def run() -> None:
        server, protocol, client = await connected(sndbuf)
        transport = protocol.transport
        # A call with bytes runs `write_c` and `flush_c`; the body pump calls them
        # from its buffer, once for each piece and once at the end of a read.
        send = ChunkOut(transport)
        pump = BodyPump(FRAMINGS["CHUNKED"], 0, lambda piece: None)
        pump.express(send, False, FrameScanner(), 0.0)
        expected = bytearray()
        received = bytearray()
        for i, (op, n) in enumerate(ops):
            if isinstance(n, list):
                pieces = [bytes([(i + j) % 251]) * size for j, size in enumerate(n)]
                pump.feed(b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces))
                expected += b"".join(map(chunk, pieces))
                continue
            data = bytes([i % 251]) * n
            if op == "piece":
                send(data)
                expected += chunk(data)
            elif op == "raw":
                transport.write(data)
                expected += data
            elif op == "read":
                received += read_now(client, n)
            else:
                await asyncio.sleep(0)
        received += await read_all(client, len(expected) - len(received))
        assert bytes(received) == bytes(expected)
        assert transport.get_write_buffer_size() == 0
        assert not protocol.paused
        transport.close()
        client.close()
        server.close()

    uvloop.run(run())


def test_a_full_socket_sends_the_rest_through_the_transport_which_pauses() -> None:
    """With the peer not reading, a piece the socket takes only part of goes on through
    `transport.write`: it counts in `get_write_buffer_size()`, pauses the protocol past
    the high-water mark, and nothing is sent beside it until it has drained."""

    async def run() -> None:
        server, protocol, client = await connected(sndbuf=4096)
        transport = protocol.transport
        out = ChunkOut(transport)
        pieces = [bytes([i]) * (40000 + 4099 * i) for i in range(8)]  # sizes vary: no
        # freed buffer of the same size can stand in for a byte not copied
        for piece in pieces:
            out(piece)
        assert transport.get_write_buffer_size() > 0, f"{UVLOOP}: unsent bytes not counted"
        assert protocol.pauses >= 1, f"{UVLOOP}: no pause_writing past the high-water mark"
        transport.write(b"raw")  # after the buffered rest, as any later write
        expected = b"".join(map(chunk, pieces)) + b"raw"
        assert await read_all(client, len(expected)) == expected
        await asyncio.sleep(0.01)
        assert transport.get_write_buffer_size() == 0
        assert not protocol.paused, f"{UVLOOP}: no resume_writing once drained"
        transport.close()
        client.close()
        server.close()

    uvloop.run(run())


def test_a_closing_transport_is_never_written_beside() -> None:
    """Once `abort()` ran, pieces go to `transport.write` (which drops them); once the
    connection is lost and the descriptor closed, another socket may get its number,
    and still nothing is sent on it: uvloop raises instead, as it did for the pump."""

    async def run() -> None:
        server, protocol, client = await connected()
        transport = protocol.transport
        fd = transport.get_extra_info("socket").fileno()
        out = ChunkOut(transport)
        out(b"before")
        transport.abort()
        assert transport.is_closing(), f"{UVLOOP}: is_closing() after abort()"
        out(b"closing")
        await protocol.lost
        await asyncio.sleep(0)
        with pytest.raises(OSError):
            os.fstat(fd)  # closed by uvloop once the connection is lost
        other, other_peer = socket.socketpair()
        moved = other.fileno() != fd  # else it took the free number itself
        if moved:
            os.dup2(other.fileno(), fd)
        try:
            with pytest.raises(RuntimeError):
                out(b"after")
            other_peer.setblocking(False)
            assert read_now(other_peer, 100) == b""
        finally:
            if moved:
                os.close(fd)
            other.close()
            other_peer.close()
        assert await read_all(client, 11) == chunk(b"before")
        client.settimeout(5)
        assert client.recv(100) == b""  # the end: nothing after it
        client.close()
        server.close()

    uvloop.run(run())


def test_only_plain_uvloop_tcp_transports_get_one(ca: trustme.CA) -> None:
    """A TLS transport's socket carries records: the edge keeps `transport.write`."""
    server_tls, client_tls = localhost_contexts(ca)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        plain, protocol, client = await connected()
        assert isinstance(native_out.chunk_out(protocol.transport), ChunkOut), UVLOOP
        made: asyncio.Future[Server] = loop.create_future()
        tls = await loop.create_server(lambda: Server(made), "127.0.0.1", 0, ssl=server_tls)
        port = tls.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_tls, server_hostname="localhost"
        )
        tls_side = await made
        assert native_out.chunk_out(tls_side.transport) is None
        writer.close()
        for transport in (protocol.transport, tls_side.transport):
            transport.close()
        client.close()
        plain.close()
        tls.close()

    uvloop.run(run())
