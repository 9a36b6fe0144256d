"""HTTP/2 towards upstream: ALPN or forced h2 (h2c), multiplexing, GOAWAY, cancels, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.settings
import httpx2
import pytest
import trustme
from h2.errors import ErrorCodes

from relay_sim.state import CloseRecord
from tests.clients import (
    KEEPALIVE,
    MESSAGE_PARAMS,
    STALLED_BYTES,
    STREAM_BODY,
    closed_port,
    raw_stream,
    script,
    sdk_stream,
    single_error_frame,
    unsent_bytes,
    wait_for,
    wait_until,
)
from tests.h2client import RawH2Client
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

KA = 0.1
H2 = ("--upstream-protocol", "h2")


@pytest.fixture(scope="module")
def tls_sim(ca: trustme.CA) -> Iterator[SimServer]:
    """The sim over TLS, offering h2 and http/1.1 by ALPN."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    with SimServer(ssl=context) as server:
        yield server


def test_alpn_h2_relays_the_same_bytes_as_http1_with_keepalives(
    sim: SimServer, tls_sim: SimServer, ca_file: Path
) -> None:
    gap = script(gaps=[[3, 6 * KA]])
    upstream = f"https://localhost:{tls_sim.port}"
    args = ("--upstream-ca", str(ca_file), "--upstream-protocol", "auto")
    with RelayProcess(upstream, *args, keepalive=KA) as relay:
        _, _, over_h2 = raw_stream(relay.url, headers=gap)
        assert tls_sim.requests[-1].http_version == "2"
        events, final = sdk_stream(relay.url, gap)
    with RelayProcess(sim.url, keepalive=KA) as relay:
        _, _, over_http1 = raw_stream(relay.url, headers=gap)
    assert sim.requests[-1].http_version == "1.1"
    _, _, direct = raw_stream(sim.url, headers=gap)
    direct_events, direct_final = sdk_stream(sim.url, gap)
    assert over_h2.count(KEEPALIVE) >= 3
    assert over_h2.replace(KEEPALIVE, b"") == over_http1.replace(KEEPALIVE, b"") == direct
    assert final.model_dump() == direct_final.model_dump() and len(events) == len(direct_events)


@pytest.mark.parametrize(
    "flags", [(), ("--upstream-protocol", "http/1.1")], ids=["default", "forced"]
)
def test_http1_is_spoken_to_an_h2_capable_upstream_unless_asked_otherwise(
    tls_sim: SimServer, ca_file: Path, flags: tuple[str, ...]
) -> None:
    upstream = f"https://localhost:{tls_sim.port}"
    with RelayProcess(upstream, "--upstream-ca", str(ca_file), *flags) as relay:
        status, _, body = raw_stream(relay.url)
    assert status == 200 and body.endswith(b"\n\n")
    assert tls_sim.requests[-1].http_version == "1.1"


def test_h2c_request_head_and_body_reach_upstream(sim: SimServer) -> None:
    body = b'{"model":"claude-sim-1",  "max_tokens":64,"stream":true, "frobnicate": true}'
    headers = {
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-secret",
        "x-forwarded-for": "10.9.8.7",
        "connection": "keep-alive, x-hop",
        "x-hop": "dropped",
        "accept-encoding": "gzip, br",
    }
    with RelayProcess(sim.url, *H2) as relay, httpx2.Client() as client:
        response = client.post(relay.url + "/v1/messages?beta=true", content=body, headers=headers)
    assert response.status_code == 200
    recorded = sim.requests[-1]
    assert recorded.http_version == "2" and recorded.body == body
    assert recorded.target == "/v1/messages?beta=true"
    got = dict(recorded.headers)
    assert got[b"host"] == f"127.0.0.1:{sim.port}".encode()  # sent as :authority
    assert got[b"x-api-key"] == b"sk-secret" and got[b"anthropic-version"] == b"2023-06-01"
    assert got[b"x-forwarded-for"] == b"10.9.8.7, 127.0.0.1"
    assert got[b"accept-encoding"] == b"identity"
    for hop in (b"connection", b"x-hop", b"keep-alive", b"te", b"transfer-encoding"):
        assert hop not in got


