"""What the simulated Messages API sends, and when: scenario, frames, and the player.

Nothing here knows about HTTP/1.1 or HTTP/2: the player drives a `Sink`, which each
transport implements. Every byte a response carries depends only on the request body and
the script, so a stream fetched directly and one fetched through a relay can be compared
byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

PING_DATA = '{"type": "ping"}'
OVERLOADED_DATA = (
    '{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
)
# The real API pads some frames inside the JSON; relays must keep those bytes.
MESSAGE_STOP_DATA = '{"type":"message_stop"' + " " * 14 + "}"
DEFAULT_MODEL = "claude-sim-1"
BULK_CHUNK = 16 * 1024  # characters of text per bulk text_delta frame

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

    def __post_init__(self) -> None:
        for name in ("thinking_deltas", "text_deltas", "bulk_bytes", "status"):
            _number(name, getattr(self, name), integer=True)
        for name in ("error_after", "drop_after", "truncate_after"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), integer=True)
        for name in ("event_delay", "headers_delay"):
            _number(name, getattr(self, name))
        if self.ping_every is not None and not _number("ping_every", self.ping_every) > 0:
            raise ValueError("ping_every must be positive")
        if not isinstance(self.gaps, list | tuple):
            raise ValueError(f"gaps must be a list of pairs, got {self.gaps!r}")
        object.__setattr__(self, "gaps", tuple(_pair("gaps", gap) for gap in self.gaps))
        if self.stall_mid_frame is not None:
            stall = _pair("stall_mid_frame", self.stall_mid_frame)
            object.__setattr__(self, "stall_mid_frame", stall)
        for name in ("end_without_stop", "drop_before_head"):
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

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)


class Frame(NamedTuple):
    name: str
    data: bytes  # the whole rendered frame, blank line included


def render(name: str, data: str, eol: str = "\n") -> Frame:
    return Frame(name, f"event: {name}{eol}data: {data}{eol}{eol}".encode())


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class Turn:
    """The content of one simulated assistant turn, shared by stream and JSON replies."""

    message_id: str
    model: str
    input_tokens: int
    thinking: list[str]
    signature: str
    text: list[str]

    @classmethod
    def build(cls, script: SimScript, body: bytes, request: dict[str, Any]) -> Turn:
        digest = hashlib.sha256(body).hexdigest()
        thinking = [f"Thinking step {i + 1}. " for i in range(script.thinking_deltas)]
        if script.bulk_bytes:
            # One shared string: the list costs a pointer per frame, not a copy.
            chunk = ("lorem ipsum " * (BULK_CHUNK // 12 + 1))[:BULK_CHUNK]
            text = [chunk] * math.ceil(script.bulk_bytes / BULK_CHUNK)
        else:
            text = [f"Answer part {i + 1}. " for i in range(script.text_deltas)]
        seed = "".join(thinking).encode()
        raw = b"".join(hashlib.sha256(seed + bytes([i])).digest() for i in range(12))
        model = request.get("model")
        return cls(
            message_id=f"msg_sim_{digest[:24]}",
            model=model if isinstance(model, str) else DEFAULT_MODEL,
            input_tokens=max(1, len(_compact(request.get("messages"))) // 4),
            thinking=thinking,
            signature=base64.b64encode(raw).decode() if thinking else "",
            text=text,
        )

    def usage(self, output_tokens: int) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        }

    def message(self) -> dict[str, Any]:
        """The non-streaming reply: the message the stream accumulates to."""
        content: list[dict[str, Any]] = []
        if self.thinking:
            thinking = "".join(self.thinking)
            content.append({"type": "thinking", "thinking": thinking, "signature": self.signature})
        content.append({"type": "text", "text": "".join(self.text)})
        return {
            **self._head(content),
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": self.usage(len(self.thinking) + len(self.text)),
        }

    def _head(self, content: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
        }

    def frames(self, eol: str) -> Iterator[Frame]:
        """The SSE events in order, rendered lazily (a bulk turn can be 50 MB)."""
        start = {**self._head([]), "stop_reason": None, "stop_sequence": None}
        yield self._event("message_start", {"message": {**start, "usage": self.usage(1)}}, eol)
        blocks: list[tuple[dict[str, str], Iterable[dict[str, str]]]] = []
        if self.thinking:
            thinking = [{"type": "thinking_delta", "thinking": part} for part in self.thinking]
            thinking.append({"type": "signature_delta", "signature": self.signature})
            blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, thinking))
        text = ({"type": "text_delta", "text": part} for part in self.text)
        blocks.append(({"type": "text", "text": ""}, text))
        for index, (block, deltas) in enumerate(blocks):
            yield self._event("content_block_start", {"index": index, "content_block": block}, eol)
            for delta in deltas:
                yield self._event("content_block_delta", {"index": index, "delta": delta}, eol)
            yield self._event("content_block_stop", {"index": index}, eol)
        final = {"stop_reason": "end_turn", "stop_sequence": None}
        output = {"output_tokens": len(self.thinking) + len(self.text)}
        yield self._event("message_delta", {"delta": final, "usage": output}, eol)
        yield render("message_stop", MESSAGE_STOP_DATA, eol)

    @staticmethod
    def _event(name: str, fields: dict[str, Any], eol: str) -> Frame:
        return render(name, _compact({"type": name, **fields}), eol)


def error_json(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return _compact({"type": "error", "error": {"type": kind, "message": message}}).encode()


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


def _reply(sink: Sink, status: int, body: bytes, request_id: str) -> None:
    sink.send_head(
        status,
        [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("request-id", request_id),
        ],
    )
    sink.write(body)
    sink.end()


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
        _reply(sink, script.status, error_json(script.status, "Simulated error"), request_id)
        return
    turn = Turn.build(script, request.body, payload)
    if payload.get("stream") is True:
        await _stream(sink, script, turn, request_id)
    else:
        _reply(sink, 200, _compact(turn.message()).encode(), request_id)


async def _stream(sink: Sink, script: SimScript, turn: Turn, request_id: str) -> None:
    headers = [
        ("content-type", "text/event-stream; charset=utf-8"),
        ("cache-control", "no-cache"),
        ("request-id", request_id),
    ]
    if script.content_encoding:
        headers.append(("content-encoding", script.content_encoding))
    sink.send_head(200, headers)
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
        sink.write(encode(data))
        await sink.drain()
        if index in gaps:
            await _gap(gaps[index], script.ping_every, lambda: sink.write(encode(ping)))
    sink.write(encode.finish())
    sink.end()


async def _gap(seconds: float, ping_every: float | None, ping: Callable[[], None]) -> None:
    """Silence for `seconds`, or pings every `ping_every` s inside it (never at its end)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    if ping_every is not None:
        next_ping = loop.time() + ping_every
        while next_ping < deadline:
            await asyncio.sleep(next_ping - loop.time())
            ping()
            next_ping += ping_every
    await asyncio.sleep(max(0.0, deadline - loop.time()))
