"""What the hostile tests share: raw exchanges, strict response parsing, leak checks."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import h11

from tests.clients import STREAM_BODY, wait_for, without_keepalives
from tests.hostile.recording_upstream import SSE_BODY, RecordingUpstream
from tests.relayproc import RelayProcess

#: How long a raw exchange waits for the relay to answer and close.
EXCHANGE_TIMEOUT = 10.0
#: Slack for the relay's open descriptors after a group (pool churn, a lingering close).
FD_SLACK = 2
HTTP_VERSION_LABELS = frozenset({"1.0", "1.1", "2", "3"})
#: The gauge of streams in progress (relay/ops/metrics.py), one series per HTTP version.
ACTIVE_STREAMS = "sse_relay_streams_active"

Header = tuple[bytes, bytes]


def fd_count(pid: int) -> int:
    """Open file descriptors of process `pid`, from /proc."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_fds(relay: RelayProcess, baseline: int, slack: int = FD_SLACK) -> None:
    """Waits (at most 10 s) until the relay holds no more than `baseline + slack` fds."""
    try:
        wait_for(lambda: fd_count(relay.proc.pid) <= baseline + slack, timeout=10)
    except TimeoutError:
        now = fd_count(relay.proc.pid)
        raise AssertionError(f"relay fds grew from {baseline} to {now} and stayed there") from None


@dataclass
class Response:
    """One response as a strict (h11) client parsed it; `body` de-chunked."""

    status: int
    headers: list[Header]
    body: bytes = b""
    complete: bool = False
    informational: list[int] = field(default_factory=list)

    def value(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case), or None."""
        return next((v for k, v in self.headers if k == name), None)

    @property
    def closes(self) -> bool:
        """Whether the response announces the connection's close."""
        connection = self.value(b"connection") or b""
        return b"close" in [t.strip().lower() for t in connection.split(b",")]

    def json(self) -> Any:
        return json.loads(self.body)


class ResponseParser:
    """Parses a relay's output strictly, response after response, as bytes arrive.

    h11 needs to know each request's method to frame the answer (HEAD has no body):
    `methods` gives them in order, GET for any further response.
    """

    def __init__(self, methods: Sequence[bytes] = ()) -> None:
        self._methods = list(methods)
        self.responses: list[Response] = []
        self.error: str | None = None
        self._informational: list[int] = []
        self._conn = self._next_connection()

    def _next_connection(self) -> h11.Connection:
        conn = h11.Connection(h11.CLIENT)
        index = len(self.responses)
        method = self._methods[index] if index < len(self._methods) else b"GET"
        conn.send(h11.Request(method=method, target="/", headers=[(b"host", b"relay")]))
        conn.send(h11.EndOfMessage())
        return conn

    @property
    def complete(self) -> list[Response]:
        return [r for r in self.responses if r.complete]

    def feed(self, data: bytes) -> None:
        """Parses `data`; b"" means the relay closed. A protocol error is kept in
        `error` (and parsing stops), an incomplete response at the close is not one."""
        if self.error is not None:
            return
        self._conn.receive_data(data)
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                if data:
                    self.error = str(exc)
                return  # at EOF: an incomplete message, which `complete` shows
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.InformationalResponse):
                self._informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                informational = self._informational
                self.responses.append(
                    Response(
                        event.status_code,
                        [(bytes(k), bytes(v)) for k, v in event.headers],
                        informational=informational,
                    )
                )
                self._informational = []
            elif isinstance(event, h11.Data):
                self.responses[-1].body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.responses[-1].complete = True
                rest, _ = self._conn.trailing_data
                if self._conn.our_state is h11.MUST_CLOSE or self._conn.their_state in (
                    h11.MUST_CLOSE,
                    h11.CLOSED,
                ):
                    if rest:
                        self.error = f"bytes after a response that closes: {bytes(rest)[:80]!r}"
                    return
                self._conn = self._next_connection()
                if rest:  # (an empty receive_data would tell h11 the peer closed)
                    self._conn.receive_data(bytes(rest))


@dataclass
class Exchange:
    """What one raw connection to the relay gave back."""

    data: bytes
    closed: bool  # the relay closed (FIN or reset) within the timeout
    reset: bool
    seconds: float
    responses: list[Response]
    parse_error: str | None

    @property
    def complete(self) -> list[Response]:
        return [r for r in self.responses if r.complete]