def test_a_large_request_body_goes_up_as_upstream_windows_allow(sim: SimServer) -> None:
    # 2 MiB, far past the 64 KiB a new HTTP/2 stream may send before WINDOW_UPDATEs.
    text = "x" * (2 * 1024 * 1024)
    body = json.dumps({**MESSAGE_PARAMS, "messages": [{"role": "user", "content": text}]})
    with RelayProcess(sim.url, *H2) as relay:
        status, _, _ = raw_stream(relay.url, body=body.encode())
    assert status == 200
    assert sim.requests[-1].http_version == "2" and sim.requests[-1].body == body.encode()


def test_200_streams_share_two_upstream_connections() -> None:
    many = script(gaps=[[2, 1.0]])

    async def one(client: httpx2.AsyncClient, url: str) -> tuple[int, bytes]:
        endpoint = url + "/v1/messages"
        async with client.stream("POST", endpoint, content=STREAM_BODY, headers=many) as response:
            return response.status_code, b"".join([c async for c in response.aiter_raw()])

    async def run(url: str) -> list[tuple[int, bytes]]:
        # Two client connections: httpx2 runs at most 100 streams on one.
        async with (
            httpx2.AsyncClient(http1=False, http2=True, timeout=30) as first,
            httpx2.AsyncClient(http1=False, http2=True, timeout=30) as second,
        ):
            return await asyncio.gather(*(one(c, url) for c in (first, second) for _ in range(100)))

    with SimServer(h2_max_streams=100) as sim, RelayProcess(sim.url, *H2) as relay:
        results = asyncio.run(run(relay.url))
        _, _, direct = raw_stream(sim.url, headers=many)
        assert sim.connections == 2 + 1  # two from the relay, one from raw_stream above
    assert all(status == 200 for status, _ in results)
    assert all(relayed.replace(KEEPALIVE, b"") == direct for _, relayed in results)
    assert all(request.http_version == "2" for request in sim.requests[:200])


def test_goaway_mid_run_loses_no_stream_that_had_not_started() -> None:
    running, waiting = script(gaps=[[2, 1.0]]), script(headers_delay=1.5)

    async def run(url: str, sim: SimServer) -> list[tuple[int, bytes]]:
        heads = 0

        async def one(client: httpx2.AsyncClient, headers: dict[str, str]) -> tuple[int, bytes]:
            nonlocal heads
            endpoint = url + "/v1/messages"
            async with client.stream(
                "POST", endpoint, content=STREAM_BODY, headers=headers
            ) as response:
                heads += 1
                return response.status_code, b"".join([c async for c in response.aiter_raw()])

        async with httpx2.AsyncClient(http1=False, http2=True, timeout=30) as client:
            started = [asyncio.create_task(one(client, running)) for _ in range(20)]
            # These responses have begun upstream.
            await wait_until(lambda: heads == 20, timeout=10.0)
            late = [asyncio.create_task(one(client, waiting)) for _ in range(10)]
            # Received, not yet answered.
            await wait_until(lambda: len(sim.requests) == 30, timeout=10.0)
            assert sim.connections == 1
            await asyncio.to_thread(sim.goaway_all)
            return await asyncio.gather(*started, *late)

    with SimServer() as sim, RelayProcess(sim.url, *H2) as relay:
        results = asyncio.run(run(relay.url, sim))
        _, _, direct_running = raw_stream(sim.url, headers=running)
        _, _, direct_waiting = raw_stream(sim.url, headers=waiting)
        first = next(close for close in sim.closes if close.connection == 1)
        relay.stop()
        retries = relay.stderr_text.count(b"retrying POST /v1/messages")
    assert all(status == 200 for status, _ in results)
    assert all(body.replace(KEEPALIVE, b"") == direct_running for _, body in results[:20])
    assert all(body.replace(KEEPALIVE, b"") == direct_waiting for _, body in results[20:])
    # The 10 refused streams went again, on one new connection; the first drained cleanly.
    assert retries == 10 and len(sim.requests) == 40 + 2
    assert sim.connections == 2 + 2 and not first.client_aborted_midstream


