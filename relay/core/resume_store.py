"""Resumable streams by id, each bound to its caller's credential (in process memory).

A stream is opted in by its request (`relay-resumable: 1`). It gets an id of 192 random
bits, answered in the `relay-stream-id` response header, and a journal of what its
client was sent. It stays findable while it runs and `--resume-retain` seconds after it
ended; past `--resume-max-bytes` its journal is dropped and it is no longer resumable.
Journals never touch the disk, and ids are never logged whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from relay.core.exchange import Headers
from relay.core.journal import Journal
from relay.core.resumable import RESUMABLE_HEADER, ResumableClient
from relay.core.shared_journal import SharedJournal, credential_of
from relay.core.stream import RelayStream
from relay.core.stream_record import Outcome


@dataclass(frozen=True, slots=True)
class ResumeLimits:
    """The resume settings (flags of the same names)."""

    grace: float = 60.0
    retain: float = 300.0
    max_bytes: int = 16 * 1024 * 1024
    max_total: int = 1024 * 1024 * 1024


@dataclass(slots=True)
class ResumableEntry:
    """One resumable stream: the stream, its client side, whose it is."""

    stream: RelayStream
    client: ResumableClient
    owner: bytes
    #: Set once the stream ended: when its journal is let go.
    expiry: asyncio.TimerHandle | None = field(default=None)


def wants_resume(headers: Headers) -> bool:
    return any(name == RESUMABLE_HEADER and value.strip() == b"1" for name, value in headers)


class ResumeStore:
    """The resumable streams of this process."""

    def __init__(self, limits: ResumeLimits, shared: SharedJournal | None = None) -> None:
        self.limits = limits
        #: Where other instances find these streams, and this one theirs (or None).
        self.shared = shared
        self._entries: dict[str, ResumableEntry] = {}
        # Keyed hashes of credentials: the store never keeps a credential itself.
        self._key = secrets.token_bytes(32)

    def owner_of(self, headers: Headers) -> bytes:
        """The keyed hash of the caller's credential (empty input if it sent none)."""
        return hmac.new(self._key, credential_of(headers), hashlib.sha256).digest()

    def journal_bytes(self) -> int:
        """Bytes the journals hold (for the limit and the gauge)."""
        return sum(
            0 if entry.client.journal.overflowed else entry.client.journal.size
            for entry in self._entries.values()
        )

    def detached(self) -> int:
        """Streams running with no client attached (for the gauge)."""
        return sum(
            1
            for entry in self._entries.values()
            if entry.expiry is None and entry.client.client is None
        )

    def new_journal(self) -> tuple[str, Journal] | None:
        """An id and a journal for a new resumable stream; None when the journals
        already hold `max_total` bytes (the stream then runs as a plain one)."""
        if self.journal_bytes() >= self.limits.max_total:
            return None
        return secrets.token_urlsafe(24), Journal(self.limits.max_bytes)

    def add(self, stream_id: str, entry: ResumableEntry) -> None:
        self._entries[stream_id] = entry

    def find(self, stream_id: str, owner: bytes) -> ResumableEntry | None:
        """The stream, if it is this caller's and can still be resumed; unknown, expired
        and someone else's are the same None (compared in constant time)."""
        entry = self._entries.get(stream_id)
        if entry is None or not hmac.compare_digest(entry.owner, owner):
            return None
        if entry.client.journal.overflowed:
            return None
        return entry

    def finished(self, stream_id: str, outcome: Outcome) -> None:
        """The stream ended: its journal is kept `retain` seconds for late resumers,
        unless it was abandoned (no resume in the grace period, or cancelled)."""
        entry = self._entries.get(stream_id)
        if outcome is Outcome.CLIENT_ABORT:
            self._forget(stream_id)
        elif entry is not None and entry.expiry is None:
            loop = asyncio.get_running_loop()
            entry.expiry = loop.call_later(self.limits.retain, self._forget, stream_id)

    def _forget(self, stream_id: str) -> None:
        self._entries.pop(stream_id, None)

    def close(self) -> None:
        for entry in self._entries.values():
            if entry.expiry is not None:
                entry.expiry.cancel()
        self._entries.clear()