def exchange(
    port: int,
    writes: bytes | Sequence[bytes],
    *,
    timeout: float = EXCHANGE_TIMEOUT,
    responses: int | None = None,
    methods: Sequence[bytes] = (),
    half_close: bool = False,
) -> Exchange:
    """Sends `writes` (each its own send) on a fresh connection, then reads until the
    relay closes or `timeout` passes.

    With `responses`, reading also stops once that many complete responses arrived and
    the last one does not announce a close: the relay means to keep the connection,
    which a test expecting a refusal can fail on at once instead of after `timeout`.
    With `half_close`, the client shuts its sending side after the last write.
    """
    parts = [writes] if isinstance(writes, bytes) else list(writes)
    parser = ResponseParser(methods)
    chunks: list[bytes] = []
    closed = reset = False
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for part in parts:
                sock.sendall(part)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # broken pipe, reset, not connected: refused before all was sent
            reset = True  # read what came
        deadline = started + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:  # reset
                closed = reset = True
                break
            parser.feed(chunk)
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
            done = parser.complete
            if responses is not None and len(done) >= responses and not done[-1].closes:
                break
    return Exchange(
        data=b"".join(chunks),
        closed=closed,
        reset=reset,
        seconds=time.monotonic() - started,
        responses=parser.responses,
        parse_error=parser.error,
    )


def raw_exchange(port: int, data: bytes) -> bytes:
    """Sends `data` on a fresh connection; everything the relay sent until it closed
    (or 10 s passed)."""
    return exchange(port, data).data


def assert_refusal(
    result: Exchange, status: int, error_type: str = "invalid_request_error", index: int = -1
) -> Response:
    """The exchange ended with a refusal: `status`, the Messages API error JSON with
    `error_type`, `connection: close`, and the relay closed the connection."""
    assert result.parse_error is None, (result.parse_error, result.data[:300])
    assert result.responses, f"no response at all (closed={result.closed}): {result.data!r}"
    response = result.responses[index]
    assert response.status == status, (
        f"expected a {status} refusal, got {response.status}: {result.data[:160]!r}"
    )
    assert response.complete, result.data[:600]
    assert (response.value(b"content-type") or b"").startswith(b"application/json")
    payload = response.json()
    assert payload["type"] == "error", payload
    assert payload["error"]["type"] == error_type, payload
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    assert response.closes, f"no connection: close on the refusal: {response.headers}"
    assert result.closed, f"the relay kept the connection open for {result.seconds:.1f} s"
    return response


@dataclass(frozen=True)
class UpstreamMark:
    """How much the upstream had seen at one moment."""

    heads: int
    requests: int
    bytes: int
    connections: int

    @classmethod
    def of(cls, upstream: RecordingUpstream) -> UpstreamMark:
        return cls(
            len(upstream.heads), len(upstream.requests), upstream.total_bytes, upstream.connections
        )

    @classmethod
    def settled(cls, relay: RelayProcess, upstream: RecordingUpstream) -> UpstreamMark:
        """The mark once nothing is in flight (`settle`): an earlier test's request that
        is still on its way upstream is then never counted as this test's."""
        settle(relay, upstream)
        return cls.of(upstream)


def refused_untouched(
    relay: RelayProcess,
    upstream: RecordingUpstream,
    request: bytes | list[bytes],
    status: int = 400,
    error_type: str = "invalid_request_error",
) -> None:
    """`request` gets exactly one answer, a refusal, the connection closes, and upstream
    received nothing at all."""
    before = UpstreamMark.settled(relay, upstream)
    result = exchange(relay.port, request, responses=1)
    assert_refusal(result, status, error_type, index=0)
    assert len(result.responses) == 1, [r.status for r in result.responses]
    assert_upstream_untouched(upstream, before)


def active_streams(relay: RelayProcess) -> float:
    """Streams the relay has in progress, from /metrics."""
    return sum(value for _, value in metric_samples(metrics_text(relay), ACTIVE_STREAMS))


def settle(relay: RelayProcess, upstream: RecordingUpstream, timeout: float = 10.0) -> None:
    """Waits until nothing is in flight: the relay has no stream in progress and upstream
    has handled every byte that reached it, on two polls in a row."""
    streak = 0

    def calm() -> bool:
        nonlocal streak
        streak = streak + 1 if upstream.quiet() and active_streams(relay) == 0 else 0
        return streak >= 2

    try:
        wait_for(calm, timeout)
    except TimeoutError:
        raise AssertionError(
            f"still in flight after {timeout:g} s: {active_streams(relay):g} relay streams, "
            f"upstream quiet={upstream.quiet()}"
        ) from None


def assert_upstream_untouched(upstream: RecordingUpstream, before: UpstreamMark) -> None:
    """Nothing reached upstream since `before`: no head, no byte, no new connection."""
    assert UpstreamMark.of(upstream) == before, upstream.heads[before.heads :]
    assert not upstream.errors, upstream.errors


