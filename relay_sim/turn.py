"""The content of one simulated assistant turn: its SSE frames, and the message a
non-streaming request gets instead. Pure functions of the request and a few sizes."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

# The real API pads some frames inside the JSON; relays must keep those bytes.
MESSAGE_STOP_DATA = '{"type":"message_stop"' + " " * 14 + "}"
DEFAULT_MODEL = "claude-sim-1"
BULK_CHUNK = 16 * 1024  # characters of text per bulk text_delta frame


class Frame(NamedTuple):
    """One SSE event: its name, and its bytes as sent."""

    name: str
    data: bytes  # the whole rendered frame, blank line included


def render(name: str, data: str, eol: str = "\n") -> Frame:
    """An `event:` and a `data:` line, then the blank line, with `eol` line endings."""
    return Frame(name, f"event: {name}{eol}data: {data}{eol}{eol}".encode())


def compact(value: object) -> str:
    """JSON as the API writes content frames: no spaces."""
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
    def build(
        cls,
        body: bytes,
        request: dict[str, Any],
        *,
        thinking_deltas: int,
        text_deltas: int,
        bulk_bytes: int,
    ) -> Turn:
        """The turn a request gets: its ids and sizes follow from the body alone."""
        digest = hashlib.sha256(body).hexdigest()
        thinking = [f"Thinking step {i + 1}. " for i in range(thinking_deltas)]
        if bulk_bytes:
            # One shared string: the list costs a pointer per frame, not a copy.
            chunk = ("lorem ipsum " * (BULK_CHUNK // 12 + 1))[:BULK_CHUNK]
            text = [chunk] * math.ceil(bulk_bytes / BULK_CHUNK)
        else:
            text = [f"Answer part {i + 1}. " for i in range(text_deltas)]
        seed = "".join(thinking).encode()
        raw = b"".join(hashlib.sha256(seed + bytes([i])).digest() for i in range(12))
        model = request.get("model")
        return cls(
            message_id=f"msg_sim_{digest[:24]}",
            model=model if isinstance(model, str) else DEFAULT_MODEL,
            input_tokens=max(1, len(compact(request.get("messages"))) // 4),
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
        return render(name, compact({"type": name, **fields}), eol)
