"""README promises about HTTP/3 no other test reaches: `--quic-idle-timeout` at work,
a closed or timed-out QUIC connection aborting every stream upstream, the error frame
when upstream dies, no `alt-svc` on HTTP/3 answers, and `http_version="3"` counted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay_sim.state import CloseRecord
from tests.clients import KEEPALIVE, raw_stream, single_error_frame, wait_until
from tests.h3_settings import deaf_h3_connect
from tests.h3client import H3Client, h3_connect
from tests.relayproc import RelayProcess
from tests.simserver import SimServer
from tests.test_metrics import scrape, value

KA = 0.1
IDLE = 1.5  # --quic-idle-timeout: well above the keepalive interval, as it must be
ENDLESS: dict[str, object] = {"gaps": [[2, 30]]}  # streams that outlive any test


@pytest.fixture(scope="module")
def relay(sim: SimServer, relay_tls_args: list[str]) -> Iterator[RelayProcess]:
    # One try per request, so that a relay-made 502 comes at once.
    args = [*relay_tls_args, "--http3", "--quic-idle-timeout", str(IDLE)]
    with RelayProcess(sim.url, *args, "--retry-attempts", "1", keepalive=KA) as proc:
        assert proc.h3_port, proc.ready_line
        yield proc


def _metric(relay: RelayProcess, name: str, **labels: str) -> float:
    return value(scrape(relay), name, **labels)


def _aborted(sim: SimServer, since: int) -> list[CloseRecord]:
    return [close for close in sim.closes[since:] if close.client_aborted_midstream]


def test_an_idle_connection_is_closed_after_the_quic_idle_timeout(
    sim: SimServer, relay: RelayProcess, ca_file: Path
) -> None:
    """The relay advertises --quic-idle-timeout as its max_idle_timeout, and forgets a
    connection silent that long: a request on it afterwards is dropped as a datagram of
    no connection. A stream whose only traffic is keepalives for longer than that keeps
    its own connection open to its end."""
    fields: dict[str, object] = {"gaps": [[2, 2 * IDLE]]}

    async def run() -> tuple[H3Client, int, int, H3Client, int, float]:
        async with h3_connect(relay.h3_port, str(ca_file)) as idle:
            # Both ends time out at the lower of their idle timeouts: the client forgets
            # the relay's (a private of aioquic's), so that only the relay's can act.
            advertised = idle._quic._remote_max_idle_timeout
            idle._quic._remote_max_idle_timeout = None
            first = idle.request()
            await idle.wait_until(lambda: first in idle.ended)
            # Meanwhile `idle` sends nothing: this stream's gap is its wait.
            async with h3_connect(relay.h3_port, str(ca_file)) as busy:
                kept = busy.request(fields)
                await busy.wait_until(lambda: kept in busy.ended)
            dropped = await asyncio.to_thread(_metric, relay, "sse_relay_quic_dropped_total")
            late = idle.request()
            await wait_until(
                lambda: _metric(relay, "sse_relay_quic_dropped_total") > dropped, timeout=10
            )
            assert advertised is not None and idle.terminated is None
            return idle, first, late, busy, kept, advertised

    idle, first, late, busy, kept, advertised = asyncio.run(run())
    assert advertised == IDLE
    assert idle.status[first] == 200
    assert late not in idle.status and late not in idle.ended  # nobody answered
    assert busy.status[kept] == 200
    relayed = bytes(busy.data[kept])
    assert relayed.count(KEEPALIVE) >= 2 * IDLE / KA / 2  # the gap was all keepalives
    # A gap changes when bytes come, never which: the gapless stream is the reference.
    assert relayed.replace(KEEPALIVE, b"") == raw_stream(sim.url)[2]


def test_a_closed_connection_aborts_all_its_streams_upstream(
    sim: SimServer, relay: RelayProcess, ca_file: Path
) -> None:
    """A client closing its QUIC connection with three streams in flight: each of the
    three upstream requests is aborted at once, not at the end of its 30 s gap."""

    async def run() -> int:
        async with h3_connect(relay.h3_port, str(ca_file)) as client:
            streams = [client.request(ENDLESS) for _ in range(3)]
            await client.wait_until(
                lambda: all(client.data[s].count(b"\n\n") >= 3 for s in streams)
            )
            since = len(sim.closes)
        return since  # leaving the block closed the connection (CONNECTION_CLOSE)

    since = asyncio.run(run())
    sim.wait_for(lambda: len(_aborted(sim, since)) == 3, timeout=5)


def test_a_timed_out_connection_aborts_all_its_streams_upstream(
    sim: SimServer, relay: RelayProcess, ca_file: Path
) -> None:
    """A client that goes silent (no ACKs, nothing at all) with three streams in flight:
    the connection times out after --quic-idle-timeout, and all three upstream
    requests are aborted, long before their 30 s gaps end."""

    async def run() -> int:
        async with deaf_h3_connect(relay.h3_port, str(ca_file)) as client:
            streams = [client.request(ENDLESS) for _ in range(3)]
            await client.wait_until(
                lambda: all(client.data[s].count(b"\n\n") >= 3 for s in streams)
            )
            since = len(sim.closes)
            client.go_deaf()
            await wait_until(lambda: len(_aborted(sim, since)) == 3, timeout=10)
            return since

    since = asyncio.run(run())
    assert len(_aborted(sim, since)) == 3


def test_upstream_dying_ends_the_h3_stream_with_an_error_frame(
    relay: RelayProcess, ca_file: Path
) -> None:
    """Upstream dropping mid-stream: the HTTP/3 stream ends cleanly (no reset) with one
    `api_error` frame, as over HTTP/1.1 and HTTP/2."""

    async def run() -> H3Client:
        async with h3_connect(relay.h3_port, str(ca_file)) as client:
            dying = client.request({"drop_after": 5})
            await client.wait_until(lambda: dying in client.ended)
            return client

    client = asyncio.run(run())
    (stream,) = client.ended
    assert client.status[stream] == 200 and stream not in client.reset_codes
    error = single_error_frame(bytes(client.data[stream]))
    assert error["error"]["type"] == "api_error"
    assert "after" in error["error"]["message"] and "/ 5 events" in error["error"]["message"]


def test_http3_answers_carry_no_alt_svc_and_count_as_version_3(
    relay: RelayProcess, ca_file: Path
) -> None:
    """HTTP/3 responses, relayed or relay-made (a 502), carry no `alt-svc` (it would
    advertise the protocol already in use); each stream is counted with
    `http_version="3"`. (HTTP/1.1 and HTTP/2 answers do carry it: test_h3_clients.py.)"""
    before = _metric(relay, "sse_relay_streams_total", http_version="3")

    async def run() -> H3Client:
        async with h3_connect(relay.h3_port, str(ca_file)) as client:
            relayed = client.request()
            made = client.request({"drop_before_head": True})
            await client.wait_until(lambda: {relayed, made} <= client.ended)
            return client

    client = asyncio.run(run())
    assert sorted(client.status.values()) == [200, 502]
    for headers in client.headers.values():
        assert all(name != b"alt-svc" for name, _ in headers), headers

    def counted() -> float:
        return _metric(relay, "sse_relay_streams_total", http_version="3") - before

    asyncio.run(wait_until(lambda: counted() >= 2))
    samples = scrape(relay)
    assert counted() == 2
    assert value(samples, "sse_relay_streams_active", http_version="3") == 0
