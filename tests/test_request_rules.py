"""The one rule for what goes upstream (relay/core/request_rules.py), and how HTTP/2 and
HTTP/3 pseudo-headers are checked (relay/core/headers.py), without sockets."""

from __future__ import annotations

import pytest

from relay.core.errors import BadRequest, MethodNotAllowed, RelayError
from relay.core.exchange import RequestHead
from relay.core.headers import split_request_fields
from relay.core.request_rules import check_request, declared_length
from relay.edge.h2_guard import RateLimit


def head(
    target: bytes = b"/v1/messages",
    headers: list[tuple[bytes, bytes]] | None = None,
    method: bytes = b"POST",
    version: str = "2",
) -> RequestHead:
    return RequestHead(method, target, headers or [], None, http_version=version)


def refusal(request: RequestHead) -> RelayError:
    with pytest.raises(RelayError) as caught:
        check_request(request)
    return caught.value


def test_a_normal_request_passes() -> None:
    check_request(head(headers=[(b"x-api-key", b"sk-1"), (b"content-length", b"12")]))


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/x y",
        b"http://evil.example/v1/x",
        b"ftp://evil.example/v1/x",
        b"v1/x",
        b"*",
        b"",
        b"/v1/x#frag",
    ],
)
def test_targets_other_than_origin_form_get_400(target: bytes) -> None:
    error = refusal(head(target))
    assert type(error) is BadRequest and "path" in error.message


def test_connect_gets_405() -> None:
    error = refusal(head(b"evil.example:443", method=b"CONNECT"))
    assert type(error) is MethodNotAllowed and error.status == 405


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        (b"x;y", b"1", "x;y"),
        (b"X-Upper", b"1", "X-Upper"),
        (b"x-a", b"a\x00b", "x-a"),
        (b"x-a", b"a\rb", "x-a"),
        (b"x-a", b" padded", "x-a"),
    ],
)
def test_fields_http1_cannot_carry_get_400_naming_them(
    name: bytes, value: bytes, says: str
) -> None:
    error = refusal(head(headers=[(name, value)]))
    assert error.status == 400 and says in error.message


def test_a_refused_value_is_never_quoted_it_may_be_a_credential() -> None:
    error = refusal(head(headers=[(b"x-api-key", b"sk-secret\x00")]))
    assert "x-api-key" in error.message and "sk-secret" not in error.message


@pytest.mark.parametrize(
    ("name", "value"),
    [(b"connection", b"keep-alive"), (b"transfer-encoding", b"chunked"), (b"te", b"gzip")],
)
def test_connection_specific_fields_are_malformed_in_http2_and_3(name: bytes, value: bytes) -> None:
    for version in ("2", "3"):
        assert refusal(head(headers=[(name, value)], version=version)).status == 400
    check_request(head(headers=[(name, value)], version="1.1"))  # hop-by-hop, dropped
    check_request(head(headers=[(b"te", b"trailers")]))


def test_content_length_must_be_one_number() -> None:
    assert declared_length(head(headers=[(b"content-length", b"12")])) == 12
    assert declared_length(head()) is None
    for values in ([b"+5"], [b"5a"], [b"5", b"5"], [b"-1"]):
        request = head(headers=[(b"content-length", v) for v in values])
        assert refusal(request).status == 400


def fields(*pairs: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/v1/x"), *pairs]


def test_well_formed_pseudo_headers_are_not_malformed() -> None:
    assert split_request_fields(fields((b":authority", b"a"))).malformed is None
    connect = [(b":method", b"CONNECT"), (b":authority", b"evil.example:443")]
    assert split_request_fields(connect).malformed is None  # refused later, with 405


@pytest.mark.parametrize(
    "block",
    [
        [(b":method", b"POST"), (b":scheme", b"http")],  # no :path
        [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"")],  # empty :path
        fields((b":path", b"/again")),  # duplicate
        [(b":method", b"POST"), (b"x-a", b"1"), (b":scheme", b"http"), (b":path", b"/")],
        fields((b":status", b"200")),  # a response pseudo-header
        fields((b":protocol", b"websocket")),
    ],
)
def test_malformed_pseudo_headers_are_reported(block: list[tuple[bytes, bytes]]) -> None:
    assert split_request_fields(block).malformed is not None


def test_rate_limit_allows_a_burst_then_the_rate() -> None:
    limit = RateLimit(burst=3, rate=2.0, now=0.0)
    assert [limit.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.take(0.5)  # one token back after half a second at 2/s
    assert not limit.take(0.5)
    assert [limit.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped
