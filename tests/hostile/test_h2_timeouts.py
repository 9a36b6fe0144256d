"""Slow clients over HTTP/2 (and the same body stall over HTTP/1.1): a header block or
frame header left unfinished, and a request body that stops before its end.

With `--header-timeout 1`, an HTTP/2 connection holding half a frame header or a header
block without END_HEADERS gets GOAWAY and is closed; with `--body-timeout 1`, a request
whose body stalls while upstream waits for the rest gets 408 timeout_error. Bounds are
generous (6 s for a 1 s timeout); the tests only prove the timers exist and fire.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import h11
import pytest

from tests.hostile.h2_attack import (
    END_HEADERS,
    HEADERS,
    H2Attack,
    assert_relay_healthy,
    data,
    frame,
    raw_block,
    request_fields,
    settle_fds,
)
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

#: Generous: the timeouts below are 1 s.
BOUND = 6.0


@pytest.fixture(scope="module")
def slow_relay(sim: SimServer) -> Iterator[RelayProcess]:
    with RelayProcess(sim.url, "--header-timeout", "1", "--body-timeout", "1") as proc:
        yield proc


def _assert_goaway_and_close_within_bound(attack: H2Attack, since: float) -> None:
    closed = attack.wait_closed(BOUND + 2)
    got = attack.received
    assert closed, f"still open {time.monotonic() - since:.1f} s after the stall; {got}"
    assert got.closed_at is not None and got.closed_at - since < BOUND
    assert got.goaway is not None, f"closed without a GOAWAY; {got}"


def test_h2_header_block_without_end_headers_gets_goaway_and_close(
    sim: SimServer, slow_relay: RelayProcess
) -> None:
    """After the preface and SETTINGS, a HEADERS frame without END_HEADERS and then
    silence: the relay sends GOAWAY and closes the connection within 6 s (timeout 1 s)
    instead of holding it (and the promised header block) forever."""
    fds = settle_fds(slow_relay, sim)
    with H2Attack(slow_relay.port) as attack:
        attack.send(frame(HEADERS, 0, 1, raw_block(request_fields())))
        stalled_at = time.monotonic()
        _assert_goaway_and_close_within_bound(attack, stalled_at)
    assert_relay_healthy(slow_relay, sim, fds)


def test_h2_half_a_frame_header_gets_goaway_and_close(
    sim: SimServer, slow_relay: RelayProcess
) -> None:
    """After the preface and SETTINGS, 4 of a frame header's 9 bytes and then silence:
    GOAWAY and close within 6 s (timeout 1 s)."""
    fds = settle_fds(slow_relay, sim)
    with H2Attack(slow_relay.port) as attack:
        attack.send(frame(HEADERS, 0, 1, raw_block(request_fields()))[:4])
        stalled_at = time.monotonic()
        _assert_goaway_and_close_within_bound(attack, stalled_at)
    assert_relay_healthy(slow_relay, sim, fds)


def _assert_body_timeout_error(status: int | None, body: bytes) -> None:
    assert status == 408, (status, body[:300])
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "timeout_error", error
    assert error["error"]["message"]


def test_h2_request_body_that_stalls_gets_408(sim: SimServer, slow_relay: RelayProcess) -> None:
    """An h2 POST whose body sends 10 of its 100 bytes and stalls without END_STREAM,
    upstream waiting for the rest: `:status 408`, timeout_error, within 6 s
    (--body-timeout 1)."""
    fds = settle_fds(slow_relay, sim)
    fields = request_fields(extra=[(b"content-length", b"100")])
    with H2Attack(slow_relay.port) as attack:
        attack.send(frame(HEADERS, END_HEADERS, 1, raw_block(fields)) + data(1, b'{"model": '))
        stalled_at = time.monotonic()
        attack.wait(lambda r: r.answered(1) or r.closed, BOUND + 2)
        got = attack.received
        elapsed = time.monotonic() - stalled_at
    assert got.answered(1), f"no answer {elapsed:.1f} s after the body stalled; {got}"
    _assert_body_timeout_error(got.status(1), bytes(got.data.get(1, b"")))
    assert elapsed < BOUND
    assert_relay_healthy(slow_relay, sim, fds)


def _read_h11_response(sock: socket.socket, client: h11.Connection) -> tuple[int | None, bytes]:
    """Status and body of the response on `sock`, until its end, the close, or a timeout."""
    status: int | None = None
    body = bytearray()
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError:
            break  # closed mid-response
        if event is h11.NEED_DATA:
            try:
                client.receive_data(sock.recv(65536))
            except TimeoutError:
                break
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    return status, bytes(body)


def test_http1_request_body_that_stalls_gets_408(sim: SimServer, slow_relay: RelayProcess) -> None:
    """The same stall over HTTP/1.1 (Content-Length 100, 10 bytes sent, then nothing):
    408 timeout_error within 6 s (--body-timeout 1)."""
    fds = settle_fds(slow_relay, sim)
    client = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="POST",
        target="/v1/messages",
        headers=[
            ("host", "relay"),
            ("content-type", "application/json"),
            ("content-length", "100"),
        ],
    )
    with socket.create_connection(("127.0.0.1", slow_relay.port), timeout=BOUND + 2) as sock:
        sock.sendall(client.send(request) + client.send(h11.Data(data=b'{"model": ')))
        stalled_at = time.monotonic()
        status, body = _read_h11_response(sock, client)
        elapsed = time.monotonic() - stalled_at
    assert status is not None, f"no answer {elapsed:.1f} s after the body stalled"
    _assert_body_timeout_error(status, body)
    assert elapsed < BOUND
    assert_relay_healthy(slow_relay, sim, fds)
