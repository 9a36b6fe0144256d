"""HTTP/2 floods and resource attacks: each ends its connection, costs the relay little,
and never stalls the streams of other clients.

Rapid reset (CVE-2023-44487), PING and SETTINGS floods (CVE-2019-9512/9515), CONTINUATION
floods (CVE-2024-27316 and kin), an HPACK bomb and window overflows. During the floods a
normal stream on another connection sits in a silent upstream gap and must get its
keepalives on time; after each, the relay must be alive, leak no fds and still relay a
normal stream byte-exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.clients import wait_for
from tests.hostile.h2_attack import (
    CONTINUATION,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    HEADERS,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    WINDOW_UPDATE,
    H2Attack,
    KeepaliveWatch,
    Received,
    assert_relay_healthy,
    frame,
    headers_frames,
    hpack_int,
    hpack_string,
    ping,
    raw_block,
    request_fields,
    request_frames,
    rst_stream,
    settings,
    settle_fds,
    vm_hwm_kib,
    window_update,
)
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

KA = 0.5
#: Longest silence a watched stream may see: two keepalive intervals.
FAIR_SILENCE = 2 * KA
#: Peak memory a flood may add to the relay (VmHWM), generous.
MEMORY_BOUND_KIB = 64 * 1024
#: How long the relay gets to end a flooding connection once the flood is written.
CLOSE_TIMEOUT = 15.0
#: ... or, if it never does, how long a connection may stay quiet before we stop waiting.
QUIET = 3.0


@pytest.fixture(scope="module")
def flood_relay(sim: SimServer) -> Iterator[RelayProcess]:
    with RelayProcess(sim.url, keepalive=KA) as proc:
        yield proc


@dataclass
class Flood:
    """What one flooding connection saw."""

    got: Received = field(default_factory=Received)
    #: The relay closed the connection within the wait.
    closed: bool = False
    #: Every request of the flood was answered (for floods of requests).
    answered: bool = False
    #: Requests and connections that reached upstream during the flood.
    requests: int = 0
    connections: int = 0


def _watched(relay: RelayProcess, flood: Callable[[], None]) -> KeepaliveWatch:
    """Runs `flood` while a normal stream on another connection is in a silent gap."""
    watch = KeepaliveWatch(relay.port, gap=20.0).start()
    try:
        flood()
        # At least a few keepalive intervals watched, however quick the flood was.
        wait_for(lambda: time.monotonic() - watch.ready_at >= 3 * KA, timeout=5)
    finally:
        watch.stop()
    return watch


def _assert_fair(watch: KeepaliveWatch) -> None:
    silence = watch.longest_silence()
    assert silence < FAIR_SILENCE, (
        f"a stream on another connection went {silence:.2f} s without a byte "
        f"(keepalive every {KA} s; {watch.keepalives()} keepalives seen)"
    )
    assert watch.keepalives() >= 1


def _assert_goaway_calm_and_closed(got: Received, closed: bool) -> None:
    assert got.goaway is not None, (
        f"no GOAWAY; relay {'closed' if got.closed else 'kept'} the connection "
        f"(frames received by type: {got.counts})"
    )
    assert got.goaway[1] == ENHANCE_YOUR_CALM, f"GOAWAY code {got.goaway[1]:#x}, want 0xb"
    assert closed, "GOAWAY sent but the connection stayed open"


def test_rapid_reset_gets_goaway_enhance_your_calm_and_spares_upstream(
    sim: SimServer, flood_relay: RelayProcess
) -> None:
    """3,000 x (HEADERS+END_STREAM, RST_STREAM(CANCEL)) written flat out on one h2c
    connection (CVE-2023-44487): GOAWAY(ENHANCE_YOUR_CALM) and close; fewer than 1% of
    the requests reach upstream and few upstream connections open; other connections'
    keepalives stay on time; the relay then serves normally."""
    relay = flood_relay
    fds = settle_fds(relay, sim)
    block = raw_block(request_fields({"text_deltas": 1}))
    burst = b"".join(
        headers_frames(sid, block, end_stream=True) + rst_stream(sid) for sid in range(1, 6001, 2)
    )
    result = Flood()

    def flood() -> None:
        requests, connections = len(sim.requests), sim.connections
        with H2Attack(relay.port) as attack:
            attack.send_all(burst)
            result.closed = attack.wait_closed(CLOSE_TIMEOUT, idle=QUIET)
            result.got = attack.received
        result.requests = len(sim.requests) - requests
        result.connections = sim.connections - connections

    watch = _watched(relay, flood)
    got = result.got
    _assert_goaway_calm_and_closed(got, result.closed)
    assert result.requests < 30, f"{result.requests} of 3,000 reset requests went upstream"
    assert result.connections < 50, f"{result.connections} upstream connections opened"
    _assert_fair(watch)
    assert_relay_healthy(relay, sim, fds)


def test_ping_flood_from_a_client_that_never_reads_gets_goaway_in_bounded_memory(
    sim: SimServer, flood_relay: RelayProcess
) -> None:
    """100,000 PINGs from a client that reads nothing while it sends: the relay answers
    with GOAWAY(ENHANCE_YOUR_CALM) and closes instead of queueing 100,000 PING ACKs; its
    peak memory grows by less than 64 MiB, other connections' keepalives stay on time."""
    relay = flood_relay
    fds = settle_fds(relay, sim)
    hwm = vm_hwm_kib(relay.proc.pid)
    pings = b"".join(ping(i.to_bytes(8, "big")) for i in range(100_000))
    result = Flood()

    def flood() -> None:
        with H2Attack(relay.port, reading=False, timeout=5) as attack:
            attack.send_all(pings)
            attack.start_reading()  # only now: whatever the relay queued comes in
            result.closed = attack.wait_closed(CLOSE_TIMEOUT, idle=QUIET)
            result.got = attack.received

    watch = _watched(relay, flood)
    got = result.got
    _assert_goaway_calm_and_closed(got, result.closed)
    grown = vm_hwm_kib(relay.proc.pid) - hwm
    assert grown < MEMORY_BOUND_KIB, f"peak memory grew by {grown} KiB"
    _assert_fair(watch)
    assert_relay_healthy(relay, sim, fds)


