"""Which client requests the relay forwards: one rule for every HTTP version.

h11 checks HTTP/1.1 syntax as it parses, but HTTP/2 and HTTP/3 fields can carry bytes
HTTP/1.1 cannot (a space in `:path`, `;` in a name), and upstream may speak either.
So every request head passes the HTTP/1.1 rules here before anything is sent upstream:
what fails gets a 400 that says why, instead of an exception halfway through writing
the request (which once leaked the upstream connection it had taken).
"""

from __future__ import annotations

import re

from relay.core.errors import BadRequest, MethodNotAllowed
from relay.core.exchange import RequestHead

# RFC 9110 5.6.2 token; field values as RFC 9110 5.5 (no CTL, no outer whitespace).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")
# Origin-form (RFC 9112 3.2.1): the only target a Messages API upstream is sent. It
# has no fragment: a `#` is where two parsers start to disagree on the path.
_ORIGIN_FORM = re.compile(rb"/[\x21-\x22\x24-\x7e]*")
# Meaningless in HTTP/2 and HTTP/3, so a request carrying one is malformed (RFC 9113
# 8.2.2, RFC 9114 4.2); in HTTP/1.1 they are hop-by-hop and dropped.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_MULTIPLEXED = frozenset({"2", "3"})


def declared_length(head: RequestHead) -> int | None:
    """The body length the client declared (Content-Length), or None."""
    values = [value for name, value in head.headers if name == b"content-length"]
    if not values:
        return None
    if len(values) > 1 or not values[0].isdigit():
        raise BadRequest("content-length must be one decimal number")
    return int(values[0])


def check_request(head: RequestHead) -> None:
    """Raise the error to answer with when `head` must not go upstream as it is."""
    if head.method == b"CONNECT":
        raise MethodNotAllowed("CONNECT is not relayed: sse-relay is not a tunnel")
    if not _TOKEN.fullmatch(head.method.lower()):
        raise BadRequest("the request method is not a valid HTTP token")
    if not _ORIGIN_FORM.fullmatch(head.target):
        raise BadRequest(
            'the request target must be a path ("/...") of visible ASCII, with no fragment'
        )
    multiplexed = head.http_version in _MULTIPLEXED
    for name, value in head.headers:
        if not _TOKEN.fullmatch(name):
            shown = name.decode("ascii", "backslashreplace")[:64]
            raise BadRequest(f"header name {shown!r} is not a valid lower-case HTTP token")
        if not _FIELD_VALUE.fullmatch(value):
            # The value itself stays out of the answer: it may be a credential.
            raise BadRequest(f"header {name.decode()!r} has a value HTTP/1.1 cannot carry")
        if multiplexed and (
            name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers")
        ):
            raise BadRequest(f"header {name.decode()!r} is not allowed in HTTP/{head.http_version}")
    declared_length(head)
