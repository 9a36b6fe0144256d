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


class JournalTotal:
    """The bytes a set of journals holds (a ResumeStore's), kept as they change: what
    `--resume-max-total` is checked against, with no pass over the journals."""

    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0


class Journal:
    """The body bytes one stream sent its client, up to `limit` bytes, counted in
    `total` (if given) until `release`."""

    __slots__ = ("_data", "_total", "ending", "limit", "overflowed", "size")

    def __init__(self, limit: int, total: JournalTotal | None = None) -> None:
        self.limit = limit
        self._total = total
        self._data = bytearray()
        #: Bytes written so far: the offset a client that got everything is at.
        self.size = 0
        #: Past `limit`: nothing more is kept, so no resume can be served any more.
        self.overflowed = False
        self.ending = Ending.OPEN

    def append(self, data: bytes) -> None:
        """Keep a copy of `data`."""
        kept = self.size
        self.size += len(data)
        if self.overflowed:
            return
        if self.size > self.limit:
            self.overflowed = True
            self._data = bytearray()  # the memory goes back at once; the count goes on
            if self._total is not None:
                self._total.bytes -= kept
            return
        self._data += data
        if self._total is not None:
            self._total.bytes += len(data)

    def release(self) -> None:
        """Its store let it go: its bytes no longer count in the total."""
        if self._total is not None and not self.overflowed:
            self._total.bytes -= self.size
        self._total = None

    def since(self, offset: int) -> bytes | None:
        """Everything after the first `offset` bytes (one copy, per resume), or None
        if that is not here (beyond what was written, or no longer kept)."""
        if self.overflowed or not 0 <= offset <= self.size:
            return None
        return bytes(memoryview(self._data)[offset:])
