"""HTTP/2 requests that must never reach upstream: each fails on its own stream only.

A request HTTP/1.1 cannot carry (a space in the path, a bad header name, NUL/CR/LF in a
value), a malformed HTTP/2 request (RFC 9113 8.2/8.3), a target that is not a path, and
CONNECT each get an error answer on their stream, while the connection stays up and the
next stream on it is relayed byte-exact. A thousand of them leak nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relay_sim.script import RecordedRequest
from tests.clients import KEEPALIVE, STREAM_BODY, wait_for
from tests.hostile.h2_attack import (
    PROTOCOL_ERROR,
    H2Attack,
    Received,
    assert_relay_healthy,
    direct,
    fd_count,
    request_fields,
    request_frames,
    rst_stream,
    settle_fds,
)
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

GOOD_SCRIPT: dict[str, object] = {"text_deltas": 2}
Fields = list[tuple[bytes, bytes]]


@pytest.fixture(scope="module")
def h2_relay(sim: SimServer) -> Iterator[RelayProcess]:
    with RelayProcess(sim.url) as proc:
        yield proc


def _bad_then_good(
    relay: RelayProcess, sim: SimServer, fields: Fields, body: bytes | None = STREAM_BODY
) -> tuple[Received, list[RecordedRequest]]:
    """Stream 1 carries `fields`; once it is answered, stream 3 a normal request on the
    same connection. Returns what the relay sent and what reached upstream meanwhile."""
    before = len(sim.requests)
    with H2Attack(relay.port) as attack:
        attack.send(request_frames(1, fields, body))
        answered = attack.wait(lambda r: r.answered(1) or r.closed or r.goaway is not None, 10)
        assert answered, "stream 1 got no answer at all"
        attack.send(request_frames(3, request_fields(GOOD_SCRIPT)))
        attack.wait(lambda r: r.answered(3) or r.closed or r.goaway is not None, 10)
        got = attack.received
    return got, sim.requests[before:]


def _assert_good_stream_served(sim: SimServer, got: Received) -> None:
    assert got.goaway is None, f"the connection was ended: GOAWAY {got.goaway}"
    assert not got.closed, "the relay closed the connection"
    assert got.status(3) == 200 and 3 in got.ended and 3 not in got.resets
    assert bytes(got.data[3]).replace(KEEPALIVE, b"") == direct(sim, GOOD_SCRIPT)


def _assert_only_the_good_request_went_upstream(upstream: list[RecordedRequest]) -> None:
    scripts = [request.header(b"x-sim-script") for request in upstream]
    assert scripts == [b'{"text_deltas": 2}'], [(r.method, r.target) for r in upstream]


UNRELAYABLE: dict[str, tuple[Fields, tuple[str, ...]]] = {
    "space in :path": (request_fields(path=b"/v1/x y"), ("path", "target")),
    "header name x;y": (request_fields(extra=[(b"x;y", b"1")]), ("x;y",)),
    "NUL in a value": (request_fields(extra=[(b"x-note", b"a\x00b")]), ("x-note",)),
    "CR in a value": (request_fields(extra=[(b"x-note", b"a\rb")]), ("x-note",)),
    "LF in a value": (request_fields(extra=[(b"x-note", b"a\nb")]), ("x-note",)),
}


@pytest.mark.parametrize("case", list(UNRELAYABLE))
def test_h2_request_upstream_cannot_carry_gets_400_on_its_stream_only(
    sim: SimServer, h2_relay: RelayProcess, case: str
) -> None:
    """A request that cannot be expressed in HTTP/1.1 gets 400 invalid_request_error on
    its stream, with a message naming what is wrong; nothing of it reaches upstream, and
    the same connection then relays a normal stream byte-exact."""
    fds = settle_fds(h2_relay, sim)
    fields, named = UNRELAYABLE[case]
    got, upstream = _bad_then_good(h2_relay, sim, fields)
    assert got.status(1) == 400, (got.headers.get(1), got.resets.get(1))
    error = got.error(1)
    assert error["type"] == "invalid_request_error"
    assert any(word in error["message"].lower() for word in named), error["message"]
    _assert_good_stream_served(sim, got)
    _assert_only_the_good_request_went_upstream(upstream)
    assert_relay_healthy(h2_relay, sim, fds)


def _fields_without(name: bytes) -> Fields:
    return [field for field in request_fields() if field[0] != name]


def _pseudo_after_regular() -> Fields:
    fields = _fields_without(b":path")
    return [*fields, (b":path", b"/v1/messages")]  # after content-type and x-sim-script


MALFORMED: dict[str, Fields] = {
    "uppercase header name": request_fields(extra=[(b"X-Upper", b"1")]),
    "connection: keep-alive": request_fields(extra=[(b"connection", b"keep-alive")]),
    "te: gzip": request_fields(extra=[(b"te", b"gzip")]),
    "no :path": _fields_without(b":path"),
    "pseudo-header after a regular one": _pseudo_after_regular(),
    "two :path": [*request_fields()[:2], (b":path", b"/v1/messages"), *request_fields()[2:]],
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_h2_request_fails_only_its_stream(
    sim: SimServer, h2_relay: RelayProcess, case: str
) -> None:
    """A malformed HTTP/2 request (RFC 9113 8.2.1, 8.2.2, 8.3) is a stream error: a 400
    or RST_STREAM(PROTOCOL_ERROR) for it, no GOAWAY, nothing upstream; a normal stream
    opened afterwards on the same connection completes byte-exact."""
    fds = settle_fds(h2_relay, sim)
    got, upstream = _bad_then_good(h2_relay, sim, MALFORMED[case])
    if 1 in got.resets:
        assert got.resets[1] == PROTOCOL_ERROR, got.resets
    else:
        assert got.status(1) == 400, got.headers.get(1)
        assert got.error(1)["type"] == "invalid_request_error"
    _assert_good_stream_served(sim, got)
    _assert_only_the_good_request_went_upstream(upstream)
    assert_relay_healthy(h2_relay, sim, fds)


def test_absolute_form_path_gets_400_and_never_reaches_upstream(
    sim: SimServer, h2_relay: RelayProcess
) -> None:
    """`:path http://evil.example/v1/x` is not a path: 400, and the relay opens no
    connection anywhere for it (upstream sees nothing)."""
    fds = settle_fds(h2_relay, sim)
    connections = sim.connections
    got, upstream = _bad_then_good(h2_relay, sim, request_fields(path=b"http://evil.example/v1/x"))
    assert got.status(1) == 400
    assert got.error(1)["type"] == "invalid_request_error"
    _assert_good_stream_served(sim, got)
    _assert_only_the_good_request_went_upstream(upstream)
    assert all(not r.target.startswith("http") for r in upstream)
    assert sim.connections - connections <= 1  # at most the good stream's own
    assert_relay_healthy(h2_relay, sim, fds)


def test_connect_gets_405_and_never_reaches_upstream(
    sim: SimServer, h2_relay: RelayProcess
) -> None:
    """CONNECT (with `:authority evil.example:443`, no :path, RFC 9113 8.5) gets 405: the
    relay is no tunnel; nothing reaches upstream and the connection serves on."""
    fds = settle_fds(h2_relay, sim)
    connect = [(b":method", b"CONNECT"), (b":authority", b"evil.example:443")]
    got, upstream = _bad_then_good(h2_relay, sim, connect, body=None)
    assert got.status(1) == 405, (got.headers.get(1), got.resets.get(1))
    assert got.error(1)["message"]
    _assert_good_stream_served(sim, got)
    _assert_only_the_good_request_went_upstream(upstream)
    assert all(r.method != "CONNECT" for r in upstream)
    assert_relay_healthy(h2_relay, sim, fds)


def test_a_thousand_unrelayable_requests_leak_nothing(
    sim: SimServer, h2_relay: RelayProcess
) -> None:
    """1,000 requests upstream cannot carry, 250 on each of 4 connections sent in one
    burst: every one gets its 400, none reaches upstream, the relay opens no upstream
    connections for them (a few at most), and its fd count (/proc/PID/fd, everything
    included) comes back flat within 2."""
    fds = settle_fds(h2_relay, sim)
    pid = h2_relay.proc.pid
    total_fds = fd_count(pid)  # nothing goes upstream: the pool too must stay as it is
    requests_before, connections_before = len(sim.requests), sim.connections
    kinds = [fields for fields, _ in UNRELAYABLE.values()]
    statuses: list[int | None] = []
    ids = [1 + 2 * i for i in range(250)]
    for connection in range(4):
        with H2Attack(h2_relay.port) as attack:
            burst = b"".join(
                request_frames(sid, kinds[(connection + i) % len(kinds)])
                for i, sid in enumerate(ids)
            )
            attack.send_all(burst)
            finished = attack.wait(lambda r: all(r.answered(s) for s in ids), 20)
            got = attack.received
            assert finished, f"{sum(got.answered(s) for s in ids)} of 250 answered"
            assert got.goaway is None and not got.closed
            statuses += [got.status(s) for s in ids]
    assert statuses == [400] * 1000, {s: statuses.count(s) for s in set(statuses)}
    assert len(sim.requests) == requests_before
    assert sim.connections - connections_before <= 3
    wait_for(lambda: fd_count(pid) <= total_fds + 2, timeout=5)
    assert_relay_healthy(h2_relay, sim, fds)


REFUSED: dict[str, tuple[Fields, int]] = {
    "malformed (400)": (request_fields(extra=[(b"X-Upper", b"1")]), 400),
    "unrelayable (400)": (request_fields(path=b"/v1/x y"), 400),
    "CONNECT (405)": ([(b":method", b"CONNECT"), (b":authority", b"evil.example:443")], 405),
    "headers too large (431)": (request_fields(extra=[(b"x-big", b"a" * 70_000)]), 431),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_request_reset_in_the_same_read_breaks_nothing(
    sim: SimServer, h2_relay: RelayProcess, case: str
) -> None:
    """A request the relay refuses itself, with its RST_STREAM(CANCEL) in the same write:
    by the time the refusal is answered h2 has closed the stream, and that must cost
    nothing: no Traceback, no GOAWAY, no close; the connection's next stream is relayed
    byte-exact. (Found by test_h2_fuzz.py: the answer raised StreamClosedError out of
    data_received, and the connection was dropped, or hung.)"""
    fds = settle_fds(h2_relay, sim)
    fields, _ = REFUSED[case]
    with H2Attack(h2_relay.port) as attack:
        attack.send(request_frames(1, fields, body=None) + rst_stream(1))
        attack.send(request_frames(3, request_fields(GOOD_SCRIPT)))
        attack.wait(lambda r: r.answered(3) or r.closed or r.goaway is not None, 10)
        got = attack.received
    _assert_good_stream_served(sim, got)
    assert_relay_healthy(h2_relay, sim, fds)
