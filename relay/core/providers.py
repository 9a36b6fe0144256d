"""The provider table: which streaming API a request speaks, and what that means for it.

Sans-IO. One `Provider` per kind of stream says how it is recognised (request path; its
guard and keepalives apply only to a `text/event-stream` response), what a complete
stream ends with (as relay.sse.marks bits the scanner sets), the JSON error shape of the
relay's own answers and mid-stream error frames in the form that provider's official SDKs
raise as their typed API error, and which keepalive its SDKs' parsers take unharmed.
A stream no entry recognises is `UNKNOWN`: bytes forwarded with keepalives, no
truncation guard, errors in the Messages API's shape (the relay's default).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from relay.core.errors import error_frame, render_error_body
from relay.sse.marks import (
    DATA_ERROR,
    DONE,
    ERROR_EVENT,
    FINISH_REASON,
    MESSAGE_START,
    MESSAGE_STOP,
    RESPONSE_END,
)

#: Renders one error: (error type, message, HTTP status) -> bytes.
Render = Callable[[str, str, int], bytes]

# A blank line: no SSE parser dispatches anything for it, and it is the only keepalive
# google-genai's parser takes (it reads every line that is neither blank nor `data: ` as
# raw JSON, so a comment fails it with UnknownApiResponseError).
BLANK_LINE = b"\n"
# The Messages SDKs skip `ping` events before decoding their data, so a half-sent frame
# renamed to ping is dropped instead of failing JSON decoding.
_PING_RENAME = b"event: ping\n\n"


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _anthropic_body(error_type: str, message: str, status: int) -> bytes:
    return render_error_body(error_type, message)


def _anthropic_frame(error_type: str, message: str, status: int) -> bytes:
    return error_frame(error_type, message)


def _openai_error(error_type: str, message: str) -> dict[str, Any]:
    # The SDKs read message, type, param and code; the relay's error type is the type.
    return {"message": message, "type": error_type, "param": None, "code": None}


def _openai_body(error_type: str, message: str, status: int) -> bytes:
    return _json({"error": _openai_error(error_type, message)})


def _openai_frame(error_type: str, message: str, status: int) -> bytes:
    # A data line with an `error` key: openai (Python, legacy streams) raises APIError,
    # openai (node) throws APIError, before either decodes it as a chunk.
    return b"data: " + _openai_body(error_type, message, status) + b"\n\n"


def _responses_frame(error_type: str, message: str, status: int) -> bytes:
    # The Responses API's own `error` event, plus the `error` key the SDKs raise on
    # (without it they would yield the event as data and go on waiting).
    error = _openai_error(error_type, message)
    payload = {"type": "error", "code": None, "message": message, "param": None, "error": error}
    return b"event: error\ndata: " + _json(payload) + b"\n\n"


# Google's canonical status for an HTTP status, as the Gemini API names them.
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    431: "INVALID_ARGUMENT",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _gemini_body(error_type: str, message: str, status: int) -> bytes:
    google = _GOOGLE_STATUS.get(status, "INVALID_ARGUMENT" if status < 500 else "INTERNAL")
    return _json({"error": {"code": status, "message": message, "status": google}})


def _gemini_frame(error_type: str, message: str, status: int) -> bytes:
    # google-genai raises ClientError/ServerError (APIError) for a chunk that starts
    # with `{"error":`, by the code in it.
    return b"data: " + _gemini_body(error_type, message, status) + b"\n\n"


@dataclass(frozen=True, slots=True)
class Provider:
    """One kind of stream: what the relay must know to end it and answer for it."""

    #: The `provider` label and log field, and the `[[route]]` `provider` value.
    name: str
    #: Request paths (query left out) ending with one of these are this provider's.
    path_suffixes: tuple[str, ...]
    #: What `ending` is, for the truncation error's message.
    ending_name: str
    #: Marks of which any one ends a complete stream: the terminal event, or upstream's
    #: own error (then nothing the relay adds would be news).
    ends: int
    #: Marks that must have been seen before a clean end can be a truncation; None: no
    #: truncation guard at all (an unknown stream).
    started_by: int | None
    #: Data-line marks the scanner is to watch for this stream (they cost a little).
    watch: int
    render_body: Render
    render_frame: Render
    #: The keepalive its SDKs take unharmed; None: the configured one (--keepalive-frame).
    keepalive: bytes | None
    #: What ends a frame upstream left half-sent, before the error frame.
    discard_partial: bytes

    @property
    def truncation_reason(self) -> str:
        return f"the stream ended without {self.ending_name}"

    def keepalive_frame(self, configured: bytes) -> bytes:
        return configured if self.keepalive is None else self.keepalive

    def truncated(self, marks: int) -> bool:
        """A clean end with these marks seen is a truncated stream."""
        started = self.started_by
        return started is not None and marks & started == started and not marks & self.ends

    def ended(self, marks: int) -> bool:
        """Upstream already sent its last word (the terminal marker or its own error)."""
        return bool(marks & self.ends)


ANTHROPIC = Provider(
    name="anthropic",
    path_suffixes=("/v1/messages",),
    ending_name="message_stop",
    ends=MESSAGE_STOP | ERROR_EVENT,
    started_by=MESSAGE_START,
    watch=0,
    render_body=_anthropic_body,
    render_frame=_anthropic_frame,
    keepalive=None,
    discard_partial=_PING_RENAME,
)
# OpenAI's parsers decode every event's data as a chunk, pings included, so only a
# comment is a safe keepalive, and a half-sent frame cannot be dropped: it is ended
# (the SDK fails decoding it, loudly) and the error frame follows.
OPENAI_CHAT = Provider(
    name="openai-chat",
    path_suffixes=("/chat/completions",),
    ending_name="data: [DONE]",
    ends=DONE | DATA_ERROR,
    started_by=0,
    watch=DONE | DATA_ERROR,
    render_body=_openai_body,
    render_frame=_openai_frame,
    keepalive=b": keepalive\n\n",
    discard_partial=b"\n",
)
# The legacy completions stream: the same wire format as chat's.
OPENAI_COMPLETIONS = replace(
    OPENAI_CHAT, name="openai-completions", path_suffixes=("/completions",)
)
OPENAI_RESPONSES = Provider(
    name="openai-responses",
    path_suffixes=("/responses",),
    ending_name="response.completed, response.failed, response.incomplete or error",
    ends=RESPONSE_END | ERROR_EVENT,
    started_by=0,
    watch=0,
    render_body=_openai_body,
    render_frame=_responses_frame,
    keepalive=b": keepalive\n\n",
    discard_partial=b"\n",
)
GEMINI = Provider(
    name="gemini",
    path_suffixes=(":streamGenerateContent", ":generateContent"),
    ending_name="a candidate with finishReason",
    ends=FINISH_REASON | DATA_ERROR,
    started_by=0,
    watch=FINISH_REASON | DATA_ERROR,
    render_body=_gemini_body,
    render_frame=_gemini_frame,
    keepalive=BLANK_LINE,
    discard_partial=b"\n",
)
UNKNOWN = Provider(
    name="unknown",
    path_suffixes=(),
    ending_name="",
    ends=MESSAGE_STOP | ERROR_EVENT,
    started_by=None,
    watch=0,
    render_body=_anthropic_body,
    render_frame=_anthropic_frame,
    keepalive=None,
    discard_partial=_PING_RENAME,
)

#: Every provider by name, in the order paths are matched (chat before completions).
PROVIDERS = {
    p.name: p for p in (ANTHROPIC, OPENAI_CHAT, OPENAI_COMPLETIONS, OPENAI_RESPONSES, GEMINI)
}
#: The `provider` label's values: bounded, whatever clients send.
PROVIDER_NAMES = (*PROVIDERS, UNKNOWN.name)


def parse_provider(value: str) -> Provider:
    """A `[[route]]` `provider` value; ValueError names the accepted ones. `unknown`
    turns the guard off, for an OpenAI-compatible upstream that never sends `[DONE]`."""
    provider = UNKNOWN if value == UNKNOWN.name else PROVIDERS.get(value)
    if provider is None:
        raise ValueError(f"expected one of {', '.join(PROVIDER_NAMES)}, got {value!r}")
    return provider


def provider_for(target: bytes, forced: Provider | None = None) -> Provider:
    """The provider of a request to `target` (path and query), unless a route forced one."""
    if forced is not None:
        return forced
    path = target.partition(b"?")[0].decode("latin-1")
    for provider in PROVIDERS.values():
        if path.endswith(provider.path_suffixes):
            return provider
    return UNKNOWN
