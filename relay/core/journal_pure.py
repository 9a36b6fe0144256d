"""What a resumable stream's client was sent, kept so that another connection can take
the stream over from any byte offset (relay/core/resumable.py).

Sans-IO. The journal keeps the body bytes in one growing buffer (an arena) and their
total: offsets count the response body bytes a client received, keepalives and
relay-made error frames included. This is the pure-Python twin of
relay/core/_journal.pyx, whose arena the Cython body pump copies each piece into
without a Python call; relay/core/journal.py picks one.
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

    __slots__ = ("_data", "ending", "limit", "overflowed", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        #: Bytes written so far: the offset a client that got everything is at.
        self.size = 0
        #: Past `limit`: nothing more is kept, so no resume can be served any more.
        self.overflowed = False
        self.ending = Ending.OPEN

    def append(self, data: bytes) -> None:
        """Keep a copy of `data`."""
        self.size += len(data)
        if self.overflowed:
            return
        if self.size > self.limit:
            self.overflowed = True
            self._data = bytearray()  # the memory goes back at once; the count goes on
            return
        self._data += data

    def since(self, offset: int) -> bytes | None:
        """Everything after the first `offset` bytes (one copy, per resume), or None
        if that is not here (beyond what was written, or no longer kept)."""
        if self.overflowed or not 0 <= offset <= self.size:
            return None
        return bytes(memoryview(self._data)[offset:])
