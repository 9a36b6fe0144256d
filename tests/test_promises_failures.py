"""README "Failures" rows no other test reaches: connect timeouts, TLS breaking before
and after the head, a fixed-length body cut short, draining, `retry-after`, the retry
budget, the send timeout, and the metrics each of them must leave behind."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx2
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from relay_sim.black_hole import BlackHole
from tests.clients import (
    KEEPALIVE,
    MESSAGE_PARAMS,
    STREAM_BODY,
    raw_http,
    raw_stream,
    script,
    sdk_stream,
    single_error_frame,
    wait_for,
)
from tests.relayproc import RelayProcess
from tests.simserver import SimServer
from tests.test_metrics import Samples, settled, value
from tests.tls_upstreams import BreaksTlsMidStream, HandshakeReset

KA = 0.1
JSON_BODY = json.dumps(MESSAGE_PARAMS).encode()  # a non-streaming request


def _post(port: int, body: bytes, fields: dict[str, str]) -> bytes:
    """One POST /v1/messages on its own connection; every byte until the relay closes."""
    extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in fields.items())
    head = b"POST /v1/messages HTTP/1.1\r\nhost: relay\r\nconnection: close\r\n"
    return raw_http(port, head + extra + b"content-length: %d\r\n\r\n" % len(body) + body)


def test_connect_timeout_is_retried_then_answered_504_and_counted() -> None:
    """--connect-timeout bounds each connect (TCP here: a black hole never completes
    one); each timeout is retried like a refusal, and when the tries run out the client
    gets a `504 timeout_error`, counted as kind `connect_timeout`."""
    with BlackHole() as hole, RelayProcess(hole.url, "--connect-timeout", "0.3") as relay:
        started = time.monotonic()
        status, headers, body = raw_stream(relay.url)
        took = time.monotonic() - started
        samples = settled(relay, 1)
        log = relay.stderr_text
    error = json.loads(body)["error"]
    assert status == 504 and error["type"] == "timeout_error"
    assert "timed out after 0.3 s" in error["message"]
    assert headers["request-id"].startswith("req_relay_")
    assert took >= 3 * 0.3  # three tries, each waited out its whole timeout
    assert log.count(b"retrying POST /v1/messages") == 2
    assert value(samples, "sse_relay_upstream_errors_total", kind="connect_timeout") == 1
    assert value(samples, "sse_relay_upstream_errors_total") == 1
    assert value(samples, "sse_relay_upstream_retries_total") == 2
    assert value(samples, "sse_relay_streams_total", status="504", outcome="upstream_error") == 1


def test_a_connect_timeout_fails_over_to_the_next_upstream(sim: SimServer) -> None:
    """A try that timed out connecting goes to the next --upstream, unseen by the client."""
    with (
        BlackHole() as hole,
        RelayProcess(hole.url, "--upstream", sim.url, "--connect-timeout", "0.3") as relay,
    ):
        before = len(sim.requests)
        events, final = sdk_stream(relay.url)
        samples = settled(relay, 1)
    assert events[-1]["type"] == "message_stop" and final.stop_reason == "end_turn"
    assert len(sim.requests) - before == 1
    assert value(samples, "sse_relay_upstream_retries_total") == 1
    assert value(samples, "sse_relay_upstream_errors_total") == 0


def test_a_tls_handshake_reset_is_retried_then_a_retryable_502() -> None:
    """Upstream resetting the TLS handshake (before any head) is retried on every
    attempt, then answered `502 api_error` with `x-should-retry: true`, counted as kind
    `unavailable`."""
    with HandshakeReset() as upstream, RelayProcess(upstream.url, keepalive=KA) as relay:
        status, headers, body = raw_stream(relay.url)
        samples = settled(relay, 1)
        accepted = upstream.accepted
    assert status == 502 and json.loads(body)["error"]["type"] == "api_error"
    assert headers["x-should-retry"] == "true"
    assert accepted == 3  # --retry-attempts' default: every try reached the handshake
    assert value(samples, "sse_relay_upstream_errors_total", kind="unavailable") == 1
    assert value(samples, "sse_relay_upstream_retries_total") == 2


@pytest.fixture(scope="module")
def localhost_tls(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a `localhost` certificate from the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return context


def _first_frames(sim: SimServer, count: int) -> list[bytes]:
    return [frame + b"\n\n" for frame in raw_stream(sim.url)[2].split(b"\n\n")[:count]]


def test_a_tls_error_mid_stream_ends_with_one_error_frame(
    sim: SimServer, localhost_tls: ssl.SSLContext, ca_file: Path
) -> None:
    """A record that does not decrypt, after the stream started, is a TLS error like a
    reset: the body ends with one `api_error` frame after what upstream sent whole."""
    frames = _first_frames(sim, 4)
    upstream = BreaksTlsMidStream(localhost_tls, frames, together=False)
    with (
        upstream,
        RelayProcess(upstream.url, "--upstream-ca", str(ca_file), keepalive=KA) as relay,
        httpx2.Client(timeout=30) as client,
        client.stream("POST", relay.url + "/v1/messages", content=STREAM_BODY) as response,
    ):
        data = b""
        for chunk in response.iter_raw():
            data += chunk
            if data.replace(KEEPALIVE, b"") == b"".join(frames):
                upstream.inject.set()  # the frames are through: now break TLS
        samples = settled(relay, 1)
    assert response.status_code == 200
    error = single_error_frame(data)
    assert error["error"]["type"] == "api_error"
    assert error["error"]["message"].startswith("upstream connection lost after ")
    assert "/ 4 events" in error["error"]["message"]
    assert data.replace(KEEPALIVE, b"").startswith(b"".join(frames))
    assert value(samples, "sse_relay_upstream_errors_total", kind="lost") == 1


@pytest.mark.parametrize(
    "reads",
    [
        "cython",
        pytest.param(
            "python",
            marks=pytest.mark.xfail(
                strict=True,
                reason="product bug left in the Python twin: plaintext decrypted in the "
                "read that hits a TLS error is dropped by uvloop's SSL layer, so the head "
                "and frames are lost and the request retried (the C reads deliver them)",
            ),
        ),
    ],
)
def test_bytes_read_with_a_tls_error_still_reach_the_client(
    sim: SimServer, localhost_tls: ssl.SSLContext, ca_file: Path, reads: str
) -> None:
    """The same TLS error, arriving in one read with the head and frames before it:
    what upstream sent whole must still be relayed (README: every upstream byte, in
    order), then the error frame. The C reads (relay/upstream/_tlsread.pyx) deliver
    what they decrypted before the error."""
    frames = _first_frames(sim, 4)
    upstream = BreaksTlsMidStream(localhost_tls, frames, together=True)
    args = ["--upstream-ca", str(ca_file), "--retry-attempts", "1"]
    env = {"SSE_RELAY_NO_EXTENSIONS": "1"} if reads == "python" else {}
    with upstream, RelayProcess(upstream.url, *args, keepalive=KA, env=env) as relay:
        status, _, data = raw_stream(relay.url)
    assert status == 200 and data.replace(KEEPALIVE, b"").startswith(b"".join(frames))
    error = single_error_frame(data)
    assert error["error"]["type"] == "api_error"
    assert "/ 4 events" in error["error"]["message"]


def test_untrusted_certificate_is_not_retried_and_counted_as_certificate(
    localhost_tls: ssl.SSLContext,
) -> None:
    """A certificate that fails verification is a configuration fault: one try, a 502
    that says not to retry, counted as kind `certificate`."""
    with (
        SimServer(ssl=localhost_tls) as tls_sim,
        RelayProcess(f"https://localhost:{tls_sim.port}") as relay,
    ):
        status, headers, _ = raw_stream(relay.url)
        samples = settled(relay, 1)
    assert status == 502 and headers["x-should-retry"] == "false"
    assert b"retrying" not in relay.stderr_text
    assert value(samples, "sse_relay_upstream_errors_total", kind="certificate") == 1
    assert value(samples, "sse_relay_upstream_retries_total") == 0


def test_a_non_sse_body_cut_short_ends_the_client_connection(sim: SimServer) -> None:
    """A fixed-length (JSON) body that upstream cuts short cannot carry an error: the
    client connection is reset, so whatever the client got is a prefix of the answer
    and short of its Content-Length (no client can take the body for complete), and
    the failure is counted as kind `lost`."""
    with RelayProcess(sim.url, keepalive=KA) as relay:
        whole = _post(relay.port, JSON_BODY, {})
        got = b""
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/messages HTTP/1.1\r\nhost: r\r\nx-sim-script: %s\r\n"
                b"content-length: %d\r\n\r\n%s"
                % (script(cut_json_after=40)["x-sim-script"].encode(), len(JSON_BODY), JSON_BODY)
            )
            with contextlib.suppress(ConnectionResetError):  # the reset may come first
                while chunk := sock.recv(65536):
                    got += chunk
        samples = settled(relay, 1)
    assert len(got) < len(whole)
    assert not got or got.startswith(b"HTTP/1.1 200 ")
    body = got.partition(b"\r\n\r\n")[2]
    assert body == whole.partition(b"\r\n\r\n")[2][: len(body)] and len(body) <= 40
    assert value(samples, "sse_relay_upstream_errors_total", kind="lost") == 1


def test_a_non_sse_body_cut_short_is_a_tcp_reset(sim: SimServer) -> None:
    """The README's word: the client connection is reset (RST), not closed."""
    with (
        RelayProcess(sim.url, keepalive=KA) as relay,
        socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock,
    ):
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: r\r\nx-sim-script: %s\r\n"
            b"content-length: %d\r\n\r\n%s"
            % (script(cut_json_after=40)["x-sim-script"].encode(), len(JSON_BODY), JSON_BODY)
        )
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass


