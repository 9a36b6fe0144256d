"""Failures as values: each knows its HTTP status and the API error type to answer with.

Every refusal or upstream failure the relay reports to a client is one of these, and
`render_error_body` is the one place that renders the Messages API's JSON error shape
(relay/core/providers.py renders the other providers' shapes).
"""

from __future__ import annotations

import json
import secrets


class RelayError(Exception):
    """A failure the relay answers itself, in the API's own error format."""

    status: int = 502
    error_type: str = "api_error"
    #: Safe for the client to retry: sent as `x-should-retry: true` so SDKs retry.
    retryable: bool = True
    #: The connection cannot carry another request after this answer.
    close_connection: bool = False
    #: The relay itself may try upstream again (only before the client saw a byte).
    transparent_retry: bool = False
    #: Seconds for a `retry-after` header, when the answer should carry one.
    retry_after: int | None = None
    #: What went wrong, as the `kind` label of sse_relay_upstream_errors_total.
    kind: str = "lost"

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        #: What the client is told: never an internal address.
        self.message = message
        #: What only the log gets: which upstream, the library's own words.
        self.detail = detail

    @property
    def logged(self) -> str:
        """The message with its detail, for the relay's own log."""
        return self.message if self.detail is None else f"{self.message} ({self.detail})"


class UpstreamUnavailable(RelayError):
    """Connecting to upstream failed, or it closed before sending a response head.

    Nothing reached the client yet, so the relay may retry transparently.
    """

    status = 502
    transparent_retry = True
    kind = "unavailable"


class UpstreamCertificateError(UpstreamUnavailable):
    """Upstream's certificate failed verification: a configuration fault, not transient."""

    retryable = False
    transparent_retry = False
    kind = "certificate"


class UpstreamTimeout(RelayError):
    """Upstream did not answer within the read timeout."""

    status = 504
    error_type = "timeout_error"
    kind = "read_timeout"


class ConnectTimeout(UpstreamTimeout):
    """Upstream did not accept a connection in time: nothing was sent, so retry is free."""

    transparent_retry = True
    kind = "connect_timeout"


class UpstreamLost(RelayError):
    """Upstream died after the response started (reset, truncation, read timeout)."""

    status = 502


class BadRequest(RelayError):
    """The client sent something that is not HTTP we can relay."""

    status = 400
    error_type = "invalid_request_error"
    retryable = False
    close_connection = True


class ParamDenied(RelayError):
    """The body policy refuses a request param; nothing was forwarded."""

    status = 400
    error_type = "invalid_request_error"
    retryable = False


class BodyTooLarge(RelayError):
    """The request body exceeds the relay's limit."""

    status = 413
    error_type = "request_too_large"
    retryable = False
    close_connection = True


class HeadersTooLarge(BadRequest):
    """The request head exceeds the relay's limit."""

    status = 431


class StreamNotFound(RelayError):
    """No resumable stream by that id for this caller (unknown, expired, or another
    caller's: all look the same, so that ids cannot be probed)."""

    status = 404
    error_type = "not_found_error"
    retryable = False


class HeaderTimeout(RelayError):
    """The request head did not arrive in time (slowloris)."""

    status = 408
    error_type = "timeout_error"
    retryable = False
    close_connection = True


class BodyTimeout(HeaderTimeout):
    """The request body stalled before upstream answered (--body-timeout)."""


class MethodNotAllowed(BadRequest):
    """A method a Messages API relay never forwards (CONNECT)."""

    status = 405


class VersionNotSupported(BadRequest):
    """An HTTP/1 request line naming a version other than 1.0 or 1.1."""

    status = 505


class Overloaded(RelayError):
    """The relay is at its stream limit, or draining for a restart."""

    status = 503
    error_type = "overloaded_error"
    retry_after = 1


def upstream_failure(message: str, detail: str, *, head_seen: bool) -> RelayError:
    """How an upstream failure reaches the core, for HTTP/1.1 and HTTP/2 alike: free to
    retry until a response head arrived."""
    kind = UpstreamLost if head_seen else UpstreamUnavailable
    return kind(message, detail)


def new_request_id() -> str:
    """A request id of the relay's own, for answers that never reached upstream."""
    return "req_relay_" + secrets.token_hex(12)


def render_error_body(error_type: str, message: str) -> bytes:
    """The Messages API error shape: {"type":"error","error":{"type":T,"message":M}}."""
    payload = {"type": "error", "error": {"type": error_type, "message": message}}
    return json.dumps(payload, separators=(",", ":")).encode()


def error_response(
    error: RelayError, request_id: str, body: bytes | None = None
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of the relay's own answer for `error`, in the Messages API's
    shape unless `body` is given (another provider's, relay/core/providers.py)."""
    if body is None:
        body = render_error_body(error.error_type, error.message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", request_id.encode()),
        (b"x-should-retry", b"true" if error.retryable else b"false"),
    ]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if error.close_connection:
        headers.append((b"connection", b"close"))
    return headers, body


def error_frame(error_type: str, message: str) -> bytes:
    """An SSE `event: error` frame, exactly as the API sends one mid-stream."""
    return b"event: error\ndata: " + render_error_body(error_type, message) + b"\n\n"
