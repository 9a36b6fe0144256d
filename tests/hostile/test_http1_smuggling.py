"""HTTP/1.1 request smuggling: a checklist of framing attacks and what the relay does.

Every refusal is a complete HTTP response in the Messages API error shape with
`connection: close`, after which the relay closes the connection, and NOTHING of the
refused request reaches upstream (no head, no byte, no new connection). The recording
upstream parses all it receives with h11, strictly: anything it cannot parse means
the relay forwarded something non-strict. The relay always frames what it sends
upstream itself. Each group (class) ends by checking that the relay still relays a
normal stream byte for byte and holds no more descriptors than when the group began.
"""

from __future__ import annotations

import pytest

from tests.hostile.harness import (
    GroupStart,
    UpstreamMark,
    assert_refusal,
    assert_served,
    check_group_end,
    exchange,
    head_sent_upstream,
    refused_untouched,
)
from tests.hostile.recording_upstream import RecordingUpstream
from tests.relayproc import RelayProcess

# Every group's baseline is taken before its first test.
pytestmark = pytest.mark.usefixtures("group_start")

SMUGGLED_GET = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
# A valid chunked body ("hello"), then a request an upstream that ignored the chunked
# framing would read as its next one.
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED_GET


def post(fields: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    """A POST /v1/x with the given header lines (each ending CRLF) and raw body."""
    return b"POST /v1/x HTTP/%s\r\nHost: a\r\n%s\r\n%s" % (version, fields, body)


class TestContentLengthWithTransferEncoding:
    """CL.TE: a request carrying both framings is refused, whichever comes first."""

    def test_issue_reproduction_cl_te_then_gpost_is_refused(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """The issue's first reproduction (`Content-Length: 6` + chunked, body `0` chunk
        and a stray `G`, then a POST on the same connection): one 400, the connection
        closes, upstream never sees `GPOST` or either request."""
        first = post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG")
        second = post(b"Content-Length: 5\r\n", b"hello")
        refused_untouched(relay, upstream, first + second)
        assert b"GPOST" not in upstream.everything()

    def test_issue_reproduction_cl_te_in_two_writes_is_refused(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """The same reproduction with the second request in a later write: still one
        400 and a close, and nothing upstream."""
        first = post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG")
        second = post(b"Content-Length: 5\r\n", b"hello")
        refused_untouched(relay, upstream, [first, second])
        assert b"GPOST" not in upstream.everything()

    def test_issue_reproduction_te_cl_with_smuggled_get_is_refused(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """The issue's second reproduction (chunked + `Content-Length: 4`, a chunked body
        followed by `GET /smuggled`): 400, close, upstream never sees `/smuggled`."""
        request = post(
            b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            b"1\r\nA\r\n0\r\n\r\n" + SMUGGLED_GET,
        )
        refused_untouched(relay, upstream, request)
        assert b"/smuggled" not in upstream.everything()

    @pytest.mark.parametrize(
        "fields",
        [
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
        ],
        ids=["cl-first", "te-first", "cl-zero"],
    )
    def test_both_framings_in_either_order_are_refused(
        self, relay: RelayProcess, upstream: RecordingUpstream, fields: bytes
    ) -> None:
        """Content-Length and Transfer-Encoding together, in either order: 400, close,
        nothing upstream."""
        refused_untouched(relay, upstream, post(fields, CHUNKED_HELLO))

    def test_then_the_relay_still_serves_and_holds_no_more_fds(
        self, relay: RelayProcess, upstream: RecordingUpstream, group_start: GroupStart
    ) -> None:
        """After the group: a normal stream relays byte for byte, descriptors are flat,
        and none of the group's refused bytes reached upstream."""
        check_group_end(relay, upstream, group_start)


class TestTransferEncodingVariants:
    """TE.CL and TE.TE: any Transfer-Encoding but exactly `chunked` is refused."""

    @pytest.mark.parametrize(
        "fields",
        [
            b"Transfer-Encoding: gzip, chunked\r\n",
            b"Transfer-Encoding: chunked, chunked\r\n",
            b"Transfer-Encoding: identity\r\n",
            b"Transfer-Encoding: xchunked\r\n",
            b"Transfer-Encoding : chunked\r\n",
            b"Transfer-Encoding\t: chunked\r\n",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            b"Content-Length: 4\r\nTransfer-Encoding: xchunked\r\n",
            b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n",
        ],
        ids=[
            "gzip-chunked",
            "chunked-chunked",
            "identity",
            "xchunked",
            "space-before-colon",
            "tab-before-colon",
            "two-te-headers",
            "te-chunked-then-identity",
            "te-cl-xchunked",
            "te-cl-space-before-colon",
        ],
    )
    def test_non_chunked_or_obfuscated_transfer_encoding_is_refused(
        self, relay: RelayProcess, upstream: RecordingUpstream, fields: bytes
    ) -> None:
        """Each variant: 400 in the API error shape, close, nothing upstream."""
        refused_untouched(relay, upstream, post(fields, CHUNKED_HELLO))

    def test_transfer_coding_names_are_case_insensitive(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """`Transfer-Encoding: Chunked` is valid (RFC 9112 7): the request is relayed,
        upstream gets the decoded body re-framed as `transfer-encoding: chunked`, and the
        client gets the stream byte for byte."""
        before = UpstreamMark.settled(relay, upstream).requests
        request = post(
            b"Transfer-Encoding: Chunked\r\nX-Probe: case\r\n", b"5\r\nhello\r\n0\r\n\r\n"
        )
        result = exchange(relay.port, request, responses=1, methods=[b"POST"])
        assert_served(result)
        [got] = upstream.requests[before:]
        assert got.body == b"hello"
        assert got.values(b"transfer-encoding") == [b"chunked"]
        assert got.values(b"content-length") == []

    @pytest.mark.parametrize(
        "fields",
        [
            b"Transfer-Encoding: chunked\t\r\n",
            b"Transfer-Encoding: chunked \r\n",
            b"Transfer-Encoding: chunked \t \r\n",
        ],
        ids=["trailing-tab", "trailing-space", "trailing-mixed-whitespace"],
    )
    def test_whitespace_after_chunked_is_not_part_of_the_value(
        self, relay: RelayProcess, upstream: RecordingUpstream, fields: bytes
    ) -> None:
        """RFC 9110 5.5 excludes trailing whitespace from a field value, so `chunked\t`
        is `chunked`: relayed, and upstream gets the body re-framed by the relay, never
        the client's own framing bytes."""
        before = UpstreamMark.settled(relay, upstream).requests
        request = post(fields, b"5\r\nhello\r\n0\r\n\r\n")
        result = exchange(relay.port, request, responses=1, methods=[b"POST"])
        assert_served(result)
        [got] = upstream.requests[before:]
        assert got.body == b"hello"
        assert got.values(b"transfer-encoding") == [b"chunked"]

    def test_http10_with_transfer_encoding_is_refused(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """HTTP/1.0 has no chunked coding: a 1.0 request with `Transfer-Encoding:
        chunked` gets 400, close, nothing upstream."""
        request = post(b"Transfer-Encoding: chunked\r\n", CHUNKED_HELLO, version=b"1.0")
        refused_untouched(relay, upstream, request)

    def test_then_the_relay_still_serves_and_holds_no_more_fds(
        self, relay: RelayProcess, upstream: RecordingUpstream, group_start: GroupStart
    ) -> None:
        """After the group: a normal stream relays byte for byte, descriptors are flat,
        and none of the group's refused bytes reached upstream."""
        check_group_end(relay, upstream, group_start)


class TestObsFold:
    """Obsolete line folding: refused in a framing header, unfolded elsewhere."""

    @pytest.mark.parametrize(
        ("fields", "body"),
        [
            (b"Transfer-Encoding:\r\n chunked\r\n", CHUNKED_HELLO),
            (b"Transfer-Encoding:\r\n\tchunked\r\n", CHUNKED_HELLO),
            (b"Content-Length:\r\n 5\r\n", b"hello"),
        ],
        ids=["te-space-fold", "te-tab-fold", "cl-fold"],
    )
    def test_folded_framing_header_is_refused(
        self, relay: RelayProcess, upstream: RecordingUpstream, fields: bytes, body: bytes
    ) -> None:
        """A framing header continued on a folded line: 400, close, nothing upstream."""
        refused_untouched(relay, upstream, post(fields, body))

    def test_folded_other_header_reaches_upstream_as_one_line(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """`X-Note: a` folded onto ` b` is accepted; upstream gets one `x-note: a b`
        line and no fold at all."""
        before = UpstreamMark.settled(relay, upstream).requests
        request = b"GET /v1/folded HTTP/1.1\r\nHost: a\r\nX-Note: a\r\n b\r\n\r\n"
        assert_served(exchange(relay.port, request, responses=1))
        [got] = upstream.requests[before:]
        assert got.values(b"x-note") == [b"a b"]
        head = head_sent_upstream(upstream, b"GET /v1/folded ")
        assert b"\r\n " not in head and b"\r\n\t" not in head, head

    def test_then_the_relay_still_serves_and_holds_no_more_fds(
        self, relay: RelayProcess, upstream: RecordingUpstream, group_start: GroupStart
    ) -> None:
        """After the group: a normal stream relays byte for byte, descriptors are flat,
        and none of the group's refused bytes reached upstream."""
        check_group_end(relay, upstream, group_start)


class TestContentLengthValues:
    """Content-Length must be one decimal number; a repeat of the same value is fine."""

    def test_duplicate_equal_content_length_is_forwarded_once(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """`Content-Length: 5` twice is accepted: upstream gets exactly one
        `content-length: 5` and the body."""
        before = UpstreamMark.settled(relay, upstream).requests
        request = post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello")
        assert_served(exchange(relay.port, request, responses=1, methods=[b"POST"]))
        [got] = upstream.requests[before:]
        assert got.values(b"content-length") == [b"5"]
        assert got.values(b"transfer-encoding") == []
        assert got.body == b"hello"

    @pytest.mark.parametrize(
        "fields",
        [
            b"Content-Length: 5\r\nContent-Length: 6\r\n",
            b"Content-Length: +5\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: 5a\r\n",
            b"Content-Length: 0x5\r\n",
        ],
        ids=["differing", "plus", "negative", "trailing-letter", "hex"],
    )
    def test_bad_content_length_is_refused(
        self, relay: RelayProcess, upstream: RecordingUpstream, fields: bytes
    ) -> None:
        """Differing duplicates, a sign, a letter or hex: 400, close, nothing upstream."""
        refused_untouched(relay, upstream, post(fields, b"hello" + SMUGGLED_GET))

    def test_then_the_relay_still_serves_and_holds_no_more_fds(
        self, relay: RelayProcess, upstream: RecordingUpstream, group_start: GroupStart
    ) -> None:
        """After the group: a normal stream relays byte for byte, descriptors are flat,
        and none of the group's refused bytes reached upstream."""
        check_group_end(relay, upstream, group_start)


class TestHeaderBytes:
    """Control bytes inside header values are refused; bare LF line ends are not."""

    @pytest.mark.parametrize(
        "line",
        [b"X-A: a\x00b\r\n", b"X-A: a\rb\r\n", b"X-A: a\nb\r\n"],
        ids=["nul", "bare-cr", "lf"],
    )
    def test_control_byte_in_a_header_value_is_refused(
        self, relay: RelayProcess, upstream: RecordingUpstream, line: bytes
    ) -> None:
        """NUL, a bare CR, or an LF inside a value: 400, close, nothing upstream."""
        refused_untouched(relay, upstream, b"GET /v1/x HTTP/1.1\r\nHost: a\r\n%s\r\n" % line)

    def test_bare_lf_line_endings_reach_upstream_as_crlf(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """A head with bare LF line ends is accepted; upstream's strict parser gets a
        normal CRLF head (no LF without its CR) with the same fields."""
        before = UpstreamMark.settled(relay, upstream).requests
        request = b"GET /v1/bare-lf HTTP/1.1\nHost: a\nX-A: b\n\n"
        assert_served(exchange(relay.port, request, responses=1))
        [got] = upstream.requests[before:]
        assert got.target == b"/v1/bare-lf" and got.values(b"x-a") == [b"b"]
        head = head_sent_upstream(upstream, b"GET /v1/bare-lf ")
        assert head.count(b"\n") == head.count(b"\r\n"), head
        assert not upstream.errors, upstream.errors

    def test_then_the_relay_still_serves_and_holds_no_more_fds(
        self, relay: RelayProcess, upstream: RecordingUpstream, group_start: GroupStart
    ) -> None:
        """After the group: a normal stream relays byte for byte, descriptors are flat,
        and none of the group's refused bytes reached upstream."""
        check_group_end(relay, upstream, group_start)


class TestChunkedBodies:
    """Chunked request bodies: extensions dropped, bad sizes refused, the relay reframes."""

    def test_chunk_extensions_are_accepted_and_not_forwarded(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """`1;ext=1` is a valid chunk: the request is relayed with body `A`, re-framed
        by the relay, and the extension never reaches upstream."""
        before = UpstreamMark.settled(relay, upstream).requests
        request = b"POST /v1/chunk-ext HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        request += b"1;ext=1\r\nA\r\n0\r\n\r\n"
        assert_served(exchange(relay.port, request, responses=1, methods=[b"POST"]))
        [got] = upstream.requests[before:]
        assert got.body == b"A"
        assert got.values(b"transfer-encoding") == [b"chunked"]
        assert b"ext=1" not in upstream.everything()

    @pytest.mark.parametrize(
        ("size", "status", "error_type"),
        [
            (b"zz", 400, "invalid_request_error"),
            (b"00000000000000000000001", 400, "invalid_request_error"),
            (b"ffffffffffffffffff", 413, "request_too_large"),
        ],
        ids=["not-hex", "too-many-digits", "over-64-bits"],
    )
    def test_bad_chunk_size_is_refused_and_no_request_completes_upstream(
        self,
        relay: RelayProcess,
        upstream: RecordingUpstream,
        size: bytes,
        status: int,
        error_type: str,
    ) -> None:
        """An invalid chunk size gets a 400, one past the body limit a 413 at once (not a
        wait for 2**72 bytes), a reset only if a response had already started; the
        connection closes, upstream never receives a complete request built from the
        bad body, and parses all it got strictly."""
        before = UpstreamMark.settled(relay, upstream).requests
        request = b"POST /v1/bad-chunk HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        request += b"%s\r\nA\r\n0\r\n\r\n" % size
        result = exchange(relay.port, request, responses=1, methods=[b"POST"])
        started = [r for r in result.responses if r.status < 300]
        if started and result.reset:
            assert not started[0].complete, "a relayed answer to a request that was refused"
        else:
            assert_refusal(result, status, error_type)
            assert len(result.responses) == 1, [r.status for r in result.responses]
        assert [r.target for r in upstream.requests[before:]] == []
        assert not upstream.errors, upstream.errors

    def test_chunked_body_goes_upstream_chunked_without_content_length(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """A chunked client body reaches upstream as `transfer-encoding: chunked` with no
        content-length, and decodes to the same bytes."""
        before = UpstreamMark.settled(relay, upstream).requests
        request = b"POST /v1/chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        request += b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        assert_served(exchange(relay.port, request, responses=1, methods=[b"POST"]))
        [got] = upstream.requests[before:]
        assert got.values(b"transfer-encoding") == [b"chunked"]
        assert got.values(b"content-length") == []
        assert got.body == b"abcde"

    def test_content_length_body_goes_upstream_with_one_exact_length(
        self, relay: RelayProcess, upstream: RecordingUpstream
    ) -> None:
        """A Content-Length body reaches upstream with exactly one content-length, equal
        to the body's size, and no transfer-encoding."""
        before = UpstreamMark.settled(relay, upstream).requests
        request = b"POST /v1/sized HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
        assert_served(exchange(relay.port, request, responses=1, methods=[b"POST"]))
        [got] = upstream.requests[before:]
        assert got.values(b"content-length") == [b"11"]
        assert got.values(b"transfer-encoding") == []
        assert got.body == b"hello world"

    def test_then_the_relay_still_serves_and_holds_no_more_fds(
        self, relay: RelayProcess, upstream: RecordingUpstream, group_start: GroupStart
    ) -> None:
        """After the group: a normal stream relays byte for byte, descriptors are flat,
        and none of the group's refused bytes reached upstream."""
        check_group_end(relay, upstream, group_start)