class _MetricsPoller:
    """Scrapes /metrics over one kept-alive connection, back to back, until the relay
    is gone: the last answer is the relay's last word, even when it exits right after
    (admin connections outlive the admin listener's close)."""

    def __init__(self, admin_url: str) -> None:
        host, port = admin_url.removeprefix("http://").rsplit(":", 1)
        self._conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.last = ""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            while True:
                self._conn.request("GET", "/metrics")
                self.last = self._conn.getresponse().read().decode()
                time.sleep(0.005)  # many scrapes in the relay's last 0.2 s, not hundreds

    def join(self) -> str:
        self._thread.join(15)
        self._conn.close()
        return self.last


def _samples(text: str) -> Samples:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_draining_answers_503_on_a_kept_alive_connection_and_counts_drained(
    sim: SimServer,
) -> None:
    """During the SIGTERM drain the listener is closed, and a new request on an HTTP/1.1
    connection kept alive from before gets `503 overloaded_error`, `retry-after: 1`,
    `connection: close`. A stream still running at --drain-timeout ends with the
    restart error frame and is counted with outcome `drained`."""
    with RelayProcess(sim.url, "--drain-timeout", "1.5", keepalive=KA) as relay:
        idle = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)
        idle.request("POST", "/v1/messages", JSON_BODY)
        assert idle.getresponse().read()  # answered, and the connection stays open
        before = len(sim.requests)
        long: dict[str, bytes] = {}
        endless = script(gaps=[[2, 30]])
        stream = threading.Thread(
            target=lambda: long.update(data=raw_stream(relay.url, headers=endless)[2])
        )
        stream.start()
        sim.wait_for(lambda: len(sim.requests) > before)
        poller = _MetricsPoller(relay.admin_url)
        relay.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: b"draining 1 streams" in relay.stderr_text)
        wait_for(lambda: _refused(relay.port))  # the listener is closed
        idle.request("POST", "/v1/messages", JSON_BODY)
        refused = idle.getresponse()
        refusal = json.loads(refused.read())
        stream.join(15)
        assert relay.proc.wait(15) == 0
        last = _samples(poller.join())
    assert refused.status == 503 and refusal["error"]["type"] == "overloaded_error"
    assert refused.getheader("retry-after") == "1"
    assert refused.getheader("connection") == "close"
    assert len(sim.requests) - before == 1  # the refused request never went upstream
    error = single_error_frame(long["data"])
    assert (
        error["error"]["type"] == "overloaded_error" and "restarting" in error["error"]["message"]
    )
    assert value(last, "sse_relay_streams_total", outcome="drained", status="200") == 1
    assert value(last, "sse_relay_refused_total", status="503") == 1