def serves_request(method: bytes = b"POST", target: bytes = b"/v1/messages") -> bytes:
    """A normal streaming Messages request, as an SDK would send it."""
    return (
        b"%s %s HTTP/1.1\r\nHost: relay.test\r\ncontent-type: application/json\r\n"
        b"anthropic-version: 2023-06-01\r\ncontent-length: %d\r\n\r\n%s"
        % (method, target, len(STREAM_BODY), STREAM_BODY)
    )


def assert_still_serves(relay: RelayProcess, upstream: RecordingUpstream) -> None:
    """A normal streaming POST on a fresh connection gets the upstream's stream byte
    for byte, and upstream got the request body byte for byte."""
    before = len(upstream.requests)
    result = exchange(relay.port, serves_request(), responses=1, methods=[b"POST"])
    assert result.parse_error is None, result.parse_error
    assert result.complete, f"no complete response: {result.data[:400]!r}"
    response = result.complete[0]
    assert response.status == 200, result.data[:400]
    assert (response.value(b"content-type") or b"").startswith(b"text/event-stream")
    assert without_keepalives(response.body) == SSE_BODY
    # (Filtered: an earlier, aborted exchange may still be landing upstream.)
    got = [r for r in upstream.requests[before:] if r.target == b"/v1/messages"]
    assert [(r.method, r.body) for r in got] == [(b"POST", STREAM_BODY)], got
    assert not upstream.errors, upstream.errors


def metrics_text(relay: RelayProcess) -> str:
    """The relay's /metrics page."""
    with urllib.request.urlopen(relay.admin_url + "/metrics", timeout=10) as page:
        text: str = page.read().decode()
    return text


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` on a /metrics page: (labels, value)."""
    samples = []
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        labels: dict[str, str] = {}
        if line.startswith(name + "{"):
            inner = line[len(name) + 1 : line.index("}")]
            for pair in filter(None, inner.split(",")):
                key, _, value = pair.partition("=")
                labels[key] = value.strip('"')
        samples.append((labels, float(line.rsplit(" ", 1)[1])))
    return samples


#: Bytes that appear upstream only if a smuggled or refused request got through.
SMUGGLED_MARKERS = (b"GPOST", b"/smuggled", b"evil.example", b"ext=1")


@dataclass(frozen=True)
class GroupStart:
    """The relay's descriptors and upstream's byte counts when a group began."""

    fds: int
    upstream_offsets: list[int]
    log_offset: int

    @classmethod
    def of(cls, relay: RelayProcess, upstream: RecordingUpstream) -> GroupStart:
        settle(relay, upstream)  # what an earlier group set going is not this group's
        return cls(fd_count(relay.proc.pid), upstream.offsets(), len(relay.stderr_text))


def check_group_end(relay: RelayProcess, upstream: RecordingUpstream, start: GroupStart) -> None:
    """After a group: the relay is alive and serves byte-exact, its descriptors are back
    near where they were, upstream never parsed anything non-strict, and none of the
    group's smuggled or refused bytes reached upstream."""
    assert relay.proc.poll() is None, relay.stderr_text.decode(errors="replace")[-2000:]
    assert_still_serves(relay, upstream)
    wait_for_fds(relay, start.fds)
    assert not upstream.errors, upstream.errors
    seen = upstream.since(start.upstream_offsets)
    for marker in SMUGGLED_MARKERS:
        assert marker not in seen, f"{marker!r} reached upstream during this group"
    assert_no_traceback(relay, start.log_offset)


def assert_no_traceback(relay: RelayProcess, since: int = 0) -> None:
    """The relay logged no Python traceback (an unhandled exception) after byte `since`
    of its log."""
    log = relay.stderr_text
    at = log.find(b"Traceback", since)
    assert at == -1, log[max(0, log.rfind(b"\n", 0, at)) : at + 3000].decode(errors="replace")


def assert_served(result: Exchange, index: int = 0) -> Response:
    """Response `index` of the exchange is upstream's SSE stream, byte for byte."""
    assert result.parse_error is None, (result.parse_error, result.data[:300])
    assert len(result.complete) > index, f"no complete response {index}: {result.data[:400]!r}"
    response = result.complete[index]
    assert response.status == 200, result.data[:400]
    assert without_keepalives(response.body) == SSE_BODY
    return response


def head_sent_upstream(upstream: RecordingUpstream, request_line: bytes) -> bytes:
    """The last request head upstream received that starts with `request_line`, raw."""
    for raw in reversed(upstream.raw):
        at = raw.rfind(request_line)
        if at != -1:
            end = raw.find(b"\r\n\r\n", at)
            assert end != -1, raw[at:]
            return raw[at : end + 4]
    raise AssertionError(f"upstream never received {request_line!r}")
