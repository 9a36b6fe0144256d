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
    target have been passed on, mid-whatever they were. `watch` records what the target
    sends from then on, and can arm one such cut at any later byte, on any connection.
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
        # What `watch` set up; the proxy thread reads and updates these under the lock.
        self._lock = threading.Lock()
        self._transcript: bytearray | None = None
        self._armed: int | None = None
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
        targets: set[socket.socket] = set()  # the target side of every pair
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
                    targets.add(upstream)
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
                passed, cut = data, False
                if data and sock in targets:
                    passed, cut = self._from_target(data, budget.get(sock))
                    if sock in budget:
                        budget[sock] -= len(passed)
                if passed:
                    other.sendall(passed)
                if not data or cut:
                    if cut:
                        self.kills += 1
                    targets.difference_update((sock, other))
                    self._close_pair(sel, peers, last_active, sock)
                else:
                    pair_key = sock if sock in last_active else other
                    last_active[pair_key] = time.monotonic()
            now = time.monotonic()
            for client, seen in list(last_active.items()):
                if now - seen > self._idle:
                    self.kills += 1
                    targets.difference_update((client, peers[client]))
                    self._close_pair(sel, peers, last_active, client)
        sel.close()

    def _from_target(self, data: bytes, left: int | None) -> tuple[bytes, bool]:
        """What of `data` (from the target) may pass, and whether the pair is cut after
        it: `left` is the first connection's budget (cut_after), if it has one."""
        with self._lock:
            limits = [n for n in (left, self._armed) if n is not None]
            cut = bool(limits) and len(data) >= min(limits)
            passed = data[: min(limits)] if cut else data
            if self._armed is not None:
                self._armed -= len(passed)
                if cut and self._armed == 0:
                    self._armed = None  # one cut per `watch`
            if self._transcript is not None:
                self._transcript += passed
        return passed, cut

    def watch(self, cut_after: int | None = None) -> bytearray:
        """From now on, records every byte the target sends that is passed on, on any
        connection, in the returned (growing) transcript; with `cut_after`, the
        connection that carries byte `cut_after` + 1 of it is reset once `cut_after`
        have passed: the same cut as the constructor's, at any later point."""
        transcript = bytearray()
        with self._lock:
            self._transcript = transcript
            self._armed = cut_after
        return transcript

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
