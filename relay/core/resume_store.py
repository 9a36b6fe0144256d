"""Resumable streams by id, each bound to its caller's credential (in process memory).

A stream is opted in by its request (`relay-resumable: 1`). It gets an id of 192 random
bits, answered in the `relay-stream-id` response header, and a journal of what its
client was sent. It stays findable while it runs and `--resume-retain` seconds after it
ended; past `--resume-max-bytes` its journal is dropped and it is no longer resumable.
Journals never touch the disk, and ids are never logged whole. With --replay-retries
the store also finds a stream by its request, for an identical retry (relay/core/replay.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from relay.core.exchange import Headers
from relay.core.journal import Journal, JournalTotal
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
    #: With --replay-retries: the keyed digest of its request, which an identical retry
    #: repeats to take the stream over (relay/core/replay.py).
    request_key: bytes | None = None


def wants_resume(headers: Headers) -> bool:
    return any(name == RESUMABLE_HEADER and value.strip() == b"1" for name, value in headers)


class ResumeStore:
    """The resumable streams of this process."""

    def __init__(self, limits: ResumeLimits, shared: SharedJournal | None = None) -> None:
        self.limits = limits
        #: Where other instances find these streams, and this one theirs (or None).
        self.shared = shared
        self._entries: dict[str, ResumableEntry] = {}
        # What their journals hold, kept as they are written (not summed per new stream).
        self._total = JournalTotal()
        # Keyed hashes of credentials: the store never keeps a credential itself.
        self._key = secrets.token_bytes(32)
        # Streams an identical retry may take over, by request_key (--replay-retries).
        self._by_request: dict[bytes, list[str]] = {}

    def owner_of(self, headers: Headers) -> bytes:
        """The keyed hash of the caller's credential (empty input if it sent none)."""
        return hmac.new(self._key, credential_of(headers), hashlib.sha256).digest()

    def journal_bytes(self) -> int:
        """Bytes the journals hold (for the limit and the gauge)."""
        return self._total.bytes

    def detached(self) -> int:
        """Streams running with no client attached (for the gauge)."""
        return len(self.detached_streams())

    def detached_streams(self) -> list[RelayStream]:
        return [
            entry.stream
            for entry in self._entries.values()
            if entry.expiry is None and entry.client.client is None
        ]

    def new_journal(self) -> tuple[str, Journal] | None:
        """An id and a journal for a new resumable stream; None when the journals
        already hold `max_total` bytes (the stream then runs as a plain one)."""
        if self.journal_bytes() >= self.limits.max_total:
            return None
        return secrets.token_urlsafe(24), Journal(self.limits.max_bytes, self._total)

    def add(self, stream_id: str, entry: ResumableEntry) -> None:
        self._entries[stream_id] = entry
        if entry.request_key is not None:
            self._by_request.setdefault(entry.request_key, []).append(stream_id)

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

    def retryable(self, request_key: bytes) -> ResumableEntry | None:
        """A stream an identical retry may take over now: no client attached, its
        response whole in the journal. A dict lookup on a keyed digest tells nothing,
        by its timing, about other callers' requests."""
        for stream_id in self._by_request.get(request_key, ()):
            entry = self._entries[stream_id]
            if entry.client.client is None and entry.client.resumable:
                return entry
        return None

    def forget(self, stream_id: str) -> None:
        """Let the stream's journal go now: nothing will be served from it any more."""
        entry = self._entries.get(stream_id)
        if entry is not None and entry.expiry is not None:
            entry.expiry.cancel()
        self._forget(stream_id)

    def _forget(self, stream_id: str) -> None:
        entry = self._entries.pop(stream_id, None)
        if entry is not None:
            entry.client.journal.release()
        key = None if entry is None else entry.request_key
        if key is not None:
            same = self._by_request[key]
            same.remove(stream_id)
            if not same:
                del self._by_request[key]

    def close(self) -> None:
        for entry in self._entries.values():
            if entry.expiry is not None:
                entry.expiry.cancel()
            entry.client.journal.release()
        self._entries.clear()
        self._by_request.clear()
