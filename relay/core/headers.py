"""Which headers cross the relay, per RFC 9110 section 7.6.1 (hop-by-hop fields)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

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
        if name.startswith(b"relay-"):
            continue  # the relay's own (relay-resumable): for this hop only
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


class RequestFields(NamedTuple):
    """An HTTP/2 or HTTP/3 request's fields, split for the core."""

    method: bytes
    target: bytes
    headers: Headers
    #: Bytes with 32 bytes of overhead per field, as SETTINGS_MAX_HEADER_LIST_SIZE counts.
    size: int
    #: Why the pseudo-header fields make the request malformed (RFC 9113 8.3), if they do.
    malformed: str | None


_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})


def split_request_fields(fields: Iterable[tuple[bytes, bytes]]) -> RequestFields:
    """An HTTP/2 or HTTP/3 request's fields, pseudo-headers taken out and checked.

    Cookies, which those versions split into one field per cookie, are joined into the
    one line HTTP/1.1 wants. A malformed request is a stream error, not a connection
    one (RFC 9113 8.1.1), so the problem is returned for the adapter to answer.
    """
    pseudo: dict[bytes, bytes] = {}
    headers: Headers = []
    cookies: list[bytes] = []
    size = 0
    malformed: str | None = None
    for name, value in fields:
        size += len(name) + len(value) + 32
        if name.startswith(b":"):
            if name not in _REQUEST_PSEUDO or name in pseudo or headers or cookies:
                malformed = f"pseudo-header {name.decode(errors='replace')!r} is misplaced"
            pseudo[name] = value
        elif name == b"cookie":
            cookies.append(value)
        else:
            headers.append((name, value))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    method = pseudo.get(b":method", b"")
    required = (b":method",) if method == b"CONNECT" else (b":method", b":scheme", b":path")
    missing = [name.decode() for name in required if not pseudo.get(name)]
    if missing and malformed is None:
        malformed = f"the request has no {', '.join(missing)}"
    return RequestFields(method, pseudo.get(b":path", b""), headers, size, malformed)


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a (lower-case) header, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None
