"""Scripted upstreams on 127.0.0.1 speaking OpenAI's and Gemini's real streaming formats.

Written for the tests and sharing no code with relay/: the frames are spelled out as
each API sends them (OpenAI chat completions with `data: [DONE]`, the Responses API's
named events, Gemini's `\\r\\n`-ended `alt=sse` chunks). The `x-upstream-script` request
header picks what the upstream does: `complete`, `gap` (silent for `GAP` s after the
first frame), `die` (two frames, then the connection closes mid-body) or `clean` (two
frames, then a proper end of body without the terminal one). Every request body is
recorded as it arrived.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: How long the `gap` script stays silent (tests run the relay at 0.1 s keepalives).
GAP = 1.0
TEXT = ["Hel", "lo", " wor", "ld"]


def _chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-relay",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _completion_chunk(text: str, finish: str | None = None) -> bytes:
    chunk = {
        "id": "cmpl-relay",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _response(status: str, text: str = "") -> dict[str, Any]:
    output = []
    if text:
        content = [{"type": "output_text", "text": text, "annotations": []}]
        output = [{"type": "message", "id": "msg_1", "status": status, "role": "assistant",
                   "content": content}]  # fmt: skip
    return {
        "id": "resp_relay",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": status,
        "model": "gpt-4o-mini",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def _responses_event(name: str, sequence: int, **fields: Any) -> bytes:
    data = {"type": name, "sequence_number": sequence, **fields}
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _gemini_chunk(text: str, finish: str | None = None) -> bytes:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    candidate["index"] = 0
    chunk: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.0-flash"}
    if finish is not None:
        chunk["usageMetadata"] = {"promptTokenCount": 3, "candidatesTokenCount": 4}
    return b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"


def chat_frames() -> list[bytes]:
    """A chat completions stream; the last frame is the terminal `data: [DONE]`."""
    return [
        _chat_chunk({"role": "assistant", "content": ""}),
        *(_chat_chunk({"content": text}) for text in TEXT),
        _chat_chunk({}, "stop"),
        b"data: [DONE]\n\n",
    ]


def completion_frames() -> list[bytes]:
    """A legacy completions stream, ended as chat's is."""
    return [
        *(_completion_chunk(text) for text in TEXT),
        _completion_chunk("", "stop"),
        b"data: [DONE]\n\n",
    ]


def responses_frames() -> list[bytes]:
    """A Responses stream; the last frame is the terminal `response.completed`."""
    deltas = [
        _responses_event(
            "response.output_text.delta",
            index + 1,
            item_id="msg_1",
            output_index=0,
            content_index=0,
            delta=text,
            logprobs=[],
        )
        for index, text in enumerate(TEXT)
    ]
    return [
        _responses_event("response.created", 0, response=_response("in_progress")),
        *deltas,
        _responses_event(
            "response.completed", len(TEXT) + 1, response=_response("completed", "".join(TEXT))
        ),
    ]


def gemini_frames() -> list[bytes]:
    """A Gemini `alt=sse` stream; the last frame is the candidate with `finishReason`."""
    return [_gemini_chunk(text) for text in TEXT[:-1]] + [_gemini_chunk(TEXT[-1], "STOP")]


def frames_for(path: str) -> list[bytes]:
    if path.endswith("/chat/completions"):
        return chat_frames()
    if path.endswith("/completions"):
        return completion_frames()
    if path.endswith("/responses"):
        return responses_frames()
    if ":streamGenerateContent" in path:
        return gemini_frames()
    raise ValueError(f"no scripted stream for {path}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedUpstream

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read what was recorded instead."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        path = self.path.partition("?")[0]
        self.server.received.append((self.path, body))
        script = self.headers.get("x-upstream-script", "complete")
        frames = frames_for(self.headers.get("x-upstream-format", path))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        if script in ("die", "clean"):
            frames = frames[:2]
        for index, frame in enumerate(frames):
            if script == "gap" and index == 1:
                time.sleep(GAP)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            self.wfile.flush()
        if script == "die":
            self.close_connection = True  # closed with the chunked body unfinished
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class ScriptedUpstream(ThreadingHTTPServer):
    """The scripted upstream, serving in a thread of its own until `close`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        #: (target, body) of every request, in arrival order.
        self.received: list[tuple[str, bytes]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client that gives up mid-stream (a read timeout) is part of a test."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()