@pytest.mark.parametrize(
    ("fields", "wait", "attempts"),
    [({"retry_after": 1}, 1.0, 2), ({"retry_after_ms": 400}, 0.4, 3)],
    ids=["retry-after", "retry-after-ms"],
)
def test_retry_on_status_waits_out_retry_after_then_forwards_upstreams_answer(
    sim: SimServer, fields: dict[str, float], wait: float, attempts: int
) -> None:
    """With --retry-on-status, a 429 is retried after at least the `retry-after` (or
    `retry-after-ms`) it carries, far above the relay's own backoff; once the tries run
    out, the client gets upstream's last answer itself, once: its status, body, wait
    headers and request-id."""
    args = ["--retry-on-status", "429", "--retry-attempts", str(attempts)]
    with RelayProcess(sim.url, *args, keepalive=KA) as relay:
        before = len(sim.requests)
        answer = _post(relay.port, STREAM_BODY, script(status=429, **fields))
        tries = sim.requests[before:]
        samples = settled(relay, 1)
    next_id = int(raw_stream(sim.url)[1]["request-id"].removeprefix("req_sim_"))
    assert len(tries) == attempts
    for earlier, later in itertools.pairwise(tries):
        assert later.received_at - earlier.received_at >= wait * 0.98  # timer granularity
    head, _, body = answer.partition(b"\r\n\r\n")
    assert answer.count(b"HTTP/1.1 ") == 1 and head.startswith(b"HTTP/1.1 429 ")
    assert b"\r\nrequest-id: req_sim_%d\r\n" % (next_id - 1) in head  # the last try's
    name, number = next(iter(fields.items()))
    assert b"\r\n%s: %g\r\n" % (name.replace("_", "-").encode(), number) in head
    assert json.loads(body)["error"]["type"] == "rate_limit_error"
    assert value(samples, "sse_relay_upstream_retries_total") == attempts - 1
    assert value(samples, "sse_relay_streams_total", status="429", outcome="completed") == 1


