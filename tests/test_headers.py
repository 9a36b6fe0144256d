"""Hop-by-hop rules (RFC 9110 section 7.6.1) and what upstream is sent."""

from __future__ import annotations

from relay.core.headers import (
    end_to_end,
    relayed_response_headers,
    split_request_fields,
    upstream_request_headers,
)


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    headers = [
        (b"connection", b"keep-alive, X-Custom-Hop"),
        (b"x-custom-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"proxy-authorization", b"Basic x"),
        (b"proxy-foo", b"bar"),
        (b"anthropic-beta", b"a,b"),
        (b"x-api-key", b"sk"),
    ]
    assert end_to_end(headers) == [(b"anthropic-beta", b"a,b"), (b"x-api-key", b"sk")]


def test_upstream_headers_set_host_append_forwarded_for_and_ask_identity() -> None:
    out = upstream_request_headers(
        [
            (b"host", b"relay.local"),
            (b"authorization", b"Bearer k"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"accept-encoding", b"gzip"),
        ],
        authority=b"api.example:8443",
        client_ip="10.0.0.5",
        identity_encoding=True,
    )
    assert out == [
        (b"host", b"api.example:8443"),
        (b"authorization", b"Bearer k"),
        (b"x-forwarded-for", b"1.2.3.4, 10.0.0.5"),
        (b"accept-encoding", b"identity"),
    ]


def test_accept_encoding_is_kept_for_requests_that_cannot_stream() -> None:
    out = upstream_request_headers(
        [(b"accept-encoding", b"gzip")],
        authority=b"u",
        client_ip=None,
        identity_encoding=False,
    )
    assert out == [(b"host", b"u"), (b"accept-encoding", b"gzip")]


def test_h2_h3_fields_lose_pseudo_headers_and_rejoin_cookies() -> None:
    fields = [
        (b":method", b"POST"),
        (b":path", b"/v1/messages?beta=true"),
        (b":authority", b"relay"),
        (b"cookie", b"a=1"),
        (b"x-api-key", b"sk"),
        (b"cookie", b"b=2"),
    ]
    method, target, headers, size, _ = split_request_fields(fields)
    assert (method, target) == (b"POST", b"/v1/messages?beta=true")
    assert headers == [(b"x-api-key", b"sk"), (b"cookie", b"a=1; b=2")]
    assert size == sum(len(n) + len(v) + 32 for n, v in fields)


def test_upstreams_alt_svc_never_reaches_clients() -> None:
    upstream = [(b"content-type", b"text/event-stream"), (b"alt-svc", b'h3=":443"')]
    assert relayed_response_headers(upstream) == [(b"content-type", b"text/event-stream")]
