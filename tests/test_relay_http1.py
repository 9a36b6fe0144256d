"""The HTTP/1.1 relay end to end: real clients, real relay process, simulated upstream."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from relay_sim.state import CloseRecord
from tests.clients import (
    KEEPALIVE,
    MESSAGE_PARAMS,
    PING,
    STALLED_BYTES,
    STREAM_BODY,
    raw_http,
    raw_stream,
    script,
    sdk_stream,
    unsent_bytes,
    wait_for,
    without_keepalives,
)
from tests.idleproxy import IdleKillingProxy
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

KA = 0.1


@pytest.fixture(scope="module", params=["cython", "python"])
def relay(sim: SimServer, request: pytest.FixtureRequest) -> Iterator[RelayProcess]:
    """The relay with each SSE scanner: end to end, the twins must be indistinguishable."""
    env = {"SSE_RELAY_NO_EXTENSIONS": "1"} if request.param == "python" else {}
    with RelayProcess(sim.url, keepalive=KA, env=env) as proc:
        assert f"scanner={request.param} body_pump={request.param}".encode() in proc.ready_line
        assert f"journal={request.param}".encode() in proc.ready_line
        yield proc


def test_sdk_thinking_turn_survives_gap_and_matches_direct(
    sim: SimServer, relay: RelayProcess
) -> None:
    gap = script(gaps=[[3, 6 * KA]])
    direct_events, direct_final = sdk_stream(sim.url, gap)
    relayed_events, relayed_final = sdk_stream(relay.url, gap)
    assert relayed_events == direct_events
    assert relayed_final.model_dump() == direct_final.model_dump()
    thinking = relayed_final.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking and len(thinking.signature) > 50


def test_sse_bytes_are_untouched_and_keepalives_fill_the_gap(
    sim: SimServer, relay: RelayProcess
) -> None:
    gap = script(gaps=[[3, 6 * KA]], ping_every=None)
    status, _, direct = raw_stream(sim.url, headers=gap)
    status_r, headers, relayed = raw_stream(relay.url, headers=gap)
    assert status == status_r == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert relayed.count(KEEPALIVE) >= 3
    assert without_keepalives(relayed) == direct
    # Keepalives sit only at frame boundaries: every one follows a blank line.
    at = relayed.find(KEEPALIVE)
    while at != -1:
        assert at == 0 or relayed[:at].endswith(b"\n\n")
        at = relayed.find(KEEPALIVE, at + 1)


def test_upstream_pings_are_forwarded_verbatim(sim: SimServer, relay: RelayProcess) -> None:
    pinging = script(gaps=[[2, 0.35]], ping_every=0.1)
    _, _, direct = raw_stream(sim.url, headers=pinging)
    _, _, relayed = raw_stream(relay.url, headers=pinging)
    assert direct.count(PING) >= 2
    assert without_keepalives(relayed) == direct


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
def test_other_line_endings_relay_identically(
    sim: SimServer, relay: RelayProcess, ending: str
) -> None:
    other = script(line_ending=ending, gaps=[[2, 4 * KA]])
    _, _, direct = raw_stream(sim.url, headers=other)
    _, _, relayed = raw_stream(relay.url, headers=other)
    assert relayed.count(KEEPALIVE) >= 1
    assert without_keepalives(relayed) == direct
    assert (
        sdk_stream(relay.url, other)[1].model_dump() == sdk_stream(sim.url, other)[1].model_dump()
    )


def test_stall_mid_frame_defers_keepalive_until_the_frame_ends(
    sim: SimServer, relay: RelayProcess
) -> None:
    # A stall inside frame 4, then an ordinary gap after frame 6: the keepalive schedule
    # must sit out the stall and then resume.
    stall = script(stall_mid_frame=[3, 6 * KA], gaps=[[6, 6 * KA]])
    _, _, direct = raw_stream(sim.url, headers=stall)
    _, _, relayed = raw_stream(relay.url, headers=stall)
    assert without_keepalives(relayed) == direct
    assert relayed.count(KEEPALIVE) >= 3
    for at in (i for i in range(len(relayed)) if relayed.startswith(KEEPALIVE, i)):
        assert at == 0 or relayed[:at].endswith(b"\n\n")
    assert sdk_stream(relay.url, stall)[0] == sdk_stream(sim.url, stall)[0]


def test_ping_keepalive_frame_is_skipped_by_the_sdk(sim: SimServer) -> None:
    gap = script(gaps=[[3, 6 * KA]])
    with RelayProcess(sim.url, "--keepalive-frame", "ping", keepalive=KA) as relay:
        _, _, relayed = raw_stream(relay.url, headers=gap)
        relayed_events, relayed_final = sdk_stream(relay.url, gap)
    assert relayed.count(PING) >= 3 and KEEPALIVE not in relayed
    direct_events, direct_final = sdk_stream(sim.url, gap)
    assert relayed_events == direct_events
    assert relayed_final.model_dump() == direct_final.model_dump()


def test_request_body_and_headers_reach_upstream(sim: SimServer, relay: RelayProcess) -> None:
    # Odd spacing and key order on purpose: any re-serialisation would change the bytes.
    body = (
        b'{"model":"claude-sim-1",  "max_tokens":64,"stream":true,'
        b'"fallbacks":[{"model":"claude-other"}], "frobnicate": true,'
        b'"context_management":{"edits":[{"type":"clear_thinking_20251015"}]},'
        b'"thinking":{"type":"enabled","budget_tokens":1024},'
        b'"messages":[{"role":"user","content":"caf\\u00e9 \xe2\x98\x95"}]}'
    )
    headers = {
        "anthropic-beta": "context-management-2025-06-27,fallbacks-2026-01-01",
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-secret",
        "authorization": "Bearer sk-other",
        "x-forwarded-for": "10.9.8.7",
        "connection": "keep-alive, x-hop",
        "x-hop": "dropped",
        "keep-alive": "timeout=5",
        "accept-encoding": "gzip, br",
    }
    before = len(sim.requests)
    with httpx2.Client() as client:
        response = client.post(relay.url + "/v1/messages?beta=true", content=body, headers=headers)
    assert response.status_code == 200
    recorded = sim.requests[before]
    assert recorded.body == body
    assert recorded.target == "/v1/messages?beta=true"
    got = dict(recorded.headers)
    for name in ("anthropic-beta", "anthropic-version", "x-api-key", "authorization"):
        assert got[name.encode()] == headers[name].encode()
    assert got[b"host"] == f"127.0.0.1:{sim.port}".encode()
    assert got[b"x-forwarded-for"] == b"10.9.8.7, 127.0.0.1"
    assert got[b"accept-encoding"] == b"identity"
    for hop in (b"x-hop", b"keep-alive", b"te", b"transfer-encoding", b"upgrade"):
        assert hop not in got
    assert b"keep-alive" not in got.get(b"connection", b"")


def test_non_streaming_json_is_byte_exact(sim: SimServer, relay: RelayProcess) -> None:
    body = json.dumps(MESSAGE_PARAMS).encode()
    with httpx2.Client() as client:
        direct = client.post(sim.url + "/v1/messages", content=body)
        relayed = client.post(relay.url + "/v1/messages", content=body)
        missing = client.get(relay.url + "/v1/nothing-here")
    assert relayed.status_code == direct.status_code == 200
    assert relayed.content == direct.content
    assert relayed.headers["content-type"] == direct.headers["content-type"]
    assert relayed.headers["content-length"] == direct.headers["content-length"]
    assert missing.status_code == 404 and missing.json()["type"] == "error"


def test_upstream_connections_are_kept_alive_and_reused(sim: SimServer) -> None:
    with RelayProcess(sim.url, keepalive=KA) as relay:
        before = sim.connections
        for _ in range(5):
            assert raw_stream(relay.url)[0] == 200
    assert sim.connections - before == 1


def test_idle_killing_balancer_is_defeated_by_keepalives(sim: SimServer) -> None:
    gap = script(gaps=[[3, 3.0]])
    with RelayProcess(sim.url, keepalive=0.3) as relay:
        balancer = IdleKillingProxy(relay.port, idle=1.0)
        try:
            events, final = sdk_stream(f"http://127.0.0.1:{balancer.port}", gap)
        finally:
            balancer.close()
    assert final.stop_reason == "end_turn" and balancer.kills == 0
    assert events[-1]["type"] == "message_stop"

    # The same stream straight through the balancer dies: the production bug. The head
    # came before the gap, so the SDK is reading the body when the balancer resets it.
    balancer = IdleKillingProxy(sim.port, idle=1.0)
    try:
        with pytest.raises(httpx2.ReadError):
            sdk_stream(f"http://127.0.0.1:{balancer.port}", gap)
    finally:
        balancer.close()
    assert balancer.kills == 1


def test_slow_client_keeps_relay_memory_bounded(sim: SimServer) -> None:
    total = 50 * 1024 * 1024
    with RelayProcess(sim.url, keepalive=KA) as relay:
        baseline = relay.rss_kib()
        sock = socket.create_connection(("127.0.0.1", relay.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(_bulk_request(total))
        sock.recv(4096)
        # The client stops reading; upstream wants to send 50 MB. Once the relay has
        # stopped reading upstream too, the sim's send buffer fills: the stall is whole.
        wait_for(lambda: unsent_bytes(sim.port) >= STALLED_BYTES, timeout=15)
        stalled = relay.peak_rss_kib()
        received = 0
        sock.settimeout(30)
        tail = b""
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
            tail = (tail + chunk)[-64:]
            if tail.endswith(b"0\r\n\r\n"):
                break
        peak = relay.peak_rss_kib()
        sock.close()
    assert received > total
    assert stalled - baseline < 16 * 1024, (baseline, stalled)
    assert peak - baseline < 32 * 1024, (baseline, peak)


def _bulk_request(total: int) -> bytes:
    return (
        b"POST /v1/messages HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
        b"x-sim-script: " + json.dumps({"bulk_bytes": total}).encode() + b"\r\n"
        b"content-length: %d\r\n\r\n" % len(STREAM_BODY)
    ) + STREAM_BODY


def test_client_that_takes_nothing_is_dropped_after_the_send_timeout(sim: SimServer) -> None:
    with RelayProcess(sim.url, "--client-send-timeout", "0.5", keepalive=KA) as relay:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", relay.port))
        with sock:
            closes_before = len(sim.closes)
            sock.sendall(_bulk_request(50 * 1024 * 1024))
            sock.recv(4096)  # then never again: upstream wants to send 50 MB
            sim.wait_for(
                lambda: any(c.client_aborted_midstream for c in sim.closes[closes_before:]),
                timeout=15,
            )
        assert b"the client took no bytes for 0.5 s" in relay.stderr_text


def test_client_disconnect_closes_upstream_at_once(sim: SimServer, relay: RelayProcess) -> None:
    request = (
        b"POST /v1/messages HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
        b"x-sim-script: " + json.dumps({"gaps": [[2, 30]]}).encode() + b"\r\n"
        b"content-length: %d\r\n\r\n" % len(STREAM_BODY)
    ) + STREAM_BODY
    closes_before = len(sim.closes)
    sock = socket.create_connection(("127.0.0.1", relay.port))
    sock.sendall(request)
    seen = b""
    while seen.count(b"\n\n") < 3:
        seen += sock.recv(65536)
    left_at = time.monotonic()
    sock.close()

    def aborted() -> list[CloseRecord]:
        return [c for c in sim.closes[closes_before:] if c.client_aborted_midstream]

    sim.wait_for(aborted, timeout=5)
    # Far sooner than the 30 s gap (or the 600 s read timeout) would have ended it.
    assert aborted()[0].time - left_at < 1.0


def test_upstream_refusing_connections_gives_api_error(sim: SimServer) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with RelayProcess(f"http://127.0.0.1:{port}") as relay:
        status, headers, body = raw_stream(relay.url)
    assert status == 502
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    # Clients learn what happened, not where upstream lives (issue #11): the address is
    # only in the relay's own log.
    assert "cannot connect to upstream" in error["error"]["message"]
    assert str(port) not in body.decode() and "http://" not in body.decode()
    assert f"127.0.0.1:{port}".encode() in relay.stderr_text
    assert headers["x-should-retry"] == "true" and headers["request-id"].startswith("req_relay_")


def test_curl_streams_through_the_relay(sim: SimServer, relay: RelayProcess) -> None:
    body = STREAM_BODY.decode()
    gap = f"x-sim-script: {json.dumps({'gaps': [[2, 4 * KA]]})}"
    common = ["curl", "-sSN", "--fail", "-H", "content-type: application/json", "-H", gap]
    direct = subprocess.run(
        [*common, "-d", body, sim.url + "/v1/messages"], capture_output=True, check=True
    ).stdout
    relayed = subprocess.run(
        [*common, "-d", body, relay.url + "/v1/messages"], capture_output=True, check=True
    ).stdout
    assert KEEPALIVE in relayed
    assert without_keepalives(relayed) == direct


def test_compressed_sse_is_forwarded_untouched_without_keepalives(sim: SimServer) -> None:
    gzipped = script(content_encoding="gzip", gaps=[[3, 6 * KA]])
    _, direct_headers, direct = raw_stream(sim.url, headers=gzipped)
    with RelayProcess(sim.url, keepalive=KA) as relay:
        _, headers, relayed = raw_stream(relay.url, headers=gzipped)
    assert direct_headers["content-encoding"] == headers["content-encoding"] == "gzip"
    assert relayed == direct and KEEPALIVE not in relayed
    assert b"content-encoded (gzip): relayed without keepalives" in relay.stderr_text


def test_chunked_request_body_reaches_upstream_intact(sim: SimServer, relay: RelayProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield STREAM_BODY[:10]
        yield STREAM_BODY[10:]

    before = len(sim.requests)
    with httpx2.Client() as client:
        response = client.post(relay.url + "/v1/messages", content=chunks())
    assert response.status_code == 200 and b"event: message_stop" in response.content
    assert sim.requests[before].body == STREAM_BODY


def test_relay_takes_the_whole_open_file_hard_limit(sim: SimServer) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        relay = RelayProcess(sim.url)  # inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with relay:
        limits = Path(f"/proc/{relay.proc.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert line.split()[3:5] == [str(hard), str(hard)]


def test_absolute_form_target_reaches_upstream_as_its_path(
    sim: SimServer, relay: RelayProcess
) -> None:
    request = b"GET http://api.example/v1/models?beta=true HTTP/1.1\r\nhost: api.example\r\n"
    answer = raw_http(relay.port, request + b"connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 ")
    assert sim.requests[-1].target == "/v1/models?beta=true"
    # No path, a query, a scheme in capitals: still a path upstream can take.
    request = b"GET HTTP://api.example?beta=true HTTP/1.1\r\nhost: api.example\r\n"
    answer = raw_http(relay.port, request + b"connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 ")
    assert sim.requests[-1].target == "/?beta=true"
