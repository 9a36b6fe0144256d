"""A TCP proxy that kills connections idle for too long: the load balancer of the bug.
It can also cut its first connection after N bytes, as a network change cuts a stream."""

from __future__ import annotations

import contextlib
import math
import selectors
import socket
import threading
import time


class IdleKillingProxy:
    """Forwards 127.0.0.1:port to a target; closes a connection pair after `idle` s quiet.

    Quiet means no byte in either direction, as an idle-timeout load balancer counts it.
    With `cut_after`, the first connection is also reset once that many bytes from the
    target have been passed on, mid-whatever they were.
    """

    def __init__(
        self, target_port: int, idle: float = math.inf, cut_after: int | None = None
    ) -> None:
        self._target = ("127.0.0.1", target_port)
        self._idle = idle
        self._cut_after = cut_after
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        last_active: dict[socket.socket, float] = {}
        # Bytes the first connection may still pass towards its client (with cut_after).
        budget: dict[socket.socket, int] = {}
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    client, _ = self._listener.accept()
                    upstream = socket.create_connection(self._target)
                    self.connections += 1
                    if self.connections == 1 and self._cut_after is not None:
                        budget[upstream] = self._cut_after
                    peers[client], peers[upstream] = upstream, client
                    for s in (client, upstream):
                        sel.register(s, selectors.EVENT_READ)
                    last_active[client] = time.monotonic()
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
                    other.sendall(data[:left])
                    self.kills += 1
                    self._close_pair(sel, peers, last_active, sock)
                elif data:
                    if left is not None:
                        budget[sock] = left - len(data)
                    other.sendall(data)
                    pair_key = sock if sock in last_active else other
                    last_active[pair_key] = time.monotonic()
                else:
                    self._close_pair(sel, peers, last_active, sock)
            now = time.monotonic()
            for client, seen in list(last_active.items()):
                if now - seen > self._idle:
                    self.kills += 1
                    self._close_pair(sel, peers, last_active, client)
        sel.close()

    @staticmethod
    def _close_pair(
        sel: selectors.BaseSelector,
        peers: dict[socket.socket, socket.socket],
        last_active: dict[socket.socket, float],
        sock: socket.socket,
    ) -> None:
        other = peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            peers.pop(s, None)
            last_active.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(s)
            # An idle-timeout balancer resets: the client sees the connection die.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def __enter__(self) -> IdleKillingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
