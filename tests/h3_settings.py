"""HTTP/3 client additions for settings and flow-control tests, beside tests/h3client.py.

`DeafH3Client` can stop processing what arrives: while deaf it neither acknowledges
packets nor grants flow-control credit, as a stuck or overloaded peer does, and it can
read the SETTINGS the server advertised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from aioquic.asyncio.client import connect
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration

from tests.h3client import H3Client

Address = Any  # what asyncio hands `datagram_received`: a tuple for IPv4 and IPv6


class DeafH3Client(H3Client):
    """An `H3Client` whose datagrams can be held back unprocessed (`go_deaf`/`listen`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deaf = False
        self._held: list[tuple[bytes, Address]] = []

    @property
    def peer_settings(self) -> dict[int, int] | None:
        """The server's SETTINGS frame, once it arrived."""
        settings: dict[int, int] | None = self.h3.received_settings
        return settings

    def go_deaf(self) -> None:
        """From now on, hold every datagram: no ACK, no MAX_STREAM_DATA, no events."""
        self._deaf = True

    def listen(self) -> None:
        """Processes the held datagrams, in order, and everything after them."""
        self._deaf = False
        held, self._held = self._held, []
        for data, addr in held:
            super().datagram_received(data, addr)

    @property
    def held(self) -> int:
        """Datagrams held since `go_deaf`."""
        return len(self._held)

    def datagram_received(self, data: bytes | str, addr: Address) -> None:
        if self._deaf:
            self._held.append((cast(bytes, data), addr))
            return
        super().datagram_received(data, addr)


@asynccontextmanager
async def deaf_h3_connect(port: int, cafile: str) -> AsyncIterator[DeafH3Client]:
    """An HTTP/3 connection to the relay on 127.0.0.1 (trusting `cafile` for localhost)
    with aioquic's default flow-control limits (1 MiB per stream and connection)."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
    )
    configuration.load_verify_locations(cafile)
    async with connect(
        "127.0.0.1", port, configuration=configuration, create_protocol=DeafH3Client
    ) as client:
        yield cast(DeafH3Client, client)
