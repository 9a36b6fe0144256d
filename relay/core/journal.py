"""What a resumable stream's client was sent, kept so that another connection can take
the stream over from any byte offset (relay/core/resumable.py).

Sans-IO. The journal keeps the chunks the client was written, as they were (no copy per
event), and their total: offsets count the response body bytes a client received,
keepalives and relay-made error frames included.
"""

from __future__ import annotations

from enum import Enum


class Ending(Enum):
    """How the response the journal holds ended, once it has."""

    OPEN = "open"  # still being written
    END = "end"  # ended cleanly (whole, or with the relay's error frame)
    RESET = "reset"  # ended by a reset: the client must learn it is incomplete


class Journal:
    """The body bytes one stream sent its client, up to `limit` bytes."""

    __slots__ = ("_chunks", "ending", "limit", "overflowed", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        #: Bytes written so far: the offset a client that got everything is at.
        self.size = 0
        #: Past `limit`: nothing more is kept, so no resume can be served any more.
        self.overflowed = False
        self.ending = Ending.OPEN

    def append(self, data: bytes) -> None:
        """Keep `data` (the same object the client was written, not a copy)."""
        self.size += len(data)
        if self.overflowed:
            return
        if self.size > self.limit:
            self.overflowed = True
            self._chunks.clear()  # the memory goes back at once; the count goes on
            return
        self._chunks.append(data)

    def since(self, offset: int) -> list[bytes] | None:
        """Everything after the first `offset` bytes, or None if that is not here
        (beyond what was written, or no longer kept)."""
        if self.overflowed or not 0 <= offset <= self.size:
            return None
        out: list[bytes] = []
        position = 0
        for chunk in self._chunks:
            end = position + len(chunk)
            if end > offset:
                # One copy per resume, of the one chunk the offset falls in.
                out.append(chunk if position >= offset else chunk[offset - position :])
            position = end
        return out
