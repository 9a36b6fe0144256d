"""Messages-API SSE frames for the benchmark, the deltas pre-rendered around a stamp.

Every `content_block_delta` frame's JSON carries `"t":<time.monotonic_ns() at send>`
right after its type, so the load generator can time each event on the one clock the
machine shares; rendering one is two byte concatenations. The frames that open and
close a turn are constant bytes (and not counted as events).
"""

from __future__ import annotations

import json
import random
from typing import NamedTuple

# Thinking text of varied length, as real thinking deltas are; no JSON escapes needed.
_SENTENCE = "the user asks about latency so first consider where the bytes wait and why"
_WORDS = _SENTENCE.split()


class StampedFrame(NamedTuple):
    """One SSE frame split around its stamp: `before + b"%d" % ns + after`."""

    before: bytes
    after: bytes

    def render(self, stamp_ns: int) -> bytes:
        return self.before + b"%d" % stamp_ns + self.after


def _stamped(name: str, fields: dict[str, object]) -> StampedFrame:
    rest = json.dumps(fields, separators=(",", ":"))[1:]  # `...}` without its `{`
    before = f'event: {name}\ndata: {{"type":"{name}","t":'.encode()
    return StampedFrame(before, f",{rest}\n\n".encode())


def _plain(name: str, fields: dict[str, object]) -> bytes:
    data = json.dumps({"type": name, **fields}, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode()


def _thinking_text(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 60)))


MESSAGE_START = _plain(
    "message_start",
    {
        "message": {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": "claude-bench",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 42, "output_tokens": 1},
        }
    },
)
THINKING_START = _plain(
    "content_block_start",
    {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
)
BLOCK_STOP = _plain("content_block_stop", {"index": 0})
MESSAGE_DELTA = _plain(
    "message_delta",
    {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 9}},
)
MESSAGE_STOP = _plain("message_stop", {})
PING = _plain("ping", {})
CLOSING = (BLOCK_STOP, MESSAGE_DELTA, MESSAGE_STOP)


def thinking_deltas(count: int = 64, seed: int = 7) -> list[StampedFrame]:
    """A cycle of `content_block_delta` thinking frames, about 200 to 460 bytes each."""
    rng = random.Random(seed)
    return [
        _stamped(
            "content_block_delta",
            {"index": 0, "delta": {"type": "thinking_delta", "thinking": _thinking_text(rng)}},
        )
        for _ in range(count)
    ]


def thinking_heavy_stream(deltas: int = 20_000, seed: int = 11) -> bytes:
    """A whole thinking-heavy response body (about 6 MB at the default size).

    Synthesized, deterministic: the same bytes every run, so MB/s figures compare.
    Pings are interleaved the way the API sends them during long turns.
    """
    rng = random.Random(seed)
    cycle = thinking_deltas(seed=seed)
    stamp = 1_000_000_000_000
    parts = [MESSAGE_START, THINKING_START]
    for i in range(deltas):
        parts.append(cycle[i % len(cycle)].render(stamp + i))
        if rng.random() < 0.01:
            parts.append(PING)
    parts += CLOSING
    return b"".join(parts)
