"""HTTP/1.1 request heads: size and time limits, request targets, versions, and what a
client may learn about the upstream behind the relay.

Refusals are HTTP responses in the Messages API error shape with `connection: close`,
after which the relay closes the connection; nothing of a refused request reaches
upstream. Each group (class) on the shared relay ends by checking that the relay still
relays a normal stream byte for byte and holds no more descriptors than before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.clients import closed_port, raw_stream, script, single_error_frame, wait_for
from tests.hostile.harness import (
    ACTIVE_STREAMS,
    HTTP_VERSION_LABELS,
    GroupStart,
    UpstreamMark,
    active_streams,
    assert_refusal,
    assert_served,
    assert_upstream_untouched,
    check_group_end,
    exchange,
    fd_count,
    metric_samples,
    metrics_text,
    refused_untouched,
    serves_request,
    wait_for_fds,
)
from tests.hostile.recording_upstream import RecordingUpstream
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

# Every group's baseline is taken before its first test.
pytestmark = pytest.mark.usefixtures("group_start")

MAX_HEADER_BYTES = 16384  # as tests/hostile/conftest.py starts the relay


def big_head(size: int) -> bytes:
    """A GET head of at least `size` bytes: 1000-byte header lines, then the blank line."""
    lines = [b"X-Pad-%04d: %s\r\n" % (i, b"p" * 986) for i in range(size // 1000 + 1)]
    return b"GET /v1/big HTTP/1.1\r\nHost: a\r\n" + b"".join(lines) + b"\r\n"


class TestHeadLimits:
    """A head over --max-header-bytes gets 431; a head that stalls gets 408, soon."""

    def test_oversized_head_in_one_write_gets_431(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """A 48 KiB head sent in one write, against a 16 KiB limit: 431 in the API error
        shape (invalid_request_error), close, nothing upstream."""
        head = big_head(48 * 1024)
        assert len(head) >= 48 * 1024 > 2 * MAX_HEADER_BYTES
        refused_untouched(relay, upstream, head, status=431)

    def test_oversized_head_in_many_writes_gets_431(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """The same head in 1 KiB writes (each its own segment): still 431, close,
        nothing upstream; the limit counts the whole head, not one read."""
        head = big_head(48 * 1024)
        writes = [head[i : i + 1024] for i in range(0, len(head), 1024)]
        refused_untouched(relay, upstream, writes, status=431)

    def test_stalled_head_gets_408(self, relay: RelayProcess, upstream: RecordingUpstream) -> None:
        """A head that stops halfway: with --header-timeout 1 the relay answers 408
        (timeout_error) and closes within a few seconds; nothing reaches upstream."""
        before = UpstreamMark.settled(relay, upstream)
        result = exchange(relay.port, b"GET /v1/x HTTP/1.1\r\nHost: a\r\nX-Partial: ")
        assert_refusal(result, 408, "timeout_error")
        assert result.seconds < 8, f"closed only after {result.seconds:.1f} s"
        assert_upstream_untouched(upstream, before)

    def test_pipelined_partial_head_gets_408_after_the_first_answer(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """A complete GET pipelined with the first part of a second head, then silence:
        the first request is answered (byte-exact stream), then the stalled second head
        gets 408 and the connection closes within a few seconds, not after the 620 s
        idle timeout. Only the first request reaches upstream."""
        before = UpstreamMark.settled(relay, upstream).heads
        request = (
            b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/y HTTP/1.1\r\nHost: a\r\nX-Partial: "
        )
        result = exchange(relay.port, request)
        assert_served(result, index=0)
        assert len(result.responses) == 2, (
            f"{len(result.responses)} responses in {result.seconds:.1f} s: {result.data[-300:]!r}"
        )
        assert_refusal(result, 408, "timeout_error", index=1)
        assert result.seconds < 8, f"closed only after {result.seconds:.1f} s"
        assert [h.target for h in upstream.heads[before:]] == [b"/v1/x"]

    def test_then_the_relay_still_serves_and_holds_no_more_fds(
        self, relay: RelayProcess, upstream: RecordingUpstream, group_start: GroupStart
    ) -> None:
        """After the group: a normal stream relays byte for byte, descriptors are flat,
        and none of the group's refused bytes reached upstream."""
        check_group_end(relay, upstream, group_start)


