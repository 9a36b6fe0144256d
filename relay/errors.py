"""Failures as values: each knows its HTTP status and the API error type to answer with.

Every refusal or upstream failure the relay reports to a client is one of these, and
`render_error_body` is the one place that renders the Messages API's JSON error shape.
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

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamUnavailable(RelayError):
    """Connecting to upstream failed, or it closed before sending a response head."""

    status = 502


class UpstreamTimeout(RelayError):
    """Upstream did not connect or answer within the configured timeout."""

    status = 504
    error_type = "timeout_error"


class UpstreamLost(RelayError):
    """Upstream died after the response started (reset, truncation, read timeout)."""

    status = 502


class BadRequest(RelayError):
    """The client sent something that is not HTTP we can relay."""

    status = 400
    error_type = "invalid_request_error"
    retryable = False
    close_connection = True


def new_request_id() -> str:
    """A request id of the relay's own, for answers that never reached upstream."""
    return "req_relay_" + secrets.token_hex(12)


def render_error_body(error_type: str, message: str) -> bytes:
    """The Messages API error shape: {"type":"error","error":{"type":T,"message":M}}."""
    payload = {"type": "error", "error": {"type": error_type, "message": message}}
    return json.dumps(payload, separators=(",", ":")).encode()


def error_frame(error_type: str, message: str) -> bytes:
    """An SSE `event: error` frame, exactly as the API sends one mid-stream."""
    return b"event: error\ndata: " + render_error_body(error_type, message) + b"\n\n"