def _cancelled(sim: SimServer) -> list[CloseRecord]:
    return [close for close in sim.closes if close.reset_code is not None]


@pytest.mark.parametrize("client", ["http1-close", "h2-rst-stream"])
def test_client_cancel_resets_only_its_upstream_stream(client: str) -> None:
    keep, victim = {"gaps": [[2, 0.6]]}, {"gaps": [[2, 30]]}
    with SimServer() as sim, RelayProcess(sim.url, *H2) as relay:
        if client == "h2-rst-stream":
            h2 = RawH2Client(relay.port)
            kept = [h2.stream(keep) for _ in range(3)]
            stream = h2.stream(victim)
            h2.pump_until(lambda: h2.data[stream].count(b"\n\n") >= 3)
            reset_at = time.monotonic()
            h2.reset(stream)
            sim.wait_for(lambda: _cancelled(sim))
            h2.pump_until(lambda: all(s in h2.ended for s in kept))
            h2.close()
            bodies = [bytes(h2.data[s]) for s in kept]
        else:
            results: list[bytes] = []
            threads = [
                threading.Thread(
                    target=lambda: results.append(raw_stream(relay.url, headers=script(**keep))[2])
                )
                for _ in range(3)
            ]
            for thread in threads:
                thread.start()
            sock = socket.create_connection(("127.0.0.1", relay.port))
            sock.sendall(
                b"POST /v1/messages HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
                b"x-sim-script: " + json.dumps(victim).encode() + b"\r\n"
                b"content-length: %d\r\n\r\n" % len(STREAM_BODY) + STREAM_BODY
            )
            seen = b""
            while seen.count(b"\n\n") < 4:  # the response head, then three frames
                seen += sock.recv(65536)
            reset_at = time.monotonic()
            sock.close()
            sim.wait_for(lambda: _cancelled(sim))
            for thread in threads:
                thread.join(timeout=10)
            bodies = results
        cancel, closes = _cancelled(sim)[0], list(sim.closes)
    assert cancel.reset_code == ErrorCodes.CANCEL and cancel.client_aborted_midstream
    # Far sooner than the 30 s gap (or the 600 s read timeout) would have ended it.
    assert cancel.time - reset_at < 1.0
    assert len(bodies) == 3 and all(b"event: message_stop" in body for body in bodies)
    assert sim.connections == 1  # one upstream connection carried all four, and stays up
    assert closes == [cancel]


@pytest.mark.parametrize("protocol", ["h2", "http/1.1"])
@pytest.mark.parametrize("failure", ["refused", "drop_before_head"])
def test_failures_before_the_head_are_retried_then_a_retryable_502(
    sim: SimServer, protocol: str, failure: str
) -> None:
    upstream = f"http://127.0.0.1:{closed_port()}" if failure == "refused" else sim.url
    before = len(sim.requests)
    with RelayProcess(upstream, "--upstream-protocol", protocol) as relay:
        status, headers, body = raw_stream(relay.url, headers=script(drop_before_head=True))
        relay.stop()
        retries = relay.stderr_text.count(b"retrying POST /v1/messages")
    assert status == 502 and headers["x-should-retry"] == "true"
    assert json.loads(body)["error"]["type"] == "api_error"
    assert retries == 2  # three tries in all, none seen by the client
    if failure == "drop_before_head":
        assert len(sim.requests) - before == 3
        versions = {r.http_version for r in sim.requests[before:]}
        assert versions == {"2" if protocol == "h2" else "1.1"}