def test_settings_flood_gets_goaway_enhance_your_calm(
    sim: SimServer, flood_relay: RelayProcess
) -> None:
    """100,000 SETTINGS frames, each owed an ACK: GOAWAY(ENHANCE_YOUR_CALM) and close,
    peak memory bounded, other connections' keepalives on time."""
    relay = flood_relay
    fds = settle_fds(relay, sim)
    hwm = vm_hwm_kib(relay.proc.pid)
    flood_bytes = settings([(SETTINGS_ENABLE_PUSH, 0)]) * 100_000
    result = Flood()

    def flood() -> None:
        with H2Attack(relay.port, timeout=5) as attack:
            attack.send_all(flood_bytes)
            result.closed = attack.wait_closed(CLOSE_TIMEOUT, idle=QUIET)
            result.got = attack.received

    watch = _watched(relay, flood)
    got = result.got
    _assert_goaway_calm_and_closed(got, result.closed)
    grown = vm_hwm_kib(relay.proc.pid) - hwm
    assert grown < MEMORY_BOUND_KIB, f"peak memory grew by {grown} KiB"
    _assert_fair(watch)
    assert_relay_healthy(relay, sim, fds)


def test_continuation_flood_gets_goaway_in_bounded_memory(
    sim: SimServer, flood_relay: RelayProcess
) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames without end (1 KiB each, up
    to 40,000 of them) inside one never-ending literal: GOAWAY (any code) and close,
    peak memory bounded, other connections' keepalives on time."""
    relay = flood_relay
    fds = settle_fds(relay, sim)
    hwm = vm_hwm_kib(relay.proc.pid)
    # Pseudo-headers, then a literal whose value claims 256 MiB: it never completes.
    opening = (
        raw_block(request_fields()) + b"\x00" + hpack_string(b"x-pad") + hpack_int(1 << 28, 7, 0)
    )
    chunk = frame(CONTINUATION, 0, 1, b"a" * 1024) * 64
    result = Flood()

    def flood() -> None:
        with H2Attack(relay.port, timeout=5) as attack:
            attack.send(frame(HEADERS, 0, 1, opening))
            for _ in range(40_000 // 64):
                if not attack.send(chunk):
                    break
            result.closed = attack.wait_closed(CLOSE_TIMEOUT, idle=QUIET)
            result.got = attack.received

    watch = _watched(relay, flood)
    got = result.got
    assert got.goaway is not None, f"no GOAWAY (frames received by type: {got.counts})"
    assert result.closed, "GOAWAY sent but the connection stayed open"
    grown = vm_hwm_kib(relay.proc.pid) - hwm
    assert grown < MEMORY_BOUND_KIB, f"peak memory grew by {grown} KiB"
    _assert_fair(watch)
    assert_relay_healthy(relay, sim, fds)


def test_large_header_blocks_leave_other_connections_keepalives_on_time(
    sim: SimServer, flood_relay: RelayProcess
) -> None:
    """60 requests whose header blocks are just under the relay's advertised
    SETTINGS_MAX_HEADER_LIST_SIZE, written at once: each gets an answer (or a reset),
    and meanwhile a stream on another connection gets its keepalives on time."""
    relay = flood_relay
    fds = settle_fds(relay, sim)
    result = Flood()

    def flood() -> None:
        with H2Attack(relay.port) as attack:
            limit = attack.received.settings.get(SETTINGS_MAX_HEADER_LIST_SIZE, 65_536)
            base = request_fields({"text_deltas": 1})
            used = sum(len(k) + len(v) + 32 for k, v in base) + len(b"x-pad") + 32
            pad = (b"0123456789abcdef" * (limit // 16 + 1))[: limit - used - 64]
            block = raw_block([*base, (b"x-pad", pad)])
            ids = list(range(1, 121, 2))
            attack.send_all(b"".join(headers_frames(sid, block, end_stream=True) for sid in ids))
            result.answered = attack.wait(lambda r: all(r.answered(s) for s in ids) or r.closed, 30)
            result.got = attack.received

    watch = _watched(relay, flood)
    got = result.got
    assert result.answered and not got.closed, (
        f"{sum(got.answered(s) for s in range(1, 121, 2))} of 60 answered; GOAWAY {got.goaway}"
    )
    _assert_fair(watch)
    assert_relay_healthy(relay, sim, fds)


def _hpack_bomb(references: int) -> bytes:
    """Pseudo-headers, one 4,000-byte literal added to the dynamic table (RFC 7541
    6.2.1), then `references` one-byte references to it (index 62): a few KiB on the
    wire, `references` x 4 KB once decoded."""
    pseudo = raw_block(request_fields({"text_deltas": 1}))
    indexed = b"\x40" + hpack_string(b"x-bomb") + hpack_string(b"b" * 4000)
    return pseudo + indexed + b"\xbe" * references


def test_hpack_bomb_gets_431_or_goaway_in_bounded_memory(
    sim: SimServer, flood_relay: RelayProcess
) -> None:
    """A header block of 30,000 references to one 4 KB dynamic-table entry (120 MB
    decoded from 35 KB): the relay answers 431 on that stream or ends the connection
    with GOAWAY, nothing reaches upstream, and its peak memory grows by less than
    64 MiB."""
    relay = flood_relay
    fds = settle_fds(relay, sim)
    hwm = vm_hwm_kib(relay.proc.pid)
    before = len(sim.requests)
    with H2Attack(relay.port) as attack:
        attack.send_all(headers_frames(1, _hpack_bomb(30_000), end_stream=True))
        attack.wait(lambda r: r.answered(1) or r.goaway is not None or r.closed, 15)
        got = attack.received
    assert got.status(1) == 431 or got.goaway is not None, (got.headers.get(1), got.resets)
    assert len(sim.requests) == before
    grown = vm_hwm_kib(relay.proc.pid) - hwm
    assert grown < MEMORY_BOUND_KIB, f"peak memory grew by {grown} KiB"
    assert_relay_healthy(relay, sim, fds)


def test_oversized_frame_header_gets_goaway_without_waiting_for_its_payload(
    sim: SimServer, flood_relay: RelayProcess
) -> None:
    """A frame header declaring 2^24-1 bytes, far past SETTINGS_MAX_FRAME_SIZE (16,384),
    then 1 KiB of it and silence: the error is known from the 9-byte header (RFC 9113
    4.2), so the relay sends GOAWAY(FRAME_SIZE_ERROR) and closes within 5 s instead of
    buffering up to 16 MiB and holding the connection. (Found by test_h2_fuzz.py.)"""
    relay = flood_relay
    fds = settle_fds(relay, sim)
    with H2Attack(relay.port) as attack:
        attack.send(frame(WINDOW_UPDATE, 0, 0, b"\x00" * 1024, length=(1 << 24) - 1))
        sent_at = time.monotonic()
        closed = attack.wait_closed(7)
        got = attack.received
    assert got.goaway is not None, f"no GOAWAY {time.monotonic() - sent_at:.1f} s on; {got}"
    assert got.goaway[1] == FRAME_SIZE_ERROR, got
    assert closed and got.closed_at is not None and got.closed_at - sent_at < 5
    assert_relay_healthy(relay, sim, fds)


def test_connection_window_overflow_gets_goaway_flow_control_error(
    sim: SimServer, flood_relay: RelayProcess
) -> None:
    """WINDOW_UPDATE(0, 2^31-1) on top of the initial 65,535 takes the connection window
    past 2^31-1 (RFC 9113 6.9.1): GOAWAY(FLOW_CONTROL_ERROR) and close."""
    relay = flood_relay
    fds = settle_fds(relay, sim)
    with H2Attack(relay.port, connection_window=0) as attack:
        attack.send(window_update(0, (1 << 31) - 1))
        closed = attack.wait_closed(10)
        got = attack.received
    assert got.goaway is not None and got.goaway[1] == FLOW_CONTROL_ERROR, got.goaway
    assert closed
    assert_relay_healthy(relay, sim, fds)


def test_stream_window_overflow_resets_only_that_stream(
    sim: SimServer, flood_relay: RelayProcess
) -> None:
    """WINDOW_UPDATE(stream, 2^31-1) on a live response stream overflows that stream's
    window: RST_STREAM(FLOW_CONTROL_ERROR) for it, no GOAWAY."""
    relay = flood_relay
    fds = settle_fds(relay, sim)
    with H2Attack(relay.port) as attack:
        attack.send(request_frames(1, request_fields({"gaps": [[1, 10]]})))
        assert attack.wait(lambda r: r.status(1) == 200 or r.answered(1), 10)
        attack.send(window_update(1, (1 << 31) - 1))
        attack.wait(lambda r: 1 in r.resets or r.goaway is not None or r.closed, 10)
        got = attack.received
    assert got.resets.get(1) == FLOW_CONTROL_ERROR, (got.resets, got.goaway)
    assert got.goaway is None
    assert_relay_healthy(relay, sim, fds)