class TestTargetsAndVersions:
    """Only origin-form and http(s) absolute-form targets, only HTTP/1.0 and 1.1."""

    @pytest.mark.parametrize(
        "request_line",
        [
            b"POST ftp://evil.example/v1/x HTTP/1.1",
            b"GET v1/x HTTP/1.1",
            b"OPTIONS * HTTP/1.1",
        ],
        ids=["ftp-absolute", "relative-path", "asterisk"],
    )
    def test_target_that_is_not_a_path_is_refused(
        self, relay: RelayProcess, upstream: RecordingUpstream, request_line: bytes
    ) -> None:
        """A non-http absolute target, a relative path, or `*`: 400, close, nothing
        upstream."""
        request = request_line + b"\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        refused_untouched(relay, upstream, request)

    def test_connect_is_refused_with_405(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """CONNECT (a tunnel request) gets 405 (invalid_request_error), close, nothing
        upstream; the bytes after the head never become a tunnel."""
        request = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
        refused_untouched(relay, upstream, request + serves_request(), status=405)

    def test_http2_request_line_gets_505(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """`GET /v1/x HTTP/2.0` on the HTTP/1 listener: 505 (invalid_request_error),
        close, nothing upstream."""
        refused_untouched(relay, upstream, b"GET /v1/x HTTP/2.0\r\nHost: a\r\n\r\n", status=505)

    def test_refusals_leave_no_active_stream_and_only_real_version_labels(
        self, relay: RelayProcess
    ) -> None:
        """After the CONNECT and HTTP/2.0 refusals, /metrics shows no stream still
        active, and every `http_version` label is one of 1.0, 1.1, 2, 3."""
        assert metric_samples(metrics_text(relay), ACTIVE_STREAMS), f"no {ACTIVE_STREAMS}"
        try:
            wait_for(lambda: active_streams(relay) == 0, timeout=5)
        except TimeoutError:
            raise AssertionError(
                f"streams still active: {metric_samples(metrics_text(relay), ACTIVE_STREAMS)}"
            ) from None
        labels = {
            line.split('http_version="', 1)[1].split('"', 1)[0]
            for line in metrics_text(relay).splitlines()
            if 'http_version="' in line
        }
        assert labels <= HTTP_VERSION_LABELS, sorted(labels - HTTP_VERSION_LABELS)

    @pytest.mark.parametrize(
        ("target", "origin_form"),
        [
            (b"http://evil.example/v1/x", b"/v1/x"),
            (b"HTTPS://evil.example:8443/v1/x?beta=true", b"/v1/x?beta=true"),
        ],
        ids=["http", "https-with-port-and-query"],
    )
    def test_absolute_form_reaches_upstream_as_origin_form(
        self,
        relay: RelayProcess,
        upstream: RecordingUpstream,
        target: bytes,
        origin_form: bytes,
    ) -> None:
        """An http(s) absolute-form target is accepted; upstream sees only its path (and
        query), and never the client's authority."""
        before = UpstreamMark.settled(relay, upstream).requests
        request = b"POST %s HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 5\r\n\r\nhello"
        result = exchange(relay.port, request % target, responses=1, methods=[b"POST"])
        assert_served(result)
        [got] = upstream.requests[before:]
        assert got.target == origin_form
        assert got.values(b"host") == [f"127.0.0.1:{upstream.port}".encode()]
        assert b"evil.example" not in upstream.everything()

    def test_then_the_relay_still_serves_and_holds_no_more_fds(
        self, relay: RelayProcess, upstream: RecordingUpstream, group_start: GroupStart
    ) -> None:
        """After the group: a normal stream relays byte for byte, descriptors are flat,
        and none of the group's refused bytes reached upstream."""
        check_group_end(relay, upstream, group_start)


class TestRequestThatClosesTheConnection:
    """A request that ends the connection (`Connection: close`, or HTTP/1.0) is still
    answered when more bytes follow it; the bytes after it are ignored (RFC 9112 9.6).
    (Found by the fuzzer: such input used to get a 400 instead of the answer.)"""

    @pytest.mark.parametrize(
        "version",
        [b"1.1\r\nConnection: close", b"1.0"],
        ids=["connection-close", "http10"],
    )
    def test_request_is_answered_and_what_follows_never_reaches_upstream(
        self, relay: RelayProcess, upstream: RecordingUpstream, version: bytes
    ) -> None:
        """GET marked close, then a pipelined GET: the first gets upstream's stream
        byte for byte, the relay closes, and only the first reaches upstream."""
        before = UpstreamMark.settled(relay, upstream).heads
        request = b"GET /v1/closing HTTP/%s\r\nHost: a\r\n\r\n" % version
        result = exchange(relay.port, request + b"GET /v1/after HTTP/1.1\r\nHost: a\r\n\r\n")
        assert_served(result)
        assert len(result.responses) == 1 and result.closed, result.data[-300:]
        assert [h.target for h in upstream.heads[before:]] == [b"/v1/closing"]

    def test_refusal_of_a_head_request_carries_no_body(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """A HEAD request the relay refuses (Content-Length with Transfer-Encoding) gets
        a 400 without content (RFC 9110 9.3.2): a strict client reading the answer to
        its HEAD finds no stray bytes after the head."""
        before = UpstreamMark.settled(relay, upstream)
        request = b"HEAD /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        request += b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        result = exchange(relay.port, request, responses=1, methods=[b"HEAD"])
        assert result.parse_error is None, (result.parse_error, result.data)
        assert [r.status for r in result.responses] == [400], result.data
        assert result.responses[0].body == b"" and result.closed
        assert_upstream_untouched(upstream, before)

    def test_then_the_relay_still_serves_and_holds_no_more_fds(
        self, relay: RelayProcess, upstream: RecordingUpstream, group_start: GroupStart
    ) -> None:
        """After the group: a normal stream relays byte for byte, descriptors are flat,
        and none of the group's refused bytes reached upstream."""
        check_group_end(relay, upstream, group_start)


def log_lines(relay: RelayProcess) -> list[dict[str, object]]:
    """The relay's log, one JSON object per line."""
    return [json.loads(line) for line in relay.stderr_text.splitlines() if line.strip()]


def logged_with(relay: RelayProcess, path: str, needle: str) -> bool:
    """Whether a log line about `path` carries `needle` (in any field)."""
    return any(
        path in json.dumps(entry) and needle in json.dumps(entry) for entry in log_lines(relay)
    )


class TestUpstreamStaysInternal:
    """Clients are never told where upstream is; the relay's log still says it."""

    @pytest.fixture
    def dead_upstream_relay(self) -> Iterator[tuple[RelayProcess, int]]:
        port = closed_port()
        with RelayProcess(f"http://127.0.0.1:{port}", "--retry-attempts", "1") as proc:
            yield proc, port

    def test_502_for_an_unreachable_upstream_names_no_address(
        self, dead_upstream_relay: tuple[RelayProcess, int]
    ) -> None:
        """Upstream refuses connections: the client's 502 (Messages API error JSON)
        contains neither upstream's host:port nor `http://`, while the relay's log line
        for the request has the address; no descriptor is left behind."""
        relay, port = dead_upstream_relay
        baseline = fd_count(relay.proc.pid)
        result = exchange(relay.port, serves_request(), responses=1, methods=[b"POST"])
        assert result.complete and result.complete[0].status == 502, result.data[:300]
        response = result.complete[0]
        assert response.json()["type"] == "error", response.body
        address = f"127.0.0.1:{port}".encode()
        for leak in (address, b"http://"):
            assert leak not in result.data, f"{leak!r} in {result.data!r}"
        assert str(port) not in response.json()["error"]["message"], response.body
        wait_for(lambda: logged_with(relay, "/v1/messages", address.decode()), timeout=5)
        wait_for_fds(relay, baseline)

    @pytest.mark.parametrize("failure", ["drop_after", "truncate_after"])
    def test_mid_stream_error_frame_names_no_address(self, sim: SimServer, failure: str) -> None:
        """Upstream dies after 3 events: the `event: error` frame the client gets names
        no upstream URL or port, while the relay's log line for the request has the
        address."""
        with RelayProcess(sim.url) as relay:
            status, _, data = raw_stream(relay.url, headers=script(**{failure: 3}))
            assert status == 200
            error = single_error_frame(data)
            message = json.dumps(error)
            address = f"127.0.0.1:{sim.port}"
            for leak in (address, "http://", str(sim.port)):
                assert leak not in message, f"{leak!r} in {message}"
            for leak in (address, "http://"):
                assert leak.encode() not in data, f"{leak!r} in the response"
            wait_for(lambda: logged_with(relay, "/v1/messages", address), timeout=5)
