"""A TCP proxy that counts what its target sends: how far an upstream got with a response."""

from __future__ import annotations

import contextlib
import socket
import threading


class CountingProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port`, one thread per direction.

    It forwards with backpressure (a blocking `sendall` before the next `recv`), so once
    the client side stops reading, the proxy stops reading the target too, and
    `from_target` stops growing: it is the bytes the target managed to write. The
    target-facing receive buffer is kept small so that the target feels a stall soon.
    """

    def __init__(self, target_port: int, receive_buffer: int = 64 * 1024) -> None:
        self._target = ("127.0.0.1", target_port)
        self._receive_buffer = receive_buffer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._from_target = 0
        threading.Thread(target=self._accept, name="counting-proxy", daemon=True).start()

    @property
    def from_target(self) -> int:
        """Bytes read from the target so far, over all connections."""
        with self._lock:
            return self._from_target

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            target = socket.socket()
            # Before connecting, so that the window the target sees starts small.
            target.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
            target.connect(self._target)
            with self._lock:
                self._sockets += [client, target]
            for source, sink, counted in ((client, target, False), (target, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, counted), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if counted:
                    with self._lock:
                        self._from_target += len(data)
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stops accepting and cuts every connection."""
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
