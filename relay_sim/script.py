"""What the simulated Messages API sends, and when: the scenario and the player (the
turn's content, its frames and message, is `relay_sim.turn`).

Nothing here knows about HTTP/1.1 or HTTP/2: the player drives a `Sink`, which each
transport implements. Every byte a response carries depends only on the request body and
the script, so a stream fetched directly and one fetched through a relay can be compared
byte for byte.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from relay_sim.turn import Turn, compact, render

PING_DATA = '{"type": "ping"}'
OVERLOADED_DATA = (
    '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
)
BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark

_LINE_ENDINGS = ("\n", "\r\n", "\r")
_WBITS = {"gzip": 31, "deflate": 15}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _number(name: str, value: object, *, integer: bool = False) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a non-negative {kind}, got {value!r}")
    return value


def _pair(name: str, value: object) -> tuple[int, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{name} must be [after_event_index, seconds], got {value!r}")
    return int(_number(name, value[0], integer=True)), float(_number(name, value[1]))


@dataclass(frozen=True)
class SimScript:
    """One response's scenario. Event indexes count SSE events from 0 (pings excluded).

    Sequences given as lists (as JSON has them) are normalised to tuples.
    """

    thinking_deltas: int = 3  # 0: no thinking block at all
    text_deltas: int = 3
    event_delay: float = 0.0  # seconds before each event after the first
    gaps: tuple[tuple[int, float], ...] = ()  # (after_event_index, seconds) of silence
    ping_every: float | None = None  # ping period inside gaps; None: gaps are byte-silent
    comment_every: float | None = None  # `: keepalive` comment period inside gaps, likewise
    error_after: int | None = None  # after N events: an overloaded error event, clean end
    drop_after: int | None = None  # after N events: abort the connection
    truncate_after: int | None = None  # after N events: a chunk cut in half, then abort
    stall_mid_frame: tuple[int, float] | None = None  # (after_event_index, seconds)
    end_without_stop: bool = False  # clean end of body where message_stop would go
    line_ending: str = "\n"  # "\n", "\r\n" or "\r", for every line of every frame
    bulk_bytes: int = 0  # > 0: text deltas of about this many bytes, sent flat out
    status: int = 200  # otherwise: this status with the API's JSON error body
    headers_delay: float = 0.0  # seconds before the response head
    drop_before_head: bool = False  # after headers_delay: abort instead of answering
    content_encoding: str | None = None  # "gzip" or "deflate": compress the SSE body
    # With a status other than 200: these headers on the error answer, as the API sends
    # them for 429/529 (seconds, and milliseconds).
    retry_after: float | None = None
    retry_after_ms: float | None = None
    bom: bool = False  # the SSE body starts with a UTF-8 BOM, in the first frame's chunk
    body_delay: float = 0.0  # seconds between the SSE response head and its first byte
    # A non-streaming (JSON) reply: only its first N body bytes, then the connection is
    # dropped; its Content-Length still promises the whole body.
    cut_json_after: int | None = None

    def __post_init__(self) -> None:
        for name in ("thinking_deltas", "text_deltas", "bulk_bytes", "status"):
            _number(name, getattr(self, name), integer=True)
        for name in ("error_after", "drop_after", "truncate_after", "cut_json_after"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), integer=True)
        for name in ("event_delay", "headers_delay", "body_delay"):
            _number(name, getattr(self, name))
        for name in ("retry_after", "retry_after_ms"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name))
        for name in ("ping_every", "comment_every"):
            period = getattr(self, name)
            if period is not None and not _number(name, period) > 0:
                raise ValueError(f"{name} must be positive")
        if not isinstance(self.gaps, list | tuple):
            raise ValueError(f"gaps must be a list of pairs, got {self.gaps!r}")
        object.__setattr__(self, "gaps", tuple(_pair("gaps", gap) for gap in self.gaps))
        if self.stall_mid_frame is not None:
            stall = _pair("stall_mid_frame", self.stall_mid_frame)
            object.__setattr__(self, "stall_mid_frame", stall)
        for name in ("end_without_stop", "drop_before_head", "bom"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean")
        if self.line_ending not in _LINE_ENDINGS:
            raise ValueError(f"line_ending must be one of {_LINE_ENDINGS!r}")
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status, got {self.status}")
        if self.content_encoding not in (None, *_WBITS):
            raise ValueError(f"content_encoding must be one of {sorted(_WBITS)} or null")

    def override(self, text: str) -> SimScript:
        """This script with the fields of a JSON object (an `x-sim-script` header) replaced."""
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"x-sim-script is not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise ValueError("x-sim-script must be a JSON object")
        unknown = set(fields) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown x-sim-script fields: {sorted(unknown)}")
        return dataclasses.replace(self, **fields)


@dataclass(frozen=True)
class RecordedRequest:
    """A request as received: header names lower-cased and in order, body byte-exact."""

    method: str
    target: str
    headers: list[tuple[bytes, bytes]]  # HTTP/2: `:authority` first, as host
    body: bytes
    http_version: str = "1.1"  # "1.1", "1.0" or "2"
    #: time.monotonic() once the request was complete: tests time retries by it.
    received_at: float = field(default_factory=time.monotonic)

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


def error_json(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return compact({"type": "error", "error": {"type": kind, "message": message}}).encode()


class Sink(Protocol):
    """One response on some transport: HTTP/1.1, or one HTTP/2 stream."""

    def send_head(self, status: int, headers: list[tuple[str, str]]) -> None: ...

    def write(self, data: bytes) -> None:
        """Sends body bytes as one unit (one chunk, one DATA frame); ignores b""."""

    def write_truncated(self, data: bytes) -> None:
        """Frames `data` as one unit but sends only its first half, then aborts: a
        truncated chunk on HTTP/1.1."""

    async def drain(self) -> None:
        """Returns once the transport wants more bytes."""

    def end(self) -> None: ...

    def abort(self) -> None:
        """Ends the response without ending the body: drops the connection (HTTP/1.1)
        or resets the stream (HTTP/2)."""


class _Encoder:
    """Identity, or one compressed stream flushed per write so frames arrive on time."""

    def __init__(self, coding: str | None) -> None:
        self._zlib = zlib.compressobj(wbits=_WBITS[coding]) if coding else None

    def __call__(self, data: bytes) -> bytes:
        if self._zlib is None:
            return data
        return self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._zlib.flush() if self._zlib else b""


def _reply(
    sink: Sink,
    status: int,
    body: bytes,
    request_id: str,
    extra: Iterable[tuple[str, str]] = (),
    cut_after: int | None = None,
) -> None:
    """A JSON answer with a Content-Length; with `cut_after`, only that many body
    bytes go out before the connection is dropped."""
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("request-id", request_id),
        *extra,
    ]
    sink.send_head(status, headers)
    if cut_after is not None and cut_after < len(body):
        sink.write(body[:cut_after])
        sink.abort()
        return
    sink.write(body)
    sink.end()


def _retry_headers(script: SimScript) -> list[tuple[str, str]]:
    headers = []
    if script.retry_after is not None:
        headers.append(("retry-after", f"{script.retry_after:g}"))
    if script.retry_after_ms is not None:
        headers.append(("retry-after-ms", f"{script.retry_after_ms:g}"))
    return headers


async def play(request: RecordedRequest, default: SimScript, request_id: str, sink: Sink) -> None:
    """Answers one request on `sink` as the script (default + `x-sim-script`) says."""
    if request.method != "POST" or not request.target.split("?")[0].endswith("/v1/messages"):
        _reply(sink, 404, error_json(404, "Not found"), request_id)
        return
    try:
        header = request.header(b"x-sim-script")
        script = default.override(header.decode()) if header else default
        payload = json.loads(request.body)
        if not isinstance(payload, dict):
            raise ValueError("request body must be a JSON object")
    except ValueError as exc:  # JSON and UTF-8 errors included
        _reply(sink, 400, error_json(400, str(exc)), request_id)
        return
    await asyncio.sleep(script.headers_delay)
    if script.drop_before_head:
        sink.abort()
        return
    if script.status != 200:
        body = error_json(script.status, "Simulated error")
        _reply(sink, script.status, body, request_id, _retry_headers(script))
        return
    turn = Turn.build(
        request.body,
        payload,
        thinking_deltas=script.thinking_deltas,
        text_deltas=script.text_deltas,
        bulk_bytes=script.bulk_bytes,
    )
    if payload.get("stream") is True:
        await _stream(sink, script, turn, request_id)
    else:
        body = compact(turn.message()).encode()
        _reply(sink, 200, body, request_id, cut_after=script.cut_json_after)


async def _stream(sink: Sink, script: SimScript, turn: Turn, request_id: str) -> None:
    headers = [
        ("content-type", "text/event-stream; charset=utf-8"),
        ("cache-control", "no-cache"),
        ("request-id", request_id),
    ]
    if script.content_encoding:
        headers.append(("content-encoding", script.content_encoding))
    sink.send_head(200, headers)
    await asyncio.sleep(script.body_delay)
    encode = _Encoder(script.content_encoding)
    eol = script.line_ending
    gaps = dict(script.gaps)
    stall = script.stall_mid_frame
    ping = render("ping", PING_DATA, eol).data
    for index, (name, data) in enumerate(turn.frames(eol)):
        if index and script.event_delay:
            await asyncio.sleep(script.event_delay)
        if index == script.error_after:
            sink.write(encode(render("error", OVERLOADED_DATA, eol).data) + encode.finish())
            sink.end()
            return
        if index == script.truncate_after:
            sink.write_truncated(encode(data))
            return
        if index == script.drop_after:
            sink.abort()
            return
        if name == "message_stop" and script.end_without_stop:
            break
        if stall is not None and index == stall[0] + 1:
            sink.write(encode(data[: len(data) // 2]))
            await asyncio.sleep(stall[1])
            data = data[len(data) // 2 :]
        if index == 0 and script.bom:
            data = BOM + data
        sink.write(encode(data))
        await sink.drain()
        if index in gaps:
            await _gap(
                gaps[index],
                [
                    (script.ping_every, lambda: sink.write(encode(ping))),
                    (script.comment_every, lambda: sink.write(encode(COMMENT))),
                ],
            )
    sink.write(encode.finish())
    sink.end()


#: What `comment_every` writes: a comment-only frame, as the relay's own keepalive.
COMMENT = b": keepalive\n\n"


async def _gap(seconds: float, beats: list[tuple[float | None, Callable[[], None]]]) -> None:
    """Silence for `seconds`, but for each (period, write) with a period, a write every
    period inside it (never at its end): pings, comments, or both."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    due = [(loop.time() + period, period, write) for period, write in beats if period]
    while due:
        at, period, write = min(due, key=lambda beat: beat[0])
        if at >= deadline:
            break
        await asyncio.sleep(max(0.0, at - loop.time()))
        write()
        due.remove((at, period, write))
        due.append((at + period, period, write))
    await asyncio.sleep(max(0.0, deadline - loop.time()))