def test_no_retry_starts_after_the_retry_budget(sim: SimServer) -> None:
    """--retry-budget: a retry that would start more than the budget after the first
    try is not made, however many attempts are left. With 0.6 s waits and a 1.5 s
    budget, tries start at 0, 0.6 and 1.2 s; the next would start at 1.8 s."""
    args = ["--retry-on-status", "529", "--retry-attempts", "10", "--retry-budget", "1.5"]
    with RelayProcess(sim.url, *args, keepalive=KA) as relay:
        before = len(sim.requests)
        status, _, body = raw_stream(relay.url, headers=script(status=529, retry_after_ms=600))
        tries = sim.requests[before:]
    assert status == 529 and json.loads(body)["error"]["type"] == "overloaded_error"
    assert len(tries) == 3, [t.received_at - tries[0].received_at for t in tries]


# A stream of 50 MB: far more than socket buffers hold for a client that stops reading.
BULK_REQUEST = (
    b"POST /v1/messages HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
    b"x-sim-script: " + json.dumps({"bulk_bytes": 50 * 1024 * 1024}).encode() + b"\r\n"
    b"content-length: %d\r\n\r\n" % len(STREAM_BODY)
) + STREAM_BODY


def test_send_timeout_ends_the_client_connection_and_is_counted(sim: SimServer) -> None:
    """A client that takes nothing for --client-send-timeout is dropped: its response
    ends short of the chunked body's end, and the stream is counted as outcome
    `client_stall`, client abort kind `send_timeout`."""
    with RelayProcess(sim.url, "--client-send-timeout", "0.5", keepalive=KA) as relay:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", relay.port))
        with sock:
            sock.sendall(BULK_REQUEST)
            sock.recv(4096)  # then nothing, while upstream has 50 MB to send
            samples = settled(relay, 1, timeout=20)
            sock.settimeout(10)
            tail = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    tail = (tail + chunk)[-64:]
    assert not tail.endswith(b"\r\n0\r\n\r\n")  # no clean end: the client can tell
    assert value(samples, "sse_relay_client_aborts_total", kind="send_timeout") == 1
    assert value(samples, "sse_relay_client_aborts_total", kind="disconnect") == 0
    assert value(samples, "sse_relay_streams_total", status="200", outcome="client_stall") == 1
