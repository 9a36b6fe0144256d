"""HTTP/3 towards clients: aioquic through the relay, keepalives, cancels, garbage, Alt-Svc."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from aioquic.h3.connection import ErrorCode
from aioquic.tls import SessionTicket

from relay.edge.h3 import quic_configuration
from relay.edge.quic import QuicHandler, QuicListener, QuicSession
from relay.ops.config import ConfigError, RelayConfig, add_arguments, load
from relay.ops.metrics import RelayMetrics
from relay_sim.state import CloseRecord
from tests.clients import KEEPALIVE, STREAM_BODY, raw_stream, script, wait_until
from tests.h3client import H3Client, h3_connect
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

KA = 0.1
SIGNATURE_FRAME = re.compile(rb"event: content_block_delta\ndata: [^\n]*signature_delta[^\n]*\n\n")


def _h3_args(relay_tls_args: list[str]) -> list[str]:
    return [*relay_tls_args, "--http3"]


@pytest.fixture(scope="module")
def relay(sim: SimServer, relay_tls_args: list[str]) -> Iterator[RelayProcess]:
    # One try per request, so a relay-made 502 comes at once.
    args = [*_h3_args(relay_tls_args), "--retry-attempts", "1"]
    with RelayProcess(sim.url, *args, keepalive=KA) as proc:
        assert proc.h3_port, proc.ready_line
        yield proc


def _direct(sim: SimServer, fields: dict[str, object]) -> bytes:
    return raw_stream(sim.url, headers={"x-sim-script": json.dumps(fields)})[2]


def test_aioquic_gets_the_same_bytes_keepalives_and_signature(
    sim: SimServer, relay: RelayProcess, relay_tls_args: list[str], ca_file: Path
) -> None:
    fields: dict[str, object] = {"gaps": [[3, 6 * KA]]}
    direct = _direct(sim, fields)
    http1 = raw_stream(relay.url, headers=script(**fields))[2]

    async def run() -> tuple[int, bytes]:
        async with h3_connect(relay.h3_port, str(ca_file)) as client:
            stream = client.request(fields)
            await client.wait_until(lambda: stream in client.ended)
            return client.status[stream], bytes(client.data[stream])

    status, relayed = asyncio.run(run())
    assert status == 200
    assert relayed.count(KEEPALIVE) >= 3
    assert relayed.replace(KEEPALIVE, b"") == http1.replace(KEEPALIVE, b"") == direct
    signature = SIGNATURE_FRAME.search(direct)
    assert signature and signature.group(0) in relayed


def test_50_concurrent_streams_on_one_connection(
    sim: SimServer, relay: RelayProcess, relay_tls_args: list[str], ca_file: Path
) -> None:
    variants: list[dict[str, object]] = [
        {"gaps": [[2 + i, 0.1 * i]], "text_deltas": 1 + i} for i in range(5)
    ]
    direct = [_direct(sim, fields) for fields in variants]

    async def run() -> tuple[H3Client, list[int]]:
        async with h3_connect(relay.h3_port, str(ca_file)) as client:
            streams = [client.request(variants[i % 5]) for i in range(50)]
            await client.wait_until(lambda: set(streams) <= client.ended)
            return client, streams

    client, streams = asyncio.run(run())
    for i, stream in enumerate(streams):
        relayed = bytes(client.data[stream])
        assert client.status[stream] == 200
        assert relayed.replace(KEEPALIVE, b"") == direct[i % 5], i
        if i % 5 >= 2:  # gaps of 0.2 s and more: keepalives on each stream's own clock
            assert KEEPALIVE in relayed, i


def test_a_cancelled_stream_cancels_only_its_upstream_request(
    sim: SimServer, relay: RelayProcess, relay_tls_args: list[str], ca_file: Path
) -> None:
    async def run() -> tuple[H3Client, list[int], float, int]:
        async with h3_connect(relay.h3_port, str(ca_file)) as client:
            keep = [client.request({"gaps": [[2, 0.6]]}) for _ in range(3)]
            victim = client.request({"gaps": [[2, 30]]})
            await client.wait_until(lambda: client.data[victim].count(b"\n\n") >= 3)
            closes_before = len(sim.closes)
            cancelled_at = time.monotonic()
            client.cancel(victim)
            await wait_until(lambda: _aborted(closes_before))
            await client.wait_until(lambda: set(keep) <= client.ended)
            return client, keep, cancelled_at, closes_before

    def _aborted(since: int) -> list[CloseRecord]:
        return [c for c in sim.closes[since:] if c.client_aborted_midstream]

    client, keep, cancelled_at, closes_before = asyncio.run(run())
    # Far sooner than the 30 s gap (or the 600 s read timeout) would have ended it.
    assert _aborted(closes_before)[0].time - cancelled_at < 1.0
    assert all(b"event: message_stop" in client.data[s] for s in keep)
    assert all(client.status[s] == 200 for s in keep)


def _initial(version: int, size: int) -> bytes:
    """A well-formed long-header Initial of `version` whose payload is random."""
    head = bytes([0xC0]) + version.to_bytes(4, "big")
    head += bytes([8]) + os.urandom(8) + bytes([8]) + os.urandom(8) + b"\x00"  # no token
    payload = os.urandom(size - len(head) - 2)
    return head + (0x4000 | len(payload)).to_bytes(2, "big") + payload


def _garbage(rng: random.Random) -> bytes:
    """Random datagrams, many shaped like QUIC so they get past the header parser."""
    size = rng.randint(1, 1500)
    kind = rng.randrange(5)
    if kind == 0:  # an Initial of QUIC v1 that cannot decrypt
        return _initial(1, rng.randint(1200, 1400))
    if kind == 1:  # an Initial of an unknown version: Version Negotiation if full size
        return _initial(rng.randrange(3, 1 << 32), rng.randint(1000, 1400))
    if kind == 2:  # a long header, random from its version on
        return bytes([0x80 | rng.randrange(128)]) + os.urandom(size)
    if kind == 3:  # a short header: an unknown connection ID
        return bytes([0x40 | rng.randrange(64)]) + os.urandom(size)
    return os.urandom(size)


def test_udp_garbage_during_a_stream_harms_nothing(
    sim: SimServer, relay: RelayProcess, relay_tls_args: list[str], ca_file: Path
) -> None:
    fields: dict[str, object] = {"gaps": [[3, 0.5]]}
    direct = _direct(sim, fields)
    rng = random.Random(6)

    async def run() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            async with h3_connect(relay.h3_port, str(ca_file)) as client:
                stream = client.request(fields)
                await client.wait_until(lambda: client.data[stream].count(b"\n\n") >= 2)
                for i in range(2000):
                    await loop.sock_sendto(sock, _garbage(rng), ("127.0.0.1", relay.h3_port))
                    if i % 50 == 0:
                        await asyncio.sleep(0)  # let the client answer its own packets
                await client.wait_until(lambda: stream in client.ended)
                return client.status[stream], bytes(client.data[stream])

    status, relayed = asyncio.run(run())
    assert status == 200
    assert relayed.replace(KEEPALIVE, b"") == direct
    relay.check_log()  # no traceback, no error line: garbage is dropped quietly

    async def again() -> bytes:
        async with h3_connect(relay.h3_port, str(ca_file)) as client:
            stream = client.request()
            await client.wait_until(lambda: stream in client.ended)
            return bytes(client.data[stream])

    assert asyncio.run(again()).replace(KEEPALIVE, b"") == _direct(sim, {})


def _load_config(argv: list[str], env: dict[str, str] | None = None) -> RelayConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load(parser.parse_args(argv), env or {})


def test_http3_settings(relay_tls_args: list[str], ca_file: Path) -> None:
    tls = _h3_args(relay_tls_args)[:-1]
    assert not _load_config(tls).http3
    assert _load_config([*tls, "--http3"]).http3
    on = _load_config(tls, {"SSE_RELAY_HTTP3": "true", "SSE_RELAY_QUIC_IDLE_TIMEOUT": "90"})
    assert on.http3 and on.quic_idle_timeout == 90.0
    with pytest.raises(ConfigError, match="--http3"):
        _load_config(["--http3"])
    with pytest.raises(ConfigError, match="--quic-idle-timeout"):
        _load_config([*tls, "--http3", "--keepalive-interval", "60", "--quic-idle-timeout", "30"])
    with pytest.raises(ConfigError, match="SSE_RELAY_HTTP3"):
        _load_config(tls, {"SSE_RELAY_HTTP3": "maybe"})


class _CountingTransport(asyncio.DatagramTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def sendto(self, data: bytes | bytearray | memoryview, addr: object = None) -> None:
        self.sent += 1

    def is_closing(self) -> bool:
        return False


def test_garbage_is_dropped_or_answered_and_leaves_no_connection(
    relay_tls_args: list[str],
    ca_file: Path,
) -> None:
    config = _load_config(_h3_args(relay_tls_args))
    metrics = RelayMetrics()
    made: list[QuicSession] = []

    def new_handler(session: QuicSession) -> QuicHandler:
        made.append(session)
        raise AssertionError("no connection may come of garbage")

    async def run() -> _CountingTransport:
        listener = QuicListener(quic_configuration(config), new_handler, metrics)
        transport = _CountingTransport()
        listener.connection_made(transport)
        rng = random.Random(7)
        for _ in range(2000):
            listener.datagram_received(_garbage(rng), ("127.0.0.1", 9))
        return transport

    transport = asyncio.run(run())
    # Each datagram was dropped, or (an unknown version, full size) got one Version
    # Negotiation packet; none made a connection.
    assert not made
    dropped = metrics.value("sse_relay_quic_dropped_total")
    assert dropped + transport.sent == 2000
    assert dropped > 1000 and transport.sent > 0


def _alt_svc(url: str, http2: bool, fields: dict[str, object] | None = None) -> list[str]:
    with (
        httpx2.Client(http1=not http2, http2=http2, timeout=30) as client,
        client.stream(
            "POST",
            url + "/v1/messages",
            content=STREAM_BODY,
            headers={"content-type": "application/json", **script(**(fields or {}))},
        ) as response,
    ):
        response.read()
        assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        return response.headers.get_list("alt-svc")


def test_alt_svc_only_when_http3_is_on(sim: SimServer, relay: RelayProcess) -> None:
    advert = f'h3=":{relay.h3_port}"; ma=86400'
    assert relay.tls_url.endswith(f":{relay.h3_port}"), "UDP port = TLS port"
    assert _alt_svc(relay.url, http2=False) == [advert]
    assert _alt_svc(relay.url, http2=True) == [advert]
    # A relay-made answer (upstream drops before its head: 502) carries it too.
    assert _alt_svc(relay.url, http2=False, fields={"drop_before_head": True}) == [advert]
    assert _alt_svc(relay.url, http2=True, fields={"drop_before_head": True}) == [advert]
    with RelayProcess(sim.url, keepalive=KA) as plain:
        assert plain.h3_port == 0
        assert _alt_svc(plain.url, http2=False) == []
        assert _alt_svc(plain.url, http2=True) == []


def test_oversize_headers_get_431_on_their_stream_only(
    sim: SimServer, relay_tls_args: list[str], ca_file: Path
) -> None:
    args = [*_h3_args(relay_tls_args), "--max-header-bytes", "4096"]
    with RelayProcess(sim.url, *args, keepalive=KA) as relay:

        async def run() -> tuple[H3Client, int, int]:
            async with h3_connect(relay.h3_port, str(ca_file)) as client:
                big = client.request(extra_headers=[(b"x-big", b"a" * 8000)])
                fine = client.request()
                await client.wait_until(lambda: {big, fine} <= client.ended)
                return client, big, fine

        client, big, fine = asyncio.run(run())
    assert client.status[big] == 431
    assert json.loads(bytes(client.data[big]))["error"]["type"] == "invalid_request_error"
    assert client.status[fine] == 200 and b"event: message_stop" in client.data[fine]


def test_a_header_block_far_past_the_limit_is_refused_unread(
    sim: SimServer, relay: RelayProcess, relay_tls_args: list[str], ca_file: Path
) -> None:
    async def run() -> tuple[H3Client, int, int]:
        async with h3_connect(relay.h3_port, str(ca_file)) as client:
            # Random hex barely compresses: a header block of about 2 MiB.
            fields = [(b"x-h%d" % i, os.urandom(8000).hex().encode()) for i in range(200)]
            huge = client.request(extra_headers=fields)
            fine = client.request()
            await client.wait_until(lambda: {huge, fine} <= client.ended)
            return client, huge, fine

    client, huge, fine = asyncio.run(run())
    assert client.reset_codes.get(huge) == ErrorCode.H3_EXCESSIVE_LOAD
    assert client.status[fine] == 200 and b"event: message_stop" in client.data[fine]


def test_0rtt_resumes_with_a_ticket_once(
    sim: SimServer, relay: RelayProcess, relay_tls_args: list[str], ca_file: Path
) -> None:
    tickets: list[SessionTicket] = []

    async def fetch(ticket: SessionTicket | None) -> H3Client:
        async with h3_connect(
            relay.h3_port,
            str(ca_file),
            session_ticket=ticket,
            on_ticket=tickets.append,
            wait_connected=ticket is None,
        ) as client:
            stream = client.request()  # before the handshake completes when resuming
            await client.wait_until(lambda: stream in client.ended and bool(tickets))
            assert client.status[stream] == 200 and b"event: message_stop" in client.data[stream]
            return client

    asyncio.run(fetch(None))
    first = tickets.pop()
    resumed = asyncio.run(fetch(first))
    assert resumed.handshake and resumed.handshake.session_resumed
    assert resumed.handshake.early_data_accepted
    replayed = asyncio.run(fetch(first))  # the same ticket again: refused, full handshake
    assert replayed.handshake and not replayed.handshake.session_resumed
    assert not replayed.handshake.early_data_accepted


def test_a_client_that_moves_to_another_port_keeps_its_stream(
    sim: SimServer, relay: RelayProcess, relay_tls_args: list[str], ca_file: Path
) -> None:
    fields: dict[str, object] = {"gaps": [[3, 0.5]]}

    async def run() -> bytes:
        async with h3_connect(relay.h3_port, str(ca_file)) as client:
            stream = client.request(fields)
            await client.wait_until(lambda: client.data[stream].count(b"\n\n") >= 4)
            await client.migrate()
            await client.wait_until(lambda: stream in client.ended)
            return bytes(client.data[stream])

    assert asyncio.run(run()).replace(KEEPALIVE, b"") == _direct(sim, fields)


def test_drain_lets_live_streams_finish_rejects_new_ones_then_closes(
    sim: SimServer, relay_tls_args: list[str], ca_file: Path
) -> None:
    fields: dict[str, object] = {"gaps": [[2, 1.0]]}
    args = [*_h3_args(relay_tls_args), "--drain-timeout", "5"]
    with RelayProcess(sim.url, *args, keepalive=KA) as relay:

        async def run() -> tuple[H3Client, int, int]:
            async with h3_connect(relay.h3_port, str(ca_file)) as client:
                live = client.request(fields)
                await client.wait_until(lambda: client.data[live].count(b"\n\n") >= 2)
                relay.proc.send_signal(signal.SIGTERM)
                await wait_until(lambda: b"draining" in relay.stderr_text)
                late = client.request(fields)
                await client.wait_until(lambda: late in client.ended)
                assert live not in client.ended and client.terminated is None
                await client.wait_until(lambda: client.terminated is not None)
                return client, live, late

        client, live, late = asyncio.run(run())
        assert relay.proc.wait(10) == 0
    assert client.reset_codes == {late: ErrorCode.H3_REQUEST_REJECTED}
    assert client.terminated is not None
    assert client.terminated.error_code == ErrorCode.H3_NO_ERROR
    assert client.data[live].replace(KEEPALIVE, b"") == _direct(sim, fields)
