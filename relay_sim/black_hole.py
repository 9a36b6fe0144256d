"""A TCP port whose connects never complete: the upstream for connect timeouts.

A listening socket with a backlog of 0, whose one accept-queue place is taken by a
connection of its own and which never accepts. Linux drops every further SYN while the
accept queue is full, so a client's connect neither succeeds nor fails: it waits for its
own timeout. Nothing answers, TLS or otherwise (an `https://` URL to it times out in the
TCP connect, before any handshake); unlike an unroutable address it needs no network.
"""

from __future__ import annotations

import socket
from types import TracebackType


class BlackHole:
    """A black-hole port on `host` (`port` 0: a free one); `close` frees it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family)
        try:
            self._listener.bind((host, port))
            self._listener.listen(0)
            address = self._listener.getsockname()
            self.host: str = address[0]
            self.port: int = address[1]
            # Fills the queue: Linux queues backlog + 1 connections.
            self._filler = socket.create_connection((self.host, self.port), timeout=5)
        except BaseException:
            self._listener.close()
            raise

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self._filler.close()
        self._listener.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
