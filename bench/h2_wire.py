"""HTTP/2 framing for the harness's lean endpoints (RFC 9113, what they need of it).

The load generator's h2c client and the emitter's HTTP/2 server run on the harness core,
where the `h2` package's per-frame machinery (an event object, a state machine and flow
control in Python for every DATA frame) saturated the core first. They parse frames in
their own loops with the struct below; HPACK stays with the `hpack` package. Both talk to
strict peers (the relay's `h2`, nginx), which would reject a broken frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
STREAM_ID_MASK = 0x7FFF_FFFF

#: A frame header: length (24 bits, as a byte and a 16-bit half), type, flags, stream id.
HEAD = struct.Struct(">BHBBL")
_SETTING = struct.Struct(">HL")
_WORD = struct.Struct(">L")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


def settings(values: Iterable[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values))


def parse_settings(payload: bytes) -> dict[int, int]:
    return {
        key: value
        for key, value in (_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6))
    }


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _WORD.pack(increment))


def word(payload: bytes, offset: int = 0) -> int:
    """A 31-bit field (a window increment, an error code, a stream id)."""
    value: int = _WORD.unpack_from(payload, offset)[0]
    return value & STREAM_ID_MASK


def header_block(flags: int, payload: bytes) -> bytes:
    """A HEADERS frame's block fragment, without its padding and priority fields."""
    start, end = 0, len(payload)
    if flags & PADDED:
        start, end = 1, end - payload[0]
    if flags & PRIORITY_FLAG:
        start += 5
    return payload[start:end]


class HeaderBlocks:
    """Joins a HEADERS frame and its CONTINUATIONs into one header block."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: tuple[int, int, list[bytes]] | None = None

    def add(
        self, kind: int, flags: int, stream_id: int, payload: bytes
    ) -> tuple[int, int, bytes] | None:
        """(stream id, the HEADERS frame's flags, the whole block) once it is complete."""
        if kind == HEADERS:
            self._open = (stream_id, flags, [header_block(flags, payload)])
        elif self._open is not None:
            self._open[2].append(payload)
            flags = self._open[1] | (flags & END_HEADERS)
        if not flags & END_HEADERS or self._open is None:
            return None
        stream_id, first_flags, fragments = self._open
        self._open = None
        return stream_id, first_flags, b"".join(fragments)
