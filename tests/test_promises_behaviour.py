"""README "Behaviour worth knowing" and "Operations" promises no other test reaches: a
leading BOM after an early keepalive, HTTP/2 request-body pacing by upstream,
`/readyz` caching, admin `HEAD`, and the metrics `sse_relay_sse_compressed_total`
and `sse_relay_info`."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx2
import pytest

from relay import __version__
from tests.clients import (
    KEEPALIVE,
    STALLED_BYTES,
    raw_http,
    raw_stream,
    script,
    sdk_stream,
    unsent_bytes,
)
from tests.h2client import RawH2Client
from tests.relayproc import RelayProcess
from tests.simserver import SimServer
from tests.test_metrics import scrape, settled, value

KA = 0.1
BOM = b"\xef\xbb\xbf"
# Seconds without a WINDOW_UPDATE that count as "the relay stopped granting window".
QUIET = 1.0


def test_a_bom_after_an_early_keepalive_is_dropped(sim: SimServer) -> None:
    """Upstream's head, then silence past the keepalive interval, then a body that
    starts with a BOM: the keepalive went first, so the BOM is dropped (the SDK would
    read it as part of the first field name) and the rest is byte-exact. Without the
    silence nothing went first, and the BOM is relayed as upstream sent it."""
    plain = raw_stream(sim.url)[2]
    late = script(bom=True, body_delay=6 * KA)
    with RelayProcess(sim.url, keepalive=KA) as relay:
        _, _, relayed = raw_stream(relay.url, headers=late)
        _, _, at_once = raw_stream(relay.url, headers=script(bom=True))
        events, final = sdk_stream(relay.url, late)
    assert relayed.startswith(KEEPALIVE) and BOM not in relayed
    assert relayed.replace(KEEPALIVE, b"") == plain
    assert at_once == BOM + plain
    assert events[0]["type"] == "message_start" and final.stop_reason == "end_turn"


class HeldUpstream:
    """An HTTP/1.1 upstream that reads a request's head, then none of its body until
    `release` is set; then all of it (`body`), and answers a short SSE stream. Its
    small receive buffer makes the relay feel the hold soon."""

    ANSWER = (
        b'event: message_start\ndata: {"type":"message_start"}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen()
        self.port: int = self._server.getsockname()[1]
        self.release = threading.Event()
        self.body = b""
        self.relay_port = 0  # the relay's end of the connection, once there is one
        threading.Thread(target=self._run, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            conn, (_, self.relay_port) = self._server.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(1)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.release.wait(30)
                body = b""
                while len(body) < length:
                    body += conn.recv(1 << 20)
                self.body = body
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(self.ANSWER), self.ANSWER)
                )

    def close(self) -> None:
        self.release.set()
        self._server.close()

    def __enter__(self) -> HeldUpstream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _pump(client: RawH2Client, done: Callable[[], bool], timeout: float = 20.0) -> None:
    """Reads what the relay sends (window updates included) until `done()`, which is
    also checked while nothing arrives."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        with contextlib.suppress(TimeoutError):
            client.pump_until(done, timeout=0.05)


def test_h2_request_body_windows_follow_what_upstream_takes(sim: SimServer, tmp_path: Path) -> None:
    """An HTTP/2 upload to an upstream that stops reading: the relay stops granting
    WINDOW_UPDATEs, so the client's stream window shuts far short of the body, and
    stays shut while another stream on the same connection is relayed whole. Once
    upstream reads again the windows reopen and the body arrives byte for byte."""
    size = 24 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)
    with HeldUpstream() as held:
        config = tmp_path / "relay.toml"
        config.write_text(f'[[route]]\nprefix = "/held"\nupstream = "{held.url}"\n')
        with RelayProcess(sim.url, "--config", str(config), keepalive=KA) as relay:
            client = RawH2Client(relay.port)
            try:
                conn = client.conn
                upload = conn.get_next_available_stream_id()
                conn.send_headers(
                    upload,
                    [
                        (b":method", b"POST"),
                        (b":path", b"/held/v1/messages"),
                        (b":scheme", b"http"),
                        (b":authority", b"relay"),
                        (b"content-length", b"%d" % size),
                    ],
                )
                client.data[upload] = bytearray()
                sent, ended = 0, False

                def send() -> None:
                    nonlocal sent, ended
                    while sent < size and (room := conn.local_flow_control_window(upload)):
                        piece = min(room, conn.max_outbound_frame_size, size - sent)
                        conn.send_data(upload, payload[sent : sent + piece])
                        sent += piece
                    if sent == size and not ended:
                        conn.end_stream(upload)
                        ended = True
                    client.sock.sendall(conn.data_to_send())

                quiet_since = [time.monotonic(), -1]

                def stalled() -> bool:
                    """Nothing sent for QUIET s: the relay granted no window meanwhile."""
                    send()
                    now = time.monotonic()
                    if sent != quiet_since[1]:
                        quiet_since[:] = [now, sent]
                    return now - quiet_since[0] >= QUIET and held.relay_port != 0

                _pump(client, stalled)
                # Held for real: upstream's buffers are full, not just one window spent.
                assert unsent_bytes(held.relay_port, held.port) >= STALLED_BYTES
                at_stall = sent
                # The other stream, on the sim, runs its whole course meanwhile.
                other = client.stream({"gaps": [[2, 0.5]]})
                _pump(client, lambda: other in client.ended)
                assert conn.local_flow_control_window(upload) == 0 and sent == at_stall

                def answered() -> bool:
                    send()
                    return upload in client.ended

                held.release.set()
                _pump(client, answered, timeout=60)
            finally:
                client.close()
    assert at_stall < size // 2, at_stall
    assert client.status[other] == 200 and b"event: message_stop" in client.data[other]
    assert client.status[upload] == 200 and bytes(client.data[upload]) == held.ANSWER
    assert held.body == payload


