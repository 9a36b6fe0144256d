"""An HTTP/1.1 upstream's TLS reads decrypted in C (relay/upstream/_tlsread.pyx), on
real uvloop sockets against a uvloop TLS server: the bytes delivered, pauses, the peer's
close_notify and a TLS error are what uvloop's own SSL transport gives, or better (the
bytes before an error, and the alert that tells the peer why).

The versions it relies on are checked in tests/test_library_internals.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import cast

import pytest
import trustme
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.upstream import tls_reads
from tests.tls_upstreams import BAD_RECORD, localhost_contexts

if os.environ.get("SSE_RELAY_NO_EXTENSIONS") == "1":
    pytest.skip("SSE_RELAY_NO_EXTENSIONS=1: no C reads", allow_module_level=True)

from relay.upstream._bodypump import FRAMINGS, BodyPump
from relay.upstream._tlsread import TlsTransport

SERVER, CLIENT = localhost_contexts(trustme.CA())


@dataclass
class Received(asyncio.Protocol):
    """What the application side of the client gets, and when it pauses reading."""

    transport: asyncio.Transport | None = None
    data: bytearray = field(default_factory=bytearray)
    events: list[str] = field(default_factory=list)
    pause_every: int = 0  # pause at every n-th delivery, resume on the next tick
    deliveries: int = 0
    lost: asyncio.Future[Exception | None] | None = None

    def data_received(self, data: bytes) -> None:
        self.take(data)

    def take(self, data: bytes) -> None:
        assert self.transport is not None
        self.data += data
        self.deliveries += 1
        if self.pause_every and self.deliveries % self.pause_every == 0:
            self.transport.pause_reading()
            self.events.append("pause")
            asyncio.get_running_loop().call_soon(self.resume)

    def resume(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        assert self.lost is not None
        self.lost.set_result(exc)

    # A body pump's owner (relay.upstream.body_decoder.PumpOwner).
    def body_ended(self) -> None:
        self.events.append("ended")

    def body_failed(self, message: str) -> None:
        self.events.append(f"failed: {message}")

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")


class Sender(asyncio.Protocol):
    """The server: writes `pieces` (each a TLS record or more), a tick apart when told
    to, then closes with close_notify."""

    def __init__(self, pieces: list[tuple[bytes, bool]]) -> None:
        self.pieces = pieces

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        asyncio.get_running_loop().create_task(self.send(cast(asyncio.Transport, transport)))

    async def send(self, transport: asyncio.Transport) -> None:
        for piece, tick in self.pieces:
            transport.write(piece)
            if tick:
                await asyncio.sleep(0.001)
        transport.close()


async def connect(port: int, app: Received, c_reads: bool) -> asyncio.Transport:
    """What relay/upstream/pool.py does: TCP, start_tls over it, then the C reads."""
    loop = asyncio.get_running_loop()
    raw, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    tls = await loop.start_tls(raw, app, CLIENT, server_hostname="localhost")
    assert tls is not None
    transport = tls_reads.tls_transport(raw, tls) if c_reads else tls
    assert isinstance(transport, TlsTransport) is c_reads
    app.transport = transport
    app.lost = loop.create_future()
    transport.set_protocol(app)
    return transport


PIECES = st.lists(st.tuples(st.integers(1, 70000), st.booleans()), min_size=1, max_size=12).map(
    lambda sizes: [(bytes([i % 251 + 1]) * n, tick) for i, (n, tick) in enumerate(sizes)]
)


@settings(max_examples=30, deadline=None)
@given(pieces=PIECES, pause_every=st.sampled_from([0, 1, 3]))
def test_the_c_reads_deliver_what_uvloops_do(
    pieces: list[tuple[bytes, bool]], pause_every: int
) -> None:
    """Every byte in order, pauses kept (nothing delivered while paused), and the
    peer's close_notify as one eof_received and then connection_lost(None): both ways."""

    async def run(c_reads: bool) -> tuple[bytes, list[str]]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Sender(pieces), "127.0.0.1", 0, ssl=SERVER)
        app = Received(pause_every=pause_every)
        original = app.take

        def take(data: bytes) -> None:
            assert app.transport is not None
            assert app.transport.is_reading(), "delivered while paused"
            original(data)

        app.take = take  # type: ignore[method-assign]
        await connect(server.sockets[0].getsockname()[1], app, c_reads)
        assert app.lost is not None
        exc = await asyncio.wait_for(app.lost, 10)
        server.close()
        assert exc is None
        return bytes(app.data), [e for e in app.events if e != "pause"]

    expected = b"".join(piece for piece, _ in pieces)
    for c_reads in (True, False):
        data, events = uvloop.run(run(c_reads))
        assert data == expected, f"C reads: {c_reads}"
        assert events == ["eof", "lost"], f"C reads: {c_reads}"