@contextlib.contextmanager
def _h2_upstream_without_streams(goaway: bool) -> Iterator[tuple[int, list[int]]]:
    """An h2c upstream whose first SETTINGS allow no streams, or come with a GOAWAY;
    yields its port and a list that counts the connections it accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        held = []
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            conn.initiate_connection()
            if goaway:
                conn.close_connection()
            else:
                conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
            sock.sendall(conn.data_to_send())
            held.append(sock)
        for sock in held:
            sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.parametrize("goaway", [False, True], ids=["no-streams", "goaway-at-once"])
def test_an_h2_upstream_that_takes_no_streams_is_a_failed_connect(goaway: bool) -> None:
    with (
        _h2_upstream_without_streams(goaway) as (port, accepted),
        RelayProcess(f"http://127.0.0.1:{port}", *H2) as relay,
    ):
        status, headers, body = raw_stream(relay.url)
    # Retried like any failed connect (three tries), then a retryable 502; never a
    # reconnect loop that leaves the request hanging.
    assert status == 502 and headers["x-should-retry"] == "true"
    assert "accepts no HTTP/2 streams" in json.loads(body)["error"]["message"]
    assert len(accepted) == 3


@pytest.mark.parametrize("protocol", ["h2", "http/1.1"])
@pytest.mark.parametrize("failure", ["drop_after", "truncate_after"])
def test_upstream_dying_after_the_start_ends_with_the_same_error_frame(
    sim: SimServer, protocol: str, failure: str
) -> None:
    with RelayProcess(sim.url, "--upstream-protocol", protocol) as relay:
        status, _, data = raw_stream(relay.url, headers=script(**{failure: 5}))
    assert status == 200
    error = single_error_frame(data)["error"]
    assert error["type"] == "api_error"
    assert re.match(r"upstream connection lost after \d+ bytes / 5 events", error["message"])
    if failure == "truncate_after":
        assert data[: data.rfind(b"event: error")].endswith(b"\nevent: ping\n\n")


def test_a_paused_stream_stalls_alone_and_memory_stays_bounded() -> None:
    with SimServer() as sim, RelayProcess(sim.url, *H2) as relay:
        client = RawH2Client(relay.port)
        try:
            stuck = client.stream({"bulk_bytes": 50 * 1024 * 1024})
            client.withhold.add(stuck)
            client.pump_until(lambda: len(client.data[stuck]) >= 60_000)
            baseline = relay.rss_baseline_kib()
            others = [client.stream({"gaps": [[2, 0.2]]}) for _ in range(20)]
            client.pump_until(lambda: all(s in client.ended for s in others))
            grown = relay.peak_rss_kib() - baseline
        finally:
            client.close()
        assert sim.connections == 1  # the stalled stream shares the others' connection
    assert all(b"event: message_stop" in client.data[s] for s in others)
    assert stuck not in client.ended
    assert grown < 16 * 1024, grown


def test_a_client_breaking_http2_does_not_break_the_upstream_connection_it_shares() -> None:
    """A client that stops reading, then breaks the protocol, leaves its bytes buffered
    in the relay: its connection lingers while its streams' upstream data keeps coming.
    Those streams must end at once, not write into a dead h2 connection (which raised
    into the shared upstream connection and cut every other client's stream)."""
    with SimServer() as sim, RelayProcess(sim.url, *H2) as relay:
        other = RawH2Client(relay.port)
        breaker = RawH2Client(relay.port, stream_window=1 << 24, receive_buffer=4096)
        try:
            survivor = other.stream({"gaps": [[3, 2.0]]})
            other.pump_until(lambda: b"message_start" in other.data[survivor])
            breaker.stream({"bulk_bytes": 50 * 1024 * 1024})  # fills the relay's buffers
            ticking = breaker.stream({"gaps": [[2, 1.0]]})  # more events after the break
            breaker.pump_until(lambda: b"message_start" in breaker.data[ticking])
            # The bulk stream fills every buffer between us: the relay's socket first.
            wait_for(
                lambda: unsent_bytes(relay.port, breaker.local_port) >= STALLED_BYTES,
                timeout=15,
            )
            # A DATA frame on stream 0: a connection error for the relay's h2.
            breaker.sock.sendall(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
            other.pump_until(lambda: survivor in other.ended)
        finally:
            breaker.close()
            other.close()
        assert sim.connections == 1  # one upstream connection carried both clients
    assert b"event: message_stop" in other.data[survivor]
    assert b"event: error" not in other.data[survivor]
