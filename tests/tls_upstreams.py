"""Upstreams that break TLS on purpose, on raw sockets in threads, for failure tests.

The sim's TLS is asyncio's, which never lets a test put bytes of its own choosing under
the TLS layer; these hold the socket themselves.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from types import TracebackType

import trustme


def localhost_contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for localhost from `ca`, and a client
    context that trusts `ca`."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


#: An application-data record header and a payload that cannot decrypt.
BAD_RECORD = b"\x17\x03\x03\x00\x20" + bytes(32)


class _Server:
    """A listener on 127.0.0.1 whose connections `_serve` handles, one thread each."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.accepted = 0
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._server.accept()
                self.accepted += 1
                threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.done.set()
        self._server.close()

    def __enter__(self) -> _Server:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class HandshakeReset(_Server):
    """Accepts TCP, reads the TLS ClientHello, and answers with a TCP reset."""

    def _serve(self, conn: socket.socket) -> None:
        conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class BreaksTlsMidStream(_Server):
    """HTTP/1.1 over TLS (memory BIOs, so that the test holds every byte on the wire):
    answers any request with an SSE head and `frames` (one chunk each), then sends a
    record that cannot decrypt.

    The bad record goes out once `inject` is set; with `together`, in the very write
    that carries the head and frames, so the relay reads them all at once.
    """

    def __init__(self, context: ssl.SSLContext, frames: list[bytes], together: bool) -> None:
        self._context = context
        self._frames = frames
        self._together = together
        self.inject = threading.Event()
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self._context.wrap_bio(incoming, outgoing, server_side=True)

        def pump() -> None:
            """Send what TLS wrote; feed it what the peer sent (waits for some)."""
            conn.sendall(outgoing.read())
            data = conn.recv(65536)
            if not data:
                raise ConnectionError("the relay left")
            incoming.write(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
        request = b""
        while not _complete(request):
            try:
                request += tls.read(65536)
            except ssl.SSLWantReadError:
                pump()
        tls.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"request-id: req_tls_1\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for frame in self._frames:
            tls.write(b"%x\r\n%s\r\n" % (len(frame), frame))
        if self._together:
            conn.sendall(outgoing.read() + BAD_RECORD)
        else:
            conn.sendall(outgoing.read())
            self.inject.wait(10)
            conn.sendall(BAD_RECORD)
        self.done.wait(30)  # the relay hangs up on its own


def _complete(request: bytes) -> bool:
    """A request head and as much body as its Content-Length says."""
    head, found, body = request.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True
