"""Which headers cross the relay, per RFC 9110 section 7.6.1 (hop-by-hop fields)."""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[bytes, bytes]]

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        # Not hop-by-hop in the RFC, but each connection negotiates its own 100-continue.
        b"expect",
        # Host names this hop's server; the relay sets upstream's authority itself.
        b"host",
    }
)


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def end_to_end(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Drop hop-by-hop headers (and any header the Connection header names).

    Names must already be lower-case (h11 and h2 both deliver them so).
    """
    headers = list(headers)
    named = _connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers
        if name not in _HOP_BY_HOP and name not in named and not name.startswith(b"proxy-")
    ]


def relayed_response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """Upstream's response headers as clients get them: end to end, and without Alt-Svc,
    which names upstream's alternative services, not the relay's."""
    return [(name, value) for name, value in end_to_end(headers) if name != b"alt-svc"]


def upstream_request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    authority: bytes,
    client_ip: str | None,
    identity_encoding: bool,
) -> Headers:
    """Client request headers as upstream should see them.

    Host is set to upstream's authority, the client address is appended to
    x-forwarded-for, and requests that can stream ask for an uncompressed body
    because keepalives cannot be injected into a compressed one.
    """
    out: Headers = [(b"host", authority)]
    forwarded: list[bytes] = []
    for name, value in end_to_end(headers):
        if name == b"x-forwarded-for":
            forwarded.append(value)
        elif name == b"accept-encoding" and identity_encoding:
            continue
        else:
            out.append((name, value))
    if client_ip is not None:
        forwarded.append(client_ip.encode())
    if forwarded:
        out.append((b"x-forwarded-for", b", ".join(forwarded)))
    if identity_encoding:
        out.append((b"accept-encoding", b"identity"))
    return out


def split_request_fields(
    fields: Iterable[tuple[bytes, bytes]],
) -> tuple[bytes, bytes, Headers, int]:
    """An HTTP/2 or HTTP/3 request's fields as (method, target, headers, size).

    Pseudo-headers are taken out; cookies, which those versions split into one field
    per cookie, are joined into the one line HTTP/1.1 wants; size counts 32 bytes of
    overhead per field, as SETTINGS_MAX_HEADER_LIST_SIZE does (RFC 9113 6.5.2).
    """
    method = target = b""
    headers: Headers = []
    cookies: list[bytes] = []
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + 32
        if name == b":method":
            method = value
        elif name == b":path":
            target = value
        elif name == b"cookie":
            cookies.append(value)
        elif not name.startswith(b":"):
            headers.append((name, value))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    return method, target, headers, size


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a (lower-case) header, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None
