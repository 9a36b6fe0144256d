"""A TCP proxy that resets its first connection after N bytes towards the client, as a
load balancer's kill or a network change would cut a stream; later ones pass whole."""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from types import TracebackType

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class CutProxy:
    """127.0.0.1:`port` -> `target_port`; the first connection dies (RST both ways) once
    `cut_after` bytes from the target have been passed on, mid-whatever they were."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._cut_after = cut_after
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self.cuts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        # Bytes the first connection may still pass towards its client.
        budget: dict[socket.socket, int] = {}
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    client, _ = self._listener.accept()
                    upstream = socket.create_connection(self._target)
                    self.connections += 1
                    if self.connections == 1:
                        budget[upstream] = self._cut_after
                    peers[client], peers[upstream] = upstream, client
                    for s in (client, upstream):
                        sel.register(s, selectors.EVENT_READ)
                    continue
                if sock not in peers:
                    continue
                other = peers[sock]
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                left = budget.get(sock)
                if data and left is not None and len(data) >= left:
                    with contextlib.suppress(OSError):
                        other.sendall(data[:left])
                    self.cuts += 1
                    self._close(sel, peers, sock, reset=True)
                elif data:
                    if left is not None:
                        budget[sock] = left - len(data)
                    with contextlib.suppress(OSError):
                        other.sendall(data)
                else:
                    self._close(sel, peers, sock, reset=False)
        sel.close()

    @staticmethod
    def _close(
        sel: selectors.BaseSelector,
        peers: dict[socket.socket, socket.socket],
        sock: socket.socket,
        *,
        reset: bool,
    ) -> None:
        for s in (sock, peers.pop(sock, None)):
            if s is None:
                continue
            peers.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(s)
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> CutProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