def test_a_body_pump_is_read_into_directly() -> None:
    """With a body pump as the protocol, records are decrypted into its buffer and
    decoded there (chunked here), pauses included; the body's end is told once."""
    body = b"".join(b"%x\r\n%s\r\n" % (n, bytes([65 + n % 26]) * n) for n in range(1, 300, 7))
    pieces = [(body[i : i + 997], i % 3 == 0) for i in range(0, len(body), 997)]
    pieces.append((b"0\r\n\r\n", False))

    async def run() -> Received:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Sender(pieces), "127.0.0.1", 0, ssl=SERVER)
        app = Received(pause_every=2)
        await connect(server.sockets[0].getsockname()[1], app, c_reads=True)
        pump = BodyPump(FRAMINGS["CHUNKED"], 0, app.take)
        pump.owner = app
        assert app.transport is not None
        app.transport.set_protocol(cast(asyncio.BufferedProtocol, pump))
        assert app.lost is not None
        await asyncio.wait_for(app.lost, 10)
        server.close()
        return app

    app = uvloop.run(run())
    assert bytes(app.data) == b"".join(bytes([65 + n % 26]) * n for n in range(1, 300, 7))
    assert [e for e in app.events if e != "pause"][:1] == ["ended"]
    assert "pause" in app.events


class BreaksARecord:
    """A TLS server on a thread (memory BIOs, to put bytes of its own under TLS): sends
    `first`, then a record that cannot decrypt, then keeps what the client answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.answer: ssl.SSLError | None = None
        self.answered = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = SERVER.wrap_bio(incoming, outgoing, server_side=True)
        with conn, contextlib.suppress(OSError):
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    conn.sendall(outgoing.read())
                    incoming.write(conn.recv(65536))
            tls.write(b"first")
            conn.sendall(outgoing.read() + BAD_RECORD)
            conn.settimeout(5)
            while data := conn.recv(65536):
                incoming.write(data)
                try:
                    tls.read(10)
                except ssl.SSLWantReadError:
                    continue
                except ssl.SSLError as exc:
                    self.answer = exc
                    break
        self.answered.set()


def test_a_tls_error_delivers_what_came_before_and_tells_the_peer() -> None:
    """The read that meets a record that cannot decrypt delivers what it decrypted
    before, sends OpenSSL's alert (what reading made it say goes out after each read),
    and loses the connection with the `ssl.SSLError`, as uvloop's read would."""

    async def run() -> tuple[Received, Exception | None, ssl.SSLError | None]:
        server = BreaksARecord()
        app = Received()
        await connect(server.port, app, c_reads=True)
        assert app.lost is not None
        exc = await asyncio.wait_for(app.lost, 10)
        await asyncio.get_running_loop().run_in_executor(None, server.answered.wait, 10)
        return app, exc, server.answer

    app, exc, answer = uvloop.run(run())
    assert bytes(app.data) == b"first"
    assert isinstance(exc, ssl.SSLError) and "bad record mac" in str(exc), exc
    assert answer is not None and "BAD_RECORD_MAC" in str(answer), answer


class Handshaken:
    """A TLS server on a thread that only does the handshake (memory BIOs); then the
    test makes records with `tls` and `outgoing` and hands them to the client itself."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = SERVER.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.conn, _ = self._listener.accept()
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.conn.sendall(self.outgoing.read())
                self.incoming.write(self.conn.recv(65536))
        self.conn.sendall(self.outgoing.read())  # session tickets
        self.ready.set()

    def records(self, data: bytes) -> bytes:
        self.tls.write(data)
        return self.outgoing.read()


def test_nothing_is_delivered_while_paused_and_resuming_delivers_what_waits() -> None:
    """Records read while the application is paused wait decrypted or in OpenSSL's
    input; resume_reading delivers them (more than one buffer's worth) with nothing
    more from the peer, on the next tick."""

    async def run() -> tuple[list[int], bytes, bytes]:
        server = Handshaken()
        app = Received()
        transport = await connect(server.port, app, c_reads=True)
        await asyncio.get_running_loop().run_in_executor(None, server.ready.wait, 10)
        await asyncio.sleep(0.05)  # the session tickets read
        assert isinstance(transport, TlsTransport)
        transport.pause_reading()
        sent = b""
        for i in range(3):  # 3 x 150 KiB, past the 256 KiB buffer
            data = bytes([i + 1]) * 150_000
            cipher = server.records(data)
            transport.get_buffer(len(cipher))[: len(cipher)] = cipher
            transport.buffer_updated(len(cipher))
            sent += data
        got_while_paused = bytes(app.data)
        transport.resume_reading()
        got_at_once = bytes(app.data)
        await asyncio.sleep(0.01)
        sizes = [len(got_while_paused), len(got_at_once)]
        transport.abort()
        server.conn.close()
        return sizes, bytes(app.data), sent

    sizes, data, sent = uvloop.run(run())
    assert sizes == [0, 0]
    assert data == sent
