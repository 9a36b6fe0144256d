"""QUIC over UDP: one socket, many connections, told apart by destination connection ID.

A hand-written `asyncio.DatagramProtocol` after aioquic's own `asyncio/server.py`, kept
to what the relay needs. Datagrams are routed by connection ID, never by address, so a
client that changes address keeps its connection (aioquic validates the new path). A
connection is created only from an Initial packet of a supported version in a full-size
datagram; another version gets Version Negotiation; everything else that matches no
connection is dropped and counted, and never touches a live connection.

Each connection lives in a `QuicSession`: datagrams and timer ticks in, datagrams out,
and exactly one timer, re-armed from `QuicConnection.get_timer()` after every send. What
the connection means (HTTP/3) is the business of a `QuicHandler` above it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol, cast

from aioquic.buffer import Buffer  # type: ignore[attr-defined]  # re-export, no __all__
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    QuicEvent,
)
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.tls import SessionTicket

from relay.ops.metrics import RelayMetrics

log = logging.getLogger("sse_relay")

# Tickets kept for resumption; past it the oldest go (each is a few hundred bytes).
MAX_SESSION_TICKETS = 10_000


class SessionTicketStore:
    """TLS session tickets in memory, each usable once.

    Tickets allow resumption and 0-RTT. Handing each out only once is TLS 1.3's
    single-use-ticket defence (RFC 8446 section 8.1): a replayed 0-RTT flight finds its
    ticket gone, so its early data is refused and an early request runs at most once.
    """

    def __init__(self, limit: int = MAX_SESSION_TICKETS) -> None:
        self._limit = limit
        self._tickets: dict[bytes, SessionTicket] = {}

    def add(self, ticket: SessionTicket) -> None:
        if len(self._tickets) >= self._limit:
            del self._tickets[next(iter(self._tickets))]
        self._tickets[ticket.ticket] = ticket

    def pop(self, label: bytes) -> SessionTicket | None:
        return self._tickets.pop(label, None)


class QuicHandler(Protocol):
    """The protocol above one QUIC connection (HTTP/3)."""

    def quic_event_received(self, event: QuicEvent) -> None: ...

    def transmitted(self) -> None:
        """Called after every send: acknowledgements may have freed send buffers."""
        ...


class QuicSession:
    """One QUIC connection's shell: feeds it datagrams and timer ticks, sends its output."""

    __slots__ = (
        "_handler",
        "_listener",
        "_loop",
        "_timer",
        "_timer_at",
        "_transmit_scheduled",
        "cids",
        "quic",
    )

    def __init__(
        self,
        listener: QuicListener,
        quic: QuicConnection,
        new_handler: Callable[[QuicSession], QuicHandler],
    ) -> None:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self.quic = quic
        #: The connection IDs that lead to this connection in the listener.
        self.cids: set[bytes] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_scheduled = False
        self._handler = new_handler(self)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.quic.receive_datagram(data, addr, now=self._loop.time())
        self.process()

    def process(self) -> None:
        """Hand what the connection made of its input to the handler, then send."""
        self._process_events()
        self.transmit()

    def schedule_transmit(self) -> None:
        # Coalesce what many streams queue in one loop iteration into one send pass.
        if not self._transmit_scheduled:
            self._transmit_scheduled = True
            self._loop.call_soon(self.transmit)

    def transmit(self) -> None:
        """Send what the connection has queued and re-arm its one timer."""
        self._transmit_scheduled = False
        transport = self._listener.transport
        if transport is not None and not transport.is_closing():
            for data, addr in self.quic.datagrams_to_send(now=self._loop.time()):
                transport.sendto(data, addr)
        timer_at = self.quic.get_timer()
        if timer_at != self._timer_at:
            self.cancel_timer()
            if timer_at is not None:
                self._timer = self._loop.call_at(timer_at, self._on_timer)
            self._timer_at = timer_at
        self._handler.transmitted()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        # The loop may wake a hair early; aioquic compares against its own deadline.
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer = self._timer_at = None
        self.quic.handle_timer(now=now)
        self.process()

    def _process_events(self) -> None:
        listener = self._listener
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, ConnectionIdIssued):
                listener.route(event.connection_id, self)
            elif isinstance(event, ConnectionIdRetired):
                listener.unroute(event.connection_id, self)
            elif isinstance(event, ConnectionTerminated):
                listener.forget(self)
            self._handler.quic_event_received(event)


class QuicListener(asyncio.DatagramProtocol):
    """The UDP socket: demultiplexes datagrams to `QuicSession`s by connection ID."""

    def __init__(
        self,
        configuration: QuicConfiguration,
        new_handler: Callable[[QuicSession], QuicHandler],
        metrics: RelayMetrics,
    ) -> None:
        self._configuration = configuration
        self._new_handler = new_handler
        self._metrics = metrics
        self._sessions: dict[bytes, QuicSession] = {}
        self._tickets = SessionTicketStore()
        self.transport: asyncio.DatagramTransport | None = None
        #: False once the relay drains: live connections go on, new ones are not made.
        self.accepting = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            self._drop("unparsable packet", addr)
            return
        session = self._sessions.get(header.destination_cid)
        if session is not None:
            session.datagram_received(data, addr)
            return
        versions = self._configuration.supported_versions
        if (
            header.version is not None
            and header.version not in versions
            and header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE  # RFC 9000 5.2.2: no amplification
            and self.transport is not None
        ):
            self.transport.sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=versions,
                ),
                addr,
            )
            return
        if (
            header.packet_type != QuicPacketType.INITIAL
            or header.version not in versions
            or len(data) < SMALLEST_MAX_DATAGRAM_SIZE  # RFC 9000 14.1
            or not self.accepting
        ):
            self._drop("packet for no connection", addr)
            return
        self._accept(data, addr, header.destination_cid)

    def _accept(self, data: bytes, addr: NetworkAddress, original_cid: bytes) -> None:
        quic = QuicConnection(
            configuration=self._configuration,
            original_destination_connection_id=original_cid,
            session_ticket_fetcher=self._tickets.pop,
            session_ticket_handler=self._tickets.add,
        )
        now = asyncio.get_running_loop().time()
        quic.receive_datagram(data, addr, now=now)
        timer_at = quic.get_timer()
        if timer_at is None or timer_at >= now + self._configuration.idle_timeout:
            # A real Initial schedules its ACK at once; one that did not decrypt leaves
            # only the idle deadline behind. Keep no state for junk.
            self._drop("undecryptable Initial", addr)
            return
        session = QuicSession(self, quic, self._new_handler)
        self.route(original_cid, session)
        self.route(quic.host_cid, session)
        session.process()

    def route(self, cid: bytes, session: QuicSession) -> None:
        self._sessions[cid] = session
        session.cids.add(cid)

    def unroute(self, cid: bytes, session: QuicSession) -> None:
        if self._sessions.get(cid) is session:
            del self._sessions[cid]
        session.cids.discard(cid)

    def forget(self, session: QuicSession) -> None:
        """The connection ended: drop every connection ID that led to it."""
        session.cancel_timer()
        for cid in list(session.cids):
            self.unroute(cid, session)

    def close(self) -> None:
        for session in set(self._sessions.values()):
            session.cancel_timer()
        self._sessions.clear()
        if self.transport is not None:
            self.transport.close()

    def _drop(self, why: str, addr: NetworkAddress) -> None:
        self._metrics.quic_dropped()
        log.debug("dropped a UDP datagram from %s: %s", addr, why)