class Listener:
    """A TCP port that takes connections (never answering) until `close`."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def close(self) -> None:
        self._server.close()


def test_readyz_reuses_its_upstream_probe_for_a_second(sim: SimServer) -> None:
    """`/readyz` connects to upstream at most once a second: right after a ready probe,
    upstream going away changes nothing (the probe's result is reused, no connect is
    tried); the first answer that notices comes at least 1 s after that probe began."""
    upstream = Listener()
    with RelayProcess(upstream.url, keepalive=KA) as relay, httpx2.Client(timeout=10) as admin:
        began = time.monotonic()
        first = admin.get(relay.admin_url + "/readyz")
        upstream.close()  # from now on, a probe would be refused
        again = [admin.get(relay.admin_url + "/readyz") for _ in range(3)]
        within = time.monotonic() - began
        while (answer := admin.get(relay.admin_url + "/readyz")).status_code == 200:
            assert time.monotonic() - began < 10, "the probe's result never expired"
        noticed = time.monotonic() - began
    assert first.status_code == 200
    if within >= 1.0:
        pytest.skip(f"four admin requests took {within:.2f} s: the cache window passed")
    assert [response.status_code for response in again] == [200, 200, 200]
    assert noticed >= 1.0
    assert answer.status_code == 503 and "unreachable" in answer.json()["reason"]


def _responses(data: bytes, methods: list[bytes]) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Splits pipelined answers: (status line, headers, body); HEAD answers have none."""
    out = []
    for method in methods:
        head, _, data = data.partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines)
        size = 0 if method == b"HEAD" else int(headers[b"content-length"])
        out.append((status, headers, data[:size]))
        data = data[size:]
    assert data == b"", data[:200]
    return out


def test_admin_answers_head_with_the_get_headers_and_no_body(sim: SimServer) -> None:
    """`HEAD` on each admin path: GET's status and headers (the length of the body GET
    would get), and not one body byte: pipelined on one connection, every answer
    starts where the one before ended."""
    paths = [b"/healthz", b"/readyz", b"/metrics", b"/nothing"]
    methods = [b"HEAD"] * len(paths) + [b"GET", b"GET"]
    with RelayProcess(sim.url, keepalive=KA) as relay:
        port = int(relay.admin_url.rsplit(":", 1)[1])
        requests = b"".join(b"HEAD %s HTTP/1.1\r\nhost: admin\r\n\r\n" % path for path in paths)
        requests += b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n"
        requests += b"GET /readyz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
        answers = _responses(raw_http(port, requests), methods)
    statuses = [status.split(b" ")[1] for status, _, _ in answers]
    assert statuses == [b"200", b"200", b"200", b"404", b"200", b"200"]
    (_, healthz, _), (_, readyz, _), (_, metrics, _), *_ = answers
    assert int(healthz[b"content-length"]) == len(answers[4][2]) == len(b'{"status": "ok"}')
    assert int(readyz[b"content-length"]) == len(answers[5][2])
    assert metrics[b"content-type"].startswith(b"text/plain")
    assert int(metrics[b"content-length"]) > 1000
    assert all(body == b"" for _, _, body in answers[:4])


def test_compressed_sse_is_counted(sim: SimServer) -> None:
    """An SSE response that arrives content-encoded is relayed without keepalives and
    counted in `sse_relay_sse_compressed_total`; a plain one is not."""
    with RelayProcess(sim.url, keepalive=KA) as relay:
        gzipped = raw_stream(relay.url, headers=script(content_encoding="gzip", gaps=[[3, 0.3]]))
        raw_stream(relay.url)
        samples = settled(relay, 2)
    assert gzipped[1]["content-encoding"] == "gzip" and KEEPALIVE not in gzipped[2]
    assert value(samples, "sse_relay_sse_compressed_total") == 1
    assert value(samples, "sse_relay_keepalives_total") == 0  # nor in the plain one: no gap


@pytest.mark.parametrize("scanner", ["cython", "python"])
def test_info_names_the_version_and_the_scanner_in_use(sim: SimServer, scanner: str) -> None:
    """`sse_relay_info` is 1, labelled with the relay's version and the SSE scanner the
    process actually loaded (`SSE_RELAY_NO_EXTENSIONS=1` forces the Python one)."""
    env = {"SSE_RELAY_NO_EXTENSIONS": "1"} if scanner == "python" else {}
    with RelayProcess(sim.url, env=env) as relay:
        info = [sample for sample in scrape(relay) if sample[0] == "sse_relay_info"]
    assert info == [("sse_relay_info", {"version": __version__, "scanner": scanner}, 1.0)]
    assert f"scanner={scanner}".encode() in relay.ready_line
