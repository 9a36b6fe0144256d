"""HTTP/2 towards clients: h2c and TLS+ALPN, per-stream keepalives, flow control, resets."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import httpx2
import pytest
from h2.errors import ErrorCodes

from relay_sim.state import CloseRecord
from tests.clients import (
    KEEPALIVE,
    MESSAGE_PARAMS,
    STALLED_BYTES,
    STREAM_BODY,
    raw_stream,
    script,
    sdk_stream,
    single_error_frame,
    unsent_bytes,
    wait_for,
)
from tests.h2client import RawH2Client
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

KA = 0.1


@pytest.fixture(scope="module")
def relay(sim: SimServer, relay_tls_args: list[str]) -> Iterator[RelayProcess]:
    with RelayProcess(sim.url, *relay_tls_args, keepalive=KA) as proc:
        yield proc


def _h2_raw(client: httpx2.Client, url: str, headers: dict[str, str]) -> tuple[str, bytes]:
    with client.stream(
        "POST", url + "/v1/messages", content=STREAM_BODY, headers=headers
    ) as response:
        return response.http_version, b"".join(response.iter_raw())


@pytest.mark.parametrize("transport", ["h2c", "tls"])
def test_httpx2_over_h2_gets_the_same_bytes_and_keepalives(
    sim: SimServer, relay: RelayProcess, ca_file: Path, transport: str
) -> None:
    gap = script(gaps=[[3, 6 * KA]])
    _, _, http1 = raw_stream(relay.url, headers=gap)
    _, _, direct = raw_stream(sim.url, headers=gap)
    if transport == "h2c":
        client, url = httpx2.Client(http1=False, http2=True), relay.url
    else:
        trust = ssl.create_default_context(cafile=str(ca_file))
        client, url = httpx2.Client(http2=True, verify=trust), relay.tls_url
    with client:
        version, relayed = _h2_raw(client, url, gap)
    assert version == "HTTP/2"
    assert relayed.count(KEEPALIVE) >= 3
    assert relayed.replace(KEEPALIVE, b"") == http1.replace(KEEPALIVE, b"") == direct


def test_sdk_over_h2_parses_the_same_events(sim: SimServer, relay: RelayProcess) -> None:
    gap = script(gaps=[[3, 6 * KA]])
    direct_events, direct_final = sdk_stream(sim.url, gap)
    http_client = httpx2.Client(http1=False, http2=True)
    client = anthropic.Anthropic(
        base_url=relay.url, api_key="sk-test", max_retries=0, http_client=http_client
    )
    with client.messages.stream(**MESSAGE_PARAMS, extra_headers=gap) as stream:
        events = [event.model_dump() for event in stream]
        final = stream.get_final_message()
        assert stream.response.http_version == "HTTP/2"
    assert events == direct_events and final.model_dump() == direct_final.model_dump()


def test_100_concurrent_streams_on_one_connection(sim: SimServer, relay: RelayProcess) -> None:
    scripts = [
        script(gaps=[[2 + i % 5, 0.05 * (i % 7)]], text_deltas=1 + i % 4) for i in range(100)
    ]

    async def run() -> list[tuple[str, bytes]]:
        async with httpx2.AsyncClient(http1=False, http2=True, timeout=30) as client:

            async def one(headers: dict[str, str]) -> tuple[str, bytes]:
                url = relay.url + "/v1/messages"
                async with client.stream(
                    "POST", url, content=STREAM_BODY, headers=headers
                ) as response:
                    return response.http_version, b"".join([c async for c in response.aiter_raw()])

            return await asyncio.gather(*(one(headers) for headers in scripts))

    results = asyncio.run(run())
    # The same scripts straight from the sim, concurrently too (one by one took 20 s).
    with ThreadPoolExecutor(max_workers=100) as pool:
        directs = list(pool.map(lambda headers: raw_stream(sim.url, headers=headers)[2], scripts))
    for direct, (version, relayed) in zip(directs, results, strict=True):
        assert version == "HTTP/2" and relayed.replace(KEEPALIVE, b"") == direct
    gappy = [relayed for (_, relayed), i in zip(results, range(100), strict=True) if i % 7 >= 3]
    assert all(KEEPALIVE in relayed for relayed in gappy)


def test_a_shut_window_pauses_only_its_own_stream(sim: SimServer, relay: RelayProcess) -> None:
    window = 8 << 20
    client = RawH2Client(relay.port, stream_window=window, receive_buffer=64 << 10)
    try:
        stuck = client.stream({"bulk_bytes": 50 * 1024 * 1024})
        client.withhold.add(stuck)
        client.pump_until(lambda: len(client.data[stuck]) >= window - 1024)
        baseline = relay.rss_baseline_kib()
        others = [client.stream({"gaps": [[2, 0.2]]}) for _ in range(20)]
        # A heavy neighbour while the client stops reading fills the relay's socket
        # buffer: the pause and resume of the whole connection must not reopen `stuck`.
        heavy = client.stream({"bulk_bytes": 2 * window})
        wait_for(lambda: unsent_bytes(relay.port, client.local_port) >= STALLED_BYTES, timeout=15)
        client.pump_until(lambda: all(s in client.ended for s in [*others, heavy]))
        # Answered after all the relay had queued on this connection since it resumed:
        # whatever the resume did to `stuck` has reached us by now.
        probe = client.stream()
        client.pump_until(lambda: probe in client.ended)
        # Still shut: the relay is not reading `stuck`'s upstream either (the sim's
        # connections of the other streams are idle or closed).
        upstream_stalled = unsent_bytes(sim.port)
        grown = relay.peak_rss_kib() - baseline
    finally:
        client.close()
    for stream_id in [*others, heavy, probe]:
        assert client.status[stream_id] == 200
        assert b"event: message_stop" in client.data[stream_id]
    assert stuck not in client.ended and len(client.data[stuck]) <= window
    assert upstream_stalled >= STALLED_BYTES, upstream_stalled
    # What one loop pass of upstream reads could pile up in h2 made this 4-22 MiB.
    assert grown < 8 * 1024, grown


def test_rst_stream_cancels_only_that_upstream_request(sim: SimServer, relay: RelayProcess) -> None:
    client = RawH2Client(relay.port)
    try:
        keep = [client.stream({"gaps": [[2, 0.6]]}) for _ in range(3)]
        victim = client.stream({"gaps": [[2, 30]]})
        client.pump_until(lambda: client.data[victim].count(b"\n\n") >= 3)
        closes_before = len(sim.closes)
        reset_at = time.monotonic()
        client.reset(victim)

        def aborted() -> list[CloseRecord]:
            return [c for c in sim.closes[closes_before:] if c.client_aborted_midstream]

        sim.wait_for(aborted, timeout=5)
        # Far sooner than the 30 s gap (or the 600 s read timeout) would have ended it.
        assert aborted()[0].time - reset_at < 1.0
        client.pump_until(lambda: all(s in client.ended for s in keep))
    finally:
        client.close()
    assert all(b"event: message_stop" in client.data[s] for s in keep)


def test_nghttp_fetches_a_stream(sim: SimServer, relay: RelayProcess, tmp_path: Path) -> None:
    assert shutil.which("nghttp"), "nghttp2-client: `make test` installs it"
    body = tmp_path / "body.json"
    body.write_bytes(STREAM_BODY)
    gap = json.dumps({"gaps": [[3, 0.35]]})
    fetched = subprocess.run(
        ["nghttp", "-d", str(body), "-H", f"x-sim-script: {gap}", relay.url + "/v1/messages"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    _, _, direct = raw_stream(sim.url, headers={"x-sim-script": gap})
    assert KEEPALIVE in fetched and fetched.replace(KEEPALIVE, b"") == direct


def test_upstream_dying_ends_the_h2_stream_with_an_error_frame(
    sim: SimServer, relay: RelayProcess
) -> None:
    client = RawH2Client(relay.port)
    try:
        dying = client.stream({"drop_after": 5})
        healthy = client.stream({"gaps": [[2, 0.3]]})
        client.pump_until(lambda: {dying, healthy} <= client.ended)
    finally:
        client.close()
    assert dying not in client.reset_codes, "ended by END_STREAM, not a reset"
    error = single_error_frame(bytes(client.data[dying]))
    assert error["error"]["type"] == "api_error"
    assert b"event: message_stop" in client.data[healthy]


def test_streams_past_the_limit_are_refused_one_by_one(sim: SimServer) -> None:
    with RelayProcess(sim.url, "--max-streams", "4", keepalive=KA) as relay:
        client = RawH2Client(relay.port)
        try:
            client.pump_until(lambda: client.conn.remote_settings.max_concurrent_streams == 4)
            # Ignore the advertised limit, as a misbehaving client would.
            client.conn.remote_settings.max_concurrent_streams = 10
            client.conn.remote_settings.acknowledge()
            streams = [client.stream({"gaps": [[2, 0.5]]}) for _ in range(6)]
            client.pump_until(lambda: set(streams) <= client.ended)
        finally:
            client.close()
    refused = [s for s in streams if client.reset_codes.get(s) == ErrorCodes.REFUSED_STREAM]
    assert refused == streams[4:]
    assert all(b"event: message_stop" in client.data[s] for s in streams[:4])


def test_oversize_headers_get_431_on_their_stream_only(sim: SimServer) -> None:
    with RelayProcess(sim.url, "--max-header-bytes", "4096", keepalive=KA) as relay:
        client = RawH2Client(relay.port)
        try:
            big = client.stream(extra_headers=[(b"x-big", b"a" * 8000)])
            fine = client.stream()
            client.pump_until(lambda: {big, fine} <= client.ended)
        finally:
            client.close()
    assert client.status[big] == 431
    assert json.loads(bytes(client.data[big]))["error"]["type"] == "invalid_request_error"
    assert client.status[fine] == 200 and b"event: message_stop" in client.data[fine]


def test_drain_lets_live_streams_finish_refuses_new_ones_then_goaway(sim: SimServer) -> None:
    gap = {"gaps": [[2, 1.0]]}
    with RelayProcess(sim.url, "--drain-timeout", "5", keepalive=KA) as relay:
        client = RawH2Client(relay.port)
        try:
            live = client.stream(gap)
            client.pump_until(lambda: client.data[live].count(b"\n\n") >= 2)
            relay.proc.send_signal(signal.SIGTERM)
            client.pump_until(lambda: b"draining" in relay.stderr_text, timeout=5)
            late = client.stream(gap)
            client.pump_until(lambda: late in client.ended)
            assert live not in client.ended and client.goaway is None
            client.pump_until(lambda: client.goaway is not None)
        finally:
            client.close()
        assert relay.proc.wait(10) == 0
    assert client.reset_codes == {late: ErrorCodes.REFUSED_STREAM}
    assert client.goaway == (late, ErrorCodes.NO_ERROR)
    direct = raw_stream(sim.url, headers={"x-sim-script": json.dumps(gap)})[2]
    assert client.data[live].replace(KEEPALIVE, b"") == direct


def test_connection_window_fits_many_uploads_at_once(relay: RelayProcess) -> None:
    client = RawH2Client(relay.port)
    try:
        client.pump_until(lambda: client.conn.outbound_flow_control_window > 65_535)
        window = client.conn.outbound_flow_control_window
    finally:
        client.close()
    assert window >= 16 * client.conn.remote_settings.initial_window_size


def test_a_client_goaway_lets_its_live_stream_finish(sim: SimServer) -> None:
    """GOAWAY(NO_ERROR) from a client means "no new streams" (RFC 9113 6.8), as Node's
    session.close() sends it: the stream already running must still finish."""
    with RelayProcess(sim.url, keepalive=KA) as relay:
        client = RawH2Client(relay.port)
        try:
            stream = client.stream({"gaps": [[2, 0.5]]})
            client.pump_until(lambda: b"message_start" in client.data[stream])
            # GOAWAY(last stream 0, NO_ERROR) written raw: h2 itself would stop reading.
            client.sock.sendall(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8))
            client.pump_until(lambda: stream in client.ended)
        finally:
            client.close()
    assert b"event: message_stop" in client.data[stream]
    assert stream not in client.reset_codes
